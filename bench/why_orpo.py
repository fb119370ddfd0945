"""Why ORPO: base vs SFT vs ORPO on the default recipe, judged on SAMPLED answers, over three seeds.

    python bench/why_orpo.py                    # cpu-quick, seeds 0 1 2: train, evaluate, table
    python bench/why_orpo.py --next             # do the next missing run or evaluation, then stop
    python bench/why_orpo.py --table            # only the table, from what is on disk
    python bench/why_orpo.py --seeds 0 --samples 3 --set learning_rate=1e-3   # a variant

Each seed trains ORPO (the preset) and SFT (the same with method sft: the chosen replies' NLL
only) under bench/runs/why-<method>-<seed>,
then `evaluate_run` draws `--samples` answers per held-out prompt (every one of the test split;
temperature 1, top-p 1, sample seed 0 by default) from the base model and the run's final
checkpoint and judges them. The samples of the three seeds are pooled per model, family and domain
(in-domain / out-of-domain): pass rate and rejected-like rate, each with its 95% Wilson interval
over the pooled samples (`orpo_lab.sampling`). The training seed varies the runs; the sample seed
stays, so the base model is sampled once (its answers are cached beside the runs) and counted once.
Also each final checkpoint's held-out preference accuracy per family and domain (pairs whose chosen
reply's mean log-prob is not above the rejected one's, as `bench/recipe_seeds.py` counts them).
Writes bench/results/why_orpo.json (`--out`). `--next` does one piece of work per call, so a
shared machine can interleave it with other jobs (a finished piece is never redone; a run's config
or an evaluation's settings that changed are).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import torch
import transformers
from alignment import HERE, preset_values
from recipe_seeds import by_group, margins

from orpo_lab.config import TrainConfig
from orpo_lab.evaluate import evaluate_run
from orpo_lab.presets import PRESETS
from orpo_lab.sampling import wilson_interval
from orpo_lab.train import train

METHODS = ("sft", "orpo")
MODELS = ("base", "sft", "orpo")


def configs(args) -> dict[tuple[str, int], TrainConfig]:
    values = preset_values(args.preset, args.set)
    return {
        (method, seed): TrainConfig(
            **(values | {"seed": seed, "run_name": f"why-{method}-{seed}"} | {"method": method})
        )
        for seed in args.seeds
        for method in METHODS
    }


def trained(cfg: TrainConfig) -> bool:
    """The run finished with this very config (its last checkpoint is at max_steps)."""
    last = cfg.run_dir / "checkpoints" / f"step-{cfg.max_steps:06d}"
    saved = cfg.run_dir / "config.yaml"
    return last.is_dir() and saved.is_file() and TrainConfig.from_yaml(saved) == cfg


def settings(args) -> dict:
    return {
        "k": args.samples,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.sample_seed,
        "max_new_tokens": args.max_new_tokens,
    }


def evaluated(cfg: TrainConfig, wanted: dict) -> dict | None:
    """The run's generations.json when it holds samples drawn with `wanted` settings."""
    path = cfg.run_dir / "generations.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    return report if report.get("sampled", {}).get("settings") == wanted else None


def step(args, cfg: TrainConfig) -> str | None:
    """Train or evaluate `cfg` when that is missing; what was done, or None."""
    if not trained(cfg):
        shutil.rmtree(cfg.run_dir, ignore_errors=True)
        began = time.perf_counter()
        train(cfg)
        seconds = time.perf_counter() - began
        (cfg.run_dir / "train_seconds.json").write_text(json.dumps({"seconds": seconds}))
        return f"trained {cfg.run_name} in {seconds:.0f} s"
    if evaluated(cfg, settings(args)) is None:
        began = time.perf_counter()
        evaluate_run(
            cfg.run_dir,
            samples=args.samples,
            temperature=args.temperature,
            top_p=args.top_p,
            sample_seed=args.sample_seed,
            max_new_tokens=args.max_new_tokens,
        )
        return f"evaluated {cfg.run_name} in {time.perf_counter() - began:.0f} s"
    missed = cfg.run_dir / "held_out_missed.json"
    if not missed.is_file():
        began = time.perf_counter()
        missed.write_text(json.dumps(by_group(cfg, margins(cfg))))
        return f"evaluated {cfg.run_name}'s held-out pairs in {time.perf_counter() - began:.0f} s"
    return None


