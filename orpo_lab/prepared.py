"""A run's data, prepared once: read -> check -> split -> tokenise, as `datasets` operations, cached.

Stage 1, `checked_splits(cfg)`: every row through the rules of `orpo_lab.preferences` (a batched
`map`, in several processes for large data, the rows memory-mapped Arrow, never a Python list of
the whole file), then the training / held-out split of `orpo_lab.splits`. Stage 2,
`prepare_data(cfg, tokenizer)`: both splits tokenised with `data.tokenize_pair`'s budgets
(`data.tokenize_pairs`, a batch at a time), in the same kind of `map`. The check before a run
(`launch.check_launch`, in the app and the CLI) is stage 1; the run reads stage 2, which starts from
stage 1's cache.

Each stage is cached (`orpo_lab.data_cache`: what keys an entry, and how an entry is built so that
a failed, stopped or killed preparation leaves nothing a later run reads); delete the cache whenever
you like, nothing needs it. Stage 1's key holds the source's identity, the data settings and the
code of the rules; stage 2's adds the tokenizer, its chat template and the length budgets.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow.compute as pc

from orpo_lab.data import set_chat_template, tokenize_pairs
from orpo_lab.data_cache import (
    building,
    cache_key,
    checked_key,
    load_entry,
    save_entry,
    tokenizer_id,
)
from orpo_lab.preferences import check_rows, good_rows
from orpo_lab.sources import read_split
from orpo_lab.splits import load_config_splits

PAIR_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
CUT_COLUMNS = ("prompt_cut", "chosen_cut", "rejected_cut")
_IDS = [datasets.Value("int32")]
TOKENISED = datasets.Features(
    {**{c: _IDS for c in PAIR_COLUMNS}, **{c: datasets.Value("int32") for c in CUT_COLUMNS}}
)
# progress(stage, done, total): called as a stage advances; it may raise to stop the preparation.
Progress = Callable[[str, int, int], None]


class PairTable(Sequence):
    """Tokenised pairs in a memory-mapped Arrow table, read as the dicts `collate.collate` takes."""

    def __init__(self, ds: datasets.Dataset):
        self.ds = ds.select_columns(list(PAIR_COLUMNS))

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index):
        if isinstance(index, slice):
            columns = self.ds[index]
            rows = zip(*(columns[c] for c in PAIR_COLUMNS), strict=True)
            return [dict(zip(PAIR_COLUMNS, row, strict=True)) for row in rows]
        index = int(index)
        if not -len(self.ds) <= index < len(self.ds):
            raise IndexError(f"pair {index} of {len(self.ds)}")
        return self.ds[index % len(self.ds)]


@dataclass
class Prepared:
    """A run's tokenised pairs: train, held_out (None when nothing is held out) and stats.

    stats: {"pairs", "truncated" (training pairs cut to fit), "truncation" (per split: pairs whose
    prompt / a response was cut, tokens cut, pairs dropped for an empty response), "data"
    (`splits.load_splits`'s info), "cache" ("hit" or "built")}.
    """

    train: PairTable
    held_out: PairTable | None
    stats: dict


@contextmanager
def _reported(progress: Progress | None, stage: str):
    """Forward the progress of the `datasets.map` calls inside the block to `progress(stage, ...)`.

    `map` has no progress callback; its bar is the one place that sees the workers' progress, so
    the bar class is wrapped for the duration (the terminal still shows the bar itself).
    A stop raised there in a parallel `map` leaves datasets' generator of the workers' results to
    the garbage collector, whose `finally` asks the killed workers for them; the TimeoutError
    Python then printed ("Exception ignored in: <generator object iflatmap_unordered>" and a
    traceback) read as a crash on a clean stop, so it is not printed.
    """
    import datasets.arrow_dataset as arrow_dataset

    bar = getattr(arrow_dataset, "hf_tqdm", None)
    if progress is None or bar is None:
        yield
        return

    class ReportingBar(bar):
        def __init__(self, *args, **kwargs):
            self.reported = kwargs.get("initial", 0)
            try:  # the stage said before the bar draws, so that its line is not cut into the bar
                progress(stage, self.reported, kwargs.get("total") or 0)
            finally:  # a bar to close even when the stage raised (a stop requested)
                super().__init__(*args, **kwargs)

        def update(self, n=1):
            self.reported += n
            try:
                progress(stage, self.reported, self.total or 0)
            except BaseException:
                raised.append(stage)
                raise
            return super().update(n)

    def unraisable(info) -> None:
        results = getattr(info.object, "__name__", None) == "iflatmap_unordered"
        timeout = type(info.exc_value).__name__ == "TimeoutError"  # multiprocess's own class
        if not (raised and results and timeout):
            hook(info)

    raised, hook = [], sys.unraisablehook
    arrow_dataset.hf_tqdm, sys.unraisablehook = ReportingBar, unraisable
    try:
        yield
    finally:
        arrow_dataset.hf_tqdm, sys.unraisablehook = bar, hook


# ---------------------------------------------------------------- stage 1: checked splits


def checked_splits(cfg, progress: Progress | None = None, key: str | None = None):
    """(training pairs, held-out pairs or None, info) of a run's config, checked and split (cached).

    The same pairs and messages as `splits.load_config_splits`; the rows keep prompt, chosen,
    rejected (and their location), not the source's other columns. `key`: `checked_key(cfg)`.
    """
    key = key or checked_key(cfg)
    entry = load_entry(key)
    if entry is not None:
        return entry
    with building(key) as folder:
        work = folder / "work"
        work.mkdir()

        def loader(source, split, column_map=None, skip_bad_rows=False):
            raw = read_split(source, split)
            cache_file = str(work / f"{uuid.uuid4().hex}.arrow")
            with _reported(progress, f"reading and checking the dataset {raw.name}"):
                checked = check_rows(raw, column_map, cache_file=cache_file)
            return good_rows(raw.name, checked, skip_bad_rows)

        train, held_out, info = load_config_splits(cfg, loader=loader)
        save_entry(folder, train, held_out, info)
    return load_entry(key)


def check_data(cfg, progress: Progress | None = None) -> dict:
    """Stage 1 alone, before a run exists: `load_splits`'s info (train_pairs, held_out, ...)."""
    return checked_splits(cfg, progress)[2]


# ---------------------------------------------------------------- stage 2: token ids


def _tokenize_batch(batch, tokenizer, max_length: int, max_prompt_length: int) -> dict:
    pairs = tokenize_pairs(batch, tokenizer, max_length, max_prompt_length)
    out = {column: [pair[column] for pair in pairs] for column in PAIR_COLUMNS}
    for part, column in zip(("prompt", "chosen", "rejected"), CUT_COLUMNS, strict=True):
        out[column] = [pair["cut"][part] for pair in pairs]
    return out


def _tokenised(ds, name, tokenizer, cfg, work: Path, progress: Progress | None):
    """(token ids of every pair of `ds`, its truncation report); pairs whose response has no
    token left before the end-of-turn are dropped and counted, never scored."""
    parallel = len(ds) >= 2000 and (os.cpu_count() or 1) > 1
    pairs = f"{name.replace('_', '-')} pairs"  # "held-out pairs"
    with _reported(progress, f"tokenising {pairs}"):
        ids = ds.map(
            _tokenize_batch,
            batched=True,
            fn_kwargs=dict(
                tokenizer=tokenizer,
                max_length=cfg.max_length,
                max_prompt_length=cfg.max_prompt_length,
            ),
            remove_columns=ds.column_names,
            features=TOKENISED,
            num_proc=min(os.cpu_count() or 1, 8) if parallel else None,
            cache_file_name=str(work / f"{name}.arrow"),
            load_from_cache_file=False,
            desc=f"Tokenising {pairs}",
        )
    table = ids.data
    shortest = pc.min_element_wise(
        pc.list_value_length(table.column("chosen_ids")),
        pc.list_value_length(table.column("rejected_ids")),
    )
    empty = pc.indices_nonzero(pc.less_equal(shortest, 1)).to_pylist()  # the end-of-turn alone
    cuts = {c: table.column(c).to_pylist() for c in CUT_COLUMNS}
    response_cut = [
        max(c, r) for c, r in zip(cuts["chosen_cut"], cuts["rejected_cut"], strict=True)
    ]
    report = {
        "pairs": len(ids) - len(empty),
        "prompt_cut_pairs": sum(n > 0 for n in cuts["prompt_cut"]),
        "prompt_tokens_cut": sum(cuts["prompt_cut"]),
        "response_cut_pairs": sum(n > 0 for n in response_cut),
        "response_tokens_cut": sum(cuts["chosen_cut"]) + sum(cuts["rejected_cut"]),
        "empty_response_dropped": len(empty),
    }
    report["truncated_pairs"] = sum(
        p > 0 or r > 0 for p, r in zip(cuts["prompt_cut"], response_cut, strict=True)
    )
    if empty:
        drop = set(empty)
        ids = ids.select([i for i in range(len(ids)) if i not in drop])
    return ids, report


def prepare_data(
    cfg, tokenizer, progress: Progress | None = None, checked: str | None = None
) -> Prepared:
    """A run's pairs, tokenised (cached): stage 1 (`checked_splits`), then token ids per split.

    Applies cfg.chat_template to the tokenizer (so checkpoints save it). `checked`: stage 1's
    key when the pre-run check has just computed it (`launch.check_launch`).
    """
    set_chat_template(tokenizer, cfg.chat_template)
    first = checked or checked_key(cfg)
    budgets = [cfg.max_length, cfg.max_prompt_length]
    key = cache_key({"checked": first, "tokenizer": tokenizer_id(tokenizer), "budgets": budgets})
    entry, cache = load_entry(key), "hit"
    if entry is None:
        cache = "built"
        train, held_out, info = checked_splits(cfg, progress, first)
        with building(key) as folder:
            work = folder / "work"
            work.mkdir()
            train, train_report = _tokenised(train, "train", tokenizer, cfg, work, progress)
            truncation = {"train": train_report}
            if held_out is not None:
                held_out, report = _tokenised(held_out, "held_out", tokenizer, cfg, work, progress)
                truncation["held_out"] = report
            save_entry(folder, train, held_out, {"data": info, "truncation": truncation})
        entry = load_entry(key)
    train, held_out, info = entry
    report = info["truncation"]["train"]
    stats = {
        "pairs": report["pairs"],
        "truncated": report["truncated_pairs"],
        "truncation": info["truncation"],
        "data": info["data"],
        "cache": cache,
    }
    return Prepared(PairTable(train), PairTable(held_out) if held_out else None, stats)
