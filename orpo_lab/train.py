"""The ORPO training loop, explicit top to bottom: forward -> loss -> backward -> clip -> step -> log -> eval -> save.

`accelerate` handles device, precision and multi-process (DDP under `accelerate launch` or `torchrun`);
everything else is visible here. A run lives in `output_dir/run_name/`:
  config.yaml, status.json, metrics.jsonl (one JSON object per line, flushed per line),
  checkpoints/step-000050/ (adapter or model, tokenizer, optimizer, scheduler, RNG, trainer_state.json).
Creating the file STOP in the run directory ends training at the next step with a checkpoint.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedType
from tqdm.auto import tqdm
from transformers import get_scheduler

from orpo_lab.config import TrainConfig, build_parser, config_from_args
from orpo_lab.data import collate, prepare_pairs
from orpo_lab.logps import PairLogps
from orpo_lab.loss import orpo_loss
from orpo_lab.model import add_lora, load_model, pick_device, pick_dtype

OOM_ADVICE = (
    "Out of memory. Try, one at a time: a smaller batch_size with a larger grad_accum (same effective "
    "batch), a shorter max_length / max_prompt_length, layout=prefix or packed, gradient_checkpointing, "
    "LoRA instead of full_finetune, a smaller lora_r, or load_in_4bit (QLoRA, needs bitsandbytes)."
)


class TrainingError(RuntimeError):
    """Training stopped on a problem the user must fix; the message says what to do."""


NON_FINITE_ADVICE = (
    "Lower learning_rate, check the data for empty or huge responses, or use fp32 precision."
)


class NonFiniteLoss(TrainingError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


def micro_batch_indices(k: int, n: int, global_batch: int, seed: int) -> list[int]:
    """Pair indices of global micro-batch k: a fresh seeded permutation each epoch, so resume is exact."""
    per_epoch = n // global_batch
    epoch, j = divmod(k, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    return perm[j * global_batch : (j + 1) * global_batch].tolist()


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a save killed midway leaves only a .tmp- folder)."""
    return sorted((run_dir / "checkpoints").glob("step-*"))


def save_checkpoint(
    run_dir, step, model, tokenizer, optimizer, scheduler, config, metrics, state_dict=None
) -> Path:
    """Write to a temporary folder, then rename: a kill during the save never leaves a broken step-N.

    `state_dict`: the gathered weights when the model is sharded (FSDP); else the model's own.
    """
    final = run_dir / "checkpoints" / f"step-{step:06d}"
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
    state = {"step": step, "config": config.to_dict(), "metrics": metrics}
    write_json_atomic(tmp / "trainer_state.json", state)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in checkpoints(run_dir)[: -config.save_total_limit]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def build_model(cfg: TrainConfig, resume_from: Path | None):
    """The model to train: LoRA on the base (default), QLoRA (LoRA on a 4-bit base), or every weight."""
    device = pick_device(cfg.device)
    if cfg.load_in_4bit:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise TrainingError(
                "load_in_4bit (QLoRA) needs bitsandbytes, which is not installed: "
                "`pip install 'orpo-lab[qlora]'` (or `pip install bitsandbytes`), or drop load_in_4bit."
            )
        from peft import prepare_model_for_kbit_training

        model, tokenizer = load_model(
            cfg.model, cfg.device, cfg.precision, cfg.trust_remote_code, load_in_4bit=True
        )
        model = prepare_model_for_kbit_training(model, cfg.gradient_checkpointing)
        if device.type == "cpu":
            # bitsandbytes (0.50) repacks a Linear4bit weight for a faster CPU kernel on its first
            # eval-mode forward and keeps that layout; that kernel has no backward, so every step
            # after a held-out evaluation would get wrong gradients through the frozen base
            # (measured: LoRA gradients 55% off). Keep the layout that autograd goes through.
            import bitsandbytes as bnb

            for module in model.modules():
                if isinstance(module, bnb.nn.Linear4bit):
                    module.support_avx512bf16_for_cpu = False
    else:
        # LoRA keeps the frozen base in the compute dtype; full fine-tuning keeps fp32 master weights.
        precision = "fp32" if cfg.full_finetune else cfg.precision
        source = str(resume_from) if (resume_from and cfg.full_finetune) else cfg.model
        model, tokenizer = load_model(source, cfg.device, precision, cfg.trust_remote_code)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if not cfg.full_finetune:
        if resume_from is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, resume_from, is_trainable=True)
        else:
            targets = cfg.lora_target_modules
            targets = (
                targets if targets == "all-linear" else [t.strip() for t in targets.split(",")]
            )
            torch.manual_seed(cfg.seed)
            model = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, targets)
    model.config.use_cache = False
    return model, tokenizer


