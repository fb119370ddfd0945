"""Training runs as separate processes, with all their state on disk.

A run is a folder RUNS_DIR/NAME holding config.yaml, status.json, metrics.jsonl, train.log,
checkpoints/ and (while stopping) STOP. `RunManager` starts `python -m orpo_lab.train --config
RUN_DIR/config.yaml` in its own process group, queues runs so one trains at a time per device,
stops them (STOP file first, kill after a grace period), notices crashes, and reads the files back.
Any process (a second browser tab, a restarted app) sees the same runs, because nothing lives in
memory that is not also on disk.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from orpo_lab.config import TrainConfig

RUN_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,99}$")
ACTIVE = ("queued", "starting", "running")  # statuses of a run that is not over
TRAINER = [sys.executable, "-m", "orpo_lab.train"]
# The folder that holds this package: a Space runs app.py from a checkout without installing it.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


def trainer_env() -> dict[str, str]:
    """The app's environment, unbuffered, with this package importable from any working directory."""
    path = [PACKAGE_ROOT, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(path)}


class RunError(ValueError):
    """A request about runs that cannot be done; the message says why."""


def validate_run_name(name: str) -> str:
    """The name itself, if it is a safe folder name: letters, digits, '.', '_', '-'; no leading dot."""
    name = (name or "").strip()
    if not RUN_NAME.match(name):
        raise RunError(
            f"Run name {name!r} is not allowed: use 1-100 letters, digits, '.', '_' or '-', "
            "not starting with '.' or '-'."
        )
    return name


def read_metrics(path: str | Path, offset: int = 0) -> tuple[list[dict], int]:
    """Records of metrics.jsonl from byte `offset` on, and the offset to continue from.

    Only complete lines (ending in a newline) are consumed: a line the trainer is still writing is
    left for the next call. A complete line that is not JSON is skipped.
    """
    path = Path(path)
    if not path.is_file():
        return [], 0
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    records = []
    for line in data[:end].splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records, offset + end


def read_status(run_dir: str | Path) -> dict:
    """status.json, or a stand-in when it is missing or unreadable."""
    try:
        status = json.loads((Path(run_dir) / "status.json").read_text())
        if isinstance(status, dict) and "status" in status:
            return status
    except (OSError, ValueError):
        pass
    return {"status": "unknown", "message": "no readable status.json", "step": 0, "total_steps": 0}


def write_status(run_dir: str | Path, status: str, message: str = "", **fields) -> dict:
    """Write status.json atomically (temp file + rename), keeping fields not given."""
    path = Path(run_dir) / "status.json"
    record = {k: v for k, v in read_status(run_dir).items() if k not in ("status", "message")}
    record.update(fields, status=status, message=message, updated=time.time())
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)
    return record


