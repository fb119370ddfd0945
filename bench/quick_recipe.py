"""Notebook 4's two quick runs (ORPO at lambda = the preset's beta, SFT at 0) with the preset changed,
and what `tests/test_notebooks.py::test_04_training` asserts of them: does a cheaper quick recipe
still show what the notebook says?

    python bench/quick_recipe.py                                  # the preset as it is
    python bench/quick_recipe.py '{"max_steps": 16, "eval_every": 8}'

Runs go to a temporary folder. Prints each run's seconds and the held-out and training numbers the
test bounds, with the test's bound beside each.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time

from orpo_lab.config import TrainConfig
from orpo_lab.plots import series
from orpo_lab.presets import PRESETS
from orpo_lab.train import train


def main() -> None:
    changes = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    settings = PRESETS["notebook-quick"] | {"device": "cpu"} | changes
    records = {}
    with tempfile.TemporaryDirectory() as runs:
        for name, beta in (("orpo", settings["beta"]), ("sft", 0.0)):
            cfg = TrainConfig(**{**settings, "beta": beta}, output_dir=runs, run_name=name)
            began = time.perf_counter()
            records[name] = []
            train(cfg, callback=records[name].append)
            print(f"{name}: {cfg.max_steps} steps in {time.perf_counter() - began:.1f} s")

    def values(name: str, key: str) -> list[float]:
        return series(records[name], key)[1]

    rejected = {n: values(n, "eval/logps_rejected") for n in records}
    chosen = {n: values(n, "eval/logps_chosen") for n in records}
    sft_rise = rejected["sft"][-1] - rejected["sft"][0]
    orpo_fall = rejected["orpo"][0] - rejected["orpo"][-1]
    print(f"changes: {changes or 'none'}")
    print(
        f"held-out rejected: SFT {sft_rise:+.3f} (test: > +0.15), ORPO {-orpo_fall:+.3f} (< -0.05)"
    )
    print(f"  their difference {sft_rise + orpo_fall:.3f} (> 0.4)")
    for n in records:
        print(f"held-out chosen, {n}: {chosen[n][-1] - chosen[n][0]:+.3f} (> +0.5)")
    last = {n: values(n, "logps/rejected")[-1] for n in records}
    print(
        f"last training batch, rejected: ORPO {last['orpo']:.3f}, SFT {last['sft']:.3f} (ORPO below SFT - 0.3)"
    )
    margin = {n: chosen[n][-1] - rejected[n][-1] for n in records}
    print(
        f"final held-out margin: ORPO {margin['orpo']:+.3f}, SFT {margin['sft']:+.3f} (ORPO above SFT + 0.5)"
    )


if __name__ == "__main__":
    main()
