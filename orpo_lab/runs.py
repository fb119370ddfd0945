"""Training runs as separate processes, with all their state on disk (`orpo_lab.rundir`).

`RunManager` starts `python -m orpo_lab.cli --config RUN/config.yaml` in its own process group,
queues runs so that one trains at a time per device, stops them (STOP file first, kill after a
grace period that grows with the run's measured step time), resumes them from their last
checkpoint, notices crashes, and reads the files back (`orpo_lab.run_library`). Any process (a
second browser tab, a restarted app) sees the same runs: nothing lives only in memory.
On ZeroGPU a run trains in GPU slices of the app's own process instead (`orpo_lab.slices`).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

from orpo_lab.config import TrainConfig
from orpo_lab.processes import (
    TRAINER,
    device_key,
    kill_group,
    pid_alive,
    spawn,
    trainer_env,
    wait_exit,
)
from orpo_lab.run_library import RunLibrary
from orpo_lab.rundir import ACTIVE, RunDir, RunError, validate_run_name

UNTRAINED_GRACE_S = 5.0  # how long a stop waits for a run that has not trained a step yet

__all__ = ["RunError", "RunManager", "validate_run_name"]


class RunManager(RunLibrary):
    """Start, queue, stop, resume and delete training runs under `runs_dir`; read them as
    `RunLibrary` does."""

    def __init__(
        self,
        runs_dir: str | Path = "runs",
        trainer: list[str] | None = None,
        grace_s: float = 20.0,
        slices=None,
    ):
        super().__init__(runs_dir)
        self.trainer = list(trainer or TRAINER)  # + ["--config", path] (+ ["--resume"])
        self.grace_s = grace_s  # plus three measured step times: see `grace`
        self.procs: dict[str, subprocess.Popen] = {}
        self._watcher: threading.Thread | None = None
        self.slices = slices  # ZeroGPU: runs train in GPU slices of this app (orpo_lab.slices)

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
                total_steps=cfg.max_steps or 0,  # 0: epochs decide, once the data is read
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
                busy.add(device_key(self.config(name).get("device", "auto")))
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
        proc = self.procs[name] = spawn(command, run.log_path)
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
                    if not pid_alive(status.get("pid")):
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
                device = device_key(self.config(name).get("device", "auto"))
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
        if not wait_exit(pid, proc, grace):
            kill_group(pid, proc)
            # Nothing trained since the last checkpoint: ending it lost nothing, as a clean stop.
            how = "stopped" if self._untrained(run) else "killed"
            with self.lock:
                self.procs.pop(name, None)
                run.clear_stop()
                run.write_status(
                    "stopped",
                    run.stop_message(run.saved_step())
                    if how == "stopped"
                    else f"killed: it did not stop within {grace:.0f} s; {run.describe_checkpoints()}",
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
