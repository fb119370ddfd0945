"""Where a run starts (`init_checkpoint`) and DPO's reference model: checked before training,
and the reference's log-probs precomputed once.

DPO needs log pi_ref(y|x) of every pair it trains on. They are computed once, before step 1, over
exactly the training pairs the run's steps will visit (TRL's `precompute_ref_log_probs`, limited
to the pairs used), kept in the run folder (`RunDir.reference_path`) for a resume, and handed to
each micro-batch as `batch["ref_logps"]` (B, 2). Why precompute rather than a reference forward
in every step: one no-grad forward per distinct pair instead of one per pair per step, nothing
held in memory while training, and one way for every kind of run (LoRA, QLoRA, every weight).

The reference is, by default, the run's starting point (`init_checkpoint`, else the base model).
Before step 1 that is the model being trained, so its log-probs come from those very weights, in
the run's precision and code path (the DPO loss at step 0 is log 2, its reward margin 0), without
a second copy of the weights. Another reference, for a LoRA run: the base model is the same model
with its adapter disabled (peft `disable_adapter`); a LoRA checkpoint is loaded as a second
adapter "ref" on the same base, active only while the reference is computed, then deleted. A run
that trains every weight loads another reference as its own model and frees it afterwards.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from orpo_lab.adapter import public_base_id
from orpo_lab.checkpoint import CheckpointError, read_state
from orpo_lab.config import TrainConfig
from orpo_lab.rundir import RunDir
from orpo_lab.step import TrainingError, held_out_logps, micro_batch_indices

BASE = "base"  # ref_checkpoint: the base model itself


def resolve_checkpoint(value: str, field: str) -> Path:
    """The checkpoint folder `value` names: a checkpoint, or a run folder (its last checkpoint).

    CheckpointError saying what is there instead and what to give."""
    path = Path(value).expanduser()
    if not path.exists():
        raise CheckpointError(
            f"{field} {value!r} does not exist: give a checkpoint folder "
            "(runs/NAME/checkpoints/step-NNNNNN) or a run folder (runs/NAME, its last checkpoint)."
        )
    if (path / "trainer_state.json").is_file():
        return path
    run = RunDir(path)
    if run.exists() or run.checkpoints_dir.is_dir():
        latest = run.latest_checkpoint()
        if latest is None:
            raise CheckpointError(
                f"{field}: run {path} has no checkpoint yet (it saves every save_every steps and "
                "at its end): wait for one, or name a checkpoint folder of another run."
            )
        return latest
    read_state(path)  # raises: "not an ORPO Lab checkpoint (no trainer_state.json) ..."
    return path


def _same_model(a: str, b: str) -> bool:
    if public_base_id(a) == public_base_id(b):
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def _checked(cfg: TrainConfig, field: str) -> Path:
    path = resolve_checkpoint(getattr(cfg, field), field)
    base = read_state(path)["config"]["model"]
    if not _same_model(base, cfg.model):
        raise CheckpointError(
            f"{field} {path} was trained on the base model {base!r}, but this run trains "
            f"{cfg.model!r}: a starting point or a DPO reference must be a checkpoint of the same "
            f"base model. Give a checkpoint of {cfg.model!r}, or set model to {base!r}."
        )
    return path


def check_start(cfg: TrainConfig) -> None:
    """Before a run's folder exists: `init_checkpoint` and `ref_checkpoint` name checkpoints of
    this run's base model, of a kind it can start from. CheckpointError saying what to change."""
    if cfg.init_checkpoint:
        path = _checked(cfg, "init_checkpoint")
        adapter = (path / "adapter_config.json").is_file()
        if adapter and cfg.full_finetune:
            raise CheckpointError(
                f"init_checkpoint {path} holds a LoRA adapter, but full_finetune trains every "
                "weight: drop full_finetune, or export it merged (--export) and give that as model."
            )
        if not adapter and not cfg.full_finetune:
            raise CheckpointError(
                f"init_checkpoint {path} holds a fully fine-tuned model: train a LoRA on it by "
                "giving it as model (it is a model folder), or set full_finetune to continue it."
            )
    if cfg.ref_checkpoint and cfg.ref_checkpoint != BASE:
        _checked(cfg, "ref_checkpoint")


def start_checkpoint(cfg: TrainConfig) -> Path | None:
    """The checkpoint a new run starts from (`init_checkpoint`), or None: the base model."""
    return (
        resolve_checkpoint(cfg.init_checkpoint, "init_checkpoint") if cfg.init_checkpoint else None
    )


def reference_source(cfg: TrainConfig) -> Path | str | None:
    """DPO's reference: None when it is the run's starting point, BASE, or a checkpoint folder."""
    start = start_checkpoint(cfg)
    if not cfg.ref_checkpoint or (cfg.ref_checkpoint == BASE and start is None):
        return None
    if cfg.ref_checkpoint == BASE:
        return BASE
    ref = resolve_checkpoint(cfg.ref_checkpoint, "ref_checkpoint")
    return None if start is not None and ref.resolve() == start.resolve() else ref


def describe(cfg: TrainConfig) -> str:
    """The reference in words, for the started event and the model card."""
    source = reference_source(cfg)
    if source is None:
        start = start_checkpoint(cfg)
        return f"the starting point ({start or 'the base model ' + cfg.model})"
    return f"the base model {cfg.model}" if source == BASE else str(source)


