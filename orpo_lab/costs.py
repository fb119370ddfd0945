"""What a training pipeline cost and reached, read from its run folders; peak memory of a stretch.

A pipeline is one run (ORPO, SFT, DPO, the probability ratio) or several run one after the other
(SFT then DPO: `orpo_lab.pipeline`). `stage_numbers` reads one run's folder (its metrics log and
config): method, steps, the held-out numbers at its first and last evaluation, and the forward
passes it made. `pipeline_costs` sums a pipeline's stages: every training pair visited costs one
forward (and backward) pass of the policy, and DPO adds one no-grad forward of its reference per
distinct pair, precomputed before its first step (`orpo_lab.reference`), so its forwards per pair
visited are above 1. `peak_memory` measures the peak resident memory of the code it wraps.
`bench/objectives.py` and notebook 6 read their cost tables through these.
"""

from __future__ import annotations

import json
import re
import resource
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml


def run_rows(run_dir: Path) -> list[dict]:
    """The records of a run's metrics log (`metrics.jsonl`), in order."""
    text = (Path(run_dir) / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def stage_numbers(run_dir: Path) -> dict:
    """What one run logged: its method, steps, held-out numbers first and last, its cost."""
    rows = run_rows(run_dir)
    started = next(r for r in rows if r.get("event") == "started")
    evals = [r for r in rows if r["kind"] == "eval"]
    train = [r for r in rows if r["kind"] == "train"]
    first, last = evals[0], evals[-1]
    cfg = yaml.safe_load((Path(run_dir) / "config.yaml").read_text())
    return {
        "method": started["method"],
        "steps": train[-1]["step"],
        "precision": started["precision"],
        "torch_compile": started["torch_compile"],
        "pair_visits": train[-1]["step"] * cfg["batch_size"] * cfg["grad_accum"],
        "reference_forwards": started.get("reference_pairs", 0),
        "reference_s": started.get("reference_s", 0.0),
        "eval_pairs": last["eval/pairs"],
        "first_eval_step": first["step"],
        "accuracy_first": first["eval/accuracy"],
        "accuracy": last["eval/accuracy"],
        "chosen_first": first["eval/logps_chosen"],
        "chosen": last["eval/logps_chosen"],
        "rejected_first": first["eval/logps_rejected"],
        "rejected": last["eval/logps_rejected"],
        "train_loss_last": train[-1]["loss"],
        "median_step_s": statistics.median(r["step_s"] for r in train),
    }


def pipeline_costs(run_dirs: list[Path], wall_s: float, peak_rss_gb: float) -> dict:
    """One pipeline's numbers from its stages' folders (in training order), with the wall time and
    peak memory measured around it: total steps, forwards per pair visited (policy passes plus
    DPO's reference passes, over the policy passes), DPO's reference time, the median step time,
    the held-out numbers at the last step (and at step 0, of the first stage) and each stage's."""
    stages = [stage_numbers(d) for d in run_dirs]
    visits = sum(s["pair_visits"] for s in stages)
    reference = sum(s["reference_forwards"] for s in stages)
    last = stages[-1]
    return {
        "steps": sum(s["steps"] for s in stages),
        "wall_s": wall_s,
        "peak_rss_gb": peak_rss_gb,
        "pair_visits": visits,
        "reference_forwards": reference,
        "forwards_per_pair_visit": (visits + reference) / visits,
        "reference_s": sum(s["reference_s"] for s in stages),
        "median_step_s": statistics.median(s["median_step_s"] for s in stages),
        "accuracy": last["accuracy"],
        "chosen": last["chosen"],
        "rejected": last["rejected"],
        "accuracy_first": stages[0]["accuracy_first"],
        "chosen_first": stages[0]["chosen_first"],
        "rejected_first": stages[0]["rejected_first"],
        "stages": stages,
    }


def held_out_curve(run_dirs: list[Path]) -> list[dict]:
    """The held-out evaluations of a pipeline's stages as one curve: {"step", "chosen",
    "rejected", "accuracy"} per evaluation, a later stage's steps counted on from the end of the
    one before (its step-0 evaluation, the same weights as the previous stage's last, left out)."""
    curve: list[dict] = []
    offset = 0
    for run_dir in run_dirs:
        rows = run_rows(run_dir)
        for r in (r for r in rows if r["kind"] == "eval"):
            if curve and r["step"] == 0:
                continue
            curve.append(
                {
                    "step": offset + r["step"],
                    "chosen": r["eval/logps_chosen"],
                    "rejected": r["eval/logps_rejected"],
                    "accuracy": r["eval/accuracy"],
                }
            )
        offset += max((r["step"] for r in rows if r["kind"] == "train"), default=0)
    return curve


_STATUS = Path("/proc/self/status")


def _peak_kib() -> int:
    """This process's peak resident memory so far, in KiB (Linux: VmHWM; else getrusage)."""
    if _STATUS.is_file():
        found = re.search(r"VmHWM:\s+(\d+) kB", _STATUS.read_text())
        if found:
            return int(found.group(1))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if peak > 2**32 else peak  # macOS reports bytes, Linux KiB


@contextmanager
def peak_memory() -> Iterator[dict]:
    """Measure the peak resident memory of the code inside: yields a dict that holds, on exit,
    "peak_rss_gb" and "since_start" (False when the peak of this stretch alone was measured).

    On Linux the process's high-water mark is reset first (`/proc/self/clear_refs`), so the peak
    is this stretch's: the memory the process already held plus what the code added at most.
    Where it cannot be reset, the peak is the process's since it started (since_start True).
    """
    result = {"peak_rss_gb": float("nan"), "since_start": True}
    try:
        Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak resident set size
        result["since_start"] = False
    except OSError:
        pass
    try:
        yield result
    finally:
        result["peak_rss_gb"] = _peak_kib() / 2**20
