"""The ORPO training loop, top to bottom: batch -> forward -> loss -> backward -> clip -> step -> log
-> stop? -> eval? -> save?

`accelerate` handles device, precision and multi-process (DDP under `accelerate launch` or
`torchrun`); the rest is here. Files: `orpo_lab.rundir`, checkpoints `orpo_lab.checkpoint`, trackers
`orpo_lab.trackers`, command line `orpo_lab.cli`. A stop (STOP file, `stop_event`, Ctrl-C or SIGTERM
via the CLI) is checked between micro-batches: the step in progress is dropped, the last one saved.
"""

from __future__ import annotations

import math
import os
import runpy
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedType
from transformers import get_scheduler

from orpo_lab import autotune, build, compiling, reference, trackers
from orpo_lab.build import DTYPE_NAMES, build_model, load_pairs, precision_plan, subset
from orpo_lab.checkpoint import load_training_state, resume_point, save_checkpoint
from orpo_lab.collate import collate
from orpo_lab.config import TrainConfig
from orpo_lab.logps import PairLogps, check_sample
from orpo_lab.rundir import RunDir
from orpo_lab.step import (
    NON_FINITE_ADVICE,
    OOM_ADVICE,
    NonFiniteLoss,
    StopRequested,
    TrainingError,
    clip_gradients,
    forward_backward,
    fused_adamw,
    held_out_metrics,
    micro_batch_indices,
    pair_tokens,
)

if __name__ == "__main__":  # `python -m orpo_lab.train` (earlier versions): the CLI, which exits
    runpy.run_module("orpo_lab.cli", run_name="__main__")  # as `python -m orpo_lab.cli` runs it

# ---------------------------------------------------------------- what the loop works with


@dataclass
class Run:
    """What the loop works with: the run's folder, model, optimiser and data, and its stop signal."""

    cfg: TrainConfig
    accelerator: Accelerator
    folder: RunDir
    wrapped: torch.nn.Module  # PairLogps, prepared by accelerate
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    params: list
    train_pairs: list
    held_out: list | None  # every held-out pair: the last step's evaluation
    eval_subset: list | None  # the fixed seeded subset the evaluations before the last step score
    total_steps: int
    per_epoch: int
    stop_event: threading.Event | None = None
    callback: Callable[[dict], None] | None = None
    reference: torch.Tensor | None = None  # DPO: (N, 2) reference summed log-probs per pair
    step_times: list = field(default_factory=list)
    began: float = field(default_factory=time.perf_counter)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def stop_requested(self) -> bool:
        """A stop asked of any process (event or STOP file) stops all of them together."""
        asked = (self.stop_event is not None and self.stop_event.is_set()) or (
            self.folder.stop_requested()
        )
        flag = torch.tensor(float(asked), device=self.accelerator.device)
        return self.accelerator.reduce(flag, "sum").item() > 0

    def log(self, record: dict) -> None:
        if self.main:
            self.folder.append_metrics(record)
            if self.callback:
                self.callback(record)

    def status(self, status: str | None = None, message: str | None = None, **fields) -> None:
        if self.main:
            self.folder.write_status(status, message, **fields)


# ---------------------------------------------------------------- one step, one evaluation


def next_micro_batches(run: Run, step: int) -> list[tuple[dict, int]]:
    """The collated micro-batches of optimiser step `step` for this process, with their token counts.

    All of them are collated first, so the NLL can be normalised by the tokens of the whole
    optimiser step (gradient accumulation then equals one big batch exactly).
    """
    cfg, world = run.cfg, run.accelerator.num_processes
    micro = []
    for i in range(cfg.grad_accum):
        k = (step - 1) * cfg.grad_accum + i
        idx = micro_batch_indices(k, len(run.train_pairs), cfg.batch_size * world, cfg.seed)
        mine = idx[run.accelerator.process_index * cfg.batch_size :][: cfg.batch_size]
        pairs = [run.train_pairs[j] for j in mine]
        batch = collate(pairs, cfg.layout, run.tokenizer.pad_token_id)
        if run.reference is not None:  # DPO: the reference's log-probs of these pairs, (B, 2)
            batch["ref_logps"] = run.reference[mine]
        micro.append((batch, pair_tokens(pairs)))
    return micro


def optimizer_step(run: Run) -> float:
    """One AdamW update and one scheduler step; returns the learning rate the update used."""
    lr = run.scheduler.get_last_lr()[0]
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return lr


