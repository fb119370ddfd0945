"""Preference data -> checked pairs: the rule set of `orpo_lab.rows` applied to every row of a split.

Where rows come from (files, folders of splits, DatasetDicts, hub ids) is `orpo_lab.sources`; the
rules for one row (what is prompt, what is response, what is refused) are `orpo_lab.rows`'s; which
pairs are held out is `orpo_lab.splits`. `check_rows` applies the rules to every row in a batched
`datasets.map` (several processes for large data, the file never held in memory whole);
`good_rows` raises the first problems, or drops the bad rows with a warning; `load_preferences`
returns the pairs with their extra columns. Bad rows raise `PreferenceDataError` naming the file,
the row (the line for JSONL), the field, what was expected and what to do; with skip_bad_rows=True
they are dropped and a `SkippedRowsWarning` (attributes: skipped, total, problems) says how many.
"""

from __future__ import annotations

import json
import mmap
import os
import warnings

import datasets
import pyarrow.compute as pc

from orpo_lab.config_checks import parse_column_map
from orpo_lab.rows import _rename, normalise_row, pair_hash
from orpo_lab.sources import PreferenceDataError, RawRows, RowError, parse_jsonl_line, read_split

SHOWN_PROBLEMS = 5


class SkippedRowsWarning(UserWarning):
    """Bad rows were dropped (skip_bad_rows=True): `skipped` of `total`, `problems` lists them."""

    def __init__(self, message: str, skipped: int, total: int, problems: list[str]):
        super().__init__(message)
        self.skipped, self.total, self.problems = skipped, total, problems


# ---------------------------------------------------------------- whole datasets


def _json_text(value) -> str | None:
    return value if value is None or isinstance(value, str) else json.dumps(value, default=str)


def _to_dataset(name: str, good: list[tuple[str, dict]]) -> datasets.Dataset:
    """Rows -> Dataset; an extra column whose values change type between rows becomes JSON text.

    Every row gets every column (None where it had none): `from_list` reads the columns off the
    first row and would silently drop one that appears later.
    """
    columns = list(dict.fromkeys(k for _, r in good for k in r))
    rows = [{c: r.get(c) for c in columns} for _, r in good]
    try:
        return datasets.Dataset.from_list(rows)
    except Exception:  # noqa: BLE001 - pyarrow's ArrowInvalid / ArrowTypeError: find the columns
        pass
    for column in columns[3:]:  # prompt, chosen, rejected are normalised: only extras can clash
        values = [r[column] for r in rows]
        try:
            datasets.Dataset.from_dict({column: values})
            continue
        except Exception:  # noqa: BLE001 - any Arrow failure means: keep this column as text
            pass
        kinds = [
            (where, type(r[column]))
            for (where, _), r in zip(good, rows, strict=True)
            if r[column] is not None
        ]
        first = kinds[0][1]
        other = next(
            (f"{kind.__name__} at {where}" for where, kind in kinds if kind is not first),
            "values nested differently",
        )
        warnings.warn(
            f"{name}: column {column!r} holds values of different types ({first.__name__} at "
            f"{kinds[0][0]}, {other}); kept as JSON text. Drop it with column_map {column}= if "
            "training does not need it.",
            UserWarning,
            stacklevel=4,
        )
        for r in rows:
            r[column] = _json_text(r[column])
    return datasets.Dataset.from_list(rows)


# Columns the row check writes beside prompt/chosen/rejected (internal: never a user's column name).
WHERE, ERROR, KEY, EXTRA = "__where__", "__error__", "__key__", "__extra__"
_TEXT = datasets.Value("string")
CHECKED = datasets.Features(
    {
        "prompt": [{"role": _TEXT, "content": _TEXT}],
        "chosen": _TEXT,
        "rejected": _TEXT,
        **{column: _TEXT for column in (WHERE, ERROR, KEY, EXTRA)},
    }
)
PARALLEL_ROWS = 4000  # from this many rows on, the check runs in several processes


