"""The autotuner's measurement cache: step times per machine and setup, in one JSON file.

`cache_path()` ($ORPO_LAB_AUTOTUNE_CACHE, else autotune.json in ORPO Lab's cache) holds
{"setups": {key: entry}}; a key (`setup_key`) is the machine (`machine()`), the model's
architecture, the LoRA adapter and the batch layout. An entry holds the measured step times of
each candidate ("candidates", "compiled"), the compile times ("compile_s") and the precision chosen.
Delete the file to measure again; no run needs it (`orpo_lab.autotune` decides with it).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

import torch

from orpo_lab.model_names import cache_dir


def cache_path() -> Path:
    """The measurement cache: $ORPO_LAB_AUTOTUNE_CACHE, else autotune.json in ORPO Lab's cache."""
    return Path(os.environ.get("ORPO_LAB_AUTOTUNE_CACHE") or cache_dir() / "autotune.json")


# Environment variables that limit which instructions torch's kernels use (oneDNN's matmuls, ATen's
# vectorised loops): the same CPU with AMX switched off is another machine to measure.
KERNEL_LIMITS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


def kernels() -> dict:
    """The instruction sets torch's CPU kernels use here: ATen's vector capability and any limit set
    on them (`KERNEL_LIMITS`)."""
    limits = {k: os.environ[k] for k in KERNEL_LIMITS if os.environ.get(k)}
    return {"aten": torch.backends.cpu.get_cpu_capability(), **limits}


def machine() -> dict:
    """What a measurement holds for: the CPU model, its cores and torch's threads, torch, and the
    instruction sets its kernels use (`kernels`)."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):  # x86, Arm
                name = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return {
        "cpu": name,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "kernels": kernels(),
    }


def setup_key(cfg) -> str:
    """The cache key of a run: `machine()`, the model's architecture config, the LoRA adapter
    (r, alpha, dropout, targets) and the batch layout. Not the data, batch size or step count."""
    from transformers import AutoConfig

    from orpo_lab.model import resolve_model

    config = AutoConfig.from_pretrained(
        resolve_model(cfg.model), trust_remote_code=cfg.trust_remote_code
    ).to_dict()
    for volatile in (
        "_name_or_path",
        "name_or_path",
        "transformers_version",
        "dtype",
        "torch_dtype",
    ):
        config.pop(volatile, None)
    adapter = [cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules]
    key = [machine(), config, adapter, cfg.layout]
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_entry(key: str, entry: dict) -> None:
    path, data = cache_path(), read_cache()
    data.setdefault("setups", {})[key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)  # readers see the old file or the new one, never half of one
    except OSError:
        pass  # the cache is never required: the next run measures again


def entry(key: str) -> dict:
    return read_cache().get("setups", {}).get(key) or {}


def cached_times(known: dict) -> dict:
    times = dict(known.get("candidates") or {})
    times |= {f"{k}+compile": v for k, v in (known.get("compiled") or {}).items()}
    return times


def store(key: str, name: str, **measured) -> None:
    """Add measurements of precision `name` (candidates, compiled, compile_s) to a setup's entry."""
    known = entry(key)
    for field, value in measured.items():
        known.setdefault(field, {})[name] = value
    write_entry(
        key,
        {
            **known,
            "machine": machine(),
            "when": known.get("when") or time.strftime("%Y-%m-%d %H:%M"),
        },
    )
