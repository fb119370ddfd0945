"""Precision and compilation of a CPU LoRA run, decided by measuring this machine.

No list of CPU flags or guess from one machine says whether bf16 or compiled decoder layers pay on
the next one: a 2-core Xeon with AMX ran a LoRA step x1.45 faster in bf16 and x1.35 faster again
compiled, a 2-core AMD Zen 4 (avx512_bf16, no AMX) x2.2 faster in bf16 but slower compiled
(BENCHMARKS.md). So `precision="auto"` and `torch_compile="auto"` time a few forward+backward
passes of the run's own model, adapter and first batch in each candidate:

- "fp32" and, where the CPU has any bf16 support, "bf16" (eager; a second copy of the model is
  loaded for it);
- the faster of them compiled ("+compile"), where a compiler works and the run is long enough to
  use it; the compile's own cost is timed too: cold, then again from inductor's cache (what a later
  process pays).

The step times go to a per-machine cache (`cache_path()`, JSON), keyed by CPU model, core count,
torch version, model and adapter configuration and batch layout, so a later run of the same setup
reads its answer instead of measuring (nothing measurable). Delete the file to measure again; no
run needs it. A candidate is chosen over float32 eager only when it is faster by more than the
spread of float32's own repeats and by `MARGIN`; otherwise, or when a probe fails, the run trains
in float32 eager and says why. A later run compiles when the measured saving over its steps
exceeds the measured compile time from the cache.

A cache file may "pin" a choice for every setup (`{"pin": {"precision": "fp32", "torch_compile":
false}}`): the test suite pins float32 eager so that its runs do not depend on the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from orpo_lab import compiling
from orpo_lab.logps import PairLogps
from orpo_lab.loss import orpo_loss
from orpo_lab.model import cache_dir, cpu_flags

PROBE_STEPS = 3  # timed forward+backward passes per candidate, after one untimed (warm-up) pass
MARGIN = 0.05  # a candidate must beat float32 eager by 5%: a tie keeps the simpler float32
# The compiled candidate costs a compile (tens of seconds for a real model on 2 cores, once per
# machine): probed only for a run that could use it for at least this many steps.
PROBE_COMPILE_MIN_STEPS = 40
# Flags that say a CPU computes bf16 natively: x86 (AMX tiles, AVX512-BF16, AVX-NE-CONVERT) and
# Arm (the bf16 feature of Graviton 3+, Neoverse V1/V2; /proc/cpuinfo "Features").
BF16_FLAGS = ("amx_bf16", "avx512_bf16", "avx_ne_convert", "bf16")


def cache_path() -> Path:
    """The measurement cache: $ORPO_LAB_AUTOTUNE_CACHE, else autotune.json in ORPO Lab's cache."""
    return Path(os.environ.get("ORPO_LAB_AUTOTUNE_CACHE") or cache_dir() / "autotune.json")


def bf16_flag(flags=None) -> str | None:
    """The CPU's first bf16 flag of `BF16_FLAGS` (this machine's when `flags` is None), or None."""
    have = set(cpu_flags() if flags is None else flags)
    return next((f for f in BF16_FLAGS if f in have), None)