def load_pairs(cfg: TrainConfig, tokenizer):
    """Tokenised train pairs, held-out pairs (None when there are none) and stats (`prepare_pairs`)."""
    return prepare_pairs(cfg, tokenizer)


def pair_tokens(pairs) -> int:
    """Tokens of the pairs as plain rows (prompt+chosen, prompt+rejected), the same for every layout."""
    return sum(
        2 * len(p["prompt_ids"]) + len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in pairs
    )


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate(wrapped, pairs, cfg, pad_id, device) -> dict[str, float]:
    """Held-out preference accuracy: how often the chosen response has the higher mean log-prob."""
    wrapped.eval()
    chosen, rejected = [], []
    for i in range(0, len(pairs), cfg.batch_size):
        batch = to_device(collate(pairs[i : i + cfg.batch_size], cfg.layout, pad_id), device)
        c, r, _, _ = wrapped(**batch)
        chosen.append(c.float())
        rejected.append(r.float())
    wrapped.train()
    c, r = torch.cat(chosen), torch.cat(rejected)
    _, m = orpo_loss(c, r, torch.zeros(()), cfg.beta)
    return {
        "eval/accuracy": (c > r).float().mean().item(),
        "eval/logps_chosen": c.mean().item(),
        "eval/logps_rejected": r.mean().item(),
        "eval/log_odds_chosen": m["log_odds_chosen"],
        "eval/log_odds_ratio": m["log_odds_ratio"],
        "eval/pairs": len(pairs),
    }


def train(
    cfg: TrainConfig,
    callback: Callable[[dict], None] | None = None,
    stop_event: threading.Event | None = None,
) -> dict:
    """Run (or resume) one training run; returns the last metrics. See the module docstring for files."""
    cfg.run_name = cfg.run_name or time.strftime("run-%Y%m%d-%H%M%S")
    run_dir = cfg.run_dir
    precision = pick_dtype(pick_device(cfg.device), cfg.precision)
    mixed = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(precision, "no")
    accelerator = Accelerator(mixed_precision=mixed, cpu=cfg.device == "cpu")
    main = accelerator.is_main_process
    existing = checkpoints(run_dir)
    if existing and not cfg.resume:
        raise TrainingError(
            f"Run {run_dir} already has checkpoints ({existing[-1].name}). Pass --resume to "
            "continue it, or choose another --run-name; nothing was changed."
        )
    resume_from = existing[-1] if (existing and cfg.resume) else None
    if resume_from and accelerator.distributed_type == DistributedType.FSDP:
        raise TrainingError(
            "Resuming under FSDP is not supported (the saved optimizer state is rank 0's shard). "
            f"Resume {run_dir} with one process or DDP, or start a new run; nothing was changed."
        )
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.to_yaml(run_dir / "config.yaml")
    status = {
        "status": "running",
        "message": "loading model and data",
        "step": 0,
        "total_steps": 0,
        "pid": os.getpid(),
        "updated": time.time(),
    }

    def set_status(**changes) -> None:
        status.update(changes, updated=time.time())
        if main:
            write_json_atomic(run_dir / "status.json", status)

    set_status()
    try:
        return _train(cfg, accelerator, run_dir, resume_from, set_status, callback, stop_event)
    except NonFiniteLoss as err:
        set_status(status="failed", message=str(err))
        raise
    except torch.OutOfMemoryError as err:
        set_status(status="failed", message=OOM_ADVICE)
        raise TrainingError(OOM_ADVICE) from err
    except Exception as err:
        if status["status"] == "running":
            set_status(status="failed", message=f"{type(err).__name__}: {err}")
        raise