def log_step(run: Run, step: int, metrics: dict, grad_norm, lr: float, micro, began: float) -> dict:
    cfg, world = run.cfg, run.accelerator.num_processes
    step_time = time.perf_counter() - began
    run.step_times.append(step_time)
    median = statistics.median(run.step_times[-20:])
    record = {
        "kind": "train",
        "step": step,
        "total_steps": run.total_steps,
        "epoch": step * cfg.grad_accum / run.per_epoch,
        **metrics,
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens_per_s": sum(t for _, t in micro) * world / step_time,
        "pairs_per_s": cfg.batch_size * world * cfg.grad_accum / step_time,
        "step_s": step_time,
        "elapsed_s": time.perf_counter() - run.began,
        "eta_s": median * (run.total_steps - step),
    }
    run.log(record)
    run.status(step=step, step_s=median)
    return record


def log_eval(run: Run, step: int, pairs: list) -> None:
    """Held-out metrics of `pairs` at `step`, unless a stop arrives while they are computed."""
    run.status(message=f"evaluating {len(pairs)} held-out pairs at step {step}")
    metrics = held_out_metrics(
        run.wrapped,
        pairs,
        run.cfg,
        run.tokenizer.pad_token_id,
        run.accelerator.device,
        run.stop_requested,
    )
    if metrics is not None:
        run.log({"kind": "eval", "step": step, **metrics})
    run.status(message="training")


def save(run: Run, step: int, record: dict) -> Path | None:
    """Checkpoint `step` (never non-finite weights); every process joins, the main one writes."""
    if not all(torch.isfinite(p).all() for p in run.params):
        raise NonFiniteLoss(f"The weights became non-finite at step {step}")
    accelerator, full_state = run.accelerator, None
    accelerator.wait_for_everyone()
    if accelerator.distributed_type == DistributedType.FSDP:
        # Sharded weights: every rank joins the gather; keys are PairLogps's ("model.").
        gathered = accelerator.get_state_dict(run.wrapped)
        full_state = {k.removeprefix("model."): v for k, v in gathered.items()}
    path = None
    if run.main:
        model = accelerator.unwrap_model(run.wrapped).model
        path = save_checkpoint(
            run.folder,
            step,
            model,
            run.tokenizer,
            run.optimizer,
            run.scheduler,
            run.cfg,
            record,
            full_state,
            keep=run.cfg.save_total_limit,
        )
    accelerator.wait_for_everyone()
    return path


# ---------------------------------------------------------------- the loop


def loop(run: Run, start: int, fits: Callable[[int], bool] | None = None) -> dict:
    """Optimiser steps start+1 .. total; returns the last train record."""
    cfg, last, saved = run.cfg, {}, start
    for step in range(start + 1, run.total_steps + 1):
        began = time.perf_counter()
        micro = next_micro_batches(run, step)  # batch
        if run.stop_requested() or not (fits is None or fits(step)):  # stop? slice over?
            return stopped(run, step - 1, last, saved, paused=not run.stop_requested())
        try:  # forward, loss, backward
            metrics = forward_backward(
                run.accelerator, run.wrapped, [b for b, _ in micro], cfg, stop=run.stop_requested
            )
        except StopRequested:  # mid-step: drop its gradients, keep the last completed step
            run.optimizer.zero_grad(set_to_none=True)
            return stopped(run, step - 1, last, saved)
        except NonFiniteLoss as err:
            raise NonFiniteLoss(_non_finite(run, step, err)) from None
        grad_norm = clip_gradients(run)  # clip
        lr = optimizer_step(run)  # step
        last = log_step(run, step, metrics, grad_norm, lr, micro, began)  # log
        if run.stop_requested():  # stop?
            return stopped(run, step, last, saved)
        final = step == run.total_steps
        if run.held_out and final:  # eval? (all pairs)
            log_eval(run, step, run.held_out)
        elif run.held_out and cfg.eval_every and step % cfg.eval_every == 0:  # (the subset)
            log_eval(run, step, run.eval_subset)
        if final or (cfg.save_every and step % cfg.save_every == 0):
            saved = _save_or_fail(run, step, last)  # save?
    run.status(
        "finished",
        f"finished {run.total_steps} steps; checkpoint step-{saved:06d} saved",
        step=run.total_steps,
    )
    return last


