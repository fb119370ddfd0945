"""Run every notebook in full mode (ORPO_LAB_QUICK unset) and time it: the numbers in BENCHMARKS.md.

    .venv/bin/python bench/notebooks_full.py [--out DIR] [--only 04 05]

The notebooks run in order in one temporary runs folder (notebook 5 reuses notebook 4's runs), each in
a kernel of this interpreter. The executed copies are written to --out (default: a temporary folder),
so their full-mode outputs can be read; the stored notebooks are never touched.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import torch
import transformers
from bench_loss import device_name  # this folder: the machine's CPU name

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
sys.path.insert(0, str(ROOT / "tests"))
from notebook_client import SlicedPollClient  # noqa: E402 - nbclient without its lost-reply hang

KERNEL = "orpo-lab-bench"


def kernel_path(root: Path) -> Path:
    """A kernel spec that runs this interpreter (so another environment's python3 is never used)."""
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL}))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the executed copies")
    parser.add_argument("--only", nargs="*", default=None, help="notebook prefixes, e.g. 04 05")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="orpo-notebooks-"))
    out = args.out or work / "executed"
    out.mkdir(parents=True, exist_ok=True)
    os.environ.pop("ORPO_LAB_QUICK", None)
    os.environ["JUPYTER_PATH"] = str(kernel_path(work / "jupyter"))
    os.environ["ORPO_LAB_RUNS"] = str(work / "runs")
    print(
        f"# {device_name('cpu')}, python {platform.python_version()}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}"
    )
    print("| notebook | full mode, wall time |\n|---|---|")
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        if args.only and not any(path.name.startswith(p) for p in args.only):
            continue
        nb = nbformat.read(path, as_version=4)
        client = SlicedPollClient(
            nb, kernel_name=KERNEL, timeout=3600, resources={"metadata": {"path": str(NOTEBOOKS)}}
        )
        began = time.perf_counter()
        client.execute()
        seconds = time.perf_counter() - began
        nbformat.write(nb, out / path.name)
        print(f"| {path.name} | {seconds / 60:.1f} min ({seconds:.0f} s) |", flush=True)
    print(f"executed copies: {out}")


if __name__ == "__main__":
    main()
