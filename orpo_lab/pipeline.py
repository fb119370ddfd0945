"""SFT then DPO, the two-stage pipeline ORPO replaces, at the step budget of one ORPO run.

    orpo-lab --preset cpu-quick --run-name two --sft-then-dpo 30     # 30 SFT + 30 DPO steps

Stage 1 (`<run_name>-sft`) trains SFT on the chosen replies for `sft_steps`; stage 2
(`<run_name>-dpo`) starts from stage 1's last checkpoint (`init_checkpoint`), which is also its
reference model, and trains DPO on the pairs for the remaining `max_steps - sft_steps`. Each stage
is an ordinary run (its own folder, curves, checkpoints and warmup + schedule over its own steps),
so both overlay with an ORPO run of `max_steps` in the app.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from orpo_lab.config import TrainConfig
from orpo_lab.rundir import RunDir


def stage_configs(
    cfg: TrainConfig, sft_steps: int, dpo_changes: dict | None = None
) -> tuple[TrainConfig, TrainConfig]:
    """(SFT config, DPO config) of the pipeline; ValueError when the budget cannot be split so.
    `dpo_changes`: the DPO stage's own settings (e.g. a lower learning_rate), over `cfg`'s."""
    if cfg.max_steps is None:
        raise ValueError(
            "SFT then DPO splits max_steps between its stages: set max_steps (e.g. the ORPO run's)."
        )
    if not 0 < sft_steps < cfg.max_steps:
        raise ValueError(
            f"The SFT stage takes {sft_steps} of max_steps {cfg.max_steps}: give it between 1 and "
            f"{cfg.max_steps - 1} steps, leaving the rest to DPO."
        )
    name = cfg.run_name or time.strftime("run-%Y%m%d-%H%M%S")
    common = {**cfg.to_dict(), "init_checkpoint": "", "ref_checkpoint": ""}
    sft = TrainConfig.from_dict(  # DPO's own beta is the DPO stage's: SFT keeps the default
        common
        | {"method": "sft", "run_name": f"{name}-sft", "max_steps": sft_steps}
        | {"dpo_beta": TrainConfig().dpo_beta}
    )
    dpo = TrainConfig.from_dict(
        common
        | {
            "method": "dpo",
            "run_name": f"{name}-dpo",
            "init_checkpoint": str(sft.run_dir),
            "max_steps": cfg.max_steps - sft_steps,
        }
        | (dpo_changes or {})
    )
    return sft, dpo


def sft_then_dpo(
    cfg: TrainConfig,
    sft_steps: int,
    callback: Callable[[dict], None] | None = None,
    stop_event: threading.Event | None = None,
    dpo_changes: dict | None = None,
) -> dict[str, dict]:
    """Train the two stages (`stage_configs`) one after the other; {"sft": its last train record,
    "dpo": DPO's}. A stage that ends early (a stop) ends the pipeline: DPO never starts from an
    unfinished SFT."""
    from orpo_lab.train import train

    sft, dpo = stage_configs(cfg, sft_steps, dpo_changes)
    last = {"sft": train(sft, callback=callback, stop_event=stop_event), "dpo": {}}
    if RunDir(sft.run_dir).read_status().get("status") != "finished":
        return last
    last["dpo"] = train(dpo, callback=callback, stop_event=stop_event)
    return last
