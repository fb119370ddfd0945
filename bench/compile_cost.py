"""What torch.compile costs and buys over a whole run of a preset: eager, a first compile (an empty
kernel cache), and a compile from the cache (what a later run of the same setup gets).

    python bench/compile_cost.py                            # cpu-quick, the machine's auto precision
    python bench/compile_cost.py --set precision=fp32       # what a CPU without bf16 units runs

Each run is a fresh process training the preset from scratch (runs under bench/runs/compile-*):
torch_compile=off, then =on with TORCHINDUCTOR_CACHE_DIR an empty folder ("cold"), then =on again
with the same folder ("cached"). Reported: the training wall time (model loading and evaluations
included), the first step (where the compile happens), the median step and the last logged
held-out accuracy. Writes bench/results/compile_cost[-<label>].json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from alignment import HERE, preset_values, run

MODES = {"eager": "off", "cold": "on", "cached": "on"}


def worker(name: str, values: dict) -> dict:
    cfg, seconds, rows = run(name, values)
    steps = [r["step_s"] for r in rows if r["kind"] == "train"]
    began = next(r for r in rows if r.get("event") == "started")
    return {
        "train_seconds": seconds,
        "first_step_s": steps[0],
        "median_step_s": statistics.median(steps),
        "steps": len(steps),
        "accuracy": [r for r in rows if r["kind"] == "eval"][-1]["eval/accuracy"],
        "precision": began["precision"],
        "torch_compile": began["torch_compile"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="cpu-quick")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--label", default="")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    values = preset_values(args.preset, args.set)
    if args.worker:
        mode = args.worker
        out = worker(f"compile-{mode}", values | {"torch_compile": MODES[mode]})
        print("RESULT " + json.dumps(out), flush=True)
        return
    kernels = tempfile.mkdtemp(prefix="bench-inductor-")  # empty: the first compile is cold
    results = {}
    for mode in MODES:
        began = time.perf_counter()
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--preset",
                args.preset,
                "--worker",
                mode,
                "--set",
                *args.set,
            ],
            env=os.environ | {"TORCHINDUCTOR_CACHE_DIR": kernels},
            capture_output=True,
            text=True,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"{mode} failed:\n{proc.stderr[-3000:]}")
        results[mode] = json.loads(lines[-1][len("RESULT ") :])
        results[mode]["process_seconds"] = time.perf_counter() - began
        r = results[mode]
        print(
            f"{mode:7s} {r['precision']} compiled={r['torch_compile']}: training {r['train_seconds']:.1f} s, "
            f"first step {r['first_step_s']:.1f} s, median step {r['median_step_s']:.3f} s, "
            f"accuracy {r['accuracy']:.4f}",
            flush=True,
        )
    eager = results["eager"]["train_seconds"]
    for mode in ("cold", "cached"):
        print(
            f"{mode} / eager training time: x{results[mode]['train_seconds'] / eager:.2f}; median "
            f"step x{results[mode]['median_step_s'] / results['eager']['median_step_s']:.2f}"
        )
    env = {
        "device": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cores": len(os.sched_getaffinity(0)),
    }
    name = f"compile_cost{'-' + args.label if args.label else ''}.json"
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / name).write_text(
        json.dumps(
            {"env": env, "preset": args.preset, "overrides": args.set, "runs": results}, indent=1
        )
    )


if __name__ == "__main__":
    main()
