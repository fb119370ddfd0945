"""Load preference data from any accepted source and format, validate it, and normalise it.

Sources: "default" (the shipped dataset), a .jsonl/.json/.csv/.parquet file, a directory holding
<split>.<ext>, an in-memory `datasets.Dataset`, or a hub id. Formats (as TRL defines them):
  standard        {"prompt": str, "chosen": str, "rejected": str}
  conversational  {"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message]}
  implicit prompt {"chosen": [messages], "rejected": [messages]} sharing all but the last message
  other names     column_map={"question": "prompt", "good": "chosen", "bad": "rejected"}
Every format becomes prompt = list of {"role", "content"}, chosen = str, rejected = str (the final
assistant reply); extra columns are kept. Bad rows raise `PreferenceDataError` naming the file, the
row (the line for JSONL), the field, what was expected and what to do; with skip_bad_rows=True they
are dropped and a `SkippedRowsWarning` (attributes: skipped, total, problems) says how many.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import datasets

FILE_TYPES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SHOWN_PROBLEMS = 5
FIELDS = ("prompt", "chosen", "rejected")


class PreferenceDataError(ValueError):
    """Preference data that cannot be used; the message names file, row, field and the fix."""


class SkippedRowsWarning(UserWarning):
    """Bad rows were dropped (skip_bad_rows=True): `skipped` of `total`, `problems` lists them."""

    def __init__(self, message: str, skipped: int, total: int, problems: list[str]):
        super().__init__(message)
        self.skipped, self.total, self.problems = skipped, total, problems


class _RowError(Exception):
    def __init__(self, field: str | None, problem: str):
        super().__init__(f"field {field!r}: {problem}" if field else problem)


def _default_path(split: str) -> Path:
    from orpo_lab.default_dataset import DATA_DIR

    path = DATA_DIR / f"{split}.jsonl"
    if not path.is_file():
        raise PreferenceDataError(
            f"The default dataset has no split {split!r}: use 'train' or 'test'."
        )
    return path


def _check_utf8(path: Path, raw: bytes) -> None:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise PreferenceDataError(
            f"{path}: line {line}: bytes that are not UTF-8 ({raw[err.start : err.start + 4]!r} at byte "
            f"{err.start}). Expected UTF-8 text: re-save the file as UTF-8."
        ) from None


def _read_jsonl(path: Path) -> list[tuple[str, dict | _RowError]]:
    """(location, row) per line; an undecodable or malformed line gets a _RowError in place of its row."""
    rows = []
    for number, raw in enumerate(path.read_bytes().splitlines(), start=1):
        where = f"{path}: line {number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            rows.append(
                (
                    where,
                    _RowError(
                        None,
                        f"bytes that are not UTF-8 at column {err.start + 1}; expected UTF-8 text: re-save the file as UTF-8",
                    ),
                )
            )
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            rows.append(
                (
                    where,
                    _RowError(
                        None,
                        f"malformed JSON ({err.msg} at column {err.colno}); expected one JSON object per line",
                    ),
                )
            )
            continue
        if not isinstance(row, dict):
            row = _RowError(
                None,
                f"expected a JSON object with prompt/chosen/rejected, got {type(row).__name__}",
            )
        rows.append((where, row))
    return rows


def _read_file(path: Path) -> list[tuple[str, dict | _RowError]]:
    if path.suffix == ".jsonl":
        return _read_jsonl(path)
    if path.suffix != ".parquet":
        _check_utf8(path, path.read_bytes())
    try:
        ds = datasets.load_dataset(FILE_TYPES[path.suffix], data_files=str(path), split="train")
    except Exception as err:  # datasets raises many types; the user needs the file and the cause
        raise PreferenceDataError(
            f"{path}: could not be read as {path.suffix[1:]} ({type(err).__name__}: {err}). "
            f"Expected a {path.suffix[1:]} file with prompt/chosen/rejected columns."
        ) from err
    # A data row's line in a CSV is its row number + 1 (the header) when no cell spans lines.
    return [(f"{path}: row {i + 1}", row) for i, row in enumerate(ds)]


def _resolve(source, split: str) -> tuple[str, list[tuple[str, dict | _RowError]]]:
    if isinstance(source, datasets.Dataset):
        return "in-memory dataset", [
            (f"in-memory dataset: row {i}", row) for i, row in enumerate(source)
        ]
    if isinstance(source, datasets.DatasetDict):
        return _resolve(source[split], split)
    path = _default_path(split) if source == "default" else Path(str(source)).expanduser()
    if path.is_dir():
        found = [path / f"{split}{ext}" for ext in FILE_TYPES if (path / f"{split}{ext}").is_file()]
        if not found:
            raise PreferenceDataError(
                f"{path}: no {split}.jsonl/.json/.csv/.parquet in this directory."
            )
        path = found[0]
    if path.suffix in FILE_TYPES:
        if not path.is_file():
            raise PreferenceDataError(
                f"{path}: file not found. Expected an existing .jsonl/.json/.csv/.parquet file."
            )
        return str(path), _read_file(path)
    if path.exists() or str(source).startswith((".", "/", "~")):
        raise PreferenceDataError(
            f"{source}: expected a .jsonl, .json, .csv or .parquet file, 'default' or a hub id."
        )
    try:  # a hub id, for users with hub access
        ds = datasets.load_dataset(str(source), split=split)
    except Exception as err:
        raise PreferenceDataError(
            f"{source}: not a local file and could not be loaded from the hub ({err})."
        ) from err
    return str(source), [(f"{source}: row {i}", row) for i, row in enumerate(ds)]


def _text(value, field: str) -> str:
    if value is None:
        raise _RowError(field, "missing; expected a non-empty string")
    if not isinstance(value, str):
        raise _RowError(
            field, f"expected a string, got {type(value).__name__} ({str(value)[:40]!r})"
        )
    if not value.strip():
        raise _RowError(field, "empty; expected a non-empty reply")
    return value


def _messages(value, field: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise _RowError(
            field,
            f"expected a non-empty list of {{'role', 'content'}} messages, got {type(value).__name__}",
        )
    out = []
    for k, msg in enumerate(value):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise _RowError(f"{field}[{k}]", "expected a message {'role': str, 'content': str}")
        out.append(
            {"role": msg["role"], "content": _text(msg.get("content"), f"{field}[{k}].content")}
        )
    return out


def _reply(value, field: str) -> tuple[list[dict], str]:
    """(messages before the final reply, final reply text) of a chosen/rejected value."""
    if not isinstance(value, list):
        return [], _text(value, field)
    msgs = _messages(value, field)
    if msgs[-1]["role"] != "assistant":
        raise _RowError(
            field, f"the last message must be the assistant's reply, got role {msgs[-1]['role']!r}"
        )
    return msgs[:-1], msgs[-1]["content"]


def normalise_row(row: dict) -> dict:
    """One row in any accepted format -> {"prompt": [messages], "chosen": str, "rejected": str, ...}."""
    for field in ("chosen", "rejected"):
        if field not in row or row[field] is None:
            raise _RowError(
                field,
                "missing; every row needs 'chosen' and 'rejected' (use column_map for other names)",
            )
    head_c, chosen = _reply(row["chosen"], "chosen")
    head_r, rejected = _reply(row["rejected"], "rejected")
    if head_c != head_r:
        raise _RowError(
            "rejected",
            "chosen and rejected conversations must share everything before the final reply",
        )
    if row.get("prompt") is None:
        if not head_c:
            raise _RowError(
                "prompt",
                "missing; give a prompt, or chosen/rejected as whole conversations (implicit prompt)",
            )
        prompt = head_c
    elif isinstance(row["prompt"], str):
        prompt = [{"role": "user", "content": _text(row["prompt"], "prompt")}] + head_c
    else:
        prompt = _messages(row["prompt"], "prompt") + head_c
    if chosen.strip() == rejected.strip():
        raise _RowError(
            "rejected", "identical to chosen; a preference pair needs two different replies"
        )
    extra = {k: v for k, v in row.items() if k not in FIELDS}
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


def _validate(
    name, located, skip_bad_rows, max_prompt_tokens=None, tokenizer=None
) -> datasets.Dataset:
    if max_prompt_tokens is not None and tokenizer is None:
        raise ValueError("max_prompt_tokens needs the tokenizer that will be used for training.")
    good, problems = [], []
    for where, row in located:
        try:
            if isinstance(
                row, _RowError
            ):  # a line that could not be read, or a missing mapped column
                raise row
            record = normalise_row(row)
            if max_prompt_tokens is not None:
                from orpo_lab.data import encode_prompt

                n = len(encode_prompt(record["prompt"], tokenizer))
                if n > max_prompt_tokens:
                    raise _RowError(
                        "prompt",
                        f"{n} tokens with the chat template, over the budget of {max_prompt_tokens}; shorten it or raise max_prompt_tokens",
                    )
            good.append(record)
        except _RowError as err:
            problems.append(f"{where}: {err}")
    if problems and not skip_bad_rows:
        shown = "\n  ".join(problems[:SHOWN_PROBLEMS])
        more = (
            f"\n  ... and {len(problems) - SHOWN_PROBLEMS} more"
            if len(problems) > SHOWN_PROBLEMS
            else ""
        )
        raise PreferenceDataError(
            f"{name}: {len(problems)} bad row(s). First problems:\n  {shown}{more}\n"
            "Fix these rows, or skip them: skip_bad_rows (--skip-bad-rows; in the app, the "
            "'skip bad rows' box) drops them and says how many."
        )
    if problems:
        warnings.warn(
            SkippedRowsWarning(
                f"{name}: skipped {len(problems)} bad row(s) of {len(located)}; first: {problems[0]}",
                len(problems),
                len(located),
                problems,
            ),
            stacklevel=3,
        )
    if not good:
        raise PreferenceDataError(
            f"{name}: no usable preference pairs. Expected rows with prompt, chosen and rejected."
        )
    return datasets.Dataset.from_list(good)


def load_preferences(
    source,
    split: str = "train",
    column_map: dict[str, str] | None = None,
    skip_bad_rows: bool = False,
    max_prompt_tokens: int | None = None,
    tokenizer=None,
) -> datasets.Dataset:
    """Load, validate and normalise preference pairs (see the module docstring for sources and formats).

    Returns a Dataset with prompt (list of messages), chosen (str), rejected (str) and any extra
    columns. Never writes to the source. Raises PreferenceDataError listing the first bad rows,
    unless skip_bad_rows=True (then a SkippedRowsWarning reports how many were dropped).
    """
    name, located = _resolve(source, split)
    if column_map:
        located = [(where, _rename(row, column_map)) for where, row in located]
    return _validate(name, located, skip_bad_rows, max_prompt_tokens, tokenizer)


def _rename(row, column_map: dict[str, str]):
    if isinstance(row, _RowError):
        return row
    missing = [old for old in column_map if old not in row]
    if missing:
        return _RowError(
            missing[0],
            f"missing (column_map maps it to {column_map[missing[0]]!r}); check the column names",
        )
    return {column_map.get(k, k): v for k, v in row.items()}


def votes_to_dataset(votes, skip_bad_rows: bool = False) -> datasets.Dataset:
    """Arena votes -> a preference dataset (normalised as by `load_preferences`).

    `votes` is a JSONL path or a list of dicts. One vote record (the app appends one JSON line each):
      {"prompt": str or [messages], "chosen": str, "rejected": str,   # the preferred and the other reply
       "left": str, "right": str, "winner": "left" | "right" | "tie", "time": float (unix seconds)}
    "chosen"/"rejected" win when present; otherwise they are taken from left/right by "winner".
    Ties (winner "tie" or "both", or "tie": true) are skipped. left/right/winner/tie are dropped;
    other fields (e.g. "time", "model") are kept.
    """
    if isinstance(votes, (str, Path)):
        name, located = str(votes), _read_jsonl(Path(votes))
    else:
        name, located = "votes", [(f"votes: row {i}", v) for i, v in enumerate(votes)]
    pairs = []
    for where, vote in located:
        if isinstance(vote, _RowError):
            pairs.append((where, vote))
            continue
        winner = vote.get("winner")
        if vote.get("tie") or winner in ("tie", "both"):
            continue
        if "chosen" not in vote and winner in ("left", "right"):
            loser = "right" if winner == "left" else "left"
            vote = {**vote, "chosen": vote.get(winner), "rejected": vote.get(loser)}
        pairs.append(
            (where, {k: v for k, v in vote.items() if k not in ("left", "right", "winner", "tie")})
        )
    return _validate(name, pairs, skip_bad_rows)
