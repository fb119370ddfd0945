"""The runs under one folder, read back from their files (`orpo_lab.rundir`): names, configs,
statuses, metrics (read incrementally), checkpoints, the runs panel's summaries.

`RunLibrary` reads; `runs.RunManager` is a library that also starts, queues and stops runs.
Any process (a second browser tab, a restarted app) reads the same runs: nothing lives in memory
that is not also on disk, except where to continue reading each metrics file.
"""

from __future__ import annotations

import threading
from pathlib import Path

from orpo_lab.adapter import export_adapter
from orpo_lab.rundir import RUN_NAME, RunDir, RunError, read_metrics


class RunLibrary:
    """Read the runs under `runs_dir`."""

    def __init__(self, runs_dir: str | Path = "runs"):
        self.runs_dir = Path(runs_dir).resolve()
        self.lock = threading.RLock()
        # name -> (inode, offset, records) of its metrics.jsonl
        self._metrics: dict[str, tuple[int, int, list[dict]]] = {}

    def folder(self, name: str) -> RunDir:
        return RunDir.of(self.runs_dir, name)

    def run_dir(self, name: str) -> Path:
        return self.folder(name).path

    def _existing(self, name: str) -> RunDir:
        run = self.folder(name)
        if not run.exists():
            raise RunError(f"There is no run named {name!r} in {self.runs_dir}.")
        return run

    def names(self) -> list[str]:
        """Run folders, newest first."""
        if not self.runs_dir.is_dir():
            return []
        runs = [p for p in self.runs_dir.iterdir() if RUN_NAME.match(p.name) and RunDir(p).exists()]
        runs.sort(key=lambda p: (p / "config.yaml").stat().st_mtime, reverse=True)
        return [p.name for p in runs]

    def config(self, name: str) -> dict:
        import yaml

        return yaml.safe_load(self._existing(name).config_path.read_text()) or {}

    def status(self, name: str) -> dict:
        return self._existing(name).read_status()

    def metrics(self, name: str) -> list[dict]:
        """Every record of the run's metrics.jsonl, read incrementally (only new bytes each call)."""
        path = self._existing(name).metrics_path
        with self.lock:
            inode, offset, records = self._metrics.get(name, (0, 0, []))
            stat = path.stat() if path.is_file() else None
            now = stat.st_ino if stat else 0
            if now != inode or (stat and stat.st_size < offset):  # replaced (a resume): start over
                offset, records = 0, []
            new, offset = read_metrics(path, offset)
            records = records + new
            self._metrics[name] = (now, offset, records)
            return records

    def checkpoints(self, name: str) -> list[str]:
        """Checkpoint folder names, oldest first."""
        return [p.name for p in self._existing(name).checkpoints()]

    def checkpoint_path(self, name: str, checkpoint: str) -> Path:
        """The folder of one checkpoint; only names that `checkpoints` lists are accepted."""
        if checkpoint not in self.checkpoints(name):
            raise RunError(f"Run {name!r} has no checkpoint {checkpoint!r}.")
        return self.run_dir(name) / "checkpoints" / checkpoint

    def summary(self, name: str) -> dict:
        """What the runs panel shows: config, status, last train/eval metrics, checkpoints, times."""
        records = self.metrics(name)
        train = [r for r in records if r.get("kind") == "train"]
        evals = [r for r in records if r.get("kind") == "eval"]
        return {
            "name": name,
            "config": self.config(name),
            "status": self.status(name),
            "train": train[-1] if train else {},
            "eval": evals[-1] if evals else {},
            "checkpoints": self.checkpoints(name),
            "train_s": sum(r.get("step_s") or 0.0 for r in train),
        }

    def signature(self) -> str:
        """A cheap fingerprint of every run's files: it changes whenever anything shown would."""
        parts = []
        for name in self.names():
            run = self.folder(name)
            for path in (run.path / "status.json", run.metrics_path, run.checkpoints_dir):
                try:
                    stat = path.stat()
                    parts.append(f"{name}:{stat.st_mtime_ns}:{stat.st_size}")
                except OSError:
                    parts.append(f"{name}:-")
        return "|".join(parts)

    def zip_checkpoint(self, name: str, checkpoint: str) -> Path:
        """The PEFT adapter of one checkpoint as a zip (with a model card), under RUN/downloads/."""
        source = self.checkpoint_path(name, checkpoint)
        return export_adapter(source, self.run_dir(name) / "downloads" / f"{name}-{checkpoint}.zip")
