"""Training runs as separate processes, with all their state on disk (`orpo_lab.rundir`).

`RunManager` starts `python -m orpo_lab.cli --config RUN/config.yaml` in its own process group,
queues runs so that one trains at a time per device, stops them (STOP file first, kill after a
grace period that grows with the run's measured step time), resumes them from their last
checkpoint, notices crashes, and reads the files back. Any process (a second browser tab, a
restarted app) sees the same runs, because nothing lives in memory that is not also on disk.
On ZeroGPU a run trains in GPU slices of the app's own process instead (`orpo_lab.slices`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from orpo_lab.adapter import export_adapter
from orpo_lab.config import TrainConfig
from orpo_lab.rundir import ACTIVE, RUN_NAME, RunDir, RunError, read_metrics, validate_run_name

TRAINER = [sys.executable, "-m", "orpo_lab.cli"]
# The folder that holds this package: a Space runs app.py from a checkout without installing it.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])
UNTRAINED_GRACE_S = 5.0  # how long a stop waits for a run that has not trained a step yet

__all__ = ["RunError", "RunManager", "trainer_env", "validate_run_name"]


def trainer_env() -> dict[str, str]:
    """The app's environment, unbuffered, with this package importable from any working directory."""
    path = [PACKAGE_ROOT, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(path)}


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def _device_key(device: str) -> str:
    if device == "auto":
        from orpo_lab.model import pick_device

        device = str(pick_device("auto"))
    return "cuda:0" if device == "cuda" else device