def _raw_rows(batch: dict, indices: list[int], kind: str, path: str, label: str, base: int):
    """(location, row, or RowError, or None for a blank line) of each raw row in a map batch."""
    if kind == "jsonl":
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            spans = zip(batch["__line__"], batch["__start__"], batch["__end__"], strict=True)
            return [(f"{path}: line {n}", parse_jsonl_line(mm[a:b])) for n, a, b in spans]
    if kind == "json":
        rows = zip(batch[WHERE], batch["__json__"], batch[ERROR], strict=True)
        return [
            (where, RowError(None, error) if error else json.loads(text))
            for where, text, error in rows
        ]
    columns = list(batch)
    return [
        (f"{label}{i + base}", {c: batch[c][k] for c in columns}) for k, i in enumerate(indices)
    ]


def _prompt_budget(record: dict, max_prompt_tokens: int | None, tokenizer) -> None:
    if max_prompt_tokens is None:
        return
    from orpo_lab.data import encode_prompt

    n = len(encode_prompt(record["prompt"], tokenizer))
    if n > max_prompt_tokens:
        raise RowError(
            "prompt",
            f"{n} tokens with the chat template, over the budget of {max_prompt_tokens}; shorten it or raise max_prompt_tokens",
        )


def _check_batch(batch, indices, kind, path, label, base, mapping, max_prompt_tokens, tokenizer):
    """One map batch through the rules: a checked row (or its problem) per raw row; blank lines go."""
    out = {column: [] for column in CHECKED}
    for where, row in _raw_rows(batch, indices, kind, path, label, base):
        if row is None:
            continue
        record, error = {"prompt": [], "chosen": "", "rejected": ""}, None
        try:
            if mapping and not isinstance(row, RowError):
                row = _rename(row, mapping)
            if isinstance(row, RowError):  # a line that could not be read, or a bad mapped column
                raise row
            record = normalise_row(row)
            _prompt_budget(record, max_prompt_tokens, tokenizer)
        except RowError as err:
            error = str(err)
        extra = {k: v for k, v in record.items() if k not in ("prompt", "chosen", "rejected")}
        out["prompt"].append(record["prompt"])
        out["chosen"].append(record["chosen"])
        out["rejected"].append(record["rejected"])
        out[WHERE].append(where)
        out[ERROR].append(error)
        out[KEY].append(None if error else pair_hash(record))
        out[EXTRA].append(json.dumps(extra, default=str) if extra else None)
    return out


def check_columns(raw: RawRows, column_map: dict[str, str] | str | None = None) -> None:
    """A source with columns (CSV, Parquet, a hub or in-memory dataset) that lacks chosen or
    rejected, once renamed by `column_map`, fails here in one message naming the missing column and
    the columns present: every row would fail the same way. (JSONL rows may differ: checked per row.)
    """
    if raw.kind != "arrow":
        return
    mapping, columns = parse_column_map(column_map), raw.rows.column_names
    if any(old not in columns for old in mapping):  # a mapped column that is not there: per row
        return
    renamed = [c for c in columns if c not in mapping and c not in mapping.values()]
    renamed += [new for new in mapping.values() if new]
    missing = [field for field in ("chosen", "rejected") if field not in renamed]
    if missing:
        names = " and ".join(repr(m) for m in missing)
        raise PreferenceDataError(
            f"{raw.name}: no {names} column; every pair needs 'chosen' and 'rejected'. The columns "
            f"here are {', '.join(columns) or 'none'}: rename one with column_map (e.g. "
            f"{'worse' if missing[-1] == 'rejected' else 'better'}={missing[-1]})."
        )