def stopped(run: Run, step: int, last: dict, saved: int, paused: bool = False) -> dict:
    """End after completed step `step` (a stop request, or `paused`: a slice's end): save, say so."""
    if step > saved:
        saved = _save_or_fail(run, step, last)
    on_disk = run.folder.describe_checkpoints()
    if paused:  # the run stays "running": the next slice resumes from here (orpo_lab.slices)
        run.status("running", f"slice ended after step {step}; {on_disk}", step=step)
        return last
    if run.main:
        run.folder.clear_stop()
    what = f"after step {step}" if step else "before the first step (nothing trained)"
    run.status("stopped", f"stopped on request {what}; {on_disk}", step=step)
    return last


def _save_or_fail(run: Run, step: int, record: dict) -> int:
    try:
        save(run, step, record)
    except NonFiniteLoss as err:
        raise NonFiniteLoss(_non_finite(run, step, err, at="")) from None
    return step


def _non_finite(run: Run, step: int, err: Exception, at: str = " at step") -> str:
    where = f"{err}{at} {step}" if at else str(err)
    return f"{where}: training stopped. {run.folder.describe_checkpoints().capitalize()}. " + (
        NON_FINITE_ADVICE
    )


def train(
    cfg: TrainConfig,
    callback: Callable[[dict], None] | None = None,
    stop_event: threading.Event | None = None,
    fits: Callable[[int], bool] | None = None,
) -> dict:
    """Run (or resume) one training run in output_dir/run_name; returns the last train record.

    `callback(record)` gets every metrics record (train, eval, event) as it is logged; setting
    `stop_event` (or creating the STOP file) stops after the current micro-batch with a checkpoint.
    `fits(step)` False before a step ends the run there as a stop does, but leaves it "running".
    """
    started = time.time()
    cfg.run_name = cfg.run_name or time.strftime("run-%Y%m%d-%H%M%S")
    folder = RunDir(cfg.run_dir)
    plan = precision_plan(cfg) | {"sliced": fits is not None}  # a slice never tries a compile
    accelerator = Accelerator(mixed_precision=plan["autocast"], cpu=cfg.device == "cpu")
    resume_from = resume_point(
        folder, cfg.resume, accelerator.distributed_type == DistributedType.FSDP
    )
    if accelerator.is_main_process:
        folder.path.mkdir(parents=True, exist_ok=True)
        folder.metrics_path.touch()  # there from the start, even for a run stopped before step 1
        TrainConfig.from_dict({**cfg.to_dict(), "resume": False}).to_yaml(folder.config_path)
        folder.clear_stale_stop(os.getpid(), started)
        folder.write_status(
            "running", "loading model and data", step=0, total_steps=0, pid=os.getpid()
        )
    tracked, callback = trackers.start(cfg, folder, resume_from, accelerator, callback)
    try:
        run, start = prepare(cfg, accelerator, folder, resume_from, callback, stop_event, plan)
        return loop(run, start, fits)
    except StopRequested:  # during data preparation or the step-0 evaluation: nothing trained
        if accelerator.is_main_process:
            folder.clear_stop()
            folder.write_status(
                "stopped",
                "stopped on request before the first step (nothing "
                f"trained); {folder.describe_checkpoints()}",
            )
        return {}
    except torch.OutOfMemoryError as err:
        _fail(accelerator, folder, f"{OOM_ADVICE} ({folder.describe_checkpoints()})")
        raise TrainingError(OOM_ADVICE) from err
    except Exception as err:
        message = str(err) if isinstance(err, TrainingError) else f"{type(err).__name__}: {err}"
        if type(err).__module__.startswith(("torch._dynamo", "torch._inductor")):
            message += " (torch.compile failed: torch_compile=off trains without it)"
        _fail(accelerator, folder, message)
        raise
    finally:
        tracked.finish()


def _fail(accelerator, folder: RunDir, message: str) -> None:
    if accelerator.is_main_process:
        folder.write_status("failed", message)


def data_progress(folder: RunDir, stop_event: threading.Event | None, every_s: float = 1.0):
    """A `prepared.Progress` for a run: the stage in status.json ("preparing data: tokenising ...
    31,200 / 60,000"), at most once every `every_s`; a stop request (event or STOP file) stops it."""
    last = [0.0]

    def progress(stage: str, done: int, total: int) -> None:
        if (stop_event is not None and stop_event.is_set()) or folder.stop_requested():
            raise StopRequested
        now = time.monotonic()
        if now - last[0] >= every_s or (total and done >= total):
            last[0] = now
            count = f" {done:,} / {total:,}" if total else ""
            about = "" if stage.startswith("measuring") else "preparing data: "
            folder.write_status("running", f"{about}{stage}{count}")

    return progress