def _train(cfg, accelerator, run_dir, resume_from, set_status, callback, stop_event) -> dict:
    main, world = accelerator.is_main_process, accelerator.num_processes
    model, tokenizer = build_model(cfg, resume_from)
    train_pairs, held_out, stats = load_pairs(cfg, tokenizer)
    global_batch = cfg.batch_size * world
    if len(train_pairs) < global_batch:
        raise TrainingError(
            f"The dataset has {len(train_pairs)} usable pairs, fewer than one batch "
            f"({cfg.batch_size} pairs x {world} processes): lower batch_size."
        )
    per_epoch = len(train_pairs) // global_batch
    total = (
        cfg.max_steps
        if cfg.max_steps > 0
        else max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))
    )

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    scheduler = get_scheduler(
        cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total
    )
    start = 0
    if resume_from is not None:
        optimizer.load_state_dict(torch.load(resume_from / "optimizer.pt", weights_only=True))
        scheduler.load_state_dict(torch.load(resume_from / "scheduler.pt", weights_only=True))
        torch.set_rng_state(torch.load(resume_from / "rng.pt", weights_only=True)["torch"])
        start = json.loads((resume_from / "trainer_state.json").read_text())["step"]
    pair_logps = PairLogps(model, cfg.nll_scope, cfg.logps_chunk_size)
    # Verified on the first pairs before any wrapping: the fast path must equal the model's logits.
    logps_check = pair_logps.verify(
        collate(train_pairs[: cfg.batch_size], cfg.layout, tokenizer.pad_token_id)
    )
    wrapped = accelerator.prepare(pair_logps)
    # The scheduler is not prepared: accelerate would step it once per process, changing the schedule.
    optimizer = accelerator.prepare(optimizer)
    device, pad_id = accelerator.device, tokenizer.pad_token_id

    metrics_path = run_dir / "metrics.jsonl"
    if main and resume_from is not None and metrics_path.exists():
        # Lines logged after the checkpoint we resume from would be repeated: drop them.
        lines = [ln for ln in metrics_path.read_text().splitlines() if ln.strip()]
        kept = [ln for ln in lines if _line_step(ln) <= start]
        metrics_path.write_text("".join(ln + "\n" for ln in kept))
    log_file = open(metrics_path, "a") if main else None  # noqa: SIM115 - open for the whole run

    def log(record: dict) -> None:
        if log_file:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
        if callback and main:
            callback(record)

    if main:
        log(
            {
                "kind": "event",
                "step": start,
                "event": "resumed" if start else "started",
                "train_pairs": len(train_pairs),
                "truncated_pairs": stats.get("truncated", 0),
                "eval_pairs": len(held_out or []),
                "total_steps": total,
                "processes": world,
                "device": str(accelerator.device),
                "mixed_precision": accelerator.mixed_precision,
                "data": stats["data"],
            }
        )
        log({"kind": "event", "step": start, "event": "logps_check", **logps_check})
    set_status(message="training", step=start, total_steps=total)
    if held_out and start == 0:
        # The held-out numbers before any update: the baseline every curve is read against.
        log({"kind": "eval", "step": 0, **evaluate(wrapped, held_out, cfg, pad_id, device)})
    bar = tqdm(total=total, initial=start, disable=not main, desc=cfg.run_name, dynamic_ncols=True)
    began, last, steps_done = time.perf_counter(), {}, 0
    unwrapped = accelerator.unwrap_model(wrapped).model
    for step in range(start + 1, total + 1):
        step_began = time.perf_counter()
        # Every micro-batch of the step is collated first, so the NLL can be normalised by the tokens of
        # the whole optimiser step (gradient accumulation then equals one big batch exactly).
        micro = []
        for i in range(cfg.grad_accum):
            idx = micro_batch_indices(
                (step - 1) * cfg.grad_accum + i, len(train_pairs), global_batch, cfg.seed
            )
            mine = [
                train_pairs[j]
                for j in idx[accelerator.process_index * cfg.batch_size :][: cfg.batch_size]
            ]
            micro.append((collate(mine, cfg.layout, pad_id), pair_tokens(mine)))
        sums = step_gradients(accelerator, wrapped, [b for b, _ in micro], cfg, run_dir, step)
        grad_norm = (
            accelerator.clip_grad_norm_(params, cfg.max_grad_norm) if cfg.max_grad_norm else None
        )
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        steps_done += 1
        elapsed = time.perf_counter() - began
        step_time = time.perf_counter() - step_began
        tokens = sum(t for _, t in micro) * world
        pairs_in_step = global_batch * cfg.grad_accum
        record = {
            "kind": "train",
            "step": step,
            "total_steps": total,
            "epoch": step * cfg.grad_accum / per_epoch,
            **sums,
            "lr": scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "tokens_per_s": tokens / step_time,
            "pairs_per_s": pairs_in_step / step_time,
            "elapsed_s": elapsed,
            "eta_s": elapsed / steps_done * (total - step),
        }
        log(record)
        last = record
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['rewards/accuracies']:.2f}")
        set_status(step=step)

        stop = (stop_event is not None and stop_event.is_set()) or (run_dir / "STOP").exists()
        stop = accelerator.reduce(torch.tensor(float(stop), device=device), "sum").item() > 0
        final = step == total or stop
        if held_out and ((cfg.eval_every and step % cfg.eval_every == 0) or final):
            log({"kind": "eval", "step": step, **evaluate(wrapped, held_out, cfg, pad_id, device)})
        if final or (cfg.save_every and step % cfg.save_every == 0):
            if not all(torch.isfinite(p).all() for p in params):
                # An exploding update: never save it over the last good checkpoint.
                kept = checkpoints(run_dir)
                raise NonFiniteLoss(
                    f"The weights became non-finite at step {step}: training stopped. Last good "
                    f"checkpoint: {kept[-1] if kept else 'none'}. " + NON_FINITE_ADVICE
                )
            accelerator.wait_for_everyone()
            full_state = None
            if accelerator.distributed_type == DistributedType.FSDP:
                # Sharded weights: every rank joins the gather; keys are PairLogps's ("model.").
                gathered = accelerator.get_state_dict(wrapped)
                full_state = {k.removeprefix("model."): v for k, v in gathered.items()}
            if main:
                save_checkpoint(
                    run_dir, step, unwrapped, tokenizer, optimizer, scheduler, cfg, record,
                    full_state,
                )  # fmt: skip
            accelerator.wait_for_everyone()
        if stop:
            if main:
                (run_dir / "STOP").unlink(missing_ok=True)
            set_status(
                status="stopped", message=f"stopped on request at step {step}; checkpoint saved"
            )
            break
    else:
        set_status(status="finished", message=f"finished {total} steps", step=total)
    bar.close()
    if log_file:
        log_file.close()
    return last


