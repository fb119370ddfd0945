"""A run, set up top to bottom: config -> plan -> data -> model and adapter -> optimizer and
schedule -> resume. `begin` opens the run (its plan, folder and resume point); `setup` builds the
`Run` that `train.loop` works with.

The data comes before the model: preparing it needs only the tokenizer, so a problem shows before
the model loads. The plan (`orpo_lab.plan`) is decided once; the autotuner may settle its precision
(after the model loads) and its compilation (after the log-prob path is checked), each time a new
`Plan`, which the started event prints.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedType
from transformers import get_scheduler

from orpo_lab import autotune, compiling, reference
from orpo_lab.build import build_model, load_pairs, run_tokenizer, subset
from orpo_lab.checkpoint import Checkpointer
from orpo_lab.collate import collate
from orpo_lab.config import TrainConfig
from orpo_lab.launch import batch_shortfall
from orpo_lab.logps import PairLogps, check_sample
from orpo_lab.plan import DTYPE_NAMES, Plan, plan_run
from orpo_lab.rundir import RunDir
from orpo_lab.step import StopRequested, TrainingError, fused_adamw


@dataclass
class Run:
    """What the loop works with: the run's folder, model, optimiser and data, and its stop signal."""

    cfg: TrainConfig
    plan: Plan
    accelerator: Accelerator
    folder: RunDir
    checkpointer: Checkpointer
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


@dataclass(frozen=True)
class Opened:
    """A run opened by `begin`: its plan, accelerator, checkpointer and resume point."""

    cfg: TrainConfig
    plan: Plan
    accelerator: Accelerator
    checkpointer: Checkpointer
    resume_from: Path | None  # the checkpoint it continues from; None: a new run

    @property
    def folder(self) -> RunDir:
        return self.checkpointer.folder


def begin(cfg: TrainConfig, sliced: bool = False) -> Opened:
    """Config -> plan -> the run's folder: the plan decided, the resume point found (or a
    clash refused, nothing changed), then the folder, its config and a "running" status written.
    `sliced`: a run in time slices (ZeroGPU), which never tries a compile."""
    opened_at = time.time()
    cfg.run_name = cfg.run_name or time.strftime("run-%Y%m%d-%H%M%S")
    plan = plan_run(cfg, sliced)
    accelerator = Accelerator(mixed_precision=plan.autocast, cpu=cfg.device == "cpu")
    checkpointer = Checkpointer(RunDir(cfg.run_dir), cfg)
    resume_from = checkpointer.resume_point(accelerator.distributed_type == DistributedType.FSDP)
    folder = checkpointer.folder
    if accelerator.is_main_process:
        folder.path.mkdir(parents=True, exist_ok=True)
        folder.metrics_path.touch()  # there from the start, even for a run stopped before step 1
        TrainConfig.from_dict({**cfg.to_dict(), "resume": False}).to_yaml(folder.config_path)
        folder.clear_stale_stop(os.getpid(), opened_at)
        # Where the run stands until the setup is done: the checkpoint it resumes from, and the
        # steps it will run when max_steps says (epochs need the data first: 0, unknown yet).
        step = folder.saved_step() if resume_from else 0
        total = cfg.max_steps or 0
        folder.write_status(
            "running", "loading model and data", step=step, total_steps=total, pid=os.getpid()
        )
    return Opened(cfg, plan, accelerator, checkpointer, resume_from)


def setup_progress(
    folder: RunDir,
    stop_event: threading.Event | None,
    callback: Callable[[dict], None] | None = None,
    every_s: float = 1.0,
    main: bool = True,
    world: int = 1,
) -> Callable[..., None]:
    """A `prepared.Progress` for a run's setup. Each stage ("preparing data: tokenising", "loading
    the model", "measuring ...") goes to status.json with its count ("31,200 / 60,000"), at most
    once every `every_s`, and, as it begins, to `callback` as a "preparing" event (not to
    metrics.jsonl), so that a notebook or a terminal shows what the seconds before the started
    event are spent on. A stop request (event or STOP file) raises `StopRequested`. Another
    process than the main one says nothing. In a run of `world` > 1 processes no process raises
    here: one that left while the others wait in a collective (DDP's first broadcast) would end
    them with an error; they stop together at the first synced check (`Run.stop_requested`:
    the step-0 evaluation or step 1), with nothing trained."""
    last, said = [0.0], [None]

    def progress(stage: str, done: int = 0, total: int = 0) -> None:
        if not main:
            return
        if world == 1 and ((stop_event and stop_event.is_set()) or folder.stop_requested()):
            raise StopRequested
        new = stage != said[0]
        said[0] = stage
        if new and callback is not None:
            callback({"kind": "event", "step": 0, "event": "preparing", "stage": stage})
        now = time.monotonic()
        if new or now - last[0] >= every_s or (total and done >= total):
            last[0] = now
            folder.write_status("running", stage + (f" {done:,} / {total:,}" if total else ""))

    return progress


def data_stages(progress: Callable[..., None]) -> Callable[[str, int, int], None]:
    """`progress` for `prepared`'s stages, each said as "preparing data: <stage>"."""
    return lambda stage, done, total: progress(f"preparing data: {stage}", done, total)