def prepare(
    cfg, accelerator, folder, resume_from, callback, stop_event, plan: dict | None = None
) -> tuple[Run, int]:
    """Model, data, optimiser and schedule of the run; the start event and step-0 evaluation.

    `plan`: `build.precision_plan(cfg)`, whose "precision" and "precision_reason" the start event
    records.
    """
    plan = plan or precision_plan(cfg)
    world = accelerator.num_processes
    # The data first: preparing it needs only the tokenizer, and a problem shows before the model loads.
    if resume_from is None:  # init_checkpoint and ref_checkpoint: before anything loads
        reference.check_start(cfg)
    tokenizer = build.run_tokenizer(cfg, resume_from)
    progress = data_progress(folder, stop_event) if accelerator.is_main_process else None
    train_pairs, held_out, stats = load_pairs(cfg, tokenizer, progress)
    model, tokenizer = build_model(cfg, resume_from, plan, tokenizer)
    if len(train_pairs) < cfg.batch_size * world:
        raise TrainingError(
            f"The dataset has {len(train_pairs)} usable pairs, fewer than one batch "
            f"({cfg.batch_size} pairs x {world} processes): lower batch_size."
        )
    per_epoch = len(train_pairs) // (cfg.batch_size * world)
    total = (
        cfg.max_steps
        if cfg.max_steps > 0
        else max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))
    )
    # precision="auto" on a CPU: measured on the first pairs (cut short) when the setup is new here.
    first, scale = autotune.probe_batch(train_pairs[: cfg.batch_size], cfg.layout, tokenizer)
    sample = collate([check_sample(train_pairs[0])], cfg.layout, tokenizer.pad_token_id)
    model, plan = autotune.settle_precision(
        cfg,
        plan,
        model,
        first,
        lambda p: build_model(cfg, resume_from, p, tokenizer)[0],
        progress,
        sample,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused_adamw(params)
    )
    scheduler = get_scheduler(
        cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total
    )
    start = 0 if resume_from is None else load_training_state(resume_from, optimizer, scheduler)
    pair_logps = PairLogps(model, cfg.nll_scope, cfg.logps_chunk_size)
    # The fast log-prob path is checked against the model's own logits on a real pair, not assumed.
    logps_check = pair_logps.verify(sample)
    ref_logps, ref_info = reference.reference_logps(
        cfg, pair_logps, train_pairs, tokenizer.pad_token_id, accelerator, total, folder, start
    )
    # After the check above, which then runs eager (no graphs compiled for it).
    compile_on, compile_reason = autotune.settle_compile(
        cfg, plan, pair_logps, first, total - start, world, accelerator.device, scale
    )
    if compile_on:
        compiling.compile_layers(model)  # unless the probe compiled them already
    wrapped = accelerator.prepare(pair_logps)
    # The scheduler is not prepared: accelerate would step it once per process, changing the schedule.
    optimizer = accelerator.prepare(optimizer)
    eval_subset = held_out and subset(held_out, cfg.eval_subset_pairs, cfg.seed)
    run = Run(
        cfg,
        accelerator,
        folder,
        wrapped,
        tokenizer,
        optimizer,
        scheduler,
        params,
        train_pairs,
        held_out,
        eval_subset,
        total,
        per_epoch,
        stop_event,
        callback,
        ref_logps,
    )
    if run.main and start:
        folder.truncate_metrics(after_step=start)  # lines after the checkpoint would repeat
    run.log(
        {
            "kind": "event",
            "step": start,
            "event": "resumed" if start else "started",
            "train_pairs": len(train_pairs),
            "truncated_pairs": stats.get("truncated", 0),
            "truncation": stats["truncation"],
            "data_cache": stats["cache"],
            "eval_pairs": len(held_out or []),
            "eval_subset_pairs": len(eval_subset or []),
            "total_steps": total,
            "processes": world,
            "method": cfg.method,
            **ref_info,
            "device": str(accelerator.device),
            "precision": plan["precision"],
            "precision_reason": plan["precision_reason"],
            "mixed_precision": accelerator.mixed_precision,
            "decoder_autocast": DTYPE_NAMES.get(pair_logps.autocast),
            "torch_compile": compile_on,
            "torch_compile_reason": compile_reason,
            "autotune": plan.get("autotune"),
            "data": stats["data"],
        }
    )
    run.log({"kind": "event", "step": start, "event": "logps_check", **logps_check})
    run.status("running", "training", step=start, total_steps=total)
    if held_out and start == 0 and cfg.eval_at_start:
        log_eval(run, 0, eval_subset)  # the numbers before any update: what curves are read against
    return run, start
