"""Where preference rows come from: files, folders of splits, DatasetDicts, hub ids, and their splits.

Sources: "default" (the shipped dataset), a .jsonl/.json/.csv/.parquet file, a folder holding
<split>.<ext> files (train_prefs.jsonl, test_prefs.jsonl), an in-memory `datasets.Dataset` or
`DatasetDict`, or a hub id. A folder, a DatasetDict, a hub id and "default" have named splits
(`split_names`); a single file or Dataset is one split, called "train" (as `datasets` names it), and
has no "test" split: held-out pairs for it come from `orpo_lab.splits.load_splits`.

`read_split` returns a split's raw rows (`RawRows`: a JSONL file as its lines' offsets) with a
location per row ("file: line 3") for messages; `orpo_lab.preferences` applies the rules to them.
"""

from __future__ import annotations

import json
import mmap
import re
from dataclasses import dataclass
from pathlib import Path

import datasets

FILE_TYPES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SINGLE_SPLIT = "train"  # the one split of a single file or Dataset


class PreferenceDataError(ValueError):
    """Preference data that cannot be used; the message names file, row, field and the fix."""


class RowError(Exception):
    """One row's problem: the field (None: the whole row) and what is wrong with it."""

    def __init__(self, field: str | None, problem: str):
        super().__init__(f"field {field!r}: {problem}" if field else problem)


def _folder_splits(path: Path) -> list[str]:
    return sorted({f.stem for f in path.iterdir() if f.suffix in FILE_TYPES and f.is_file()})


def _is_local(source) -> bool:
    text = str(source)
    return (
        Path(text).expanduser().exists()
        or text.startswith((".", "/", "~"))
        or (Path(text).suffix in FILE_TYPES)
    )


def split_names(source) -> list[str] | None:
    """The splits of a source that has named splits; None for a single file or Dataset."""
    if isinstance(source, datasets.DatasetDict):
        return sorted(source)
    if isinstance(source, datasets.Dataset):
        return None
    if source == "default":
        from orpo_lab.default_dataset import DATA_DIR

        return _folder_splits(DATA_DIR)
    path = Path(str(source)).expanduser()
    if path.is_dir():
        return _folder_splits(path)
    if _is_local(source):
        return None
    try:  # a hub id, for users with hub access
        return sorted(datasets.get_dataset_split_names(str(source)))
    except Exception as err:  # the hub raises many types; the user needs the id and the cause
        raise PreferenceDataError(
            f"{source}: not a local file or folder, and its splits could not be read from the hub "
            f"({type(err).__name__}: {err})."
        ) from err


def _no_split(name: str, split: str, splits: list[str]) -> PreferenceDataError:
    if not splits:
        return PreferenceDataError(
            f"{name}: no .jsonl/.json/.csv/.parquet files here. A folder holds one file per split, "
            f"named <split>.<ext> (train.jsonl, test.jsonl)."
        )
    train = next((s for s in splits if s.startswith("train")), splits[0])
    test = next((s for s in splits if s.startswith("test")), None)
    flags = f"--train-split {train}" + (f" --test-split {test}" if test else "")
    return PreferenceDataError(
        f"{name}: no split {split!r}; the splits here are {', '.join(splits)}. Choose them with "
        f"`{flags}` (TrainConfig train_split / test_split; load_preferences(..., split={train!r}))."
    )


def _check_utf8(path: Path, raw: bytes) -> None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise PreferenceDataError(
            f"{path}: line {line}: bytes that are not UTF-8 ({raw[err.start : err.start + 4]!r} at byte "
            f"{err.start}). Expected UTF-8 text: re-save the file as UTF-8."
        ) from None


