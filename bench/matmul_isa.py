"""One matmul of the default model's MLP shape in float32 and bf16, under each oneDNN instruction limit.

    python bench/matmul_isa.py                       # no limit, AVX512_CORE_BF16, AVX512_CORE
    python bench/matmul_isa.py --limits "" AVX512_CORE_BF16

torch's bf16 matmuls on a CPU go to oneDNN, which picks its kernel by the instructions the CPU has;
`ONEDNN_MAX_CPU_ISA` holds it below them (AVX512_CORE_BF16: the AVX512-BF16 dot products of Zen 4 and
Cooper Lake, no AMX tiles). Each limit runs in a fresh process (oneDNN reads it once) and prints the
median of `--reps` timed products after 3 untimed ones, and the kernel oneDNN used (ONEDNN_VERBOSE).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import torch


def measure(rows: int, inner: int, cols: int, reps: int) -> None:
    torch.manual_seed(0)
    a, b = torch.randn(rows, inner), torch.randn(inner, cols)
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        for _ in range(3):
            x @ y
        times = []
        for _ in range(reps):
            began = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - began)
        print(
            f"{str(dtype).removeprefix('torch.')} {statistics.median(times) * 1e3:.2f} ms",
            flush=True,
        )


def kernel(limit: str, rows: int, inner: int, cols: int) -> str:
    """The oneDNN kernel of one bf16 product under `limit` (ONEDNN_VERBOSE's implementation field)."""
    code = f"import torch; torch.randn({rows}, {inner}).bfloat16() @ torch.randn({inner}, {cols}).bfloat16()"
    env = os.environ | {"ONEDNN_MAX_CPU_ISA": limit, "ONEDNN_VERBOSE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    ).stdout
    found = re.search(r"primitive,exec,cpu,matmul,([^,]+),", out)
    return found.group(1) if found else "(not oneDNN)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--limits", nargs="+", default=["", "AVX512_CORE_BF16", "AVX512_CORE"])
    parser.add_argument("--shape", default="1024x576:576x1536", help="rows x inner : inner x cols")
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    (rows, inner), (_, cols) = (map(int, part.split("x")) for part in args.shape.split(":"))
    if args.worker:
        measure(rows, inner, cols, args.reps)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, shape {args.shape}")
    for limit in args.limits:
        env = os.environ | {"ONEDNN_MAX_CPU_ISA": limit}
        out = subprocess.run(
            [sys.executable, __file__, "--worker", "--shape", args.shape, "--reps", str(args.reps)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        times = ", ".join(out.split("\n")[:2])
        print(f"{limit or 'no limit':18s} {times}; bf16 kernel {kernel(limit, rows, inner, cols)}")


if __name__ == "__main__":
    main()