def log_tail(run_dir: str | Path, lines: int = 20) -> str:
    """The last lines of train.log (where the traceback of a crash ends up)."""
    try:
        text = (Path(run_dir) / "train.log").read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


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
    """Start, queue, stop, list, read and delete training runs under `runs_dir`."""

    def __init__(
        self,
        runs_dir: str | Path = "runs",
        trainer: list[str] | None = None,
        grace_s: float = 20.0,
    ):
        self.runs_dir = Path(runs_dir).resolve()
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.trainer = list(trainer or TRAINER)  # + ["--config", path]
        self.grace_s = grace_s
        self.lock = threading.RLock()
        self.procs: dict[str, subprocess.Popen] = {}
        self._metrics: dict[str, tuple[int, list[dict]]] = {}  # name -> (offset, records)
        self._watcher: threading.Thread | None = None

    # ------------------------------------------------------------------ paths and reading

    def run_dir(self, name: str) -> Path:
        return self.runs_dir / validate_run_name(name)

    def _existing(self, name: str) -> Path:
        path = self.run_dir(name)
        if not (path / "config.yaml").is_file():
            raise RunError(f"There is no run named {name!r} in {self.runs_dir}.")
        return path

    def names(self) -> list[str]:
        """Run folders, newest first."""
        runs = [p for p in self.runs_dir.iterdir() if (p / "config.yaml").is_file()]
        runs.sort(key=lambda p: (p / "config.yaml").stat().st_mtime, reverse=True)
        return [p.name for p in runs if RUN_NAME.match(p.name)]

    def config(self, name: str) -> dict:
        import yaml

        return yaml.safe_load((self._existing(name) / "config.yaml").read_text()) or {}

    def status(self, name: str) -> dict:
        return read_status(self._existing(name))

    def metrics(self, name: str) -> list[dict]:
        """Every record of the run's metrics.jsonl, read incrementally (only new bytes each call)."""
        path = self._existing(name) / "metrics.jsonl"
        with self.lock:
            offset, records = self._metrics.get(name, (0, []))
            size = path.stat().st_size if path.is_file() else 0
            if size < offset:  # the file was replaced: read from the start
                offset, records = 0, []
            new, offset = read_metrics(path, offset)
            records = records + new
            self._metrics[name] = (offset, records)
            return records

    def checkpoints(self, name: str) -> list[str]:
        """Checkpoint folder names (step-000050, ..., final) holding an adapter or a model."""
        folder = self._existing(name) / "checkpoints"
        if not folder.is_dir():
            return []
        found = [
            p.name
            for p in folder.iterdir()
            if not p.name.startswith(".")  # .tmp-step-N: a save in progress
            and ((p / "adapter_config.json").is_file() or (p / "config.json").is_file())
        ]
        return sorted(found, key=lambda n: (n == "final", n))

    def checkpoint_path(self, name: str, checkpoint: str) -> Path:
        """The folder of one checkpoint; only names that `checkpoints` lists are accepted."""
        if checkpoint not in self.checkpoints(name):
            raise RunError(f"Run {name!r} has no checkpoint {checkpoint!r}.")
        return self.run_dir(name) / "checkpoints" / checkpoint

    def summary(self, name: str) -> dict:
        """What the runs panel shows: config, status, last train/eval metrics, checkpoints."""
        records = self.metrics(name)
        last = {
            kind: next((r for r in reversed(records) if r.get("kind") == kind), {})
            for kind in ("train", "eval")
        }
        return {
            "name": name,
            "config": self.config(name),
            "status": self.status(name),
            "train": last["train"],
            "eval": last["eval"],
            "checkpoints": self.checkpoints(name),
        }

    def list_runs(self) -> list[dict]:
        """`summary` of every run, newest first; also advances the queue and notices crashes."""
        self.poll()
        return [self.summary(n) for n in self.names()]

    # ------------------------------------------------------------------ starting and queueing

    def start(self, config: dict | TrainConfig, run_name: str | None = None) -> str:
        """Write RUN_DIR/config.yaml and start the run, or queue it if its device is busy.

        Returns the run name. Raises RunError / ValueError (invalid config) with a readable message.
        """
        values = config.to_dict() if isinstance(config, TrainConfig) else dict(config)
        name = validate_run_name(
            run_name or values.get("run_name") or time.strftime("run-%Y%m%d-%H%M%S")
        )
        values.update(output_dir=str(self.runs_dir), run_name=name)
        cfg = TrainConfig.from_dict(
            values
        )  # refuses impossible settings before anything is written
        run_dir = self.run_dir(name)
        with self.lock:
            if run_dir.exists():
                raise RunError(
                    f"A run named {name!r} already exists: pick another name or delete it."
                )
            run_dir.mkdir(parents=True)
            cfg.to_yaml(run_dir / "config.yaml")
            write_status(
                run_dir, "queued", "waiting for its device", step=0, total_steps=0, pid=None
            )
            self.poll()
        return name

    def _busy_devices(self) -> set[str]:
        busy = set()
        for name in self.names():
            if read_status(self.run_dir(name))["status"] in ("starting", "running"):
                busy.add(_device_key(self.config(name).get("device", "auto")))
        return busy

    def _spawn(self, name: str) -> None:
        run_dir = self.run_dir(name)
        write_status(run_dir, "starting", "process starting")
        with (run_dir / "train.log").open("ab") as log:
            # stdout/stderr to a file, never an undrained PIPE; own session = own process group.
            proc = subprocess.Popen(
                [*self.trainer, "--config", str(run_dir / "config.yaml")],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=trainer_env(),
            )
        self.procs[name] = proc
        write_status(run_dir, "starting", "process started", pid=proc.pid)

    def poll(self) -> None:
        """Reap finished processes, mark crashed runs failed, start queued runs on free devices."""
        with self.lock:
            for name, proc in list(self.procs.items()):
                if proc.poll() is None:
                    continue
                del self.procs[name]
                if read_status(self.run_dir(name))["status"] in ACTIVE:
                    self._mark_failed(
                        name, f"the training process exited with code {proc.returncode}"
                    )
            queued = []
            for name in reversed(self.names()):  # oldest first
                status = read_status(self.run_dir(name))
                if status["status"] in ("starting", "running") and name not in self.procs:
                    # Started by another app process (or before a restart): trust a live pid only.
                    if not _pid_alive(status.get("pid")):
                        self._mark_failed(name, "the training process is gone")
                elif status["status"] == "queued":
                    queued.append(name)
            busy = self._busy_devices()
            for name in queued:
                device = _device_key(self.config(name).get("device", "auto"))
                if device not in busy:
                    self._spawn(name)
                    busy.add(device)

    def _mark_failed(self, name: str, reason: str) -> None:
        tail = log_tail(self.run_dir(name))
        write_status(self.run_dir(name), "failed", f"{reason} without finishing.\n{tail}".strip())

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

    def stop(self, name: str, grace_s: float | None = None) -> str:
        """Stop a run and say how: "cancelled" (was queued), "stopped" (saved and exited after the
        STOP file), "killed" (did not exit within the grace period), or "not running"."""
        run_dir = self._existing(name)
        grace = self.grace_s if grace_s is None else grace_s
        with self.lock:
            status = read_status(run_dir)
            if status["status"] == "queued":
                write_status(run_dir, "stopped", "cancelled before it started")
                return "cancelled"
            if status["status"] not in ("starting", "running"):
                return "not running"
            proc = self.procs.get(name)
            pid = proc.pid if proc else status.get("pid")
        (run_dir / "STOP").touch()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if (proc.poll() is not None) if proc else not _pid_alive(pid):
                break
            time.sleep(0.1)
        else:
            self._kill(pid, proc)
            with self.lock:
                self.procs.pop(name, None)
                write_status(run_dir, "stopped", f"killed: it did not stop within {grace:g} s")
            self.poll()
            return "killed"
        with self.lock:
            self.procs.pop(name, None)
            if read_status(run_dir)["status"] in ACTIVE:
                self._mark_failed(name, "the training process exited after STOP")
        self.poll()
        return "stopped"

    @staticmethod
    def _kill(pid, proc: subprocess.Popen | None) -> None:
        # The whole process group: the trainer may have started workers of its own.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(int(pid), sig)
            except (OSError, TypeError, ValueError):
                return
            end = time.monotonic() + 3
            while time.monotonic() < end:
                if (proc.poll() is not None) if proc else not _pid_alive(pid):
                    return
                time.sleep(0.05)

    def delete(self, name: str) -> None:
        """Remove a run folder; refused while the run is queued or running."""
        run_dir = self._existing(name)
        with self.lock:
            self.poll()
            if read_status(run_dir)["status"] in ACTIVE:
                raise RunError(
                    f"Run {name!r} is still {read_status(run_dir)['status']}: stop it first."
                )
            shutil.rmtree(run_dir)
            self._metrics.pop(name, None)

    # ------------------------------------------------------------------ artefacts

    def zip_checkpoint(self, name: str, checkpoint: str) -> Path:
        """A zip of one checkpoint (the adapter and its tokenizer), under RUN_DIR/downloads/."""
        source = self.checkpoint_path(name, checkpoint)
        target = self.run_dir(name) / "downloads" / f"{name}-{checkpoint}"
        target.parent.mkdir(exist_ok=True)
        return Path(shutil.make_archive(str(target), "zip", root_dir=source))

    def export(self, name: str, checkpoint: str, out_dir: str | Path | None = None) -> Path:
        """Merge a checkpoint's adapter into a standalone model (`python -m orpo_lab.train --export`)."""
        source = self.checkpoint_path(name, checkpoint)
        out = Path(out_dir) if out_dir else self.run_dir(name) / "merged" / checkpoint
        result = subprocess.run(
            [*self.trainer, "--export", str(source), "--out", str(out)],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=1800,
        )
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise RunError(f"Export of {name}/{checkpoint} failed:\n{tail}")
        return out