class RunManager:
    """Start, queue, stop, resume, list, read and delete training runs under `runs_dir`."""

    def __init__(
        self,
        runs_dir: str | Path = "runs",
        trainer: list[str] | None = None,
        grace_s: float = 20.0,
        slices=None,
    ):
        self.runs_dir = Path(runs_dir).resolve()
        self.trainer = list(trainer or TRAINER)  # + ["--config", path] (+ ["--resume"])
        self.grace_s = grace_s  # plus three measured step times: see `grace`
        self.lock = threading.RLock()
        self.procs: dict[str, subprocess.Popen] = {}
        self._metrics: dict[
            str, tuple[int, int, list[dict]]
        ] = {}  # name -> (inode, offset, records)
        self._watcher: threading.Thread | None = None
        self.slices = slices  # ZeroGPU: runs train in GPU slices of this app (orpo_lab.slices)

    # ------------------------------------------------------------------ reading

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

    def list_runs(self) -> list[dict]:
        """`summary` of every run, newest first; also advances the queue and notices crashes."""
        self.poll()
        return [self.summary(n) for n in self.names()]

    # ------------------------------------------------------------------ starting, queueing, resuming

    def start(self, config: dict | TrainConfig, run_name: str | None = None) -> str:
        """Write RUN/config.yaml and start the run, or queue it while its device is busy.

        Returns the run name. Raises RunError / ValueError with a readable message, and then nothing
        was written: an invalid config, a taken name, a model that does not load, or data with
        fewer pairs than one batch.
        """
        values = config.to_dict() if isinstance(config, TrainConfig) else dict(config)
        name = validate_run_name(
            run_name or values.get("run_name") or time.strftime("run-%Y%m%d-%H%M%S")
        )
        values.update(output_dir=str(self.runs_dir), run_name=name, resume=False)
        from orpo_lab.launch import check_launch  # torch and transformers: only when starting

        # Impossible settings, a missing model and unusable data: refused before anything is written.
        cfg = TrainConfig.from_dict(values)
        check_launch(cfg)
        run = self.folder(name)
        with self.lock:
            if run.path.exists():
                raise RunError(
                    f"A run named {name!r} already exists: pick another name or delete it."
                )
            run.path.mkdir(parents=True)
            cfg.to_yaml(run.config_path)
            run.write_status(
                "queued",
                "waiting for its device",
                step=0,
                total_steps=0,
                pid=None,
                created=time.time(),
            )
            self.poll()
        return name

    def resume(self, name: str) -> str:
        """Queue a stopped, killed or failed run to continue from its last checkpoint; returns
        that checkpoint's name."""
        run = self._existing(name)
        with self.lock:
            self.poll()
            state = run.read_status()["status"]
            if state in ACTIVE:
                raise RunError(f"Run {name!r} is {state}: there is nothing to resume yet.")
            latest = run.latest_checkpoint()
            if latest is None:
                raise RunError(
                    f"Run {name!r} has no checkpoint to resume from (it ended before its first "
                    "save): start a new run instead."
                )
            if state == "finished":
                raise RunError(f"Run {name!r} finished all its steps: there is nothing to resume.")
            run.clear_stop()
            run.write_status("queued", f"waiting to resume from {latest.name}", pid=None)
            self.poll()
        return latest.name

    def _busy_devices(self) -> set[str]:
        busy = set()
        for name in self.names():
            if self.folder(name).read_status()["status"] in ("starting", "running"):
                busy.add(_device_key(self.config(name).get("device", "auto")))
        return busy

    def _ours(self, name: str) -> bool:
        return name in self.procs or (self.slices is not None and self.slices.owns(name))

    def _spawn(self, name: str) -> None:
        run = self.folder(name)
        if self.slices is not None:  # ZeroGPU: no process of its own would get the GPU
            return self.slices.start(run)
        command = [*self.trainer, "--config", str(run.config_path)]
        if run.latest_checkpoint() is not None:
            command.append("--resume")
        run.write_status("starting", "process starting", slice_s=None)  # not in GPU slices
        with run.log_path.open("ab") as log:
            # stdout/stderr to a file, never an undrained PIPE; own session = own process group.
            proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=trainer_env(),
            )
        self.procs[name] = proc
        run.write_status("starting", "process started", pid=proc.pid)

    def poll(self) -> None:
        """Reap finished processes, mark crashed runs failed, start queued runs on free devices."""
        with self.lock:
            for name, proc in list(self.procs.items()):
                if proc.poll() is None:
                    continue
                del self.procs[name]
                if self.folder(name).read_status()["status"] in ACTIVE:
                    self._mark_failed(
                        name, f"the training process exited with code {proc.returncode}"
                    )
            queued = []
            for name in reversed(self.names()):  # oldest first
                status = self.folder(name).read_status()
                if status["status"] in ("starting", "running") and not self._ours(name):
                    # Started by another app process (or before a restart): trust a live pid only.
                    if not _pid_alive(status.get("pid")):
                        self._mark_failed(
                            name,
                            "the app restarted while its GPU slices ran"
                            if status.get("slice_s")
                            else "the training process is gone",
                        )
                elif status["status"] == "queued":
                    queued.append(name)
            busy = self._busy_devices()
            for name in queued:
                device = _device_key(self.config(name).get("device", "auto"))
                if device not in busy:
                    self._spawn(name)
                    busy.add(device)

    def _mark_failed(self, name: str, reason: str) -> None:
        run = self.folder(name)
        tail = "\n".join(
            line
            for line in run.log_tail(25).splitlines()
            if "%|" not in line  # no progress bars
        )
        message = f"{reason} without finishing; {run.describe_checkpoints()}.\n{tail}".strip()
        run.write_status("failed", message)

    def watch(self, interval_s: float = 2.0) -> None:
        """Poll in a daemon thread, so the queue advances and crashes show without a UI open."""
        if self._watcher is not None:
            return

        def loop():
            while True:
                time.sleep(interval_s)
                try:
                    self.poll()
                except Exception:  # a run folder deleted mid-poll: try again next tick
                    pass

        self._watcher = threading.Thread(target=loop, daemon=True, name="orpo-lab-runs")
        self._watcher.start()

    # ------------------------------------------------------------------ stopping and deleting

    def grace(self, name: str) -> float:
        """Seconds a stop may take: the base grace plus three measured steps (one in progress, its
        checkpoint save, slack), so a slow CPU step is never cut short."""
        step_s = self.folder(name).read_status().get("step_s") or 0.0
        return self.grace_s + 3 * float(step_s)

    def stop(self, name: str, grace_s: float | None = None) -> str:
        """Stop a run; returns "cancelled" (was queued), "stopped" (it saved and exited after the
        STOP request, or had trained nothing yet and was ended), "killed" (it did not exit within
        the grace period) or "not running".
        Its status message then says what is on disk."""
        run = self._existing(name)
        if self.slices is not None and self.slices.owns(name):  # ZeroGPU: its chain of slices
            return self.slices.stop(run, self.grace(name) if grace_s is None else grace_s)
        with self.lock:
            status = run.read_status()
            if status["status"] == "queued":
                run.write_status(
                    "stopped", f"cancelled before it started; {run.describe_checkpoints()}"
                )
                return "cancelled"
            if status["status"] not in ("starting", "running"):
                return "not running"
            proc = self.procs.get(name)
            pid = proc.pid if proc else status.get("pid")
        grace = self.grace(name) if grace_s is None else grace_s
        if self._untrained(run):  # loading: a model, data, a compile may not see STOP for minutes
            grace = min(grace, UNTRAINED_GRACE_S)
        run.request_stop(pid)
        if not self._wait_exit(pid, proc, grace):
            self._kill(pid, proc)
            # Nothing trained since the last checkpoint: ending it lost nothing, as a clean stop.
            how = "stopped" if self._untrained(run) else "killed"
            with self.lock:
                self.procs.pop(name, None)
                run.clear_stop()
                run.write_status(
                    "stopped",
                    (
                        "stopped on request before the first step (nothing trained)"
                        if how == "stopped"
                        else f"killed: it did not stop within {grace:.0f} s"
                    )
                    + f"; {run.describe_checkpoints()}",
                )
            self.poll()
            return how
        with self.lock:
            self.procs.pop(name, None)
            if run.read_status()["status"] in ACTIVE:
                self._mark_failed(name, "the training process exited after STOP")
        self.poll()
        return "stopped"

    def _untrained(self, run: RunDir) -> bool:
        """No step trained since the last checkpoint (the run is still loading): nothing to save."""
        steps = [r["step"] for r in self.metrics(run.name) if r.get("kind") == "train"]
        done = max(run.read_status().get("step") or 0, steps[-1] if steps else 0)
        return done <= run.saved_step()

    @staticmethod
    def _wait_exit(pid, proc: subprocess.Popen | None, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (proc.poll() is not None) if proc else not _pid_alive(pid):
                return True
            time.sleep(0.1)
        return False

    @classmethod
    def _kill(cls, pid, proc: subprocess.Popen | None) -> None:
        # The whole process group: the trainer may have started workers of its own.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(int(pid), sig)
            except (OSError, TypeError, ValueError):
                return
            if cls._wait_exit(pid, proc, 3):
                return

    def delete(self, name: str) -> None:
        """Remove a run folder; refused while the run is queued or running."""
        run = self._existing(name)
        with self.lock:
            self.poll()
            state = run.read_status()["status"]
            if state in ACTIVE:
                raise RunError(f"Run {name!r} is still {state}: stop it first.")
            shutil.rmtree(run.path)
            self._metrics.pop(name, None)

    # ------------------------------------------------------------------ artefacts

    def zip_checkpoint(self, name: str, checkpoint: str) -> Path:
        """The PEFT adapter of one checkpoint as a zip (with a model card), under RUN/downloads/."""
        source = self.checkpoint_path(name, checkpoint)
        return export_adapter(source, self.run_dir(name) / "downloads" / f"{name}-{checkpoint}.zip")

    def export(self, name: str, checkpoint: str, out_dir: str | Path | None = None) -> Path:
        """Merge a checkpoint's adapter into a standalone model (`orpo-lab --export`), in a process."""
        source = self.checkpoint_path(name, checkpoint)
        out = Path(out_dir) if out_dir else self.run_dir(name) / "merged" / checkpoint
        result = subprocess.run(
            [*self.trainer, "--export", str(source), "--out", str(out)],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=1800,
            env=trainer_env(),
        )
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise RunError(f"Export of {name}/{checkpoint} failed:\n{tail}")
        return out
