"""What a run is made of: the model to train (LoRA, QLoRA or every weight) and its tokenised pairs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from orpo_lab import autotune
from orpo_lab.config import TrainConfig
from orpo_lab.model import (
    PRECISIONS,
    ModelLoadError,
    add_lora,
    attach_adapter,
    enable_activation_checkpointing,
    load_model,
    load_tokenizer,
    pick_device,
    pick_precision,
)
from orpo_lab.prepared import prepare_data
from orpo_lab.reference import check_start, start_checkpoint
from orpo_lab.step import TrainingError

DTYPE_NAMES = {dtype: name for name, dtype in PRECISIONS.items()}


def precision_plan(cfg: TrainConfig) -> dict:
    """How a run computes: {"precision", "precision_reason", "base", "autocast", "attention"}.

    "precision" is the compute dtype: `pick_precision`'s for the device, except for a LoRA run on
    a CPU with precision="auto", which `orpo_lab.autotune` decides by measuring this machine (its
    cache; or, when this setup was never measured, float32 with "precision_probe": True, and
    `autotune.settle_precision` measures before training; "autotune": the step times it was
    decided on, for the started event). LoRA and QLoRA hold the frozen base in
    it ("base"); the adapter weights and AdamW state stay float32 (peft keeps adapters in
    float32), and so do the log-probs and the loss. "autocast" (accelerate's mixed_precision)
    wraps the whole forward on CUDA and for full fine-tuning (float32 master weights); a LoRA run
    on a CPU autocasts its decoder alone (`logps.decoder_autocast`) and uses eager attention
    ("attention"), whose bf16 backward measured ~5x faster there than sdpa's.
    """
    device = pick_device(cfg.device)
    lora = not (cfg.full_finetune or cfg.load_in_4bit)
    probe, measured = False, None
    if lora and device.type == "cpu" and cfg.precision == "auto":
        name, reason, measured = autotune.precision_from_cache(cfg)
        probe = name is None
        name = name or "fp32"
    else:
        dtype, reason = pick_precision(device, cfg.precision)
        name = DTYPE_NAMES[dtype]
    base = "fp32" if cfg.full_finetune else name
    autocast = name if (cfg.full_finetune or device.type != "cpu") and name != "fp32" else "no"
    attention = "eager" if device.type == "cpu" and base != "fp32" else None
    return {
        "precision": name,
        "precision_reason": reason,
        "base": base,
        "autocast": autocast,
        "attention": attention,
        "precision_probe": probe,
        "autotune": measured,
    }


def model_source(cfg: TrainConfig, resume_from: Path | None) -> str:
    """Where the run's weights and tokenizer load from: the checkpoint when a full fine-tune
    resumes or starts from one (`init_checkpoint`)."""
    start = resume_from or start_checkpoint(cfg)
    full_start = start and cfg.full_finetune and not cfg.load_in_4bit
    return str(start) if full_start else cfg.model


def run_tokenizer(cfg: TrainConfig, resume_from: Path | None):
    return load_tokenizer(model_source(cfg, resume_from), cfg.trust_remote_code)


def build_model(
    cfg: TrainConfig, resume_from: Path | None, plan: dict | None = None, tokenizer=None
):
    """The model to train: LoRA on the base (default), QLoRA (LoRA on a 4-bit base), or every weight.

    `plan`: the run's `precision_plan` (computed here when None). `tokenizer`: the run's, already
    loaded from `model_source` (its data is prepared before the model loads); None loads it."""
    if cfg.load_in_4bit:
        model, tokenizer = _load_4bit(cfg, tokenizer)
    else:
        # LoRA keeps the frozen base in the compute dtype; full fine-tuning keeps fp32 master weights.
        plan = plan or precision_plan(cfg)
        model, tokenizer = load_model(
            model_source(cfg, resume_from),
            cfg.device,
            plan["base"],
            cfg.trust_remote_code,
            attn_implementation=plan["attention"],
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


def _load_4bit(cfg: TrainConfig, tokenizer=None):
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
        cfg.precision,
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


def load_pairs(cfg: TrainConfig, tokenizer, progress=None):
    """(train pairs, held-out pairs or None, stats) of a run, tokenised and cached
    (`orpo_lab.prepared`), with max_train_pairs / max_eval_pairs applied."""
    data = prepare_data(cfg, tokenizer, progress)
    held_out = data.held_out and subset(data.held_out, cfg.max_eval_pairs, cfg.seed)
    return subset(data.train, cfg.max_train_pairs, cfg.seed), held_out, data.stats


def subset(items: Sequence, n: int, seed: int) -> Sequence:
    """`n` items drawn at random (seeded), in their original order; all of them when n is 0.

    Test splits are often sorted by kind (the default one is): the first n would all be one kind.
    """
    if not n or n >= len(items):
        return items
    perm = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    return [items[i] for i in sorted(perm[:n])]


# ---------------------------------------------------------------- batching


def check_launch(cfg: TrainConfig) -> int:
    """What a run needs before its folder exists: a model whose tokenizer loads and at least one
    batch of checked training pairs. Returns the number of pairs; raises ValueError (a
    `ModelLoadError`, `PreferenceDataError` or `RunError`) saying what to change."""
    from orpo_lab.prepared import check_data
    from orpo_lab.rundir import RunError

    path = Path(cfg.model).expanduser()
    if cfg.model.startswith(("/", ".", "~")) and not path.exists():  # a path, not a hub id
        raise ModelLoadError(
            f"Model path {cfg.model} does not exist: give a model directory (with config.json), "
            "a hub id (owner/name) or 'default'."
        )
    try:  # the tokenizer is enough to know the model is there, without loading its weights
        load_tokenizer(cfg.model, cfg.trust_remote_code, cfg.chat_template)
    except OSError as err:
        raise ModelLoadError(f"Could not load the model {cfg.model!r}: {err}") from err
    check_start(cfg)  # init_checkpoint, ref_checkpoint: there, and of this base model
    pairs = check_data(cfg)["train_pairs"]  # the trainer reads these checked rows from the cache
    if pairs < cfg.batch_size:
        raise RunError(
            f"The dataset {cfg.dataset} has {pairs} usable training pair(s), fewer than one batch "
            f"of {cfg.batch_size}: add pairs (e.g. vote on more chat answers) or lower batch_size."
        )
    return pairs
