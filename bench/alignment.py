"""Does the default recipe show ORPO working? ORPO vs SFT on the default model and dataset, on this machine.

    python bench/alignment.py                 # the "cpu-quick" preset, runs under bench/runs/
    python bench/alignment.py --preset gpu    # any preset; extra TrainConfig flags: --set key=value

Prints (and writes to bench/results/alignment.json): training time, held-out preference accuracy,
mean chosen/rejected log-probs at the start and end of each run (SFT should raise both, ORPO should
push the rejected one down), and the judges' pass rates of base, SFT and ORPO generations per family,
in-domain and out-of-domain.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import torch
import yaml

from orpo_lab.config import TrainConfig
from orpo_lab.evaluate import evaluate_run
from orpo_lab.presets import PRESETS
from orpo_lab.train import train

HERE = Path(__file__).parent


def run(name: str, values: dict) -> tuple[TrainConfig, float, list[dict]]:
    cfg = TrainConfig(**(values | {"run_name": name}))
    shutil.rmtree(cfg.run_dir, ignore_errors=True)
    began = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - began
    rows = [json.loads(ln) for ln in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    return cfg, seconds, rows


def preset_values(preset: str, overrides: list[str]) -> dict:
    """The preset's TrainConfig values plus KEY=VALUE overrides, scoring every held-out pair (the app
    and CLI default to a sample of 64), with runs under bench/runs/."""
    values = dict(PRESETS[preset], output_dir=str(HERE / "runs"), max_eval_pairs=None)
    for item in overrides:
        key, _, raw = item.partition("=")
        values[key] = yaml.safe_load(raw)
    return values


def trend(rows: list[dict]) -> dict[str, float]:
    evals = [r for r in rows if r["kind"] == "eval"]
    first, last = evals[0], evals[-1]
    began = next(r for r in rows if r.get("event") == "started")
    return {
        "precision": began["precision"],
        "torch_compile": began["torch_compile"],  # auto decides per machine: record what it did
        "first_eval_step": first["step"],
        "last_eval_step": last["step"],
        "chosen_first": first["eval/logps_chosen"],
        "chosen_last": last["eval/logps_chosen"],
        "rejected_first": first["eval/logps_rejected"],
        "rejected_last": last["eval/logps_rejected"],
        "accuracy_last": last["eval/accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="cpu-quick", choices=sorted(PRESETS))
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig overrides"
    )
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--train-only",
        action="store_true",
        help="train the two runs and stop (no judged generations, no results file): for comparing "
        "code versions with bench/same_runs.py",
    )
    args = parser.parse_args()
    values = preset_values(args.preset, args.set)

    orpo_cfg, orpo_s, orpo_rows = run("orpo-default", values)
    sft_cfg, sft_s, sft_rows = run("sft-default", values | {"beta": 0.0})
    if args.train_only:
        print(f"trained {orpo_cfg.run_dir} ({orpo_s:.0f} s) and {sft_cfg.run_dir} ({sft_s:.0f} s)")
        return
    orpo_eval = evaluate_run(orpo_cfg.run_dir, max_new_tokens=args.max_new_tokens)
    sft_eval = evaluate_run(sft_cfg.run_dir, max_new_tokens=args.max_new_tokens)

    result = {
        "device": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "config": orpo_cfg.to_dict(),
        "train_seconds": {"orpo": orpo_s, "sft": sft_s},
        "trend": {"orpo": trend(orpo_rows), "sft": trend(sft_rows)},
        "pass_rates": {
            "base": orpo_eval["summary"]["base"],
            "orpo": orpo_eval["summary"]["trained"],
            "sft": sft_eval["summary"]["trained"],
        },
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "alignment.json").write_text(json.dumps(result, indent=1))

    how = {
        n: f"{t['precision']}{', compiled' if t['torch_compile'] else ''}"
        for n, t in result["trend"].items()
    }
    print(
        f"training time: ORPO {orpo_s:.0f} s ({how['orpo']}), SFT {sft_s:.0f} s ({how['sft']}) "
        f"({orpo_cfg.max_steps} steps)"
    )
    for name in ("orpo", "sft"):
        t = result["trend"][name]
        print(
            f"{name:4s} held-out logps chosen {t['chosen_first']:.3f} -> {t['chosen_last']:.3f}, "
            f"rejected {t['rejected_first']:.3f} -> {t['rejected_last']:.3f}, accuracy {t['accuracy_last']:.3f}"
        )
    print("\njudged pass rate (in-domain / out-of-domain / all)")
    families = [f for f in result["pass_rates"]["base"] if f != "all"] + ["all"]
    print(f"{'family':12s}" + "".join(f"{m:>24s}" for m in ("base", "sft", "orpo")))
    for fam in families:
        cells = []
        for model in ("base", "sft", "orpo"):
            r = result["pass_rates"][model][fam]
            cells.append(f"{r['in_domain']:.2f} / {r['ood']:.2f} / {r['all']:.2f}")
        print(f"{fam:12s}" + "".join(f"{c:>24s}" for c in cells))


if __name__ == "__main__":
    main()
