"""The device a run computes on and its dtype: what this machine offers, and what was asked for.

`plan.plan_run` decides a training run's device and precision with these, once; `model.load_model`
turns a precision name into the dtype its weights load in.
"""

from __future__ import annotations

from pathlib import Path

import torch


def pick_device(device: str = "auto") -> torch.device:
    """ "auto" picks CUDA when present, else CPU; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_flags(text: str | None = None) -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (or its `text`); empty where there is none."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: no flags known, so no bf16 claim is made
            return set()
    line = next((ln for ln in text.splitlines() if ln.startswith(("flags", "Features"))), "")
    return set(line.partition(":")[2].split())


def pick_precision(device: torch.device, precision: str = "auto") -> tuple[torch.dtype, str]:
    """(compute dtype, why). "auto": bf16 on CUDA with bf16 support, else float32.

    A LoRA training run on a CPU does not ask here: `orpo_lab.autotune` measures float32 against
    bf16 on the machine (`plan.plan_run`). Loading for generation keeps float32 (merging
    an adapter into bf16 weights would round it), and so does full fine-tuning.
    """
    if precision != "auto":
        if precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of auto, {', '.join(PRECISIONS)}; got {precision!r}."
            )
        return PRECISIONS[precision], f"precision={precision} was asked for"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "CUDA device with bf16 support"
        return torch.float32, "CUDA device without bf16 support"
    if device.type != "cpu":
        return torch.float32, f"{device.type} device: float32 (bf16 is not measured there)"
    return torch.float32, (
        "CPU: float32 outside LoRA training (merged or fully trained weights keep float32; "
        "LoRA runs measure bf16 against it)"
    )


def pick_dtype(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The compute dtype of `pick_precision`, without the reason."""
    return pick_precision(device, precision)[0]
