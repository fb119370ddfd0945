"""How much does the default recipe's held-out accuracy depend on the seed, and which pairs does it miss?

    python bench/recipe_seeds.py                                # cpu-quick, seeds 0 1 2, ORPO
    python bench/recipe_seeds.py --seeds 0 1 --set beta=2.0     # a variant: TrainConfig overrides
    python bench/recipe_seeds.py --set torch_compile=on --out bench/results/recipe_seeds_compiled.json
    python bench/recipe_seeds.py --judge --set precision=fp32 torch_compile=off   # + judged pass rates

For each seed: the preset trained once (runs under bench/runs/seeds-<out file stem>-<seed>), its
training wall time (loading and evaluations included) and median step, then the final checkpoint's
held-out preference accuracy over every held-out pair, split by family and in-domain /
out-of-domain when the data has those columns (the default dataset does); with `--judge`, the
judges' greedy pass rates of the checkpoint's answers to every held-out prompt (`evaluate_run`:
in-domain, out-of-domain, all), generated in float32 (`--judge-precision`). Writes
bench/results/recipe_seeds.json (`--out`).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from collections import Counter
from pathlib import Path

import torch
from alignment import HERE, preset_values, run

from orpo_lab.autotune_cache import kernels
from orpo_lab.build import build_model, load_pairs
from orpo_lab.evaluate import evaluate_run
from orpo_lab.logps import PairLogps
from orpo_lab.plan import plan_run
from orpo_lab.presets import PRESETS
from orpo_lab.splits import load_config_splits
from orpo_lab.step import held_out_logps


def margins(cfg) -> list[float]:
    """Chosen minus rejected mean log-prob of every held-out pair, from the run's last checkpoint,
    scored by the run's own evaluation (`held_out_logps`: same precision, layout and batch)."""
    last = sorted((cfg.run_dir / "checkpoints").iterdir())[-1]
    model, tokenizer = build_model(cfg, last, plan_run(cfg))
    _, held_out, _ = load_pairs(cfg, tokenizer)
    scorer = PairLogps(model, cfg.nll_scope, cfg.logps_chunk_size)
    device = next(model.parameters()).device
    chosen, rejected = held_out_logps(scorer, held_out, cfg, tokenizer.pad_token_id, device)
    return (chosen - rejected).tolist()


def by_group(cfg, margin: list[float]) -> dict[str, str]:
    """ "family in/ood": "missed/pairs", when the held-out rows carry `family` (and `ood`)."""
    _, held_out, _ = load_config_splits(cfg)
    if held_out is None or "family" not in held_out.column_names or len(held_out) != len(margin):
        return {}
    seen, missed = Counter(), Counter()
    for row, m in zip(held_out, margin, strict=True):
        key = f"{row['family']} {'ood' if row.get('ood') else 'in'}"
        seen[key] += 1
        missed[key] += m <= 0
    return {k: f"{missed[k]}/{seen[k]}" for k in sorted(seen)}


def judged(rates: dict) -> str:
    return ", ".join(
        f"{who} {r['in_domain']:.2f} / {r['ood']:.2f} / {r['all']:.2f}" for who, r in rates.items()
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="cpu-quick", choices=sorted(PRESETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig overrides"
    )
    parser.add_argument("--out", default=str(HERE / "results" / "recipe_seeds.json"))
    parser.add_argument(
        "--judge", action="store_true", help="also judge each checkpoint's greedy answers"
    )
    parser.add_argument("--max-new-tokens", type=int, default=64, help="with --judge")
    parser.add_argument(
        "--judge-precision",
        default="fp32",
        help="with --judge: what the answers are generated in (fp32: what a run trained with "
        "precision=auto generates in on a CPU, whatever it trained in)",
    )
    args = parser.parse_args()
    values = preset_values(args.preset, args.set)
    rows = []
    for seed in args.seeds:
        cfg, seconds, records = run(f"seeds-{Path(args.out).stem}-{seed}", values | {"seed": seed})
        steps = [r["step_s"] for r in records if r["kind"] == "train"]
        last_eval = [r for r in records if r["kind"] == "eval"][-1]
        began = next(r for r in records if r.get("event") == "started")
        margin = margins(cfg)
        rows.append(
            {
                "seed": seed,
                "train_seconds": seconds,
                "median_step_s": statistics.median(steps),
                "accuracy_logged": last_eval["eval/accuracy"],
                "accuracy": sum(m > 0 for m in margin) / len(margin),
                "pairs": len(margin),
                "missed": by_group(cfg, margin),
                "precision": began["precision"],
                "torch_compile": began["torch_compile"],
            }
        )
        r = rows[-1]
        if args.judge:
            report = evaluate_run(
                cfg.run_dir, max_new_tokens=args.max_new_tokens, precision=args.judge_precision
            )
            r["pass_rates"] = {"base": report["summary"]["base"]["all"]}
            r["pass_rates"]["trained"] = report["summary"]["trained"]["all"]
            print(
                f"seed {seed}: judged pass rate (in-domain / ood / all) {judged(r['pass_rates'])}"
            )
        print(
            f"seed {seed}: {seconds:.0f} s (median step {r['median_step_s']:.2f} s), held-out "
            f"accuracy {r['accuracy']:.3f} of {r['pairs']} pairs (logged {r['accuracy_logged']:.3f});"
            f" missed {r['missed']}",
            flush=True,
        )
    accuracies = [r["accuracy"] for r in rows]
    if args.judge:
        passed = [r["pass_rates"]["trained"]["all"] for r in rows]
        print(
            f"judged pass rate mean {statistics.mean(passed):.3f}, min {min(passed):.3f}, max {max(passed):.3f}"
        )
    print(
        f"accuracy mean {statistics.mean(accuracies):.3f}, min {min(accuracies):.3f}, "
        f"max {max(accuracies):.3f}"
    )
    result = {
        "device": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "kernels": kernels(),
        "preset": args.preset,
        "overrides": args.set,
        "config": cfg.to_dict(),
        "seeds": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
