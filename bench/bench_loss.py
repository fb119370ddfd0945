"""Peak memory and time of the ORPO loss from hidden states: full logits vs chunked log-probs.

One measurement = lm_head matmul + log-softmax + gather + sequence sums + orpo_loss + backward into
the hidden states (and the lm_head weight with --weight trainable), for `pairs` preference pairs
(2 * pairs rows: chosen then rejected) of length T. Each row is a prompt followed by a response;
only the response positions (--response-frac of T, the last ones) are scored, and the NLL is
response-only. "plain" builds the (rows, T, V) float32 logits (`token_logps`), "chunked" uses
`token_logps_from_hidden`.

Every measurement runs in a fresh subprocess, so peak memory is that of the loss alone:
CPU: ru_maxrss after the step minus the resident set size just before it; CUDA:
torch.cuda.max_memory_allocated minus memory allocated before it. Plain and chunked alternate
(P C, C P, P C, ...); the table gives medians. Shapes whose plain path would not fit in memory
are measured with fewer pairs, and the output says so.

    .venv/bin/python bench/bench_loss.py   # 4 shapes x 8 pairs x 3 reps: minutes on a GPU, hours on 2 cores
    .venv/bin/python bench/bench_loss.py --vocab 151936 --seq-len 2048 --pairs 1   # one shape
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from orpo_lab.loss import orpo_loss
from orpo_lab.token_logps import sequence_logps, token_logps, token_logps_from_hidden

GIB = 1024**3
MIB = 1024**2
PATHS = ("plain", "chunked")


def build_inputs(spec: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden (R, T, H), weight (V, H), targets (R, T) and target_seq (R, T) for one shape."""
    R, T, H, V = spec["rows"], spec["seq_len"], spec["hidden"], spec["vocab"]
    device, dtype = torch.device(spec["device"]), getattr(torch, spec["dtype"])
    gen = torch.Generator(device=device).manual_seed(0)
    # In-place scaling: a temporary (V, H) copy would raise the pre-step peak RSS.
    hidden = torch.randn(R, T, H, generator=gen, device=device, dtype=dtype).requires_grad_(True)
    weight = torch.randn(V, H, generator=gen, device=device, dtype=dtype).mul_(0.02)
    weight.requires_grad_(spec["weight"] == "trainable")
    prompt_len = T - response_len(spec)
    targets = torch.randint(0, V, (R, T), generator=gen, device=device)
    targets[:, :prompt_len] = -100  # the prompt scores nothing
    rows = torch.arange(R, device=device).unsqueeze(1).expand(R, T)
    target_seq = torch.where(targets != -100, rows, torch.full_like(rows, -1))
    return hidden, weight, targets, target_seq


def response_len(spec: dict) -> int:
    return max(1, round(spec["seq_len"] * spec["response_frac"]))


def loss_step(path: str, hidden, weight, targets, target_seq, chunk_size: int) -> None:
    """Forward and backward of the ORPO loss from hidden states, as a trainer would run it."""
    if path == "plain":
        tok = token_logps(F.linear(hidden, weight), targets)  # (R, T, V) logits live here
    else:
        tok = token_logps_from_hidden(hidden, weight, targets, chunk_size)
    pairs = hidden.shape[0] // 2
    sums, counts = sequence_logps(tok, target_seq, targets != -100, 2 * pairs)
    means = sums / counts.clamp(min=1)  # (2B,) mean log-prob per response
    nll = -sums[:pairs].sum() / counts[:pairs].sum()  # token mean over the chosen responses
    loss, _ = orpo_loss(means[:pairs], means[pairs:], nll, beta=0.1)
    loss.backward()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(spec: dict) -> dict:
    """Run once in this (fresh) process: peak bytes above the pre-step baseline, and seconds."""
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    # Warm up threads, kernels and autograd on a tiny shape so the timing is the step alone.
    tiny = dict(spec, rows=2, seq_len=8, vocab=64)
    loss_step(spec["path"], *build_inputs(tiny), spec["chunk_size"])
    inputs = build_inputs(spec)
    if cuda:  # one untimed step at the real shape: cuBLAS picks its kernels per shape
        loss_step(spec["path"], *inputs, spec["chunk_size"])
        inputs[0].grad = None
        inputs[1].grad = None
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = rss_bytes()
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    loss_step(spec["path"], *inputs, spec["chunk_size"])
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        exact = True
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        exact = peak > peak_before  # else the step never rose above set-up: a lower bound
    return {"peak_bytes": peak - baseline, "seconds": seconds, "exact": exact}


