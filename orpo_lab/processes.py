"""The trainer's operating-system processes: how one starts, whether it lives, how it is ended.

`runs.RunManager` starts `python -m orpo_lab.cli` in a process group of its own (`spawn`), so
that `kill_group` ends the trainer and any workers it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TRAINER = [sys.executable, "-m", "orpo_lab.cli"]
# The folder that holds this package: a Space runs app.py from a checkout without installing it.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


def trainer_env() -> dict[str, str]:
    """The app's environment, unbuffered, with this package importable from any working directory."""
    path = [PACKAGE_ROOT, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(path)}


def spawn(command: list[str], log_path: Path) -> subprocess.Popen:
    """`command` in a session (process group) of its own, its output appended to `log_path`."""
    with log_path.open("ab") as log:
        # stdout/stderr to a file, never an undrained PIPE; own session = own process group.
        return subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=trainer_env(),
        )


def pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


def device_key(device: str) -> str:
    """The device a run's config names, as one key per device ("auto" resolved here)."""
    if device == "auto":
        from orpo_lab.devices import pick_device

        device = str(pick_device("auto"))
    return "cuda:0" if device == "cuda" else device


def wait_exit(pid, proc: subprocess.Popen | None, timeout: float) -> bool:
    """True once the process has exited, False when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (proc.poll() is not None) if proc else not pid_alive(pid):
            return True
        time.sleep(0.1)
    return False


def kill_group(pid, proc: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL, to the whole process group: the trainer may have started workers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(int(pid), sig)
        except (OSError, TypeError, ValueError):
            return
        if wait_exit(pid, proc, 3):
            return