def parse_jsonl_line(raw: bytes) -> dict | RowError | None:
    """One JSONL line: its object, a RowError saying what is wrong with it, or None when blank."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        problem = f"bytes that are not UTF-8 at column {err.start + 1}; expected UTF-8 text: re-save the file as UTF-8"
        return RowError(None, problem)
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        problem = (
            f"malformed JSON ({err.msg} at column {err.colno}); expected one JSON object per line"
        )
        return RowError(None, problem)
    if not isinstance(row, dict):
        return RowError(
            None, f"expected a JSON object with prompt/chosen/rejected, got {type(row).__name__}"
        )
    return row


def read_jsonl(path: Path) -> list[tuple[str, dict | RowError]]:
    """(location, row) per line, in memory (small files: votes); a bad line gets a RowError."""
    rows = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        row = parse_jsonl_line(raw)
        if row is not None:
            rows.append((f"{path}: line {number}", row))
    return rows


def line_spans(path: Path) -> datasets.Dataset:
    """A JSONL file as a Dataset of its non-empty lines: __line__ (1-based), __start__, __end__ (bytes).

    Lines end where `bytes.splitlines` ends them (\\n, \\r\\n or \\r), so line numbers match any
    editor's. Only offsets are kept: the rows are parsed where they are checked (`preferences`), in
    as many processes as that uses, and the file is never held in memory whole.
    """
    lines, starts, ends = [], [], []
    if path.stat().st_size:
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            crlf = mm.find(b"\r") != -1
            breaks = _any_breaks(mm) if crlf else _newlines(mm)
            start, number = 0, 0
            for end, after in breaks:
                number += 1
                if end > start:
                    lines.append(number)
                    starts.append(start)
                    ends.append(end)
                start = after
            if start < len(mm):  # a last line without a newline
                lines.append(number + 1)
                starts.append(start)
                ends.append(len(mm))
    return datasets.Dataset.from_dict({"__line__": lines, "__start__": starts, "__end__": ends})


def _any_breaks(mm: mmap.mmap):
    return ((m.start(), m.end()) for m in re.finditer(rb"\r\n|\r|\n", mm))


def _newlines(mm: mmap.mmap):
    """(end, next start) of every \\n in `mm`: a C-speed scan for files without \\r."""
    at = mm.find(b"\n")
    while at != -1:
        yield at, at + 1
        at = mm.find(b"\n", at + 1)


@dataclass
class RawRows:
    """One split's rows before the rules, as a Dataset, and how messages name a row.

    kind "jsonl": `line_spans` of `path` (rows parsed later, where they are checked); "json": rows
    as JSON text (__json__) with their location (__where__) and any reading problem (__error__);
    "arrow": the source's own columns, row i named f"{label}{i + base}".
    """

    name: str
    rows: datasets.Dataset
    kind: str = "arrow"
    path: str = ""
    label: str = ""
    base: int = 0

    def where(self, index: int) -> str:
        return f"{self.label}{index + self.base}"


def json_rows(name: str, located: list[tuple[str, dict | RowError]]) -> RawRows:
    """RawRows of rows already in memory: (location, row or RowError) pairs."""
    columns = {"__where__": [], "__json__": [], "__error__": []}
    for where, row in located:
        bad = isinstance(row, RowError)
        columns["__where__"].append(where)
        columns["__json__"].append(None if bad else json.dumps(row, default=str))
        columns["__error__"].append(str(row) if bad else None)
    return RawRows(name, datasets.Dataset.from_dict(columns), kind="json")


def _read_file(path: Path) -> RawRows:
    if path.suffix == ".jsonl":
        return RawRows(str(path), line_spans(path), kind="jsonl", path=str(path))
    if path.suffix != ".parquet":
        _check_utf8(path, path.read_bytes())
    if path.suffix == ".json":
        try:  # a JSON array of objects: read here, so that no Arrow type inference can fail on it
            items = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            items = None  # JSON lines in a .json file, or another layout: `datasets` reads those
        if isinstance(items, list):
            not_object = RowError(None, "expected a JSON object with prompt/chosen/rejected")
            located = [
                (f"{path}: item {i}", item if isinstance(item, dict) else not_object)
                for i, item in enumerate(items)
            ]
            return json_rows(str(path), located)
    try:
        ds = datasets.load_dataset(FILE_TYPES[path.suffix], data_files=str(path), split="train")
    except Exception as err:  # datasets raises many types; the user needs the file and the cause
        raise PreferenceDataError(
            f"{path}: could not be read as {path.suffix[1:]} ({type(err).__name__}: {err}). "
            f"Expected a {path.suffix[1:]} file with prompt/chosen/rejected columns."
        ) from err
    # A data row's line in a CSV is its row number + 1 (the header) when no cell spans lines.
    return RawRows(str(path), ds, label=f"{path}: row ", base=1)


def read_split(source, split: str = SINGLE_SPLIT) -> RawRows:
    """The raw rows of one split of a source; a missing split lists the others."""
    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        return _read_in_memory(source, split)
    if source == "default":
        from orpo_lab.default_dataset import DATA_DIR

        if split not in _folder_splits(DATA_DIR):
            raise PreferenceDataError(
                f"The default dataset has no split {split!r}: use 'train' or 'test'."
            )
        return _read_file(DATA_DIR / f"{split}.jsonl")
    path = Path(str(source)).expanduser()
    if path.is_dir() or path.suffix in FILE_TYPES:
        return _read_local(path, split)
    if _is_local(source):
        raise PreferenceDataError(
            f"{source}: expected a .jsonl, .json, .csv or .parquet file, a folder of them, "
            "'default' or a hub id."
        )
    return _read_hub(str(source), split)


def _read_in_memory(source: datasets.Dataset | datasets.DatasetDict, split: str) -> RawRows:
    if isinstance(source, datasets.Dataset):
        if split != SINGLE_SPLIT:
            raise _single_split_error("the in-memory dataset", split)
        return RawRows("in-memory dataset", source, label="in-memory dataset: row ")
    if split not in source:
        raise _no_split("the DatasetDict", split, sorted(source))
    name = f"split {split!r}"
    return RawRows(name, source[split], label=f"{name}: row ")


def _read_local(path: Path, split: str) -> RawRows:
    if path.is_dir():
        found = [path / f"{split}{ext}" for ext in FILE_TYPES if (path / f"{split}{ext}").is_file()]
        if not found:
            raise _no_split(str(path), split, _folder_splits(path))
        return _read_file(found[0])
    if not path.is_file():
        raise PreferenceDataError(
            f"{path}: file not found. Expected an existing .jsonl/.json/.csv/.parquet file."
        )
    if split != SINGLE_SPLIT:
        raise _single_split_error(str(path), split)
    return _read_file(path)


def _read_hub(source: str, split: str) -> RawRows:
    splits = split_names(source)
    if split not in splits:
        raise _no_split(source, split, splits)
    try:
        ds = datasets.load_dataset(source, split=split)
    except Exception as err:
        raise PreferenceDataError(
            f"{source}: not a local file and could not be loaded from the hub ({err})."
        ) from err
    name = f"{source} [{split}]"
    return RawRows(name, ds, label=f"{name}: row ")


def _single_split_error(name: str, split: str) -> PreferenceDataError:
    return PreferenceDataError(
        f"{name} is a single file or dataset: its one split is {SINGLE_SPLIT!r}, it has no split "
        f"{split!r}. Held-out pairs come from eval_dataset, or are carved out of the training pairs "
        "(held_out_size; `load_splits`); split names apply to folders, DatasetDicts and hub ids."
    )