def estimate_bytes(spec: dict) -> int:
    """Memory the step needs above its inputs, from the tensors it must hold at its peak."""
    R, T, H, V = spec["rows"], spec["seq_len"], spec["hidden"], spec["vocab"]
    weight_grad = V * H * 4 if spec["weight"] == "trainable" else 0
    if spec["path"] == "plain":
        # log-softmax output (saved), its incoming gradient and the logits gradient: 3 x (R, T, V).
        return 3 * R * T * V * 4 + weight_grad + R * T * H * 4
    chunk = min(spec["chunk_size"], R * response_len(spec))
    return 2 * chunk * V * 4 + weight_grad + (V * H * 4 if spec["dtype"] != "float32" else 0)


def available_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info()[0]
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return info["MemAvailable"]


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    model = platform.processor() or "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores, torch {torch.get_num_threads()} threads"


def run_worker(spec: dict) -> dict:
    """Measure `spec` in a fresh Python process; a crash (e.g. out of memory) becomes an error."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[-300:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def fit_pairs(spec: dict, budget: int) -> int:
    """The most pairs (<= requested) whose plain step fits in `budget` bytes; 0 if none."""
    pairs = spec["rows"] // 2
    while pairs >= 1:
        if estimate_bytes(dict(spec, path="plain", rows=2 * pairs)) <= budget:
            return pairs
        pairs //= 2
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[49152, 151936])
    parser.add_argument("--seq-len", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--pairs", type=int, default=8, help="preference pairs (rows = 2 x pairs)")
    parser.add_argument("--hidden", type=int, default=896, help="hidden size H")
    parser.add_argument("--response-frac", type=float, default=0.5, help="scored share of T")
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--weight", choices=["frozen", "trainable"], default="frozen")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--reps", type=int, default=3, help="measurements per path and shape")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mem-gib", type=float, help="memory budget (default 70%% available)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(json.loads(args.worker))))
        return

    budget = int(args.mem_gib * GIB) if args.mem_gib else int(0.7 * available_bytes(args.device))
    print(f"device: {device_name(args.device)}; torch {torch.__version__}")
    print(f"command: {' '.join([os.path.relpath(sys.executable), *sys.argv])}")
    print(
        f"H={args.hidden}, response = last {args.response_frac:.0%} of T, weight {args.weight}, "
        f"{args.dtype}, chunk {args.chunk_size}, {args.reps} reps, budget {budget / GIB:.1f} GiB\n"
    )
    header = "| V | T | pairs (rows) | scored positions | peak plain | peak chunked | chunked/plain | time plain | time chunked | chunked/plain |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    notes = []
    for vocab in args.vocab:
        for seq_len in args.seq_len:
            spec = dict(
                vocab=vocab,
                seq_len=seq_len,
                rows=2 * args.pairs,
                hidden=args.hidden,
                response_frac=args.response_frac,
                chunk_size=args.chunk_size,
                weight=args.weight,
                dtype=args.dtype,
                device=args.device,
            )
            pairs = fit_pairs(spec, budget)
            need = estimate_bytes(dict(spec, path="plain")) / GIB
            if pairs < args.pairs:
                notes.append(
                    f"V={vocab}, T={seq_len}: plain at {args.pairs} pairs does not fit in "
                    f"{budget / GIB:.1f} GiB (needs ~{need:.1f} GiB); "
                    + (f"measured at {pairs} pairs." if pairs else "skipped.")
                )
                print(notes[-1], file=sys.stderr)
            if not pairs:
                continue
            spec["rows"] = 2 * pairs
            results = {path: [] for path in PATHS}
            for rep in range(args.reps):
                for path in PATHS if rep % 2 == 0 else PATHS[::-1]:
                    results[path].append(run_worker(dict(spec, path=path)))
                    print(f"  V={vocab} T={seq_len} {path}: {results[path][-1]}", file=sys.stderr)
            print(table_row(spec, results), flush=True)
    for note in notes:
        print(f"\n- {note}", end="")
    print()


def table_row(spec: dict, results: dict[str, list[dict]]) -> str:
    """One markdown row of medians; failed or inexact runs are named instead of hidden."""
    errors = [r["error"] for runs in results.values() for r in runs if "error" in r]
    scored = spec["rows"] * response_len(spec)
    lead = (
        f"| {spec['vocab']} | {spec['seq_len']} | {spec['rows'] // 2} ({spec['rows']}) | {scored} |"
    )
    if errors:
        return lead + f" failed: {errors[0]} |"
    peak = {p: statistics.median(r["peak_bytes"] for r in results[p]) / MIB for p in PATHS}
    secs = {p: statistics.median(r["seconds"] for r in results[p]) for p in PATHS}
    lower_bound = "" if all(r["exact"] for runs in results.values() for r in runs) else " (>=)"
    return (
        lead
        + f" {peak['plain']:.0f} MiB | {peak['chunked']:.0f} MiB{lower_bound} |"
        + f" {peak['chunked'] / peak['plain']:.1%} | {secs['plain']:.2f} s | {secs['chunked']:.2f} s |"
        + f" {secs['chunked'] / secs['plain']:.2f}x |"
    )


if __name__ == "__main__":
    main()
