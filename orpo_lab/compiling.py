"""torch.compile of the decoder layers for LoRA training on a CPU: when it pays, and the cache that
makes it pay.

Measured on a 2-core Xeon with AMX (BENCHMARKS.md, "torch.compile"): compiled decoder layers make
a bf16 LoRA step of the default model about x1.4 faster, a float32 one x1.2 (inductor fuses the
element-wise work: RMSNorm, rotary, SiLU, residual adds, LoRA scaling; one call replaces the many
small ones of each layer). The price is the first compile of a setup, about 45 s on 2 cores; a
later process finds the same kernels in inductor's on-disk cache and is ready in about 8 s. So
"auto" compiles a run when this setup (model, adapter, precision, layout, torch) compiled before
on this machine and the run has 40+ steps, or when the run is long enough (300+ steps) to repay a
first compile; other runs stay eager. ORPO_LAB_TORCH_COMPILE=off keeps "auto" eager everywhere.

The layers compile with `dynamic=True`: batch size and sequence length vary from step to step and
must not trigger a compile each. Checkpoints are unaffected (`Module.compile` keeps the parameter
names).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch

from orpo_lab.logps import base_model
from orpo_lab.model import cache_dir

# A first compile costs ~45 s on 2 cores and saves ~0.2-0.35 s a step (default model, bf16, batch 4-8):
# repaid after ~130-230 steps; 300 keeps a margin for slower machines.
AUTO_MIN_STEPS = 300
# From the cache the compile costs ~6 s and a 60-step run of the preset still gains ~18 s; a run of
# a few steps would only pay it.
AUTO_MIN_STEPS_CACHED = 40


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks: the classes transformers names in `_no_split_modules` (the ones
    accelerate never splits across devices), e.g. LlamaDecoderLayer."""
    base = base_model(model)
    names = set(getattr(base, "_no_split_modules", None) or ())
    return [m for m in base.modules() if type(m).__name__ in names]


def signature(model: torch.nn.Module, autocast: torch.dtype | None, layout: str) -> str:
    """What the compiled kernels depend on: torch, the model's config, the adapter, the autocast
    dtype and the batch layout (its attention mask shape). Batch size and length do not count."""
    base = base_model(model)
    adapters = {k: v.to_dict() for k, v in (getattr(model, "peft_config", None) or {}).items()}
    key = [torch.__version__, base.config.to_dict(), adapters, str(autocast), layout]
    text = json.dumps(key, sort_keys=True, default=_plain)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _plain(value):
    # peft keeps target_modules as a set, whose order changes from process to process.
    return sorted(map(str, value)) if isinstance(value, (set, frozenset)) else str(value)


def _marker(sig: str) -> Path:
    return cache_dir() / "compile" / f"{sig}.json"


def compiled_before(sig: str) -> bool:
    """This setup compiled on this machine, and the kernel cache it filled is still there
    (inductor's default is under /tmp, which a reboot empties)."""
    try:
        kernels = Path(json.loads(_marker(sig).read_text())["kernel_cache"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return kernels.is_dir() and any(kernels.iterdir())


def mark_compiled(sig: str, first_step_s: float) -> None:
    """Record that `sig` compiled, where its kernels are and how long its first step took."""
    path = _marker(sig)
    path.parent.mkdir(parents=True, exist_ok=True)
    # inductor puts the cache folder it used in the environment ($TORCHINDUCTOR_CACHE_DIR).
    record = {"kernel_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR"),
              "first_step_s": round(first_step_s, 1), "torch": torch.__version__,
              "when": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    path.write_text(json.dumps(record) + "\n")


def compiler_works() -> str | None:
    """None when torch.compile runs here; else why not (e.g. no C++ compiler for inductor)."""
    try:
        out = torch.compile(lambda x: x * 2 + 1)(torch.ones(3))
        return None if out.tolist() == [3.0, 3.0, 3.0] else f"it computed {out.tolist()}"
    except Exception as err:  # any failure means: train without it
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def plan(
    cfg, model, steps: int, processes: int, device: torch.device, sig: str
) -> tuple[bool, str]:
    """(compile?, why) for a run of `steps` more optimiser steps. See the module docstring."""
    asked = cfg.torch_compile
    if asked == "off":
        return False, "torch_compile=off was asked for"
    if not decoder_layers(model):
        return False, "the model names no decoder layer class (_no_split_modules): not compiled"
    if asked == "auto":
        if os.environ.get("ORPO_LAB_TORCH_COMPILE") == "off":
            return False, "ORPO_LAB_TORCH_COMPILE=off: auto does not compile on this machine"
        if device.type != "cpu":
            return False, (
                f"{device.type}: torch.compile is measured on CPUs only; torch_compile=on to try it"
            )
        if processes > 1 or cfg.full_finetune or cfg.load_in_4bit or cfg.gradient_checkpointing:
            return False, (
                "measured for single-process LoRA runs without gradient checkpointing only; "
                "torch_compile=on to try it"
            )
        if compiled_before(sig) and steps >= AUTO_MIN_STEPS_CACHED:
            why = (
                "this model, adapter and precision compiled before on this machine: its kernels "
                "load from the cache (~8 s on 2 cores)"
            )
        elif steps >= AUTO_MIN_STEPS:
            why = (
                f"a long run ({steps} steps): a first compile (~1 min on 2 cores) is repaid "
                "within ~130-230 steps"
            )
        elif steps < AUTO_MIN_STEPS_CACHED:
            return False, (
                f"a short run ({steps} steps): even a compile from the cache (~8 s on 2 cores) "
                "would cost more than it saves"
            )
        else:
            return False, (
                f"a run of {steps} steps whose setup never compiled on this machine: a first "
                "compile (~1 min on 2 cores) would cost more than it saves; torch_compile=on "
                "compiles it once, and later runs of this setup then load it from the cache"
            )
    else:
        why = "torch_compile=on was asked for"
    broken = compiler_works()
    if broken:
        return False, f"torch.compile does not work here ({broken}): training without it"
    return True, why


def compile_layers(model: torch.nn.Module) -> int:
    """Compile every decoder layer in place (one graph shared by all of them); returns how many."""
    layers = decoder_layers(model)
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
