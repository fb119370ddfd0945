"""How a run computes, decided once: device, precision and compilation, in one frozen `Plan`.

`plan_run(cfg)` decides the device and the precision before anything loads; a CPU LoRA run with
precision="auto" that was never measured here is settled by `autotune.settle_precision` after
the model loads, and compilation by `autotune.settle_compile` after the log-prob path is checked.
Each returns a new `Plan`; the run's `started` event prints its fields.
"""

from __future__ import annotations

from dataclasses import dataclass

from orpo_lab import autotune
from orpo_lab.config import TrainConfig
from orpo_lab.devices import PRECISIONS, pick_device, pick_precision

DTYPE_NAMES = {dtype: name for name, dtype in PRECISIONS.items()}


@dataclass(frozen=True)
class Plan:
    """How a run computes. Names are `devices.PRECISIONS` keys ("fp32", "bf16", "fp16")."""

    device: str  # `devices.pick_device`'s answer: "cpu", "cuda", ...
    precision: str  # the compute dtype
    precision_reason: str
    base: str  # the frozen base's dtype (LoRA, QLoRA); full fine-tuning keeps fp32 master weights
    autocast: str  # accelerate's mixed_precision: "no", "bf16", "fp16"
    attention: str | None  # transformers' attn_implementation; None keeps the model's default
    precision_probe: bool = False  # precision left to `autotune.settle_precision` to measure
    autotune: dict | None = None  # the step times the choices were made on (the started event)
    sliced: bool = False  # a run in time slices (ZeroGPU): never tries a compile
    torch_compile: bool | None = None  # None until `autotune.settle_compile` decides
    torch_compile_reason: str = ""


def plan_run(cfg: TrainConfig, sliced: bool = False) -> Plan:
    """The run's `Plan`, before anything loads.

    "precision" is the compute dtype: `pick_precision`'s for the device, except for a LoRA run on
    a CPU with precision="auto", which `orpo_lab.autotune` decides by measuring this machine (its
    cache; or, when this setup was never measured, float32 with precision_probe=True, and
    `autotune.settle_precision` measures before training). LoRA and QLoRA hold the frozen base in
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
    return Plan(
        device=str(device),
        precision=name,
        precision_reason=reason,
        base=base,
        autocast=autocast,
        attention="eager" if device.type == "cpu" and base != "fp32" else None,
        precision_probe=probe,
        autotune=measured,
        sliced=sliced,
    )