def visited_pairs(n: int, steps: int, cfg: TrainConfig, world: int) -> list[int]:
    """Sorted indices of the training pairs that optimiser steps 1..steps visit, all processes."""
    seen: set[int] = set()
    for k in range(steps * cfg.grad_accum):
        seen.update(micro_batch_indices(k, n, cfg.batch_size * world, cfg.seed))
    return sorted(seen)


@contextmanager
def as_reference(pair_logps, cfg: TrainConfig, source):
    """`pair_logps` (a `PairLogps` of the model being trained, before step 1) computing as DPO's
    reference `source` (see `reference_source`); the model is as it was afterwards."""
    from peft import PeftModel

    from orpo_lab.logps import PairLogps

    model = pair_logps.model
    lora = isinstance(model, PeftModel)
    if source is None:
        yield pair_logps
    elif lora and source == BASE:
        with model.disable_adapter():
            yield pair_logps
    elif lora and (Path(source) / "adapter_config.json").is_file():
        active = model.active_adapter
        model.load_adapter(str(source), adapter_name="ref")
        model.set_adapter("ref", inference_mode=True)
        try:
            yield pair_logps
        finally:
            model.set_adapter(active)  # trainable again, as it was
            model.delete_adapter("ref")
    else:  # every weight trained (or a fully fine-tuned reference): a model of its own, freed after
        yield PairLogps(_reference_model(cfg, source, model), cfg.nll_scope, pair_logps.chunk_size)


def _reference_model(cfg: TrainConfig, source, model):
    from orpo_lab.model import attach_adapter, load_model

    path = cfg.model if source == BASE else str(source)
    adapter = source != BASE and (Path(source) / "adapter_config.json").is_file()
    dtype = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(
        next(model.parameters()).dtype, "fp32"
    )
    ref, _ = load_model(
        cfg.model if adapter else path,
        str(next(model.parameters()).device),
        dtype,
        cfg.trust_remote_code,
    )
    return attach_adapter(ref, source) if adapter else ref


def reference_logps(
    cfg: TrainConfig,
    pair_logps,
    train_pairs: list,
    pad_id: int,
    accelerator,
    steps: int,
    folder: RunDir,
    start: int,
) -> tuple[torch.Tensor | None, dict]:
    """DPO's reference: (N, 2) SUMMED log-probs (chosen, rejected) for every training pair (NaN
    where no step visits it), or None for another method; and what the started event records
    ("init_checkpoint"; for DPO "reference", "reference_pairs" computed, "reference_s" taken).

    At step 0 they are computed (see the module docstring) and saved; a resume reads them back."""
    if start:  # resumed: the weights are the run's own checkpoint, the reference its saved one
        info = {"init_checkpoint": cfg.init_checkpoint}
        if cfg.method != "dpo":
            return None, info
        return _saved(cfg, folder, len(train_pairs), steps, accelerator, start), info
    info = {"init_checkpoint": str(start_checkpoint(cfg) or "")}
    if cfg.method != "dpo":
        return None, info
    info["reference"] = describe(cfg)
    began = time.perf_counter()
    world, rank = accelerator.num_processes, accelerator.process_index
    order = visited_pairs(len(train_pairs), steps, cfg, world)
    chunk = math.ceil(len(order) / world)  # each process computes a share; all get every value
    mine = (order[rank * chunk : (rank + 1) * chunk] + order[-1:] * chunk)[:chunk]
    was_training = pair_logps.training
    with as_reference(pair_logps, cfg, reference_source(cfg)) as ref:
        sums = _summed(ref, [train_pairs[i] for i in mine], cfg, pad_id, accelerator.device)
    pair_logps.train(was_training)
    index = torch.tensor(mine, device=accelerator.device)
    if world > 1:
        sums, index = accelerator.gather(sums.to(accelerator.device)), accelerator.gather(index)
    table = torch.full((len(train_pairs), 2), float("nan"))
    table[index.cpu()] = sums.cpu()
    if accelerator.is_main_process:
        torch.save({"logps": table, "reference": info["reference"]}, folder.reference_path)
    return table, info | {"reference_pairs": len(order), "reference_s": time.perf_counter() - began}


def _saved(cfg: TrainConfig, folder: RunDir, n: int, steps: int, accelerator, start: int):
    """A resumed DPO run's reference log-probs, covering every pair its steps will visit."""
    path = folder.reference_path
    if not path.is_file():
        raise TrainingError(
            f"This DPO run resumes at step {start}, but its reference log-probs ({path}) are "
            "gone, and the model it started from is no longer the one in training: start a new "
            "run (init_checkpoint can be this run's checkpoint)."
        )
    table = torch.load(path, weights_only=True)["logps"]
    needed = torch.tensor(visited_pairs(n, steps, cfg, accelerator.num_processes))
    if table.shape[0] != n or not torch.isfinite(table[needed]).all():
        raise TrainingError(
            f"This DPO run's reference log-probs cover the pairs of the steps it started with, not "
            f"all of the {steps} steps it is resumed to (or its data changed): resume it with its "
            "own max_steps and data, or start a new run from its checkpoint (init_checkpoint)."
        )
    return table


def _summed(pair_logps, pairs: list, cfg: TrainConfig, pad_id: int, device) -> torch.Tensor:
    """(N, 2) summed response log-probs: the mean log-probs times the response lengths."""
    chosen, rejected = held_out_logps(
        pair_logps,
        pairs,
        cfg,
        pad_id,
        device,
        desc=f"Reference log-probs of {len(pairs)} training pairs",
    )
    lengths = torch.tensor([[len(p["chosen_ids"]), len(p["rejected_ids"])] for p in pairs])
    return torch.stack([chosen.cpu(), rejected.cpu()], dim=1) * lengths
