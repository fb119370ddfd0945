"""ZeroGPU slices on CPU: the default model's `cpu-quick` run in slices of 60 s through the stand-in,
next to the same run uninterrupted.

    ORPO_LAB_TORCH_COMPILE=off .venv/bin/python bench/zerogpu_slices.py [--seconds 60] [--out DIR]

Each slice is a forked GPU call (orpo_lab.zerogpu_standin) that restores the run from its folder,
trains while steps fit, and saves. Reported per slice: the restore time (call start -> the
trainer's resumed event: fork, model, data, optimiser state, log-prob check), the save time at the
budget's end, the wall time of the call, and whether the stand-in had to kill it. The overhead is
(restore + save) / slice length. Then the held-out accuracy and losses of the two runs.

A GPU call runs its CPU side on one thread (`orpo_lab.zerogpu.in_worker`: OpenMP does not survive
the fork), so the uninterrupted run here also trains on one thread: the two differ by slicing alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ["ORPO_LAB_ZEROGPU"] = "standin"
os.environ.setdefault("ORPO_LAB_TORCH_COMPILE", "off")  # ZeroGPU does not run torch.compile


def main() -> None:
    import torch

    from orpo_lab.config import TrainConfig
    from orpo_lab.presets import PRESETS
    from orpo_lab.runs import RunManager
    from orpo_lab.slices import SliceRunner
    from orpo_lab.train import train

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=60, help="the slice length")
    parser.add_argument("--out", default=None, help="runs folder (default: a temporary one)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="zerogpu-bench-"))
    recipe = PRESETS["cpu-quick"] | dict(output_dir=str(out), device="cpu")

    torch.set_num_threads(1)  # as in the GPU calls (see the docstring)
    began = time.perf_counter()
    train(TrainConfig(**recipe, run_name="whole"))
    whole_s = time.perf_counter() - began

    runner = SliceRunner(seconds=args.seconds)
    manager = RunManager(out, slices=runner)
    began = time.perf_counter()
    manager.start(TrainConfig(**recipe), "sliced")
    time.sleep(0.5)
    while runner.owns("sliced"):
        time.sleep(0.5)
    sliced_s = time.perf_counter() - began

    def records(name, kind):
        return [r for r in manager.metrics(name) if r.get("kind") == kind]

    slices = manager.folder("sliced").slices()
    rows, shares = [], []
    for s in slices:
        restore, save = s.get("load_s") or 0.0, s.get("save_s")
        share = (restore + (save or 0.0)) / args.seconds
        if s["outcome"] == "running":  # a full slice (the last one ends with the run)
            shares.append(share)
        rows.append(
            {
                "slice": s["slice"],
                "outcome": s["outcome"],
                "steps": s["steps"],
                "restore_s": round(restore, 2),
                "save_s": save and round(save, 2),
                "wall_s": round(s["wall_s"], 2),
                "overhead": round(share, 4),
            }
        )
    whole_train, sliced_train = records("whole", "train"), records("sliced", "train")
    loss_diff = max(
        abs(a["loss"] - b["loss"]) for a, b in zip(whole_train, sliced_train, strict=True)
    )
    result = {
        "cpu": _cpu(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "precision": records("sliced", "event")[0]["precision"],
        "slice_s": args.seconds,
        "slices": rows,
        "cut_off": sum(s["outcome"] == "cut off" for s in slices),
        "overhead_median": statistics.median(shares) if shares else None,
        "overhead_max": max(shares) if shares else None,
        "uninterrupted_s": round(whole_s, 1),
        "sliced_s": round(sliced_s, 1),
        "accuracy_uninterrupted": records("whole", "eval")[-1]["eval/accuracy"],
        "accuracy_sliced": records("sliced", "eval")[-1]["eval/accuracy"],
        "max_train_loss_difference": loss_diff,
        "same_steps": [r["step"] for r in whole_train] == [r["step"] for r in sliced_train],
    }
    print(json.dumps(result, indent=1))


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    main()
