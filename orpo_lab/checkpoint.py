"""Checkpoints: `Checkpointer` saves, restores, prunes and exports (merged) a run's checkpoints.

    checkpoints/step-000050/
      adapter_model.safetensors, adapter_config.json   (LoRA; full fine-tuning: the model files)
      tokenizer files
      optimizer.pt, scheduler.pt, rng.pt               the training state that resume needs
      trainer_state.json                               {"step", "config", "metrics"}, written last

A save goes to a temporary folder that is renamed when complete, so a kill mid-save never leaves
a broken step-N. Which checkpoints exist is `RunDir.checkpoints()`'s business; what a shared
adapter is made of (its files, its model card) is `orpo_lab.adapter`'s.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from orpo_lab.config import TrainConfig
from orpo_lab.rundir import CHECKPOINT_PREFIX, RunDir, write_json_atomic
from orpo_lab.step import TrainingError

TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for what was asked; the message says what to do."""


def read_state(checkpoint: str | Path) -> dict:
    """trainer_state.json of a checkpoint: {"step", "config", "metrics"}."""
    folder = Path(checkpoint)
    path = folder / "trainer_state.json"
    if not path.is_file():
        what = (
            "is not an ORPO Lab checkpoint (no trainer_state.json)"
            if folder.is_dir()
            else "does not exist"
        )
        there = [p.name for p in RunDir(folder.parent.parent).checkpoints()]  # the run's, if any
        raise CheckpointError(
            f"{checkpoint} {what}: expected a folder runs/NAME/checkpoints/step-NNNNNN"
            + (f"; {folder.parent} holds {', '.join(there)}." if there else ".")
        )
    return json.loads(path.read_text())


def adapter_checkpoint(checkpoint: str | Path) -> tuple[Path, dict]:
    """(the checkpoint's folder, its trainer state); CheckpointError unless it holds a LoRA adapter."""
    checkpoint = Path(checkpoint)
    state = read_state(checkpoint)
    if not (checkpoint / "adapter_config.json").is_file():
        raise CheckpointError(
            f"{checkpoint} holds a fully fine-tuned model, not a LoRA adapter: it is already a "
            "model folder that transformers loads (`from_pretrained`)."
        )
    return checkpoint, state


def checkpoint_base(checkpoint: str | Path, default: str) -> str:
    """The base model a checkpoint was trained on (its trainer_state.json), else `default`."""
    try:
        return read_state(checkpoint)["config"]["model"]
    except (CheckpointError, OSError, ValueError, KeyError, TypeError):
        return default


def common_base(checkpoints: Sequence[str | Path | None], default: str) -> str:
    """The one base model that every checkpoint (None = the base itself) answers on top of.

    ValueError naming the bases when they differ: adapters of different models cannot share a batch.
    """
    bases = {checkpoint_base(c, default) for c in checkpoints if c is not None}
    if len(bases) > 1:
        raise ValueError(
            f"These checkpoints come from different base models ({', '.join(sorted(bases))}): "
            "compare checkpoints of one base model at a time."
        )
    return bases.pop() if bases else default


class ResumeError(TrainingError):
    """A run that cannot start or resume as asked; nothing was changed."""


@dataclass
class Checkpointer:
    """Saves and restores one run's checkpoints: `resume_point` (which one a run continues from),
    `save` (atomically, keeping the newest `keep`), `restore` (optimizer, scheduler, RNG) and
    `export_merged`. It holds what a checkpoint is made of once `attach` has given it the model,
    tokenizer, optimizer and scheduler. Which checkpoints exist is `RunDir.checkpoints()`'s."""

    folder: RunDir
    config: TrainConfig
    model: object = None  # the unwrapped model: a PEFT model (its adapter is saved) or every weight
    tokenizer: object = None
    optimizer: object = None
    scheduler: object = None

    @property
    def keep(self) -> int:
        """How many checkpoints are kept, newest first (0: all)."""
        return self.config.save_total_limit

    def attach(self, model, tokenizer, optimizer, scheduler) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.optimizer, self.scheduler = optimizer, scheduler

    def resume_point(self, fsdp: bool = False) -> Path | None:
        """The checkpoint the run continues from (None: a new run); refuses what would lose work."""
        folder, resume = self.folder, self.config.resume
        latest = folder.latest_checkpoint()
        if latest and not resume:
            raise ResumeError(
                f"Run {folder.path} already has checkpoints ({latest.name}). Pass --resume to "
                "continue it, or choose another --run-name; nothing was changed."
            )
        if resume and latest is None:
            raise ResumeError(
                f"Nothing to resume: {folder.path} has no checkpoint (it stopped before its first "
                "save). Start it again without --resume (the same name is free to reuse), or pick "
                "another --run-name; nothing was changed."
            )
        if latest and fsdp:
            raise ResumeError(
                "Resuming under FSDP is not supported (the saved optimizer state is rank 0's "
                f"shard). Resume {folder.path} with one process or DDP, or start a new run; "
                "nothing was changed."
            )
        return latest

    def save(self, step: int, metrics: dict, state_dict: dict | None = None) -> Path:
        """Write checkpoints/step-NNNNNN atomically, then `prune`. Returns its path.

        `state_dict`: the gathered weights when the model is sharded (FSDP); else the model's own.
        """
        final = self.folder.checkpoints_dir / f"{CHECKPOINT_PREFIX}{step:06d}"
        tmp = final.with_name(f".tmp-{final.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.model.save_pretrained(tmp, state_dict=state_dict)
        self.tokenizer.save_pretrained(tmp)
        torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
        state = {"step": step, "config": self.config.to_dict(), "metrics": metrics}
        write_json_atomic(tmp / "trainer_state.json", state)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        self.prune()
        return final

    def prune(self) -> None:
        """Keep the newest `keep` checkpoints (0: all)."""
        if self.keep:
            for old in self.folder.checkpoints()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)

    def restore(self, checkpoint: Path) -> int:
        """Optimizer, scheduler and RNG from `checkpoint`; returns the step it was saved at."""
        load = torch.load
        self.optimizer.load_state_dict(load(checkpoint / "optimizer.pt", weights_only=True))
        self.scheduler.load_state_dict(load(checkpoint / "scheduler.pt", weights_only=True))
        torch.set_rng_state(load(checkpoint / "rng.pt", weights_only=True)["torch"])
        return int(read_state(checkpoint)["step"])

    @staticmethod
    def export_merged(checkpoint: str | Path, out_dir: str | Path) -> Path:
        """Merge a checkpoint's LoRA adapter into its base model: a standalone folder plain transformers loads."""
        from orpo_lab.model import attach_adapter, load_model

        checkpoint, state = adapter_checkpoint(checkpoint)
        out_dir = Path(out_dir)
        if out_dir.exists():
            raise CheckpointError(
                f"{out_dir} already exists: choose another --out (nothing was overwritten)."
            )
        config = state["config"]
        base, tokenizer = load_model(
            config["model"],
            device="cpu",
            precision="fp32",
            trust_remote_code=config.get("trust_remote_code", False),
            chat_template=config.get("chat_template", ""),  # the template the run trained with
        )
        merged = attach_adapter(base, checkpoint).merge_and_unload()
        tmp = out_dir.with_name(f".tmp-{out_dir.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out_dir)
        return out_dir
