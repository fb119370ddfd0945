"""torch.compile of the decoder layers for LoRA training on a CPU: which runs may compile, and how.

Measured on a 2-core Xeon with AMX (BENCHMARKS.md, "torch.compile"): compiled decoder layers make
a bf16 LoRA step of the default model about x1.4 faster, a float32 one x1.2 (inductor fuses the
element-wise work: RMSNorm, rotary, SiLU, residual adds, LoRA scaling; one call replaces the many
small ones of each layer); on a 2-core AMD Zen 4 they were slower. Whether "auto" compiles is
therefore measured on each machine (`orpo_lab.autotune`); this module says which runs are
eligible and does the compiling.

The layers compile with `dynamic=True`: batch size and sequence length vary from step to step and
must not trigger a compile each. Checkpoints are unaffected (`Module.compile` keeps the parameter
names).
"""

from __future__ import annotations

import torch

from orpo_lab.logps import base_model


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated blocks: the classes transformers names in `_no_split_modules` (the ones
    accelerate never splits across devices), e.g. LlamaDecoderLayer."""
    base = base_model(model)
    names = set(getattr(base, "_no_split_modules", None) or ())
    return [m for m in base.modules() if type(m).__name__ in names]


def compiler_works() -> str | None:
    """None when torch.compile runs here; else why not (e.g. no C++ compiler for inductor)."""
    try:
        out = torch.compile(lambda x: x * 2 + 1)(torch.ones(3))
        return None if out.tolist() == [3.0, 3.0, 3.0] else f"it computed {out.tolist()}"
    except Exception as err:  # any failure means: train without it
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def plan(cfg, model, processes: int, device: torch.device) -> tuple[bool | None, str]:
    """(compile?, why), or (None, "") for an "auto" run that `orpo_lab.autotune` decides by
    measuring: a single-process LoRA run on a CPU, without gradient checkpointing (it checks
    `compiler_works`, a compile of its own, only when it would compile)."""
    asked = cfg.torch_compile
    if asked == "off":
        return False, "torch_compile=off was asked for"
    if not decoder_layers(model):
        return False, "the model names no decoder layer class (_no_split_modules): not compiled"
    if asked == "auto":
        if device.type != "cpu":
            return False, (
                f"{device.type}: torch.compile is measured on CPUs only; torch_compile=on to try it"
            )
        if processes > 1 or cfg.full_finetune or cfg.load_in_4bit or cfg.gradient_checkpointing:
            return False, (
                "measured for single-process LoRA runs without gradient checkpointing only; "
                "torch_compile=on to try it"
            )
        return None, ""
    return broken_compiler() or (True, "torch_compile=on was asked for")


def broken_compiler() -> tuple[bool, str] | None:
    """(False, why) where torch.compile does not work here, else None."""
    broken = compiler_works()
    if broken:
        return False, f"torch.compile does not work here ({broken}): training without it"
    return None


def compile_layers(model: torch.nn.Module) -> int:
    """Compile every decoder layer in place (one graph shared by all of them); returns how many.
    A layer compiled already (by `orpo_lab.autotune`'s probe) keeps its compiled call."""
    layers = decoder_layers(model)
    for layer in layers:
        if layer._compiled_call_impl is None:
            layer.compile(dynamic=True)
    return len(layers)


def uncompile_layers(model: torch.nn.Module) -> None:
    """Undo `compile_layers`: the layers run eager again."""
    for layer in decoder_layers(model):
        layer._compiled_call_impl = None
