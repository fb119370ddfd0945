"""A training run's folder: the one module that knows its files and their rules.

    RUNS/NAME/
      config.yaml     the run's TrainConfig
      status.json     {"status", "message", "step", "total_steps", "pid", "step_s", "updated"}
      metrics.jsonl   one JSON record per line: {"kind": "train" | "eval" | "event", "step", ...}
      slices.jsonl    ZeroGPU runs: one line per GPU slice, {"slice", "outcome", "steps", "on_disk",
                      "seconds", "wall_s", "load_s", "save_s", "message"} (orpo_lab.slices)
      train.log       stdout and stderr of the training process
      STOP            present while a stop is requested; holds the pid it is meant for
      checkpoints/    step-000050/ ... (written by `orpo_lab.checkpoint`), .tmp-* while saving
      reference_logps.pt  DPO runs: the reference's log-probs of the training pairs (orpo_lab.reference)
      trackers.json   the experiment trackers' runs (`orpo_lab.trackers`): a resume continues them
      tensorboard/    TensorBoard event files; wandb/: Weights & Biases run files (report_to)

The trainer, the run manager, the app and the tests all go through `RunDir`, so the protocol is
written down once. Every file that is rewritten is replaced atomically (temporary file + rename): a
reader never sees half of one, and a killed writer never leaves one broken.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

# Letters, digits, '.', '_', '-'; not starting with '.' or '-' (no hidden folders, no flags).
RUN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$")
ACTIVE = ("queued", "starting", "running")  # a run in one of these is not over
CHECKPOINT_PREFIX = "step-"


class RunError(ValueError):
    """A request about runs that cannot be done; the message says why."""


def validate_run_name(name: str) -> str:
    """The name itself, if it is a safe folder name; else RunError saying what is allowed."""
    name = (name or "").strip()
    if not RUN_NAME.match(name):
        raise RunError(
            f"Run name {name!r} is not allowed: use 1-100 letters, digits, '.', '_' or '-', "
            "not starting with '.' or '-'."
        )
    return name


def write_json_atomic(path: str | Path, obj) -> None:
    """Write JSON to a temporary sibling, then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def read_metrics(path: str | Path, offset: int = 0) -> tuple[list[dict], int]:
    """Records of a metrics.jsonl from byte `offset` on, and the offset to continue from.

    Only complete lines (ending in a newline) are consumed: a line the trainer is still writing is
    left for the next call. A complete line that is not a JSON object is skipped.
    """
    path = Path(path)
    if not path.is_file():
        return [], 0
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    return json_objects(data[:end].splitlines()), offset + end


def json_objects(lines) -> list[dict]:
    """The lines (str or bytes) that hold a JSON object, parsed; any other line is skipped."""
    objects = []
    for line in lines:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            objects.append(obj)
    return objects


def checkpoint_step(name: str) -> int:
    """The step of a checkpoint folder name (step-000050 -> 50)."""
    return int(name.removeprefix(CHECKPOINT_PREFIX))


