"""The check before a run starts, shared by the CLI and the app's process manager (`runs.py`).

`check_launch(cfg)` refuses, before a run folder exists or a model loads, what would fail later:
checkpoints to start from that are not there, data with fewer usable pairs than one batch, and
a model whose tokenizer does not load. The rows it reads and checks are cached
(`prepared.checked_splits`); the run starts from that entry (`LaunchCheck.checked`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from orpo_lab.config import TrainConfig
from orpo_lab.model_names import DEFAULT_MODEL, checked_name


@dataclass(frozen=True)
class LaunchCheck:
    """What the check found: the checked rows' cache key and `splits.load_splits`'s info."""

    checked: str  # `prepared.checked_key(cfg)`: the run's data preparation starts from it
    info: dict

    @property
    def train_pairs(self) -> int:
        return self.info["train_pairs"]


def batch_shortfall(cfg: TrainConfig, pairs: int, processes: int = 1) -> str | None:
    """What to change when `pairs` usable training pairs do not fill one batch, else None."""
    if pairs >= cfg.batch_size * processes:
        return None
    batch = f"{cfg.batch_size}" + (f" pairs x {processes} processes" if processes > 1 else "")
    return (
        f"The dataset {cfg.dataset} has {pairs} usable training pair(s), fewer than one batch of "
        f"{batch}: add pairs (e.g. vote on more chat answers) or lower batch_size."
    )


def check_model(cfg: TrainConfig, say: Callable[[str], None] = lambda text: None) -> None:
    """The model is there: its tokenizer loads (its weights are not loaded). `say` is told when
    the tokenizer comes from the hub, which retries for about a minute where it is unreachable."""
    from orpo_lab.model import ModelLoadError, load_tokenizer

    if cfg.model != DEFAULT_MODEL and not Path(cfg.model).expanduser().is_dir():  # a hub id
        say(f"looking up the model {cfg.model} on the Hugging Face hub")
    try:
        load_tokenizer(cfg.model, cfg.trust_remote_code, cfg.chat_template)
    except OSError as err:
        raise ModelLoadError(f"Could not load the model {cfg.model!r}: {err}") from err


def check_launch(cfg: TrainConfig, say: Callable[[str], None] = lambda text: None) -> LaunchCheck:
    """Refuse what a run could not start with; raises ValueError (a `ModelLoadError`,
    `PreferenceDataError`, `CheckpointError` or `RunError`) saying what to change. `say` is told
    what it reads and of a step that can take long (a model looked up on the hub).

    A resumed run starts from its own checkpoint: init_checkpoint and ref_checkpoint are then
    not checked again.
    """
    if cfg.model != DEFAULT_MODEL:  # a mistyped name or a missing folder: at once, before the data
        checked_name(cfg.model)  # (and before torch and datasets load: seconds)
    say(f"reading and checking the dataset {cfg.dataset}")
    from orpo_lab.prepared import checked_key, checked_splits
    from orpo_lab.rundir import RunError

    if not cfg.resume and (cfg.init_checkpoint or cfg.ref_checkpoint):
        from orpo_lab.reference import check_start  # (imports torch: only when there is one)

        check_start(cfg)  # init_checkpoint, ref_checkpoint: there, and of this base model
    key = checked_key(cfg)
    result = LaunchCheck(key, checked_splits(cfg, key=key)[2])
    shortfall = batch_shortfall(cfg, result.train_pairs)
    if shortfall:
        raise RunError(shortfall)
    check_model(cfg, say)  # after the data: a bad dataset is reported without looking at the model
    return result
