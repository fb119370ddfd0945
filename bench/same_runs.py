"""Did two code versions train the same runs? Compares two runs folders (e.g. bench/runs of an old
and a new checkout, each after `python bench/alignment.py --set precision=fp32 torch_compile=off
--train-only`): every train and eval record's values, timing left out, and every checkpoint's
adapter weights, byte for byte.

    python bench/same_runs.py OLD_RUNS NEW_RUNS [RUN ...]    # runs: orpo-default sft-default

Exit status 0 when everything is identical, 1 otherwise (the first difference is printed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

TIMING = {"tokens_per_s", "pairs_per_s", "step_s", "elapsed_s", "eta_s"}


def records(folder: Path) -> list[dict]:
    rows = (json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines())
    return [
        {k: v for k, v in row.items() if k not in TIMING}
        for row in rows
        if row["kind"] in ("train", "eval")
    ]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def compare(old: Path, new: Path) -> bool:
    before, after = records(old), records(new)
    same = before == after
    print(f"{old.name}: {len(before)} vs {len(after)} train/eval records, identical: {same}")
    for a, b in zip(before, after, strict=False):
        if a != b:
            diff = {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
            print(f"  first difference: {diff}")
            break
    last = [r for r in after if r["kind"] == "eval"][-1]
    print(
        f"  last eval: accuracy {last['eval/accuracy']}, chosen {last['eval/logps_chosen']}, "
        f"rejected {last['eval/logps_rejected']}"
    )
    for checkpoint in sorted((old / "checkpoints").iterdir()):
        hashes = [
            digest(root / "checkpoints" / checkpoint.name / "adapter_model.safetensors")
            for root in (old, new)
        ]
        print(f"  {checkpoint.name} adapter sha256 {hashes[0]} vs {hashes[1]}")
        same &= hashes[0] == hashes[1]
    return same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("runs", nargs="*", default=["orpo-default", "sft-default"])
    args = parser.parse_args()
    results = [compare(args.old / run, args.new / run) for run in args.runs]
    print("identical" if all(results) else "DIFFERENT")
    return 0 if all(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
