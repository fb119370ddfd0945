"""Training pairs and held-out pairs that never overlap: the test split, eval_dataset, or a seeded carve.

Held-out pairs are, in this order: `eval_dataset` (its test_split when it has splits, else all of
it); the test_split of `dataset` when it has one (UltraFeedback's test_prefs, HH-RLHF's test); else
`held_out_size` pairs drawn at random (seeded) out of the training pairs and removed from them. A
single file is never its own test split. Held-out pairs equal to a training pair (duplicates in the
source) are dropped, so held-out accuracy is never training accuracy.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Callable

import datasets

from orpo_lab.preferences import KEY, SkippedRowsWarning, load_preferences
from orpo_lab.rows import pair_hash
from orpo_lab.sources import SINGLE_SPLIT, PreferenceDataError, split_names


def held_out_count(n: int, size: float, cap: int | None = None) -> int:
    """Pairs to carve out of n: a fraction (size < 1) or a count, at most `cap` (None: no cap), and
    always leaving at least one training pair."""
    count = round(size * n) if size < 1 else int(size)
    count = min(count, cap) if cap else count
    return max(0, min(count if size == 0 else max(count, 1), n - 1))


def _name(source) -> str:
    return (
        "the in-memory dataset"
        if isinstance(source, (datasets.Dataset, datasets.DatasetDict))
        else str(source)
    )


def _load(source, split: str, skipped: list[int], loader: Callable, **kwargs) -> datasets.Dataset:
    """`loader` (load_preferences), counting the rows skip_bad_rows dropped (the warning still goes out)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = loader(source, split, **kwargs)
    for w in caught:
        if isinstance(w.message, SkippedRowsWarning):
            skipped.append(w.message.skipped)
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return ds


def load_splits(
    dataset,
    eval_dataset="",
    train_split: str = "train",
    test_split: str = "test",
    column_map: dict[str, str] | str | None = None,
    held_out_size: float = 0.1,
    max_held_out: int | None = None,
    seed: int = 0,
    skip_bad_rows: bool = False,
    loader: Callable = load_preferences,
) -> tuple[datasets.Dataset, datasets.Dataset | None, dict]:
    """(training pairs, held-out pairs or None, info); the module docstring says which are held out.

    `loader(source, split, column_map=, skip_bad_rows=)` reads one split (`load_preferences`; a
    run's preparation passes its own, which keeps the rows on disk, `orpo_lab.prepared`).
    `held_out_size`: a fraction (< 1) or a count of the training pairs to carve out, at most
    `max_held_out` (None: no cap). `info`, for the run log: {"train_pairs", "held_out_pairs",
    "held_out_from" ("eval_dataset", "test_split", "carved" or "none"), "held_out" (a sentence),
    "held_out_duplicates_dropped", "bad_rows_skipped"}.
    """
    splits, name = split_names(dataset), _name(dataset)
    if splits is None and train_split != SINGLE_SPLIT:
        raise PreferenceDataError(
            f"{name} is a single file or dataset, so train_split={train_split!r} names nothing: "
            f"leave train_split at {SINGLE_SPLIT!r}, or give a folder, DatasetDict or hub id."
        )
    skipped: list[int] = []
    load = dict(skipped=skipped, loader=loader, column_map=column_map, skip_bad_rows=skip_bad_rows)
    train = _load(dataset, train_split if splits else SINGLE_SPLIT, **load)
    held_out, source = None, "none"
    if eval_dataset:
        eval_splits = split_names(eval_dataset)
        split = test_split if eval_splits is not None else SINGLE_SPLIT
        held_out, source = _load(eval_dataset, split, **load), "eval_dataset"
        how = f"eval_dataset {_name(eval_dataset)}" + (f", split {split!r}" if eval_splits else "")
    elif splits and test_split in splits:
        held_out, source = _load(dataset, test_split, **load), "test_split"
        how = f"split {test_split!r} of {name}"
    elif count := held_out_count(len(train), held_out_size, max_held_out):
        picked = set(random.Random(seed).sample(range(len(train)), count))
        held_out = train.select(sorted(picked))
        train = train.select([i for i in range(len(train)) if i not in picked])
        source = "carved"
        how = (
            f"{count} of the {len(train) + count} pairs of {name} drawn at random (seed {seed}, "
            f"held_out_size={held_out_size:g}) and never trained on"
        )
    else:
        missing = f"no split {test_split!r}" if splits else "one split"
        how = f"none: {name} has {missing} and held_out_size={held_out_size:g}"
    dropped = 0
    if held_out is not None:
        seen = set(_keys(train))
        keep = [i for i, key in enumerate(_keys(held_out)) if key not in seen]
        dropped = len(held_out) - len(keep)
        held_out = held_out.select(keep) if keep else None
        if dropped:
            how += f"; {dropped} held-out pair(s) equal to a training pair dropped"
    info = {
        "train_pairs": len(train),
        "held_out_pairs": len(held_out) if held_out is not None else 0,
        "held_out_from": source if held_out is not None else "none",
        "held_out": how,
        "held_out_duplicates_dropped": dropped,
        "bad_rows_skipped": sum(skipped),
    }
    return train, held_out, info


def _keys(ds: datasets.Dataset) -> list[str]:
    return list(ds[KEY]) if KEY in ds.column_names else [pair_hash(r) for r in ds]


def load_config_splits(
    cfg, loader: Callable = load_preferences
) -> tuple[datasets.Dataset, datasets.Dataset | None, dict]:
    """`load_splits` from a TrainConfig: the pairs a run trains on and the ones it holds out."""
    return load_splits(
        cfg.dataset,
        cfg.eval_dataset,
        cfg.train_split,
        cfg.test_split,
        cfg.column_map,
        cfg.held_out_size,
        max_held_out=cfg.max_eval_pairs,
        seed=cfg.seed,
        skip_bad_rows=cfg.skip_bad_rows,
        loader=loader,
    )
