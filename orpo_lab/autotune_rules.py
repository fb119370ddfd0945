"""The autotuner's rules: measured step times in, a choice and the reason for it out (pure
functions, `orpo_lab.autotune` measures). Each candidate counts by its fastest pass: other work on
the machine only ever adds time.
"""

from __future__ import annotations

MARGIN = 0.05  # a candidate must beat float32 eager by 5%: a tie keeps the simpler float32
# A candidate's timed passes this far apart (slowest / fastest) say the machine was busy, not how
# fast the candidate is: such a probe decides its own run but is not cached.
STEADY = 1.5
# A first compile costs 30-50 s on 2 cores (the default model; once per machine and setup):
# tried only in a run whose eager steps would take 10+ minutes, where it costs at most ~10%.
COMPILE_TRIAL_RUN_S = 600.0


def choose_precision(times: dict[str, list[float]]) -> tuple[str, str]:
    """(precision, why) from measured step times {"fp32": [...], "bf16": [...]} (seconds), the
    candidates' passes taken in turn (pass i of each, one after the other). Each candidate counts
    by its fastest pass: other work on the machine only ever adds time. A candidate that was not
    the faster in every turn is inconclusive (a busy spell can favour either), while one slow
    float32 pass beside a candidate faster in every turn is not (before stop 39 it was: a first
    float32 pass of 1.72 s against 1.12 s kept float32 where bf16 took 0.73 s in both turns)."""
    fp32 = times.get("fp32") or []
    others = {k: v for k, v in times.items() if k != "fp32" and v}
    if not fp32 or any(t <= 0 for v in times.values() for t in v):
        return "fp32", "the probe gave no usable float32 time: float32"
    base = min(fp32)
    if not others:
        return "fp32", f"float32 {base:.3f} s/step, the only candidate measured"
    name, best = min(((k, min(v)) for k, v in others.items()), key=lambda kv: kv[1])
    summary = f"{name} {best:.3f} s/step vs float32 {base:.3f} (x{base / best:.2f})"
    if best > base * (1 - MARGIN):
        return "fp32", f"measured here: {summary}; not {MARGIN:.0%} faster: float32"
    turns = list(zip(fp32, others[name], strict=False))  # the turns both candidates took
    lost = [str(i + 1) for i, (f, o) in enumerate(turns) if o >= f]
    if lost:
        return "fp32", (
            f"inconclusive: {summary}, but float32 was the faster in turn {', '.join(lost)} of "
            f"{len(turns)}: float32"
        )
    return name, f"measured here: {summary}"


def choose_compile(
    eager: float, compiled: float | None, compile_s: float | None, steps: int, paid: bool
) -> tuple[bool, str]:
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


def unsteady(times: dict[str, list[float]]) -> str | None:
    """Why a probe's step times cannot be trusted beyond its own run (a candidate whose timed
    passes are more than x`STEADY` apart: the machine was busy), or None when they can."""
    spread = {k: max(v) / min(v) for k, v in times.items() if v and min(v) > 0}
    name, worst = max(spread.items(), key=lambda kv: kv[1], default=(None, 1.0))
    if worst <= STEADY:
        return None
    return f"the {name} passes were x{worst:.2f} apart (the machine was busy)"


def too_short(steps: int, step: float, scale: float, bound: bool = False) -> str | None:
    """Why a run of `steps` eager steps of `step` s (probed; x `scale` the probe's tokens) tries no
    first compile, or None when it is long enough to (`COMPILE_TRIAL_RUN_S`). `bound`: `step` is
    one cold pass, an upper bound of a step, not the steady passes' time."""
    run_s = step * scale * steps
    if run_s >= COMPILE_TRIAL_RUN_S:
        return None
    timed = "at most: one cold pass" if bound else "probed"
    per_step = f"{step * scale:.3f} s" + (f" ({timed})" if bound else "")
    if scale != 1:
        per_step = f"~{step * scale:.3f} s ({step:.3f} s {timed}, x{scale:.1f} the tokens)"
    return (
        f"compiled layers were never measured here; their first compile (30-50 s on 2 cores) is "
        f"tried in runs of {COMPILE_TRIAL_RUN_S / 60:.0f}+ minutes eager, and this one is {steps} "
        f"step{'s' if steps != 1 else ''} x {per_step} = {run_s:.0f} s"
    )
