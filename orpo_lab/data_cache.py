"""The cache of prepared data: what keys an entry, and how an entry is built, found and read.

An entry lives in `data_cache_dir()/<key>` (`$ORPO_LAB_CACHE/data`). A key holds everything that
decides the result (`checked_key`, `tokenizer_id`): the source's identity, the data settings and
the code of the modules that turn a row into a pair (RULE_MODULES). An entry is built in a folder
of its own (`building`) and renamed into place only when complete, so a failed, stopped or killed
preparation leaves nothing a later run reads; the next preparation removes its leftovers.
`orpo_lab.prepared` decides what goes in.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

import datasets

from orpo_lab.model_names import cache_dir
from orpo_lab.sources import FILE_TYPES

# The modules whose code decides what a row becomes: a change to any of them is a new cache key.
RULE_MODULES = ("rows", "preferences", "sources", "splits", "data", "prepared", "data_cache")
INFO = "info.json"


def data_cache_dir() -> Path:
    return cache_dir() / "data"


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


def cache_key(parts: dict) -> str:
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
    return cache_key(parts)


def tokenizer_id(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    special = [tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id]
    template = getattr(tokenizer, "chat_template", None)
    return cache_key({"tokenizer": text, "special": special, "template": template})


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
def building(key: str):
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


def load_entry(key: str) -> tuple[datasets.Dataset, datasets.Dataset | None, dict] | None:
    folder = data_cache_dir() / key
    if not (folder / INFO).is_file():
        return None
    info = json.loads((folder / INFO).read_text())
    train = datasets.load_from_disk(str(folder / "train"))
    held = (folder / "held_out").is_dir() and datasets.load_from_disk(str(folder / "held_out"))
    return train, held or None, info


def save_entry(folder: Path, train, held_out, info: dict) -> None:
    train.save_to_disk(str(folder / "train"))
    if held_out is not None:
        held_out.save_to_disk(str(folder / "held_out"))
    (folder / INFO).write_text(json.dumps(info, indent=1))
