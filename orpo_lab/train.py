"""The ORPO training loop, top to bottom: batch -> forward -> loss -> backward -> clip -> step -> log
-> stop? -> eval? -> save?

`accelerate` handles device, precision and multi-process (DDP under `accelerate launch` or
`torchrun`); the rest is here. The run is set up by `orpo_lab.setup` (plan, data, model,
optimizer, resume); files: `orpo_lab.rundir`, checkpoints `orpo_lab.checkpoint` (`Checkpointer`),
trackers `orpo_lab.trackers`, command line `orpo_lab.cli`. A stop (STOP file, `stop_event`,
Ctrl-C or SIGTERM via the CLI) is checked between micro-batches: the step in progress is dropped,
the last one saved.
"""

from __future__ import annotations

import runpy
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import DistributedType

from orpo_lab import trackers
from orpo_lab.collate import collate
from orpo_lab.config import TrainConfig
from orpo_lab.rundir import RunDir
from orpo_lab.setup import Run, begin, setup
from orpo_lab.step import (
    NON_FINITE_ADVICE,
    OOM_ADVICE,
    NonFiniteLoss,
    StopRequested,
    TrainingError,
    clip_gradients,
    forward_backward,
    held_out_metrics,
    micro_batch_indices,
    pair_tokens,
)

if __name__ == "__main__":  # `python -m orpo_lab.train` (earlier versions): the CLI, which exits
    runpy.run_module("orpo_lab.cli", run_name="__main__")  # as `python -m orpo_lab.cli` runs it

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
    path = run.checkpointer.save(step, record, full_state) if run.main else None
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
    run.status("stopped", run.folder.stop_message(step), step=step)
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
    checked: str | None = None,
) -> dict:
    """Run (or resume) one training run in output_dir/run_name; returns the last train record.

    `callback(record)` gets every metrics record (train, eval, event) as it is logged, and before
    the started event each setup stage as it begins ("preparing" events, not logged); setting
    `stop_event` (or creating the STOP file) stops after the current micro-batch with a checkpoint.
    `fits(step)` False before a step ends the run there as a stop does, but leaves it "running".
    `checked`: the pre-run check's key of the checked rows (`launch.check_launch`), when it ran.
    """
    opened = begin(cfg, sliced=fits is not None)  # config -> plan -> the run's folder
    accelerator, folder = opened.accelerator, opened.folder
    tracked, callback = trackers.start(cfg, folder, opened.resume_from, accelerator, callback)
    try:
        run, start = setup(opened, callback, stop_event, checked)  # data -> model -> optimizer
        if run.held_out and start == 0 and cfg.eval_at_start:
            log_eval(run, 0, run.eval_subset)  # the numbers before any update: curves start here
        return loop(run, start, fits)
    except StopRequested:  # during the setup or the step-0 evaluation: nothing trained here
        if accelerator.is_main_process:
            folder.clear_stop()
            step = folder.saved_step()  # 0, or the checkpoint a resumed run loaded
            folder.write_status("stopped", folder.stop_message(step), step=step)
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
