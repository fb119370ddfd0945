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
    A layer compiled already (by `orpo_lab.autotune`'s probe) keeps its compiled call.

    Two things keep it at one graph per grad mode, traced once (measured on the default model,
    2-core Xeon, bf16: a first compile 67 s -> 46 s, one from inductor's cache 11-13 -> 5 s):
    - Python floats in the layers (LoRA's scaling, RMSNorm's eps) are constants, so dynamo does
      not trace them as symbols first and restart when it cannot (`specialize_float`).
    - With frozen embeddings the first layer's input does not require grad and the others' do;
      dynamo guards on that and compiled the first layer twice. `_first_layer_grad` makes it require
      grad while grad is on (the backward then also computes the unused gradient of the
      embeddings' output: one layer's input gradient, about 1/n_layers of that work)."""
    layers = decoder_layers(model)
    for layer in layers:
        if layer._compiled_call_impl is None:
            layer.compile(dynamic=True)
            layer._compiled_call_impl = torch._dynamo.config.patch(specialize_float=True)(
                layer._compiled_call_impl
            )
    embeddings = _input_embeddings(model)
    if layers and embeddings is not None and not hasattr(model, "_orpo_first_layer_grad"):
        model._orpo_first_layer_grad = embeddings.register_forward_hook(_first_layer_grad)
    return len(layers)


def _input_embeddings(model: torch.nn.Module) -> torch.nn.Module | None:
    """The model's input embeddings, or None for a model that does not say (it then compiles its
    first layer apart, as before: slower to compile, the same steps)."""
    try:
        return base_model(model).get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return None


def _first_layer_grad(module, args, output):
    """Forward hook on the input embeddings: their output requires grad while grad is on. Under
    `torch.no_grad` nothing changes, so evaluation keeps its one no-grad graph (transformers'
    `enable_input_require_grads` sets it under no_grad too, which would split that graph)."""
    if torch.is_tensor(output) and torch.is_grad_enabled() and not output.requires_grad:
        output.requires_grad_()


def uncompile_layers(model: torch.nn.Module) -> None:
    """Undo `compile_layers`: the layers run eager again."""
    for layer in decoder_layers(model):
        layer._compiled_call_impl = None
    hook = getattr(model, "_orpo_first_layer_grad", None)
    if hook is not None:
        hook.remove()
        del model._orpo_first_layer_grad
