"""How much CPU the app uses while idle, with one browser tab open and with none, beside a minimal
Gradio app (one button, the same `queue().launch()`): the floor that Gradio's own queue loop costs.

Each case starts a fresh process (the app gets a runs folder with one finished run), opens the page
in headless chromium when the case has a tab, waits for it to settle, then reads the process's CPU
time (user + system, from /proc) over `--seconds` of idling. CPU time, not wall time: other jobs on
the machine do not count.

    .venv/bin/python bench/idle_app.py --seconds 60
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


MINIMAL_APP = """
import sys, gradio as gr
with gr.Blocks() as demo:
    gr.Button("x")
demo.queue().launch(server_port=int(sys.argv[1]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def idle_cpu(command: list[str], port: int, seconds: float, with_page: bool) -> float:
    """CPU seconds the process used over `seconds` of idling (after start-up and first page load)."""
    from playwright.sync_api import sync_playwright

    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(600):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium",
                headless=True,
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            if with_page:
                browser.new_page().goto(url)
            time.sleep(10)  # the first ticks draw the runs; then nothing changes on disk
            before = cpu_seconds(proc.pid)
            time.sleep(seconds)
            used = cpu_seconds(proc.pid) - before
            browser.close()
        return used
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--model", default="default")
    args = parser.parse_args()
    runs = Path(tempfile.mkdtemp()) / "runs"
    run = runs / "done"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: default\nbeta: 0.5\n")
    (run / "status.json").write_text(
        json.dumps({"status": "finished", "step": 3, "total_steps": 3})
    )
    (run / "metrics.jsonl").write_text(
        "".join(json.dumps({"kind": "train", "step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3))
    )
    cases = {}
    port = free_port()
    cases["minimal Gradio app, no tab"] = idle_cpu(
        [sys.executable, "-c", MINIMAL_APP, str(port)], port, args.seconds, False
    )
    for with_page in (False, True):
        port = free_port()
        app = [
            sys.executable,
            "app.py",
            "--port",
            str(port),
            "--runs-dir",
            str(runs),
            "--model",
            args.model,
        ]
        cases[f"ORPO Lab, {'one tab open' if with_page else 'no tab'}"] = idle_cpu(
            app, port, args.seconds, with_page
        )
    for case, used in cases.items():
        print(
            f"{case}: {used:.2f} CPU s in {args.seconds:g} s = {100 * used / args.seconds:.1f}% of a core"
        )


if __name__ == "__main__":
    main()