def machine() -> dict:
    """What a measurement holds for: the CPU model, its cores and torch's threads, torch."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):  # x86, Arm
                name = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    return {"cpu": name, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__}  # fmt: skip


def setup_key(cfg) -> str:
    """The cache key of a run: `machine()`, the model's architecture config, the LoRA adapter
    (r, alpha, dropout, targets) and the batch layout. Not the data, batch size or step count."""
    from transformers import AutoConfig

    from orpo_lab.model import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(cfg.model),
                                        trust_remote_code=cfg.trust_remote_code).to_dict()  # fmt: skip
    for volatile in ("_name_or_path", "name_or_path", "transformers_version", "dtype",
                     "torch_dtype"):  # fmt: skip
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


def _write_entry(key: str, entry: dict) -> None:
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


def pinned() -> dict | None:
    pin = read_cache().get("pin")
    return pin if isinstance(pin, dict) else None


# ---------------------------------------------------------------- the decisions (pure functions)


def choose_precision(times: dict[str, list[float]]) -> tuple[str, str]:
    """(precision, why) from measured step times {"fp32": [...], "bf16": [...]} (seconds)."""
    fp32 = times.get("fp32") or []
    others = {k: v for k, v in times.items() if k != "fp32" and v}
    if not fp32 or any(t <= 0 for v in times.values() for t in v):
        return "fp32", "the probe gave no usable float32 time: float32"
    base = statistics.median(fp32)
    if not others:
        return "fp32", f"float32 {base:.3f} s/step, the only candidate measured"
    name, best = min(((k, statistics.median(v)) for k, v in others.items()), key=lambda kv: kv[1])
    spread = max(fp32) - min(fp32)
    summary = f"{name} {best:.3f} s/step vs float32 {base:.3f} (x{base / best:.2f})"
    if best > base * (1 - MARGIN):
        return "fp32", f"measured here: {summary}; not {MARGIN:.0%} faster: float32"
    if base - best <= spread:
        return "fp32", (
            f"inconclusive: {summary}, but float32's own steps spread by {spread:.3f} s: float32"
        )
    return name, f"measured here: {summary}"


def choose_compile(eager: float, compiled: float | None, compile_s: float | None, steps: int,
                   paid: bool) -> tuple[bool, str]:  # fmt: skip
    """(compile?, why) from measured step times (eager, compiled) and the measured compile time
    from the cache (`compile_s`); `paid`: this process compiled already (its probe did)."""
    if compiled is None:
        return False, "compiled layers were not measured here"
    gain = eager / compiled
    summary = f"compiled {compiled:.3f} s/step vs eager {eager:.3f} (x{gain:.2f})"
    if compiled > eager * (1 - MARGIN):
        return False, f"measured here: {summary}; not {MARGIN:.0%} faster: eager"
    if paid:
        return True, f"measured here: {summary}; compiled by the probe already"
    saving = (eager - compiled) * steps
    if compile_s is None or saving <= compile_s:
        cost = "unknown" if compile_s is None else f"{compile_s:.1f} s"
        return False, (
            f"measured here: {summary}, but {steps} steps save {saving:.1f} s and a compile from "
            f"the cache costs {cost}: eager"
        )
    return True, (
        f"measured here: {summary}; {steps} steps save {saving:.1f} s, a compile from the cache "
        f"costs {compile_s:.1f} s"
    )


# ---------------------------------------------------------------- timing


def time_steps(
    pair_logps: PairLogps, batch: dict, beta: float, n: int = PROBE_STEPS
) -> list[float]:
    """Seconds of `n` forward+backward passes of `batch` (after one untimed pass). Nothing of the
    run changes: gradients are dropped, the random number state is restored, the mode too."""
    model, training = pair_logps.model, pair_logps.training
    device = next(model.parameters()).device
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    times = []
    with torch.random.fork_rng(devices=[]):
        pair_logps.train()
        try:
            for i in range(n + 1):
                began = time.perf_counter()
                chosen, rejected, nll_sum, nll_count = pair_logps(**batch)
                loss, _ = orpo_loss(chosen, rejected, nll_sum / nll_count.clamp(min=1), beta)
                loss.backward()
                model.zero_grad(set_to_none=True)
                if i:
                    times.append(time.perf_counter() - began)
        finally:
            pair_logps.train(training)
            model.zero_grad(set_to_none=True)
    return times


def _rounded(times: list[float]) -> list[float]:
    return [round(t, 4) for t in times]


# ---------------------------------------------------------------- the hooks train.prepare calls


def precision_from_cache(cfg) -> tuple[str | None, str]:
    """(precision, why) for a CPU LoRA run with precision="auto", from the cache or a pin; (None,
    why) when this setup was never measured here (`settle_precision` then measures it)."""
    pin = pinned()
    if pin:
        return pin.get("precision", "fp32"), f"pinned in {cache_path()}"
    if bf16_flag() is None:
        return "fp32", "no bf16 support on this CPU (no flag of " + ", ".join(BF16_FLAGS) + ")"
    known = entry(setup_key(cfg))
    if known.get("precision"):
        return known["precision"], f"{known['precision_reason']} (cached {known['when']})"
    return None, "not measured on this machine yet"


def settle_precision(
    cfg, plan: dict, model, batch: dict, rebuild: Callable[[dict], object]
) -> tuple[object, dict]:
    """(model, plan) of a run whose precision `plan` left to measure (plan["precision_probe"]):
    times the model (float32) and a bf16 copy (`rebuild(bf16 plan)`) on `batch`, keeps the faster,
    caches the answer. Any other plan is returned as it is."""
    if not plan.get("precision_probe"):
        return model, plan
    began = time.perf_counter()
    times, models, notes = {}, {"fp32": model}, {}
    try:
        times["fp32"] = time_steps(_verified(model, cfg, batch), batch, cfg.beta)
        bf16_plan = {**plan, "precision": "bf16", "base": "bf16", "attention": "eager"}
        models["bf16"] = rebuild(bf16_plan)
        times["bf16"] = time_steps(_verified(models["bf16"], cfg, batch), batch, cfg.beta)
        name, why = choose_precision(times)
    except Exception as err:  # noqa: BLE001 - a failed probe trains in float32, saying why
        name, why = "fp32", f"the probe failed ({type(err).__name__}: {err}): float32"
        notes["failed"] = True
    key = setup_key(cfg)
    probe = {"candidates": {k: _rounded(v) for k, v in times.items()},
             "probe_s": round(time.perf_counter() - began, 1),
             "batch": [int(batch["num_pairs"]), int(batch["input_ids"].numel())]}  # fmt: skip
    if not notes.get("failed"):
        _write_entry(key, {**entry(key), **probe, "precision": name, "precision_reason": why,
                           "machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M")})  # fmt: skip
    chosen = plan if name == "fp32" else {**plan, "precision": name, "base": name,
                                          "attention": "eager"}  # fmt: skip
    chosen = {**chosen, "precision_reason": why, "precision_probe": False, "autotune": probe}
    return models[name], chosen


def _verified(model, cfg, batch) -> PairLogps:
    pair_logps = PairLogps(model, cfg.nll_scope, cfg.logps_chunk_size)
    pair_logps.verify(batch)
    return pair_logps


def settle_compile(
    cfg, plan: dict, pair_logps: PairLogps, batch: dict, steps: int, processes: int, device
) -> tuple[bool, str]:
    """(compile?, why) for a run of `steps` more steps: `compiling.plan`'s answer, except for an
    eligible "auto" run, which follows the measured step times (measuring them here when this
    setup's compiled layers were never timed on this machine and the run has
    PROBE_COMPILE_MIN_STEPS+). Records what it measured in plan["autotune"]."""
    model, pin = pair_logps.model, pinned()
    if cfg.torch_compile == "auto" and pin and not pin.get("torch_compile"):
        return False, f"pinned in {cache_path()}"
    on, why = compiling.plan(cfg, model, processes, device)
    if on is not None:
        return on, why
    if pin:
        return True, f"pinned in {cache_path()}"
    key, name = setup_key(cfg), plan["precision"]
    known = entry(key)
    compiled_times = known.get("compiled", {}).get(name)
    eager = known.get("candidates", {}).get(name)
    if compiled_times is None:
        if steps < PROBE_COMPILE_MIN_STEPS:
            return False, (
                f"a short run ({steps} steps): compiled layers were never measured here, and "
                f"their probe (a first compile) is left to runs of {PROBE_COMPILE_MIN_STEPS}+ steps"
            )
        try:
            eager, compiled_times, cold_s, warm_s = _probe_compiled(pair_logps, batch, cfg.beta)
        except Exception as err:  # noqa: BLE001 - a failed probe trains eager, saying why
            compiling.uncompile_layers(model)
            return False, f"the compile probe failed ({type(err).__name__}: {err}): eager"
        known = entry(key)
        known.setdefault("compiled", {})[name] = _rounded(compiled_times)
        known.setdefault("compile_s", {})[name] = {
            "cold": round(cold_s, 1),
            "cached": round(warm_s, 1),
        }
        known.setdefault("candidates", {})[name] = _rounded(eager)
        _write_entry(key, {**known, "machine": machine(),
                           "when": known.get("when") or time.strftime("%Y-%m-%d %H:%M")})  # fmt: skip
        record = plan.setdefault("autotune", {})
        record.setdefault("candidates", {})[name] = _rounded(eager)
        record["candidates"][f"{name}+compile"] = _rounded(compiled_times)
        record["compile_s"] = {"cold": round(cold_s, 1), "cached": round(warm_s, 1)}
        on, why = choose_compile(statistics.median(eager), statistics.median(compiled_times),
                                 warm_s, steps, paid=True)  # fmt: skip
        if not on:
            compiling.uncompile_layers(model)
        return on, why
    if not eager:
        return False, "eager layers were not measured here in this precision: eager"
    record = plan.setdefault("autotune", {})
    record.setdefault("candidates", {})[f"{name}+compile"] = compiled_times
    record["candidates"].setdefault(name, eager)
    cost = known.get("compile_s", {}).get(name, {}).get("cached")
    return choose_compile(statistics.median(eager), statistics.median(compiled_times), cost,
                          steps, paid=False)  # fmt: skip


def _probe_compiled(pair_logps: PairLogps, batch: dict, beta: float):
    """(eager times, compiled times, cold compile s, cached compile s): the layers are left
    compiled. The cached compile is timed after dropping dynamo's in-process state, so that
    inductor reads its kernels from its on-disk cache, as a later process does."""
    eager = time_steps(pair_logps, batch, beta)
    compiling.compile_layers(pair_logps.model)
    began = time.perf_counter()
    time_steps(pair_logps, batch, beta, n=0)  # the cold compile (train graphs)
    cold = time.perf_counter() - began
    compiled = time_steps(pair_logps, batch, beta)
    torch._dynamo.reset()
    began = time.perf_counter()
    time_steps(pair_logps, batch, beta, n=0)
    warm = time.perf_counter() - began
    step = statistics.median(compiled)
    return eager, compiled, max(cold - step, 0.0), max(warm - step, 0.0)