def setup(
    opened: Opened,
    callback: Callable[[dict], None] | None = None,
    stop_event: threading.Event | None = None,
    checked: str | None = None,
) -> tuple[Run, int]:
    """Data -> model and adapter -> optimizer and schedule -> resume: the `Run` and the step it
    continues after, and the started event.

    `checked`: the cache key of the rows the pre-run check read (`launch.check_launch`), when it
    ran in this process.
    """
    cfg, plan, accelerator = opened.cfg, opened.plan, opened.accelerator
    folder, resume_from, world = opened.folder, opened.resume_from, accelerator.num_processes
    if resume_from is None:  # init_checkpoint and ref_checkpoint: before anything loads
        reference.check_start(cfg)
    # data
    tokenizer = run_tokenizer(cfg, resume_from)
    progress = setup_progress(
        folder, stop_event, callback, main=accelerator.is_main_process, world=world
    )
    train_pairs, held_out, stats = load_pairs(cfg, tokenizer, data_stages(progress), checked)
    shortfall = batch_shortfall(cfg, len(train_pairs), world)  # after tokenising, per process
    if shortfall:
        raise TrainingError(shortfall)
    # model and adapter
    progress("loading the model")
    model, tokenizer = build_model(cfg, resume_from, plan, tokenizer)
    per_epoch = len(train_pairs) // (cfg.batch_size * world)
    epoch_steps = max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))
    total = epoch_steps if cfg.max_steps is None else cfg.max_steps
    # precision="auto" on a CPU: measured on the first pairs (cut short) when the setup is new here.
    first, scale = autotune.probe_batch(train_pairs[: cfg.batch_size], cfg.layout, tokenizer)
    sample = collate([check_sample(train_pairs[0])], cfg.layout, tokenizer.pad_token_id)

    def bf16_copy(bf16: Plan):  # what the precision probe times against the float32 model
        return build_model(cfg, resume_from, bf16, tokenizer)[0]

    model, plan = autotune.settle_precision(cfg, plan, model, first, bf16_copy, progress, sample)
    # optimizer and schedule
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=fused_adamw(params)
    )
    scheduler = get_scheduler(
        cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total
    )
    # resume
    checkpointer = opened.checkpointer
    checkpointer.attach(model, tokenizer, optimizer, scheduler)
    start = 0 if resume_from is None else checkpointer.restore(resume_from)
    pair_logps = PairLogps(model, cfg.nll_scope, cfg.logps_chunk_size)
    # The fast log-prob path is checked against the model's own logits on a real pair, not assumed.
    logps_check = pair_logps.verify(sample)
    ref_logps, ref_info = reference.reference_logps(
        cfg, pair_logps, train_pairs, tokenizer.pad_token_id, accelerator, total, folder, start
    )
    # After the check above, which then runs eager (no graphs compiled for it).
    plan = autotune.settle_compile(
        cfg, plan, pair_logps, first, total - start, world, accelerator.device, scale, progress
    )
    if plan.torch_compile:
        compiling.compile_layers(model)  # unless the probe compiled them already
    run = Run(
        cfg=cfg,
        plan=plan,
        accelerator=accelerator,
        folder=folder,
        checkpointer=checkpointer,
        wrapped=accelerator.prepare(pair_logps),
        tokenizer=tokenizer,
        # The scheduler is not prepared: accelerate would step it once per process.
        optimizer=accelerator.prepare(optimizer),
        scheduler=scheduler,
        params=params,
        train_pairs=train_pairs,
        held_out=held_out,
        eval_subset=held_out and subset(held_out, cfg.eval_subset_pairs, cfg.seed),
        total_steps=total,
        per_epoch=per_epoch,
        stop_event=stop_event,
        callback=callback,
        reference=ref_logps,
    )
    started(run, start, stats, ref_info, DTYPE_NAMES.get(pair_logps.autocast), logps_check)
    return run, start


def started(run: Run, start: int, stats: dict, ref_info: dict, autocast, logps_check) -> None:
    """The started (or resumed) event: the data, the plan, the schedule; then the log-prob check."""
    if run.main and start:
        run.folder.truncate_metrics(after_step=start)  # lines after the checkpoint would repeat
    plan = run.plan
    run.log(
        {
            "kind": "event",
            "step": start,
            "event": "resumed" if start else "started",
            "train_pairs": len(run.train_pairs),
            "truncated_pairs": stats.get("truncated", 0),
            "truncation": stats["truncation"],
            "data_cache": stats["cache"],
            "eval_pairs": len(run.held_out or []),
            "eval_subset_pairs": len(run.eval_subset or []),
            "total_steps": run.total_steps,
            "processes": run.accelerator.num_processes,
            "method": run.cfg.method,
            **ref_info,
            "device": str(run.accelerator.device),
            "precision": plan.precision,
            "precision_reason": plan.precision_reason,
            "mixed_precision": run.accelerator.mixed_precision,
            "decoder_autocast": autocast,
            "torch_compile": plan.torch_compile,
            "torch_compile_reason": plan.torch_compile_reason,
            "autotune": plan.autotune,
            "data": stats["data"],
        }
    )
    run.log({"kind": "event", "step": start, "event": "logps_check", **logps_check})
    run.status("running", "training", step=start, total_steps=run.total_steps)
