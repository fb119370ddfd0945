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


# Flags that say a CPU computes bf16 natively: x86 (AMX tiles, AVX512-BF16, AVX-NE-CONVERT) and
# Arm (the bf16 feature of Graviton 3+, Neoverse V1/V2; /proc/cpuinfo "Features"). Without one,
# torch's bf16 matrix products fall back to a slow generic kernel: on a 2-core AVX2 Zen 3 one
# (1024 x 576) @ (576 x 1536) product took 1420 ms in bf16 against 10 ms in float32
# (bench/matmul_isa.py, BENCHMARKS.md), so "auto" does not even time bf16 there.
BF16_FLAGS = ("amx_bf16", "avx512_bf16", "avx_ne_convert", "bf16")


def bf16_flag(flags=None) -> str | None:
    """The CPU's first bf16 flag of `BF16_FLAGS` (this machine's when `flags` is None), or None."""
    have = set(cpu_flags() if flags is None else flags)
    return next((f for f in BF16_FLAGS if f in have), None)


def slow_bf16_note(device: str, precision: str) -> str | None:
    """What bf16 costs on a CPU without bf16 instructions (`bf16_flag`), or None elsewhere.
    `device`: a config's ("auto", "cpu", "cuda:0", ...)."""
    if precision != "bf16" or pick_device(device).type != "cpu" or bf16_flag() is not None:
        return None
    return (
        "this CPU has no bf16 instructions (no flag of " + ", ".join(BF16_FLAGS) + "), so its "
        "bf16 matrix products run a generic kernel, about 100x slower than float32 "
        "(precision=auto trains in float32 here)"
    )


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
        note = slow_bf16_note(str(device), precision)
        why = f"precision={precision} was asked for" + (f"; {note}" if note else "")
        return PRECISIONS[precision], why
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
