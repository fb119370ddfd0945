"""Precision and compilation of a CPU LoRA run, decided by measuring this machine.

No list of CPU flags or guess from one machine says whether bf16 or compiled decoder layers pay on
the next one: a 2-core Xeon with AMX ran a LoRA step x1.45 faster in bf16 and x1.35 faster again
compiled, a 2-core AMD Zen 4 (avx512_bf16, no AMX) x2.2 faster in bf16 but slower compiled
(BENCHMARKS.md). So `precision="auto"` and `torch_compile="auto"` time forward+backward passes of
the run's own model, adapter and first pairs, each part cut to `PROBE_TOKENS` (`probe_batch`):

- precision, on the first run of a setup: one untimed and two timed passes in float32 and, where
  the CPU has any bf16 support, in bf16 (a second copy of the model, loaded in bf16): a few
  seconds. The answer is cached only when each candidate's two passes agree (within
  x`autotune_rules.STEADY`): a probe taken while other work starved the machine (seen: bf16
  passes of 22.9-42.7 s beside float32 ones of 1.1-1.7 s, where a quiet probe measured bf16 x2.4
  faster) decides its own run and says so, and the next run measures again;
- compiled layers, in the chosen precision: their first compile costs 30-50 s on 2 cores,
  so it is tried only in a run whose eager steps take `autotune_rules.COMPILE_TRIAL_RUN_S`+
  (eager step time x steps; where precision was not probed, one cold pass first bounds the step
  time, and a run too short even at that bound measures no more), never in a time slice; the trial
  times the cold compile, the compiled passes and a compile from inductor's on-disk cache (what a
  later process pays), and the run keeps the layers compiled when they won.

The step times go to a per-machine cache (`orpo_lab.autotune_cache`, JSON), keyed by CPU model, core count,
torch version, the instruction sets its kernels use, model and adapter configuration and batch
layout, so a later run of the same setup
reads its answer instead of measuring; it compiles when (eager - compiled) x its steps exceeds the
compile from the cache, and then times that compile (the one pass step 1 would have paid it in), so
that the next run decides on what a fresh process paid. Delete the file to measure again; no run
needs it. A candidate is chosen over float32 eager only when its fastest pass beats float32's by
`autotune_rules.MARGIN` and it was the faster in every turn (the passes are taken in turn);
otherwise, or when a probe fails, the run trains in float32 (eager) and says why. Nothing else
(no other cache folder, no switch) changes what "auto" does; a limit on the kernels'
instructions (`ONEDNN_MAX_CPU_ISA`) makes another machine, measured on its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from orpo_lab import compiling
from orpo_lab.autotune_cache import cached_times, entry, machine, setup_key, store, write_entry
from orpo_lab.autotune_rules import choose_compile, choose_precision, too_short, unsteady
from orpo_lab.collate import collate
from orpo_lab.devices import BF16_FLAGS, bf16_flag
from orpo_lab.logps import PairLogps, check_sample
from orpo_lab.step import (
    ProgressFailed,
    StopRequested,
    pair_tokens,
    passed_on,
    passing,
    time_steps,
)

if TYPE_CHECKING:  # plan.py asks this module for a cached precision
    from orpo_lab.plan import Plan

# Tokens per part (prompt, chosen, rejected) of the pairs the probe times: at max_length 1,024 the
# whole first batch cost a new setup ~26 s of probing; the ratios between candidates are measured
# on the same shapes (BENCHMARKS.md, stop 26), and step-time projections scale by the token count.
PROBE_TOKENS = 128
PROBE_STEPS = 2  # timed forward+backward passes per candidate, after one untimed (warm-up) pass
# ---------------------------------------------------------------- timing


def probe_batch(pairs: list[dict], layout: str, tokenizer) -> tuple[dict, float]:
    """(batch, scale): the batch every probe times, the run's first `pairs` with each part cut to
    `PROBE_TOKENS` tokens (`logps.check_sample`), and how many times more tokens the uncut pairs
    have: a probed step time x `scale` estimates a step of the run."""
    cut = [check_sample(pair, PROBE_TOKENS) for pair in pairs]
    return collate(cut, layout, tokenizer.pad_token_id), pair_tokens(pairs) / max(
        pair_tokens(cut), 1
    )


def _rounded(times: list[float]) -> list[float]:
    return [round(t, 4) for t in times]


# ---------------------------------------------------------------- the hooks setup.setup calls


def precision_from_cache(cfg) -> tuple[str | None, str, dict | None]:
    """(precision, why, what was measured) for a CPU LoRA run with precision="auto", from the
    cache; (None, why, None) when this setup was never measured here (`settle_precision` then
    measures it)."""
    if bf16_flag() is None:
        why = "no bf16 support on this CPU (no flag of " + ", ".join(BF16_FLAGS) + "): float32"
        return "fp32", why, None
    known = entry(setup_key(cfg))
    if known.get("precision"):
        measured = {"candidates": cached_times(known), "cached": known["when"], "probe_s": 0.0}
        return known["precision"], f"{known['precision_reason']} (cached {known['when']})", measured
    return None, "not measured on this machine yet", None


def settle_precision(
    cfg,
    plan: Plan,
    model,
    batch: dict,
    rebuild: Callable[[Plan], object],
    progress=None,
    sample: dict | None = None,
) -> tuple[object, Plan]:
    """(model, plan) of a run whose precision `plan` left to measure (plan.precision_probe):
    times the model (float32) and a bf16 copy (`rebuild(bf16 plan)`) on `batch`, keeps the faster,
    caches the answer. Any other plan is returned as it is. Each candidate's log-prob path is
    checked first (`PairLogps.verify`) on `sample` (the run's one short pair), else on `batch`.
    It says what it does on a bar (stderr) and to `progress(stage, done, total)` (the run's status
    line), which may raise: a stop, or any error of its own, ends the run as it was raised."""
    if not plan.precision_probe:
        return model, plan
    progress, began = progress and passing(progress), time.perf_counter()
    times, models, failed, busy = {}, {"fp32": model}, False, None
    bar = tqdm(total=3, desc="Measuring float32 vs bf16 here (once per setup)", leave=False)

    def stage(text: str, done: int = 1) -> None:  # the bar counts finished stages only
        bar.update(done)
        bar.set_postfix_str(text)
        if progress is not None:
            progress(f"measuring float32 vs bf16 here (once per setup): {text}", bar.n, 3)

    try:
        stage("float32", done=0)
        timed = {"fp32": _verified(model, cfg, batch if sample is None else sample)}
        times["fp32"] = time_steps(timed["fp32"], batch, cfg.beta, n=1)
        stage("loading a bf16 copy")
        models["bf16"] = rebuild(replace(plan, precision="bf16", base="bf16", attention="eager"))
        stage("bf16")
        timed["bf16"] = _verified(models["bf16"], cfg, batch if sample is None else sample)
        times["bf16"] = time_steps(timed["bf16"], batch, cfg.beta, n=1)
        for _ in range(PROBE_STEPS - 1):  # in turn, so that a busy spell slows both alike
            stage("timing both again", done=0)
            for key, pair_logps in timed.items():
                times[key] += time_steps(pair_logps, batch, cfg.beta, n=1, warmup=0)
        bar.update()
        times = {k: _rounded(v) for k, v in times.items()}  # what the started event shows
        name, why = choose_precision(times)
        busy = unsteady(times)
        if busy:
            why += f"; not cached: {busy}, the next run measures again"
    except (StopRequested, ProgressFailed) as err:  # a stop, or what the progress line raised
        raise passed_on(err) from None
    except Exception as err:  # noqa: BLE001 - a failed probe trains in float32, saying why
        name, why, failed = "fp32", f"the probe failed ({type(err).__name__}: {err}): float32", True
    finally:
        bar.close()
    models = {name: models[name]}  # the other copy is dropped before training allocates
    key = setup_key(cfg)
    probe = {
        "candidates": {k: _rounded(v) for k, v in times.items()},
        "probe_s": round(time.perf_counter() - began, 1),
        "batch": [int(batch["num_pairs"]), int(batch["input_ids"].numel())],
    }
    if not (failed or busy):
        write_entry(
            key,
            {
                **entry(key),
                **probe,
                "precision": name,
                "precision_reason": why,
                "machine": machine(),
                "when": time.strftime("%Y-%m-%d %H:%M"),
            },
        )
    if name != "fp32":
        plan = replace(plan, precision=name, base=name, attention="eager")
    return models[name], replace(plan, precision_reason=why, precision_probe=False, autotune=probe)


def _verified(model, cfg, batch) -> PairLogps:
    pair_logps = PairLogps(model, cfg.nll_scope, cfg.logps_chunk_size)
    pair_logps.verify(batch)
    return pair_logps


def settle_compile(
    cfg,
    plan: Plan,
    pair_logps: PairLogps,
    batch: dict,
    steps: int,
    processes: int,
    device,
    scale: float = 1.0,
    progress=None,
) -> Plan:
    """`plan` with torch_compile (compile?) and its reason for a run of `steps` more steps:
    `compiling.plan`'s answer, except for an eligible "auto" run, which follows the measured step
    times: from the cache, or, for a setup whose compiled layers were never timed here, from a
    trial in a run long enough to pay for it (module docstring). `batch`, `scale`:
    `probe_batch`'s. What it measured or read goes to plan.autotune (the started event); what it
    measures now, to `progress(stage)` (`setup.setup_progress`)."""
    on, why = compiling.plan(cfg, pair_logps.model, processes, device)
    if on is not None:
        return replace(plan, torch_compile=on, torch_compile_reason=why)
    record = dict(plan.autotune or {})
    record["candidates"] = dict(record.get("candidates") or {})
    say = passing(progress) if progress else (lambda stage: None)
    on, why = _measured_compile(cfg, plan, record, pair_logps, batch, steps, scale, say)
    return replace(plan, autotune=record, torch_compile=on, torch_compile_reason=why)


def _measured_compile(cfg, plan: Plan, record: dict, pair_logps, batch, steps, scale, say):
    """(compile?, why) of an eligible "auto" run; what it measures or reads goes to `record`."""
    key, name = setup_key(cfg), plan.precision
    known, times = entry(key), record["candidates"]
    eager = times.get(name) or (known.get("candidates") or {}).get(name)
    compiled = (known.get("compiled") or {}).get(name)
    if eager and compiled:
        times.update({name: eager, f"{name}+compile": compiled})
        costs = dict(known.get("compile_s", {}).get(name) or {})
        # The compiler worked here when these were measured: no check of it (a compile) again.
        on, why = choose_compile(
            min(eager) * scale, min(compiled) * scale, costs.get("cached"), steps, paid=False
        )
        if on:  # the compile step 1 would pay, timed: what a fresh process pays, for later runs
            say("compiling the decoder layers (from the compile cache)")
            costs["cached"] = round(_compile_s(pair_logps, batch, cfg.beta, min(compiled)), 1)
            store(key, name, compile_s=costs)
        record["compile_s"] = costs
        return on, why
    if plan.sliced:
        return False, "compiled layers were never measured here, and a time slice never tries them"
    try:
        if not eager:  # precision was asked for: one cold pass first, an upper bound of a step
            bound = (known.get("eager_bound") or {}).get(name)
            if bound is None:
                say(f"timing one {name} step here, for the compile choice (once per setup)")
                began = time.perf_counter()
                bound = round(time_steps(pair_logps, batch, cfg.beta, n=1, warmup=0)[0], 4)
                record["probe_s"] = round(record.get("probe_s", 0) + time.perf_counter() - began, 1)
                store(key, name, eager_bound=bound)
            record["eager_bound"] = {name: bound}
            if why := too_short(steps, bound, scale, bound=True):  # too short even at the bound
                return False, why
            say(f"measuring {name} steps here, for the choice of compiled layers (once per setup)")
            began = time.perf_counter()
            with tqdm(total=PROBE_STEPS + 1, desc=f"Measuring {name} steps", leave=False) as bar:
                eager = time_steps(pair_logps, batch, cfg.beta, PROBE_STEPS, on_pass=bar.update)
            record["probe_s"] = round(record.get("probe_s", 0) + time.perf_counter() - began, 1)
            store(key, name, candidates=_rounded(eager))
        times[name] = _rounded(eager)
        if why := too_short(steps, min(eager), scale):
            return False, why
        say("compiling the decoder layers to time them (once per setup: 30-50 s on 2 cores)")
        broken = compiling.broken_compiler()
        if broken:
            return broken
        began = time.perf_counter()
        compiled, cold_s, cached_s = _probe_compiled(pair_logps, batch, cfg.beta)
    except (StopRequested, ProgressFailed) as err:  # a stop, or what the progress line raised
        raise passed_on(err) from None
    except Exception as err:  # noqa: BLE001 - a failed probe trains eager, saying why
        compiling.uncompile_layers(pair_logps.model)
        return False, f"the compile probe failed ({type(err).__name__}: {err}): eager"
    costs = {"cold": round(cold_s, 1), "cached": round(cached_s, 1)}
    store(key, name, compiled=_rounded(compiled), compile_s=costs)
    times[f"{name}+compile"] = _rounded(compiled)
    record |= {"compile_s": costs, "compile_probe_s": round(time.perf_counter() - began, 1)}
    # Decided on the times the started event shows (rounded), so its numbers explain the choice.
    on, why = choose_compile(
        min(times[name]) * scale,
        min(times[f"{name}+compile"]) * scale,
        costs["cached"],
        steps,
        paid=True,
    )
    if not on:
        compiling.uncompile_layers(pair_logps.model)
    return on, why


def _compile_s(pair_logps: PairLogps, batch: dict, beta: float, compiled_step: float) -> float:
    """Seconds the compile of the layers costs here: one pass, less a compiled pass's time."""
    compiling.compile_layers(pair_logps.model)
    began = time.perf_counter()
    time_steps(pair_logps, batch, beta, n=0)
    return max(time.perf_counter() - began - compiled_step, 0.0)


def _probe_compiled(pair_logps: PairLogps, batch: dict, beta: float):
    """(compiled times, cold compile s, cached compile s); the layers are left compiled. The
    compile from the cache is timed after dropping dynamo's in-process state, so that inductor
    reads its kernels from its on-disk cache, as a later process does."""
    cold = _compile_s(pair_logps, batch, beta, 0.0)  # the cold compile (train graphs)
    compiled = time_steps(pair_logps, batch, beta, PROBE_STEPS, warmup=0)
    torch._dynamo.reset()
    cached = _compile_s(pair_logps, batch, beta, 0.0)
    step = min(compiled)
    return compiled, max(cold - step, 0.0), max(cached - step, 0.0)