def step_gradients(
    accelerator, wrapped, micro: list[dict], cfg: TrainConfig, run_dir: Path, step: int
) -> dict:
    """Forward and backward every micro-batch of one optimiser step; returns the step's metrics.

    The NLL is normalised by the NLL tokens of the whole step and the odds-ratio term by its pairs, over
    all processes, so batch 4 x accumulation 1 and batch 1 x accumulation 4 give the same gradients.
    """
    world, device = accelerator.num_processes, accelerator.device
    nll_tokens = sum(_nll_count(b, cfg.nll_scope) for b in micro)
    nll_tokens = accelerator.reduce(torch.tensor(float(nll_tokens), device=device), "sum").item()
    pairs_in_step = accelerator.reduce(
        torch.tensor(float(sum(b["num_pairs"] for b in micro)), device=device), "sum"
    ).item()
    sums: dict[str, float] = {}
    for i, batch in enumerate(micro):
        sync = nullcontext() if i == len(micro) - 1 else accelerator.no_sync(wrapped)
        with sync:
            chosen, rejected, nll_sum, _ = wrapped(**to_device(batch, device))
            loss, m = orpo_loss(
                chosen.float(),
                rejected.float(),
                nll_sum.float() / max(nll_tokens, 1.0),
                cfg.beta,
                pairs_in_step=pairs_in_step,
            )
            bad = accelerator.reduce(
                torch.tensor(float(not torch.isfinite(loss)), device=device), "sum"
            )
            if bad.item():
                kept = checkpoints(run_dir)
                raise NonFiniteLoss(
                    f"The loss became {loss.item()} at step {step}: training stopped. Last good checkpoint: "
                    f"{kept[-1] if kept else 'none'}. " + NON_FINITE_ADVICE
                )
            # DDP averages gradients over processes; the loss is a share of the global step: undo it.
            accelerator.backward(loss * world)
        share = batch["num_pairs"] / sum(b["num_pairs"] for b in micro)  # of this process's step
        for key, value in m.items():
            sums[key] = sums.get(key, 0.0) + value * (1.0 if key in ("loss", "nll_loss") else share)
    return _mean_over_processes(accelerator, sums)


