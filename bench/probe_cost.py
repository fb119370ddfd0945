"""What `torch_compile="auto"` costs a run on the machine it measures: the seconds its probe adds
to the first run of a setup, and to the next run of the same setup (the measurement cache kept).

Each sample is a fresh process with an empty measurement cache ($ORPO_LAB_AUTOTUNE_CACHE) that
trains the default model twice, notebook 4's quick recipe cut to 1 step (no evaluation): "first"
and "again". From each run's started event: autotune.probe_s (the seconds spent measuring) and
the compile decision's reason; and the seconds from train() to the started event. With several
--code folders (e.g. /work/main and a worktree), the code under each is run in turn, rep by rep,
so that a slower spell of the machine hits both alike.

    .venv/bin/python bench/probe_cost.py [--code DIR ...] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, sys, time
from orpo_lab.config import TrainConfig
from orpo_lab.presets import PRESETS
from orpo_lab.train import train

out = {}
for name in ("first", "again"):
    settings = PRESETS["notebook-quick"] | dict(max_steps=1, eval_every=None, eval_at_start=False)
    cfg = TrainConfig(**settings, output_dir=sys.argv[1], run_name=name, device="cpu")
    began, seen = time.perf_counter(), {}

    def on(record, seen=seen, began=began):
        if record.get("event") == "started":
            seen["to_started_s"] = time.perf_counter() - began
            seen["autotune"] = record.get("autotune") or {}
            seen["why"] = record.get("torch_compile_reason")

    train(cfg, callback=on)
    out[name] = {"to_started_s": round(seen["to_started_s"], 2),
                 "probe_s": seen["autotune"].get("probe_s", 0.0), "why": seen["why"]}
print("RESULT " + json.dumps(out))
"""


def sample(code: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **os.environ,
            "PYTHONPATH": str(code),
            "ORPO_LAB_AUTOTUNE_CACHE": str(Path(tmp) / "autotune.json"),
        }
        proc = (
            subprocess.run(  # run in `tmp`: `python -c` puts the working folder before PYTHONPATH
                [sys.executable, "-c", CHILD, tmp], env=env, cwd=tmp, capture_output=True, text=True
            )
        )
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            raise SystemExit(f"{code}: no result\n{proc.stderr[-3000:]}")
        return json.loads(line.removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", nargs="+", default=[str(Path(__file__).resolve().parents[1])])
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[dict]] = {code: [] for code in args.code}
    for rep in range(args.reps):
        for code in args.code:
            began = time.perf_counter()
            results[code].append(sample(Path(code)))
            print(
                f"rep {rep + 1} {code}: {json.dumps(results[code][-1])} "
                f"({time.perf_counter() - began:.0f} s)",
                flush=True,
            )
    print("\n| code | run | probe_s (median) | train() to started, s (median) | reason (last) |")
    print("|---|---|---|---|---|")
    for code, samples in results.items():
        for run in ("first", "again"):
            probe = statistics.median(s[run]["probe_s"] for s in samples)
            to_started = statistics.median(s[run]["to_started_s"] for s in samples)
            why = samples[-1][run]["why"]
            print(f"| {code} | {run} | {probe:.1f} | {to_started:.1f} | {why} |")


if __name__ == "__main__":
    main()
