"""A run's data, prepared once: read -> check -> split -> tokenise, as `datasets` operations, cached.

Stage 1, `checked_splits(cfg)`: every row through the rules of `orpo_lab.preferences` (a batched
`map`, in several processes for large data, the rows memory-mapped Arrow, never a Python list of
the whole file), then the training / held-out split of `orpo_lab.splits`. Stage 2,
`prepare_data(cfg, tokenizer)`: both splits tokenised with `data.tokenize_pair`'s budgets
(`data.tokenize_pairs`, a batch at a time), in the same kind of `map`. The check before a run
(`launch.check_launch`, in the app and the CLI) is stage 1; the run reads stage 2, which starts from
stage 1's cache.

Each stage is cached under `cache_dir()/data/<key>` (`$ORPO_LAB_CACHE/data`; delete it whenever
you like, nothing needs it). A key holds everything that decides the result: the source (path,
size and modification time of each file read; an in-memory Dataset's fingerprint; a hub id and
its revision), column map, splits, held-out carve and seed, skip_bad_rows, the code of the rules;
stage 2 adds the tokenizer, its chat template and the length budgets. An entry is built in a
folder of its own and renamed into place only when complete, so a preparation that fails (a bad
row), is stopped or is killed (kill -9) leaves nothing that a later run reads; its leftovers are
removed by the next preparation.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow.compute as pc

from orpo_lab.data import set_chat_template, tokenize_pairs
from orpo_lab.preferences import check_rows, good_rows
from orpo_lab.sources import FILE_TYPES, read_split
from orpo_lab.splits import load_config_splits

PAIR_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")
CUT_COLUMNS = ("prompt_cut", "chosen_cut", "rejected_cut")
_IDS = [datasets.Value("int32")]
TOKENISED = datasets.Features(
    {**{c: _IDS for c in PAIR_COLUMNS}, **{c: datasets.Value("int32") for c in CUT_COLUMNS}}
)
# The modules whose code decides what a row becomes: a change to any of them is a new cache key.
RULE_MODULES = ("rows", "preferences", "sources", "splits", "data", "prepared")
INFO = "info.json"

# progress(stage, done, total): called as a stage advances; it may raise to stop the preparation.
Progress = Callable[[str, int, int], None]


def data_cache_dir() -> Path:
    from orpo_lab.model import cache_dir

    return cache_dir() / "data"


class PairTable(Sequence):
    """Tokenised pairs in a memory-mapped Arrow table, read as the dicts `data.collate` takes."""

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


# ---------------------------------------------------------------- cache keys


def _code_version() -> str:
    digest = hashlib.sha256()
    for name in RULE_MODULES:
        digest.update((Path(__file__).parent / f"{name}.py").read_bytes())
    return digest.hexdigest()[:16]


def _files_id(path: Path) -> list:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def source_id(source) -> object:
    """What identifies a source's content: files' path/size/mtime, a Dataset's fingerprint, a hub
    id with its revision (when the hub answers; else the id alone)."""
    if isinstance(source, datasets.Dataset):
        return ["dataset", source._fingerprint]
    if isinstance(source, datasets.DatasetDict):
        return ["datasetdict", {name: ds._fingerprint for name, ds in sorted(source.items())}]
    if source == "default":
        from orpo_lab.default_dataset import DATA_DIR

        source = DATA_DIR
    path = Path(str(source)).expanduser()
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.suffix in FILE_TYPES and f.is_file())
        return ["folder", [_files_id(f) for f in files]]
    if path.is_file():
        return ["file", _files_id(path)]
    return ["hub", str(source), _hub_revision(str(source))]


def _hub_revision(name: str) -> str | None:
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(name).sha
    except Exception:  # offline, private or not on the hub: the id alone keys the cache
        return None


def _key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def checked_key(cfg) -> str:
    parts = {
        "source": source_id(cfg.dataset),
        "eval": source_id(cfg.eval_dataset) if cfg.eval_dataset else None,
        "column_map": cfg.column_map,
        "splits": [cfg.train_split, cfg.test_split],
        "held_out": [cfg.held_out_size, cfg.max_eval_pairs, cfg.seed],
        "skip_bad_rows": cfg.skip_bad_rows,
        "code": _code_version(),
    }
    return _key(parts)


def tokenizer_id(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    special = [tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id]
    template = getattr(tokenizer, "chat_template", None)
    return _key({"tokenizer": text, "special": special, "template": template})


# ---------------------------------------------------------------- the cache entries


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _remove_leftovers(root: Path) -> None:
    """Folders of preparations whose process is gone (failed, stopped or killed): never read."""
    for partial in root.glob("*.partial-*"):
        try:
            pid = int(partial.name.rsplit(".partial-", 1)[1].split("-")[0])
        except ValueError:
            continue
        if not _alive(pid):
            shutil.rmtree(partial, ignore_errors=True)


@contextmanager
def _building(key: str):
    """A folder to build entry `key` in; renamed to the entry when the block ends without error."""
    root = data_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    partial = root / f"{key}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    partial.mkdir()
    try:
        yield partial
        shutil.rmtree(partial / "work", ignore_errors=True)
        try:
            partial.rename(root / key)
        except OSError:  # another process completed the same entry first: use theirs
            shutil.rmtree(partial, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _load_entry(key: str) -> tuple[datasets.Dataset, datasets.Dataset | None, dict] | None:
    folder = data_cache_dir() / key
    if not (folder / INFO).is_file():
        return None
    info = json.loads((folder / INFO).read_text())
    train = datasets.load_from_disk(str(folder / "train"))
    held = (folder / "held_out").is_dir() and datasets.load_from_disk(str(folder / "held_out"))
    return train, held or None, info


def _save_entry(folder: Path, train, held_out, info: dict) -> None:
    train.save_to_disk(str(folder / "train"))
    if held_out is not None:
        held_out.save_to_disk(str(folder / "held_out"))
    (folder / INFO).write_text(json.dumps(info, indent=1))


@contextmanager
def _reported(progress: Progress | None, stage: str):
    """Forward the progress of the `datasets.map` calls inside the block to `progress(stage, ...)`.

    `map` has no progress callback; its bar is the one place that sees the workers' progress, so
    the bar class is wrapped for the duration (the terminal still shows the bar itself).
    """
    import datasets.arrow_dataset as arrow_dataset

    bar = getattr(arrow_dataset, "hf_tqdm", None)
    if progress is None or bar is None:
        yield
        return

    class ReportingBar(bar):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.reported = kwargs.get("initial", 0)
            progress(stage, self.reported, kwargs.get("total") or 0)

        def update(self, n=1):
            self.reported += n
            progress(stage, self.reported, self.total or 0)
            return super().update(n)

    arrow_dataset.hf_tqdm = ReportingBar
    try:
        yield
    finally:
        arrow_dataset.hf_tqdm = bar


# ---------------------------------------------------------------- stage 1: checked splits


def checked_splits(cfg, progress: Progress | None = None, key: str | None = None):
    """(training pairs, held-out pairs or None, info) of a run's config, checked and split (cached).

    The same pairs and messages as `splits.load_config_splits`; the rows keep prompt, chosen,
    rejected (and their location), not the source's other columns. `key`: `checked_key(cfg)`.
    """
    key = key or checked_key(cfg)
    entry = _load_entry(key)
    if entry is not None:
        return entry
    with _building(key) as folder:
        work = folder / "work"
        work.mkdir()

        def loader(source, split, column_map=None, skip_bad_rows=False):
            raw = read_split(source, split)
            cache_file = str(work / f"{uuid.uuid4().hex}.arrow")
            with _reported(progress, f"reading and checking {raw.name}"):
                checked = check_rows(raw, column_map, cache_file=cache_file)
            return good_rows(raw.name, checked, skip_bad_rows)

        train, held_out, info = load_config_splits(cfg, loader=loader)
        _save_entry(folder, train, held_out, info)
    return _load_entry(key)


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
    with _reported(progress, f"tokenising {name} pairs"):
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
            desc=f"Tokenising {name} pairs",
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
    key = _key({"checked": first, "tokenizer": tokenizer_id(tokenizer), "budgets": budgets})
    entry, cache = _load_entry(key), "hit"
    if entry is None:
        cache = "built"
        train, held_out, info = checked_splits(cfg, progress, first)
        with _building(key) as folder:
            work = folder / "work"
            work.mkdir()
            train, train_report = _tokenised(train, "train", tokenizer, cfg, work, progress)
            truncation = {"train": train_report}
            if held_out is not None:
                held_out, report = _tokenised(held_out, "held_out", tokenizer, cfg, work, progress)
                truncation["held_out"] = report
            _save_entry(folder, train, held_out, {"data": info, "truncation": truncation})
        entry = _load_entry(key)
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