def _nll_count(batch: dict, scope: str) -> int:
    """Tokens the NLL covers in this micro-batch: the chosen responses (and their prompts)."""
    chosen = (batch["target_seq"] >= 0) & (batch["target_seq"] < batch["num_pairs"])
    if scope == "response":
        chosen &= ~batch["target_in_prompt"]
    return int(chosen.sum())


def _mean_over_processes(accelerator, sums: dict[str, float]) -> dict[str, float]:
    """Loss terms add up over processes (each is a share of the step); the other metrics average."""
    if accelerator.num_processes == 1:
        return sums
    keys = sorted(sums)
    total = accelerator.reduce(
        torch.tensor([sums[k] for k in keys], device=accelerator.device), "sum"
    )
    n = accelerator.num_processes
    return {
        k: v.item() / (1 if k in ("loss", "nll_loss") else n)
        for k, v in zip(keys, total, strict=True)
    }


def _line_step(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except ValueError:
        return 1 << 62  # a truncated line from a killed run: drop it


def export_merged(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Merge a checkpoint's LoRA adapter into its base model: a standalone folder plain transformers loads."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    state_file = checkpoint / "trainer_state.json"
    if not (checkpoint / "adapter_config.json").is_file() or not state_file.is_file():
        raise TrainingError(
            f"{checkpoint} is not an ORPO Lab adapter checkpoint (expected adapter_config.json "
            "and trainer_state.json); a full fine-tuning checkpoint is already a model folder."
        )
    from peft import PeftModel

    config = json.loads(state_file.read_text())["config"]
    base, tokenizer = load_model(
        config["model"],
        device="cpu",
        precision="fp32",
        trust_remote_code=config.get("trust_remote_code", False),
    )
    merged = PeftModel.from_pretrained(base, checkpoint).merge_and_unload()
    tmp = out_dir.with_name(f".tmp-{out_dir.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        raise TrainingError(
            f"{out_dir} already exists: choose another --out (nothing was overwritten)."
        )
    os.replace(tmp, out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.export:
            if not args.out:
                raise TrainingError("--export needs --out DIR, the folder for the merged model.")
            print(f"merged model written to {export_merged(args.export, args.out)}")
            return 0
        if args.evaluate:
            from orpo_lab.evaluate import evaluate_run

            report = evaluate_run(args.evaluate)
            print(json.dumps(report["summary"], indent=1))
            return 0
        cfg = config_from_args(args)
        last = train(cfg)
        print(json.dumps({k: v for k, v in last.items() if k != "kind"}, indent=1))
        return 0
    except (TrainingError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