def pooled(reports: dict[tuple[str, int], dict]) -> dict:
    """{model: {family: {domain: {"pass"|"rejected_like": {rate, low, high, n}}}}} over the seeds.

    SFT and ORPO: their own samples, every seed. Base: the samples of one evaluation (every
    evaluation holds the same base samples, drawn once with the same sample seed and cached)."""
    counts: dict = {}
    first = next(iter(reports))
    for key, report in reports.items():
        sides = {"trained": key[0]} | ({"base": "base"} if key == first else {})
        for side, model in sides.items():
            for generation in report["generations"]:
                domain = "ood" if generation["ood"] else "in_domain"
                for family in (generation["family"], "all"):
                    for dom in (domain, "all"):
                        cell = (
                            counts.setdefault(model, {})
                            .setdefault(family, {})
                            .setdefault(dom, {"pass": [0, 0], "rejected_like": [0, 0]})
                        )
                        for sample in generation[f"{side}_samples"]:
                            for key in ("pass", "rejected_like"):
                                cell[key][0] += sample[key]
                                cell[key][1] += 1
    return {
        model: {
            family: {
                dom: {key: rate(*c) for key, c in cells.items()} for dom, cells in domains.items()
            }
            for family, domains in families.items()
        }
        for model, families in counts.items()
    }


def rate(successes: int, n: int) -> dict:
    low, high = wilson_interval(successes, n)
    return {"rate": successes / n, "low": low, "high": high, "n": n}


def per_seed(reports: dict, family: str) -> dict:
    """Each run's sampled pass rate on `family` (all prompts), to show the spread over seeds."""
    return {
        f"{method}-{seed}": report["sampled"]["trained"][family]["all"]["pass"]["rate"]
        for (method, seed), report in sorted(reports.items())
    }


def table(result: dict) -> str:
    def cell(c: dict) -> str:
        return f"{100 * c['rate']:5.1f} [{100 * c['low']:4.1f}-{100 * c['high']:4.1f}]"

    lines = [
        f"{'family':<11}{'domain':<10}"
        + "".join(f"{m + ' pass':<20}" for m in MODELS)
        + "".join(f"{m + ' rej.':>10}" for m in MODELS)
    ]
    for family in result["pooled"]["base"]:
        for dom in ("in_domain", "ood", "all"):
            cells = [result["pooled"][m][family][dom] for m in MODELS]
            lines.append(
                f"{family:<11}{dom:<10}"
                + "".join(f"{cell(c['pass']):<20}" for c in cells)
                + "".join(f"{100 * c['rejected_like']['rate']:9.1f}%" for c in cells)
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="cpu-quick", choices=sorted(PRESETS))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--samples", type=int, default=5, help="samples per held-out prompt")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--sample-seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--next", action="store_true", help="one missing piece of work, then stop")
    parser.add_argument("--table", action="store_true", help="no work: the table from disk")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "why_orpo.json")
    args = parser.parse_args()
    runs = configs(args)
    if not args.table:
        for cfg in runs.values():
            done = step(args, cfg)
            if done:
                print(done, flush=True)
                if args.next:
                    return 0
    reports = {key: evaluated(cfg, settings(args)) for key, cfg in runs.items()}
    missing = [
        runs[key].run_name
        for key, report in reports.items()
        if report is None or not (runs[key].run_dir / "held_out_missed.json").is_file()
    ]
    if missing:
        print(f"not yet trained and evaluated: {', '.join(missing)}", file=sys.stderr)
        return 1
    seconds = {
        cfg.run_name: json.loads((cfg.run_dir / "train_seconds.json").read_text())["seconds"]
        for cfg in runs.values()
    }
    # Held-out preference accuracy of each final checkpoint: pairs missed / pairs, per group.
    missed = {
        cfg.run_name: json.loads((cfg.run_dir / "held_out_missed.json").read_text())
        for cfg in runs.values()
    }
    result = {
        "command": "python " + " ".join(sys.argv),
        "device": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "preset": args.preset,
        "overrides": args.set,
        "seeds": args.seeds,
        "sampling": settings(args),
        "train_seconds": seconds,
        "held_out_missed": missed,
        "pooled": pooled(reports),
        "per_seed_ranked": per_seed(reports, "ranked")
        if "ranked" in reports[next(iter(reports))]["sampled"]["trained"]
        else {},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(table(result))
    for name, groups in missed.items():
        print(f"{name} held-out pairs missed: " + ", ".join(f"{g} {m}" for g, m in groups.items()))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