@dataclass(frozen=True)
class RunDir:
    """The folder of one run. Cheap to create; every method reads or writes the disk."""

    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    @classmethod
    def of(cls, runs_dir: str | Path, name: str) -> RunDir:
        return cls(Path(runs_dir) / validate_run_name(name))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def log_path(self) -> Path:
        return self.path / "train.log"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def reference_path(self) -> Path:
        return self.path / "reference_logps.pt"

    @property
    def generations_path(self) -> Path:
        return self.path / "generations.json"  # `evaluate.evaluate_run`'s judged report

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    @property
    def wandb_dir(self) -> Path:
        return self.path / "wandb"  # wandb.init(dir=...) writes its own wandb/ folder inside

    def exists(self) -> bool:
        return self.config_path.is_file()

    # ---------------------------------------------------------------- status

    def read_status(self) -> dict:
        """status.json, or a stand-in when it is missing or unreadable."""
        try:
            status = json.loads((self.path / "status.json").read_text())
            if isinstance(status, dict) and "status" in status:
                return status
        except (OSError, ValueError):
            pass
        return {
            "status": "unknown",
            "message": "no readable status.json",
            "step": 0,
            "total_steps": 0,
        }

    def write_status(self, status: str | None = None, message: str | None = None, **fields) -> dict:
        """Update status.json atomically; fields not given keep their values."""
        record = self.read_status() if (self.path / "status.json").is_file() else {}
        if status is not None:
            record["status"] = status
        if message is not None:
            record["message"] = message
        record.update(fields, updated=time.time())
        record.setdefault("status", "unknown")
        write_json_atomic(self.path / "status.json", record)
        return record

    # ---------------------------------------------------------------- metrics

    def append_metrics(self, record: dict) -> None:
        """One record as one line, flushed at once (a reader may be following the file)."""
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def metrics(self) -> list[dict]:
        return read_metrics(self.metrics_path)[0]

    def truncate_metrics(self, after_step: int) -> None:
        """Drop records logged after `after_step` (resuming from that checkpoint would repeat them).

        The file is replaced (a new inode), so a reader following it by offset knows to start over.
        """
        if not self.metrics_path.is_file():
            return
        kept = [r for r in self.metrics() if _step_of(r) <= after_step]
        tmp = self.metrics_path.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.metrics_path)

    # ---------------------------------------------------------------- ZeroGPU slices

    @property
    def slices_path(self) -> Path:
        return self.path / "slices.jsonl"

    def append_slice(self, record: dict) -> None:
        """The outcome of one GPU slice, as one line (written by the app, after the slice)."""
        with self.slices_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def slices(self) -> list[dict]:
        return read_metrics(self.slices_path)[0]

    def saved_step(self) -> int:
        """The step of the latest complete checkpoint; 0 when there is none."""
        latest = self.latest_checkpoint()
        return checkpoint_step(latest.name) if latest else 0

    def stop_message(self, step: int) -> str:
        """A run stopped on request: the step it stands at (a checkpoint's), then what is on disk."""
        what = f"after step {step}" if step else "before the first step (nothing trained)"
        return f"stopped on request {what}; {self.describe_checkpoints()}"

    # ---------------------------------------------------------------- experiment trackers

    def read_trackers(self) -> dict:
        """trackers.json: {tracker: what resumes its run (ids, project)}; {} if missing or unreadable."""
        try:
            saved = json.loads((self.path / "trackers.json").read_text())
        except (OSError, ValueError):
            return {}
        return saved if isinstance(saved, dict) else {}

    def write_trackers(self, runs: dict) -> None:
        write_json_atomic(self.path / "trackers.json", runs)

    # ---------------------------------------------------------------- stop requests

    def request_stop(self, pid: int | None = None) -> None:
        """Ask the training process `pid` (any, when None) to save and stop."""
        (self.path / "STOP").write_text("" if pid is None else str(pid))

    def stop_requested(self) -> bool:
        return (self.path / "STOP").exists()

    def clear_stale_stop(self, pid: int, started: float) -> bool:
        """Remove a STOP meant for an earlier process; True if one was removed.

        Stale: it names another pid, or names none and is older than this process (`started`, a
        time.time() value). A STOP left by a killed run would otherwise end the next resume at once.
        """
        stop = self.path / "STOP"
        try:
            text, mtime = stop.read_text().strip(), stop.stat().st_mtime
        except OSError:
            return False
        if (text and text != str(pid)) or (not text and mtime < started):
            stop.unlink(missing_ok=True)
            return True
        return False

    def clear_stop(self) -> None:
        (self.path / "STOP").unlink(missing_ok=True)

    # ---------------------------------------------------------------- checkpoints and logs

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (a save in progress or killed is a .tmp- folder)."""
        if not self.checkpoints_dir.is_dir():
            return []
        found = [
            p
            for p in self.checkpoints_dir.glob(f"{CHECKPOINT_PREFIX}*")
            if p.is_dir() and (p / "trainer_state.json").is_file()
        ]
        return sorted(found, key=lambda p: checkpoint_step(p.name))

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def describe_checkpoints(self) -> str:
        """What is on disk, in words: for messages that must never contradict the folder."""
        latest = self.latest_checkpoint()
        if latest is None:
            return "no checkpoint on disk"
        return f"last checkpoint on disk: {latest.name} (step {checkpoint_step(latest.name)})"

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of train.log (where the traceback of a crash ends up)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        # A progress bar rewrites its line with carriage returns: keep only what was shown last.
        shown = [line.rsplit("\r", 1)[-1] for line in text.rstrip().splitlines()]
        return "\n".join([line for line in shown if line.strip()][-lines:])


def _step_of(record: dict) -> int:
    try:
        return int(record.get("step", 0))
    except (TypeError, ValueError):
        return 1 << 62  # unreadable: drop it
