"""Where preference rows come from: files, folders of splits, DatasetDicts, hub ids, and their splits.

Sources: "default" (the shipped dataset), a .jsonl/.json/.csv/.parquet file, a folder holding
<split>.<ext> files (train_prefs.jsonl, test_prefs.jsonl), an in-memory `datasets.Dataset` or
`DatasetDict`, or a hub id. A folder, a DatasetDict, a hub id and "default" have named splits
(`split_names`); a single file or Dataset is one split, called "train" (as `datasets` names it), and
has no "test" split: held-out pairs for it come from `orpo_lab.splits.load_splits`.

`read_split` returns (name, [(location, row)]) with a location per row ("file: line 3") for error
messages; rows are plain dicts, untouched (the rules live in `orpo_lab.preferences`).
"""

from __future__ import annotations

import json
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


def _located(name: str, rows) -> list[tuple[str, dict]]:
    return [(f"{name}: row {i}", row) for i, row in enumerate(rows)]


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


def read_jsonl(path: Path) -> list[tuple[str, dict | RowError]]:
    """(location, row) per line; an undecodable or malformed line gets a RowError in place of its row."""
    rows = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        where = f"{path}: line {number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            problem = f"bytes that are not UTF-8 at column {err.start + 1}; expected UTF-8 text: re-save the file as UTF-8"
            rows.append((where, RowError(None, problem)))
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            problem = f"malformed JSON ({err.msg} at column {err.colno}); expected one JSON object per line"
            rows.append((where, RowError(None, problem)))
            continue
        if not isinstance(row, dict):
            row = RowError(
                None,
                f"expected a JSON object with prompt/chosen/rejected, got {type(row).__name__}",
            )
        rows.append((where, row))
    return rows


def _read_file(path: Path) -> list[tuple[str, dict | RowError]]:
    if path.suffix == ".jsonl":
        return read_jsonl(path)
    if path.suffix != ".parquet":
        _check_utf8(path, path.read_bytes())
    if path.suffix == ".json":
        try:  # a JSON array of objects: read here, so that no Arrow type inference can fail on it
            items = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            items = None  # JSON lines in a .json file, or another layout: `datasets` reads those
        if isinstance(items, list):
            not_object = RowError(None, "expected a JSON object with prompt/chosen/rejected")
            return [
                (f"{path}: item {i}", item if isinstance(item, dict) else not_object)
                for i, item in enumerate(items)
            ]
    try:
        ds = datasets.load_dataset(FILE_TYPES[path.suffix], data_files=str(path), split="train")
    except Exception as err:  # datasets raises many types; the user needs the file and the cause
        raise PreferenceDataError(
            f"{path}: could not be read as {path.suffix[1:]} ({type(err).__name__}: {err}). "
            f"Expected a {path.suffix[1:]} file with prompt/chosen/rejected columns."
        ) from err
    # A data row's line in a CSV is its row number + 1 (the header) when no cell spans lines.
    return [(f"{path}: row {i + 1}", row) for i, row in enumerate(ds)]


def read_split(source, split: str = SINGLE_SPLIT) -> tuple[str, list[tuple[str, dict | RowError]]]:
    """(name, [(location, raw row)]) of one split of a source; a missing split lists the others."""
    if isinstance(source, datasets.Dataset):
        if split != SINGLE_SPLIT:
            raise _single_split_error("the in-memory dataset", split)
        return "in-memory dataset", _located("in-memory dataset", source)
    if isinstance(source, datasets.DatasetDict):
        if split not in source:
            raise _no_split("the DatasetDict", split, sorted(source))
        return f"split {split!r}", _located(f"split {split!r}", source[split])
    if source == "default":
        from orpo_lab.default_dataset import DATA_DIR

        if split not in _folder_splits(DATA_DIR):
            raise PreferenceDataError(
                f"The default dataset has no split {split!r}: use 'train' or 'test'."
            )
        path = DATA_DIR / f"{split}.jsonl"
        return str(path), _read_file(path)
    path = Path(str(source)).expanduser()
    if path.is_dir():
        found = [path / f"{split}{ext}" for ext in FILE_TYPES if (path / f"{split}{ext}").is_file()]
        if not found:
            raise _no_split(str(path), split, _folder_splits(path))
        return str(found[0]), _read_file(found[0])
    if path.suffix in FILE_TYPES:
        if not path.is_file():
            raise PreferenceDataError(
                f"{path}: file not found. Expected an existing .jsonl/.json/.csv/.parquet file."
            )
        if split != SINGLE_SPLIT:
            raise _single_split_error(str(path), split)
        return str(path), _read_file(path)
    if _is_local(source):
        raise PreferenceDataError(
            f"{source}: expected a .jsonl, .json, .csv or .parquet file, a folder of them, "
            "'default' or a hub id."
        )
    splits = split_names(source)
    if split not in splits:
        raise _no_split(str(source), split, splits)
    try:
        ds = datasets.load_dataset(str(source), split=split)
    except Exception as err:
        raise PreferenceDataError(
            f"{source}: not a local file and could not be loaded from the hub ({err})."
        ) from err
    return f"{source} [{split}]", _located(f"{source} [{split}]", ds)


def _single_split_error(name: str, split: str) -> PreferenceDataError:
    return PreferenceDataError(
        f"{name} is a single file or dataset: its one split is {SINGLE_SPLIT!r}, it has no split "
        f"{split!r}. Held-out pairs come from eval_dataset, or are carved out of the training pairs "
        "(held_out_size; `load_splits`); split names apply to folders, DatasetDicts and hub ids."
    )
