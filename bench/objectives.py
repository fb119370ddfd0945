"""The paper's comparisons at equal steps on the default recipe: ORPO, SFT, the probability ratio
(section 7.1), DPO from the base model, and SFT then DPO (the two-stage pipeline), on this machine.

    python bench/objectives.py                        # all five, the "cpu-quick" preset
    python bench/objectives.py --only orpo sft        # some of them (a long bench in parts);
                                                      # the others' rows stay in the results file
    python bench/objectives.py --sft-steps 20 --set learning_rate=3e-4
    python bench/objectives.py --only sft_then_dpo --dpo-set learning_rate=5e-5
                                                      # DPO's stage at its own settings: a row
                                                      # of its own, "sft_then_dpo learning_rate=5e-05"
    python bench/objectives.py --lock /tmp/cpu.lock   # run holding that flock (timings not shared
                                                      # with jobs that take it)

Each pipeline trains in a process of its own (so its peak memory is its own) for the preset's
max_steps in all (SFT then DPO: --sft-steps, default half, then DPO for the rest, from the SFT
checkpoint, which is also DPO's reference). Writes bench/results/objectives.json and prints a
table: held-out preference accuracy and mean chosen / rejected log-probs at the last step (every
held-out pair; and at step 0), training wall time (model loading, evaluations and DPO's
reference included), the median optimiser step time, peak resident memory while training, and
forward passes per training pair visited (each a forward + backward; DPO adds one no-grad reference
forward per distinct pair, precomputed before its first step). Then the final checkpoint's sampled
answers (--samples per held-out prompt, temperature 1, sample seed 0; `evaluate_run`): pass and
rejected-like rates per family with 95% Wilson intervals, the base model's beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from orpo_lab.config import TrainConfig
from orpo_lab.costs import peak_memory, pipeline_costs
from orpo_lab.presets import PRESETS

HERE = Path(__file__).parent
RESULTS = HERE / "results" / "objectives.json"
PIPELINES = ("orpo", "sft", "prob_ratio", "dpo", "sft_then_dpo")


def row_name(name: str, dpo_values: dict) -> str:
    """The results row: the pipeline's name, with the DPO stage's own settings when it has any."""
    own = " ".join(f"{key}={value}" for key, value in dpo_values.items())
    return f"{name} {own}" if name == "sft_then_dpo" and own else name


@contextlib.contextmanager
def held(lock: str):
    """An exclusive flock on `lock` for the block (nothing when empty)."""
    if not lock:
        yield
        return
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_one(
    name: str, values: dict, dpo_values: dict, sft_steps: int, samples: int, lock: str
) -> dict:
    """Train pipeline `name` in this process; its numbers (peak memory: this process's)."""
    from orpo_lab.pipeline import sft_then_dpo, stage_configs
    from orpo_lab.train import train

    with held(lock):
        with peak_memory() as memory:  # this process's: it trains this pipeline alone
            began = time.perf_counter()
            if name == "sft_then_dpo":
                suffix = "".join(f"-{key}{value}" for key, value in dpo_values.items())
                cfg = TrainConfig(**(values | {"run_name": f"two-stage{suffix}"}))
                stages = stage_configs(cfg, sft_steps, dpo_values)
                for stage in stages:
                    shutil.rmtree(stage.run_dir, ignore_errors=True)
                sft_then_dpo(cfg, sft_steps, dpo_changes=dpo_values)
                dirs = [stage.run_dir for stage in stages]
            else:
                cfg = TrainConfig(**(values | {"method": name, "run_name": name}))
                shutil.rmtree(cfg.run_dir, ignore_errors=True)
                train(cfg)
                dirs = [cfg.run_dir]
            wall = time.perf_counter() - began
        costs = pipeline_costs(dirs, wall, memory["peak_rss_gb"])  # training's peak only
        # Still holding the lock: sampling beside other jobs slows both far more than running in
        # turn (2 cores, each process's threads waiting on the other's).
        return costs | {"sampled": sampled_numbers(dirs[-1], samples) if samples else {}}


def sampled_numbers(run_dir: Path, samples: int) -> dict:
    """The final checkpoint's sampled pass and rejected-like rates (every held-out prompt, `samples`
    each at temperature 1, sample seed 0: `evaluate_run`), and the base model's, per family."""
    from orpo_lab.evaluate import evaluate_run

    report = evaluate_run(run_dir, samples=samples, max_new_tokens=48)
    return {
        model: {
            family: {key: cell["all"][key] for key in ("pass", "rejected_like")}
            for family, cell in report["sampled"][model].items()
        }
        for model in ("base", "trained")
    }


def preset_values(preset: str, items: list[str]) -> dict:
    values = dict(
        PRESETS[preset], output_dir=str(HERE / "runs" / "objectives"), max_eval_pairs=None
    )
    return values | overrides(items)


def overrides(items: list[str]) -> dict:
    """{key: value} of KEY=VALUE strings (values read as YAML: numbers, booleans, text)."""
    return {key: yaml.safe_load(raw) for key, _, raw in (item.partition("=") for item in items)}


def print_table(result: dict) -> None:
    width = max(14, *(len(name) + 1 for name in result["rows"]))
    print(
        f"{'pipeline':{width}s}{'steps':>6s}{'acc':>7s}{'chosen':>9s}{'rejected':>10s}"
        f"{'wall s':>8s}{'ref s':>7s}{'step s':>8s}{'peak GB':>9s}{'fwd/pair':>9s}  (held-out at step 0: "
        "acc, chosen, rejected)"
    )
    for name, r in result["rows"].items():
        if r:
            print(
                f"{name:{width}s}{r['steps']:>6d}{r['accuracy']:>7.3f}{r['chosen']:>9.3f}"
                f"{r['rejected']:>10.3f}{r['wall_s']:>8.0f}{r.get('reference_s', 0):>7.1f}"
                f"{r.get('median_step_s', 0):>8.2f}"
                f"{r['peak_rss_gb']:>9.2f}"
                f"{r['forwards_per_pair_visit']:>9.2f}  ({r['accuracy_first']:.3f}, "
                f"{r['chosen_first']:.3f}, {r['rejected_first']:.3f})"
            )
    rows = {name: r for name, r in result["rows"].items() if r.get("sampled")}
    if not rows:
        return
    families = list(next(iter(rows.values()))["sampled"]["base"])
    print(
        "\nsampled pass rate % [95% interval], rejected-like % (every held-out prompt, all domains)"
    )
    print(f"{'model':{width}s}" + "".join(f"{f:>26s}" for f in families))
    firsts = {"base": next(iter(rows.values()))["sampled"]["base"]}
    for name, cells in (firsts | {n: r["sampled"]["trained"] for n, r in rows.items()}).items():
        print(f"{name:{width}s}" + "".join(f"{_cell(cells[f]):>26s}" for f in families))


def _cell(cell: dict) -> str:
    p, r = cell["pass"], cell["rejected_like"]
    return (
        f"{100 * p['rate']:.1f} [{100 * p['low']:.1f}-{100 * p['high']:.1f}] {100 * r['rate']:.0f}%"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="cpu-quick", choices=sorted(PRESETS))
    parser.add_argument("--only", nargs="*", choices=PIPELINES, default=list(PIPELINES))
    parser.add_argument("--sft-steps", type=int, default=0, help="SFT's share (0: half)")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig overrides"
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=5,
        help="sampled answers per held-out prompt at the end (0: none)",
    )
    parser.add_argument(
        "--dpo-set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="sft_then_dpo: overrides for its DPO stage only (e.g. learning_rate=5e-5)",
    )
    parser.add_argument(
        "--lock", default="", help="hold an exclusive flock on this file while training"
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: one pipeline
    args = parser.parse_args()
    values = preset_values(args.preset, args.set)
    dpo_values = overrides(args.dpo_set)
    sft_steps = args.sft_steps or values["max_steps"] // 2
    if args.one:
        numbers = run_one(args.one, values, dpo_values, sft_steps, args.samples, args.lock)
        print("RESULT " + json.dumps(numbers))
        return
    result = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"rows": {}}
    for name in args.only:
        command = [
            sys.executable,
            __file__,
            "--one",
            name,
            "--preset",
            args.preset,
            "--sft-steps",
            str(sft_steps),
            "--samples",
            str(args.samples),
            "--lock",
            args.lock,
            "--set",
            *args.set,
            "--dpo-set",
            *args.dpo_set,
        ]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        row = row_name(name, dpo_values)
        result["rows"][row] = json.loads(out.split("RESULT ", 1)[1])
        print(f"{row}: {result['rows'][row]['wall_s']:.0f} s", flush=True)
    import orpo_lab

    result.update(
        device=platform.processor() or platform.machine(),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        orpo_lab=orpo_lab.__version__,
        preset=args.preset,
        overrides=args.set,
        sft_steps=sft_steps,
        config=values,
    )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print_table(result)


if __name__ == "__main__":
    main()
