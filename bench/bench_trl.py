"""Training throughput and peak memory: orpo_lab's `train()` vs TRL's `ORPOTrainer`, configured the same.

Both train the same LoRA (r, alpha, dropout 0, all linear layers) on the same model, batches
(TRL reads orpo_lab's batch order with a sequential sampler), max_length, beta, learning rate,
schedule (linear, no warmup), optimiser (torch AdamW) and clipping (1.0), without gradient
checkpointing; orpo_lab's NLL is set to TRL's scope (prompt + response). Precisions (`--precisions`,
default fp32,bf16 on CPU, bf16 on CUDA): fp32 = both in float32 (TRL: bf16=False, use_cpu=True);
bf16 = both load the base model in bf16, orpo_lab keeps its LoRA weights, optimiser state and loss in
float32 (its precision="bf16"), TRL trains with bf16=True (autocast) as its users would.

Steps, in order:
  1. check     step-0 loss: TRL's loss on its first batch vs orpo_lab's PairLogps + orpo_loss on
               the same token ids (fp32, every layout x chunk size); must agree within 1e-4.
               Also how TRL's tokenisation of the pairs differs from orpo_lab's.
  2. compare   orpo_lab and TRL in each precision, in turn, rep after rep, each run a fresh
               process: `--warmup` steps
               dropped, then `--steps` measured; median step time -> pairs/s, tokens/s; peak memory
               (CPU: ru_maxrss of the whole process; CUDA: torch.cuda.max_memory_allocated).
  3. ablation  orpo_lab's step for layout padded/packed/prefix x logps_chunk_size 0/1024, round robin.
  4. profile   torch.profiler table (top ops by self time) of one training step of each contender.
Step times are wall clock; process CPU time per step and the fastest step are reported too, because
on a shared machine other jobs inflate wall time. Results: OUT/results.json, OUT/summary.md,
OUT/profile_{ours,trl}-{fp32,bf16}.txt (one step in each precision), OUT/logs/ (one JSON per worker;
`--report-only OUT` re-renders them).

    .venv/bin/python bench/bench_trl.py                                # CPU, the default model
    .venv/bin/python bench/bench_trl.py --device cuda --gpu-model 1.5b --max-length 2048
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trl_contenders as tc

HERE = Path(__file__).resolve().parent
GIB, MIB = 1024**3, 1024**2
COMPILED = "bf16c"  # orpo_lab in bf16 with its decoder layers compiled (torch_compile=on)
# Every compiled contender: "fp32c" is the one to time where bf16 loses (a CPU without bf16 units).
COMPILED_ALL = {"bf16c": "bf16", "fp32c": "fp32"}
AUTO = "auto"  # orpo_lab's default: precision and torch_compile "auto" (measured by the run)
WORKERS = {"ours": tc.run_ours, "trl": tc.run_trl, "check": tc.loss_check, "ablation": tc.ablation}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--gpu-model",
        choices=sorted(tc.GPU_MODELS),
        default=None,
        help="a random-init Qwen2-style model of this class (vocab 151936); the default on CUDA is "
        "0.5b, on CPU the default model (give 'smoke' there to dry-run the GPU path in minutes)",
    )
    p.add_argument(
        "--tokenizer",
        default="default",
        help="tokenizer for the random-init model ('default' or a directory)",
    )
    p.add_argument("--batch", type=int, default=4, help="preference pairs per step")
    p.add_argument(
        "--precisions",
        default=None,
        help="comma-separated, of auto, fp32, bf16, bf16c and fp32c: each contender runs in each "
        "(default: auto,fp32,bf16,bf16c on CPU, bf16 on CUDA); bf16 = orpo_lab's bf16 base / "
        "TRL's bf16=True; bf16c, fp32c = orpo_lab in bf16, float32 with torch_compile=on; "
        "auto = orpo_lab's "
        "defaults, precision and torch_compile measured by the run (orpo_lab only)",
    )
    p.add_argument(
        "--auto-steps",
        type=int,
        default=60,
        help="the run length 'auto' decides for (the cpu-quick preset's 60 steps); the measured "
        "steps end it with a stop",
    )
    p.add_argument("--max-length", type=int, default=None, help="default: 256 on CPU, 2048 on CUDA")
    p.add_argument("--max-prompt-length", type=int, default=None, help="default: max_length // 2")
    p.add_argument("--steps", type=int, default=10, help="measured steps per repetition")
    p.add_argument("--warmup", type=int, default=3, help="steps dropped before measuring")
    p.add_argument(
        "--reps", type=int, default=3, help="repetitions of each contender (alternating)"
    )
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--beta", type=float, default=0.1, help="TRL's default lambda")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=int, default=32)
    p.add_argument(
        "--layout",
        choices=("padded", "packed", "prefix"),
        default="prefix",
        help="orpo_lab's layout in the comparison (its default)",
    )
    p.add_argument(
        "--chunk", type=int, default=1024, help="orpo_lab's logps_chunk_size (its default)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ablation-rounds", type=int, default=2)
    p.add_argument("--ablation-steps", type=int, default=4)
    p.add_argument(
        "--skip", nargs="*", default=[], choices=("check", "compare", "ablation", "profile")
    )
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="GPU peak dense bf16 TFLOP/s for MFU (H100/H200 SXM: 989)",
    )
    p.add_argument(
        "--out", default=None, help="default: bench/results/trl-<device>[-<gpu-model>-<max-length>]"
    )
    p.add_argument(
        "--keep-caches",
        action="store_true",
        help="start from OUT's autotune and inductor caches (an earlier bench's measurements), "
        "not empty ones",
    )
    p.add_argument("--report-only", metavar="OUT", help="re-render OUT's summary from OUT/logs")
    p.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p


def worker(name: str, spec: dict, out: Path, tag: str) -> dict:
    """Run one worker in a fresh Python process; its log goes to OUT/logs/<tag>.log (never a PIPE)."""
    (out / "logs").mkdir(parents=True, exist_ok=True)
    spec_file, result = out / "logs" / f"{tag}.spec.json", out / "logs" / f"{tag}.json"
    spec_file.write_text(json.dumps(spec))
    result.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        name,
        "--spec",
        str(spec_file),
        "--result",
        str(result),
    ]
    # Caches of this bench's own, empty at its start: auto's first rep measures (and compiles
    # cold), the later reps read what it measured, as a user's later runs would.
    env = os.environ | {
        "ORPO_LAB_AUTOTUNE_CACHE": str(out / "autotune.json"),
        "TORCHINDUCTOR_CACHE_DIR": str(out / "inductor"),
    }
    began = time.perf_counter()
    with open(out / "logs" / f"{tag}.log", "w") as log:
        code = subprocess.run(
            cmd, stdout=log, stderr=subprocess.STDOUT, cwd=HERE.parent, env=env
        ).returncode
    if code != 0:
        tail = (out / "logs" / f"{tag}.log").read_text()[-3000:]
        raise RuntimeError(f"worker {tag} failed (exit {code}); log tail:\n{tail}")
    print(f"  {tag}: {time.perf_counter() - began:.0f} s", flush=True)
    return json.loads(result.read_text())


def environment(device: str) -> dict:
    import peft
    import torch
    import transformers
    import trl

    from orpo_lab.autotune_cache import kernels

    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    env = {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "trl": trl.__version__,
        "kernels": kernels(),  # e.g. ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16: AMX off
    }
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def prepare(args, out: Path) -> dict:
    """The settings every worker shares, with the data (and on CUDA the model) written under OUT."""
    cuda = args.device == "cuda"
    max_length = args.max_length or (2048 if cuda else 256)
    spec = {
        "device": args.device,
        "precision": "bf16" if cuda else "fp32",
        "model": "default",
        "precisions": args.precisions.split(",")
        if args.precisions
        else (["bf16"] if cuda else [AUTO, "fp32", "bf16", COMPILED]),
        "batch": args.batch,
        "max_length": max_length,
        "max_prompt_length": args.max_prompt_length or max_length // 2,
        "steps": args.steps,
        "warmup": args.warmup,
        "lr": args.lr,
        "beta": args.beta,
        "lora_r": args.lora_r,
        "lora_alpha": args.lora_alpha,
        "layout": args.layout,
        "chunk": args.chunk,
        "seed": args.seed,
        "rounds": args.ablation_rounds,
        "data_dir": str(out / "data"),
        "auto_steps": args.auto_steps,
    }
    rows, source = tc.default_rows()
    if args.gpu_model:
        from orpo_lab.model import load_tokenizer

        model_dir = Path(tempfile.mkdtemp(prefix=f"bench-{args.gpu_model}-"))
        tc.prepare_gpu_model(args.gpu_model, model_dir, args.tokenizer)
        rows = tc.long_rows(rows, load_tokenizer(args.tokenizer), max_length, n=256)
        spec["model"], source = (
            str(model_dir),
            f"{source}, cut into pairs of ~0.9 x max_length tokens",
        )
    tc.write_rows(rows, out / "data")
    spec["data_source"], spec["pairs"] = source, len(rows)
    return spec


def compare(spec: dict, reps: int, out: Path) -> dict:
    """Every contender (orpo_lab and TRL in each precision) once per rep, in turn: load drift on a
    shared machine hits all of them alike."""
    runs = {key: [] for key in contenders(spec)}
    for rep in range(reps):
        for key in runs:
            name, precision = key.split("-")
            runs[key].append(worker(name, spec | settings(precision), out, f"{key}-{rep}"))
    return summarise(spec, runs)


def settings(precision: str) -> dict:
    """The worker settings of a precision name: every contender but auto says what it runs in."""
    if precision in COMPILED_ALL:
        return {"precision": COMPILED_ALL[precision], "torch_compile": "on", "auto_steps": 0}
    if precision == AUTO:
        return {"precision": "auto", "torch_compile": "auto"}
    return {"precision": precision, "torch_compile": "off", "auto_steps": 0}


def contenders(spec: dict) -> list[str]:
    """ "ours-fp32", "trl-fp32", "ours-bf16", ...: orpo_lab and TRL in each of spec["precisions"]
    (TRL not in bf16c, fp32c: the compiled contenders are orpo_lab's alone)."""
    return [
        f"{name}-{p}"
        for p in spec["precisions"]
        for name in ("ours", "trl")
        if not (name == "trl" and (p in COMPILED_ALL or p == AUTO))
    ]


def summarise(spec: dict, runs: dict[str, list[dict]]) -> dict:
    """Medians over every measured step of every rep, ratios, and (CUDA) MFU."""
    summary = {}
    for key, results in runs.items():
        summary[key] = {
            "median_step_s": statistics.median(s for r in results for s in r["step_s"]),
            "median_cpu_step_s": statistics.median(s for r in results for s in r["cpu_step_s"]),
            "min_step_s": min(s for r in results for s in r["step_s"]),
            "pairs_per_s_per_rep": [r["pairs_per_s"] for r in results],
            "tokens_per_s_per_rep": [r["tokens_per_s"] for r in results],
            "peak_bytes": statistics.median(r["peak_bytes"] for r in results),
            "before_train_bytes": statistics.median(r["before_train_bytes"] for r in results),
            "tokens_per_step": results[0]["tokens_per_step"],
            "loss_last": [r["loss_last"] for r in results],
            "first_step_s": [r.get("first_step_s") for r in results],
        }
        s = summary[key]
        s["pairs_per_s"] = spec["batch"] / s["median_step_s"]
        s["tokens_per_s"] = statistics.median(s["tokens_per_s_per_rep"])
    trl = next((r for key, r in runs.items() if key.startswith("trl")), None)
    n = summary["matmul_params"] = trl[0]["matmul_params"] if trl else None  # auto alone: no TRL
    pairs = [(f"ours-{p}", f"trl-{p}") for p in spec["precisions"]]
    pairs.append(("ours-bf16", "trl-fp32"))  # the issue-16 target: against TRL's CPU default
    pairs.append(("ours-bf16", "ours-fp32"))  # what bf16 itself buys
    ours_c = f"ours-{COMPILED}"
    pairs += [
        (ours_c, "trl-fp32"),
        (ours_c, "trl-bf16"),
        (ours_c, "ours-bf16"),
        ("ours-fp32c", "trl-fp32"),
        ("ours-fp32c", "ours-fp32"),
    ]  # what compile buys
    auto = f"ours-{AUTO}"
    if auto in runs:
        chosen = [r["started"] for r in runs[auto]]
        same = "bf16" if chosen[0]["precision"] == "bf16" else "fp32"
        others = {"ours-fp32", "ours-bf16", *(f"ours-{c}" for c in COMPILED_ALL)} & set(runs)
        best = min(others, key=lambda k: summary[k]["median_step_s"]) if others else None
        pairs += [(auto, "trl-fp32"), (auto, f"trl-{same}")] + ([(auto, best)] if best else [])
        # ... and against the contender that runs what it chose (the same configuration)
        compiled = "c" if chosen[0]["torch_compile"] else ""
        if f"ours-{same}{compiled}" in runs and f"ours-{same}{compiled}" != best:
            pairs.append((auto, f"ours-{same}{compiled}"))
        summary["auto"] = {
            "chosen": [(c["precision"], c["torch_compile"]) for c in chosen],
            "reasons": [(c["precision_reason"], c["torch_compile_reason"]) for c in chosen],
            "probe": [c["autotune"] for c in chosen],
            "setup_s": [r["setup_s"] for r in runs[auto]],
            "best_contender": best,
        }
    summary["ratios"] = {
        f"{a} / {b}": ratios(runs[a], runs[b], summary[a], summary[b])
        for a, b in pairs
        if a in runs and b in runs
    }
    if spec["device"] == "cuda":
        # LoRA: forward 2N + backward into activations 2N FLOPs per token; the frozen base has no
        # weight gradients (full fine-tuning would be 6N). N = weights of all linear layers incl. lm_head.
        for key in runs:
            flops = 4 * n * summary[key]["tokens_per_s"]
            summary[key]["mfu"] = flops / (spec["peak_tflops"] * 1e12)
    return summary


def ratios(runs_a: list[dict], runs_b: list[dict], a: dict, b: dict) -> dict:
    """How much faster (and how much bigger) contender a is than b."""
    return {
        "pairs_per_s": a["pairs_per_s"] / b["pairs_per_s"],
        # Same work per step on both sides, so the CPU-time ratio is the throughput ratio on idle cores.
        "cpu": b["median_cpu_step_s"] / a["median_cpu_step_s"],
        # The fastest step is the one least slowed by other jobs: on a shared machine, the best estimate.
        "min_step": b["min_step_s"] / a["min_step_s"],
        # Each rep's runs are neighbours in time: their ratio cancels slow load drift.
        "per_rep": [
            x["pairs_per_s"] / y["pairs_per_s"] for x, y in zip(runs_a, runs_b, strict=True)
        ],
        "peak": a["peak_bytes"] / b["peak_bytes"],
    }


def markdown(results: dict) -> str:
    spec, env, lines = results["spec"], results["env"], []
    mem_note = (
        "torch.cuda.max_memory_allocated"
        if spec["device"] == "cuda"
        else "ru_maxrss of the whole process (interpreter, libraries, model, data, training)"
    )
    lines.append(
        f"Device: {env.get('gpu', env['cpu'])}, {env['cores']} cores; torch {env['torch']}, "
        f"transformers {env['transformers']}, peft {env['peft']}, trl {env['trl']}; kernels "
        + ", ".join(f"{k} {v}" for k, v in env.get("kernels", {}).items())
        + "."
    )
    lines.append(
        f"Data: {spec['data_source']}; batch {spec['batch']}, max_length {spec['max_length']}, "
        f"{spec['warmup']} warmup + {spec['steps']} measured steps x {spec['reps']} reps."
    )
    if "check" in results:
        c = results["check"]
        lines.append(
            f"\nStep-0 loss: TRL {c['trl']['loss']:.6f}; orpo_lab max |diff| over 6 "
            f"layout/chunk configs {c['max_abs_diff']:.2e} -> "
            f"{'PASS' if c['within_1e-4'] else 'FAIL'} (tolerance 1e-4)."
        )
        for kind, count in c["tokenisation"]["counts"].items():
            lines.append(f"- tokenisation ({count} responses): {kind}")
    if "compare" in results:
        s = results["compare"]
        mfu = spec["device"] == "cuda"
        lines += [
            "",
            "| contender | median step (s) | CPU s/step | pairs/s | tokens/s | "
            "peak memory (GiB) | before step 1 (GiB) |" + (" MFU |" if mfu else ""),
            "|---|---|---|---|---|---|---|" + ("---|" if mfu else ""),
        ]
        for key in contenders(spec):
            name, precision = key.split("-")
            label = (
                f"orpo_lab ({spec['layout']}, chunk {spec['chunk']})"
                if name == "ours"
                else "TRL ORPOTrainer"
            ) + f", {precision}"
            r = s[key]
            if precision in COMPILED_ALL:
                first = ", ".join(f"{t:.1f}" for t in r["first_step_s"] if t is not None)
                label = label[: -len(precision)] + (
                    f"{COMPILED_ALL[precision]}, torch.compile (first steps: {first} s)"
                )
            if precision == AUTO:
                chose = ", ".join(f"{p}{' compiled' if c else ''}" for p, c in s["auto"]["chosen"])
                setup = ", ".join(f"{t:.1f}" for t in s["auto"]["setup_s"])
                label += f" (chose per rep: {chose}; start to step 1: {setup} s)"
            lines.append(
                f"| {label} | {r['median_step_s']:.3f} | {r['median_cpu_step_s']:.2f} | "
                f"{r['pairs_per_s']:.2f} | "
                f"{r['tokens_per_s']:.0f} | {r['peak_bytes'] / GIB:.2f} | "
                f"{r['before_train_bytes'] / GIB:.2f} |"
                + (f" {100 * r['mfu']:.1f}% |" if mfu else "")
            )
        lines.append("")
        for pair, x in s["ratios"].items():
            per_rep = ", ".join(f"x{v:.2f}" for v in x["per_rep"])
            lines.append(
                f"- {pair}: pairs/s x{x['pairs_per_s']:.2f} (wall; per rep: {per_rep}), "
                f"x{x['cpu']:.2f} by CPU time per step, x{x['min_step']:.2f} by fastest "
                f"step; peak memory x{x['peak']:.2f}"
            )
        if "auto" in s:
            lines.append("\nauto's decisions, per rep (its started event):")
            for (pw, cw), probe in zip(s["auto"]["reasons"], s["auto"]["probe"], strict=True):
                lines.append(f"- precision: {pw}; torch_compile: {cw}; measured: {probe}")
        lines.append(f"\nMemory: {mem_note}.")
    if "ablation" in results:
        lines += [
            "",
            "| orpo_lab layout / chunk | median step (s) | CPU s/step | pairs/s |"
            + (" peak (GiB) |" if spec["device"] == "cuda" else ""),
            "|---|---|---|---|" + ("---|" if spec["device"] == "cuda" else ""),
        ]
        for key, r in results["ablation"].items():
            lines.append(
                f"| {key} | {r['median_step_s']:.3f} | {r['median_cpu_step_s']:.2f} | "
                f"{r['pairs_per_s']:.2f} |"
                + (f" {r['peak_bytes'] / GIB:.2f} |" if "peak_bytes" in r else "")
            )
    return "\n".join(lines) + "\n"


def report_only(out: Path) -> int:
    """Rebuild OUT/results.json and OUT/summary.md from the worker results under OUT/logs."""
    results = json.loads((out / "results.json").read_text())
    logs = out / "logs"
    runs = {
        key: [
            json.loads(f.read_text())
            for f in sorted(logs.glob(f"{key}-*.json"))
            if f.stem.split("-")[-1].isdigit()
        ]
        for key in contenders(results["spec"])
    }  # ours-fp32-0.json, not ours-fp32-0.spec.json
    if all(runs.values()):
        results["compare"] = summarise(results["spec"], runs)
    for name in ("check", "ablation"):
        if (logs / f"{name}.json").is_file():
            results[name] = json.loads((logs / f"{name}.json").read_text())
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "summary.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:  # inside a fresh subprocess
        result = WORKERS[args.worker](json.loads(Path(args.spec).read_text()))
        Path(args.result).write_text(json.dumps(result, indent=1))
        return 0
    if args.report_only:
        return report_only(Path(args.report_only))
    if args.device == "cuda":
        args.gpu_model = args.gpu_model or "0.5b"
    tag = f"trl-{args.device}"
    if args.gpu_model:
        tag += f"-{args.gpu_model}-{args.max_length or (2048 if args.device == 'cuda' else 256)}"
    out = Path(args.out or HERE / "results" / tag)
    out.mkdir(parents=True, exist_ok=True)
    if not args.keep_caches:  # the workers' caches start empty
        shutil.rmtree(out / "inductor", ignore_errors=True)
        (out / "autotune.json").unlink(missing_ok=True)
    began = time.perf_counter()
    spec = prepare(args, out) | {"reps": args.reps, "peak_tflops": args.peak_tflops}
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "spec": spec,
        "env": environment(args.device),
    }
    if "check" not in args.skip:
        print("step-0 loss check", flush=True)
        results["check"] = worker("check", spec | {"precision": "fp32"}, out, "check")
    if "compare" not in args.skip:
        print("throughput: orpo_lab and TRL alternating", flush=True)
        results["compare"] = compare(spec, args.reps, out)
    if "ablation" not in args.skip:
        print("ablation: layout x logps_chunk_size", flush=True)
        ab = spec | {"steps": args.ablation_steps, "warmup": 1}
        results["ablation"] = worker("ablation", ab, out, "ablation")
    if "profile" not in args.skip:
        print("profile: one step each", flush=True)
        for tag in contenders(spec):
            name, precision = tag.split("-")
            prof = (
                spec
                | settings(precision)
                | {"steps": 1, "warmup": 1, "profile": str(out / f"profile_{tag}.txt")}
            )
            worker(name, prof, out, f"profile-{tag}")
    results["wall_s"] = time.perf_counter() - began
    (out / "results.json").write_text(json.dumps(results, indent=1))
    text = markdown(results)
    (out / "summary.md").write_text(text)
    print(text + f"\nwall time {results['wall_s']:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
