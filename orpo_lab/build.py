"""What a run is made of: the model to train (LoRA, QLoRA or every weight) and its tokenised pairs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from orpo_lab.config import TrainConfig
from orpo_lab.devices import pick_device
from orpo_lab.model import (
    add_lora,
    attach_adapter,
    load_model,
    load_tokenizer,
)
from orpo_lab.plan import Plan
from orpo_lab.prepared import prepare_data
from orpo_lab.reference import start_checkpoint
from orpo_lab.step import TrainingError


def model_source(cfg: TrainConfig, resume_from: Path | None) -> str:
    """Where the run's weights and tokenizer load from: the checkpoint when a full fine-tune
    resumes or starts from one (`init_checkpoint`)."""
    start = resume_from or start_checkpoint(cfg)
    full_start = start and cfg.full_finetune and not cfg.load_in_4bit
    return str(start) if full_start else cfg.model


def run_tokenizer(cfg: TrainConfig, resume_from: Path | None):
    return load_tokenizer(model_source(cfg, resume_from), cfg.trust_remote_code)


def build_model(cfg: TrainConfig, resume_from: Path | None, plan: Plan, tokenizer=None):
    """The model to train: LoRA on the base (default), QLoRA (LoRA on a 4-bit base), or every weight.

    `plan`: the run's (`plan.plan_run`); its base dtype is the frozen weights'. `tokenizer`: the
    run's, already loaded from `model_source` (its data is prepared before the model loads);
    None loads it."""
    if cfg.load_in_4bit:
        model, tokenizer = _load_4bit(cfg, plan.base, tokenizer)
    else:
        # LoRA keeps the frozen base in the compute dtype; full fine-tuning keeps fp32 master weights.
        model, tokenizer = load_model(
            model_source(cfg, resume_from),
            cfg.device,
            plan.base,
            cfg.trust_remote_code,
            attn_implementation=plan.attention,
            tokenizer=tokenizer,
        )
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(model)
    start = resume_from or start_checkpoint(cfg)  # this run's checkpoint, else init_checkpoint
    if not cfg.full_finetune and start is not None:
        model = attach_adapter(model, start, is_trainable=True)
    elif not cfg.full_finetune:
        targets = cfg.lora_target_modules
        targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",")]
        torch.manual_seed(cfg.seed)
        model = add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, targets)
    model.config.use_cache = False
    return model, tokenizer


def _load_4bit(cfg: TrainConfig, base: str, tokenizer=None):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise TrainingError(
            "load_in_4bit (QLoRA) needs bitsandbytes, which is not installed: "
            "`pip install 'orpo-lab[qlora]'` (or `pip install bitsandbytes`), or drop load_in_4bit."
        )
    from peft import prepare_model_for_kbit_training

    model, tokenizer = load_model(
        cfg.model,
        cfg.device,
        base,  # the matmuls' dtype: the plan's, as LoRA's base
        cfg.trust_remote_code,
        load_in_4bit=True,
        tokenizer=tokenizer,
    )
    # Activation checkpointing, when asked for, is build_model's (peft would use the old name).
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if pick_device(cfg.device).type == "cpu":
        # bitsandbytes (0.50) repacks a Linear4bit weight for a faster CPU kernel on its first
        # eval-mode forward and keeps that layout; that kernel has no backward, so every step after
        # a held-out evaluation would get wrong gradients through the frozen base (measured: LoRA
        # gradients 55% off). Keep the layout that autograd goes through.
        import bitsandbytes as bnb

        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = False
    return model, tokenizer


def load_pairs(cfg: TrainConfig, tokenizer, progress=None, checked: str | None = None):
    """(train pairs, held-out pairs or None, stats) of a run, tokenised and cached
    (`orpo_lab.prepared`), with max_train_pairs / max_eval_pairs applied. `checked`: the cache
    key of the rows the pre-run check read (`launch.check_launch`), when it ran in this process."""
    data = prepare_data(cfg, tokenizer, progress, checked)
    held_out = data.held_out and subset(data.held_out, cfg.max_eval_pairs, cfg.seed)
    return subset(data.train, cfg.max_train_pairs, cfg.seed), held_out, data.stats


def subset(items: Sequence, n: int | None, seed: int) -> Sequence:
    """`n` items drawn at random (seeded), in their original order; all of them when n is None.

    Test splits are often sorted by kind (the default one is): the first n would all be one kind.
    """
    if not n or n >= len(items):
        return items
    perm = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    return [items[i] for i in sorted(perm[:n])]


def enable_activation_checkpointing(model) -> None:
    """Recompute each decoder layer's activations in backward (less memory, more compute),
    non-reentrant; inputs require grad so a frozen embedding still lets gradients through.

    transformers 5 calls it activation checkpointing (`gradient_checkpointing_enable` is removed in
    v6); the older versions the project supports (>= 4.56) have only the old name.
    """
    options = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
    model.enable_input_require_grads()