def check_rows(
    raw: RawRows,
    column_map: dict[str, str] | str | None = None,
    max_prompt_tokens: int | None = None,
    tokenizer=None,
    cache_file: str | None = None,
) -> datasets.Dataset:
    """Every row of `raw` through the rules, as a batched `map` (several processes for large data).

    Returns prompt/chosen/rejected plus __where__ (the row's location), __error__ (its problem, None
    when good), __key__ (`pair_hash`) and __extra__ (its other columns as JSON). Blank JSONL lines
    are left out. `cache_file`: where the map writes its Arrow file (None: in memory).
    """
    if max_prompt_tokens is not None and tokenizer is None:
        raise ValueError("max_prompt_tokens needs the tokenizer that will be used for training.")
    check_columns(raw, column_map)
    rows = raw.rows
    parallel = len(rows) >= PARALLEL_ROWS and (os.cpu_count() or 1) > 1
    return rows.map(
        _check_batch,
        batched=True,
        with_indices=True,
        fn_kwargs=dict(
            kind=raw.kind,
            path=raw.path,
            label=raw.label,
            base=raw.base,
            mapping=parse_column_map(column_map),
            max_prompt_tokens=max_prompt_tokens,
            tokenizer=tokenizer,
        ),
        remove_columns=rows.column_names,
        features=CHECKED,
        num_proc=min(os.cpu_count() or 1, 8) if parallel else None,
        cache_file_name=cache_file,
        load_from_cache_file=False,
        desc=f"Reading and checking {raw.name}",
    )


def good_rows(name: str, checked: datasets.Dataset, skip_bad_rows: bool) -> datasets.Dataset:
    """The rows without a problem; the first problems raised, or (skip_bad_rows) a warning counting them."""
    errors = checked.data.column(ERROR)
    if errors.null_count == len(checked):
        if not len(checked):
            raise PreferenceDataError(
                f"{name}: no usable preference pairs. Expected rows with prompt, chosen and rejected."
            )
        return checked
    bad = pc.indices_nonzero(pc.is_valid(errors)).to_pylist()
    first = checked.select(bad[:SHOWN_PROBLEMS])
    problems = [f"{w}: {e}" for w, e in zip(first[WHERE], first[ERROR], strict=True)]
    if not skip_bad_rows:
        shown = "\n  ".join(problems)
        more = len(bad) - SHOWN_PROBLEMS
        more = f"\n  ... and {more} more" if more > 0 else ""
        raise PreferenceDataError(
            f"{name}: {len(bad)} bad row(s). First problems:\n  {shown}{more}\n"
            "Fix these rows, or skip them: skip_bad_rows (--skip-bad-rows; in the app, the "
            "'skip bad rows' box) drops them and says how many."
        )
    warnings.warn(
        SkippedRowsWarning(
            f"{name}: skipped {len(bad)} bad row(s) of {len(checked)}; first: {problems[0]}",
            len(bad),
            len(checked),
            problems,
        ),
        stacklevel=3,
    )
    if len(bad) == len(checked):
        raise PreferenceDataError(
            f"{name}: no usable preference pairs. Expected rows with prompt, chosen and rejected."
        )
    keep = pc.indices_nonzero(pc.is_null(errors)).to_pylist()
    return checked.select(keep)


def with_extras(name: str, checked: datasets.Dataset) -> datasets.Dataset:
    """The checked rows as the user's Dataset: prompt, chosen, rejected and their other columns."""
    good = []
    for r in checked:
        extra = json.loads(r[EXTRA]) if r[EXTRA] else {}
        record = {"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"], **extra}
        good.append((r[WHERE], record))
    return _to_dataset(name, good)


def load_preferences(
    source,
    split: str = "train",
    column_map: dict[str, str] | str | None = None,
    skip_bad_rows: bool = False,
    max_prompt_tokens: int | None = None,
    tokenizer=None,
) -> datasets.Dataset:
    """Load, validate and normalise one split of preference pairs (the module docstring has the rules).

    `split` names a split of a folder, DatasetDict, hub id or "default"; a single file or Dataset
    has only "train". `column_map`: {"old": "new"} or "old=new,old2=new2". Returns a Dataset with
    prompt (list of messages), chosen (str), rejected (str) and any extra columns. Never writes to
    the source. Raises PreferenceDataError listing the first bad rows, unless skip_bad_rows=True
    (then a SkippedRowsWarning reports how many were dropped). A run reads its data through
    `orpo_lab.prepared` instead: the same checks, cached, without the extra columns.
    """
    raw = read_split(source, split)
    checked = check_rows(raw, column_map, max_prompt_tokens, tokenizer)
    return with_extras(raw.name, good_rows(raw.name, checked, skip_bad_rows))
