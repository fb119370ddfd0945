"""precision="auto" and torch_compile="auto" by measurement (orpo_lab.autotune): the choices from
injected step times, the cache that later runs read, a probe that fails, and a real probe of the
tiny model in a run. (A real probe of compiled layers: test_compile.py, after its compiled run,
so that the suite compiles the tiny model cold once.)"""

from __future__ import annotations

import json
import threading
from dataclasses import replace

import pytest
import torch
from test_train import lines, make_config, same_trajectory, write_pairs

from orpo_lab import autotune, autotune_cache, autotune_rules, compiling
from orpo_lab.build import build_model, load_pairs
from orpo_lab.collate import collate
from orpo_lab.logps import PairLogps
from orpo_lab.plan import plan_run
from orpo_lab.rundir import RunDir
from orpo_lab.setup import setup_progress
from orpo_lab.step import StopRequested
from orpo_lab.train import train

CPU = torch.device("cpu")


@pytest.fixture()
def data(tmp_path):
    return write_pairs(tmp_path / "train.jsonl", 16), write_pairs(
        tmp_path / "test.jsonl", 8, offset=100
    )


@pytest.fixture()
def own_cache(tmp_path, monkeypatch):
    """A measurement cache of this test's own: "auto" measures."""
    path = tmp_path / "autotune.json"
    monkeypatch.setenv("ORPO_LAB_AUTOTUNE_CACHE", str(path))
    return path


def started(run_dir) -> dict:
    return next(r for r in lines(run_dir, "event") if r["event"] == "started")


def test_precision_follows_the_measured_times():
    # Each candidate by its fastest pass (other work only adds time): 0.50 vs 0.99.
    assert autotune_rules.choose_precision(
        {"fp32": [1.0, 1.02, 0.99], "bf16": [0.5, 0.52, 0.51]}
    ) == (
        "bf16",
        "measured here: bf16 0.500 s/step vs float32 0.990 (x1.98)",
    )
    # Slower, or faster by less than MARGIN (5%): float32.
    name, why = autotune_rules.choose_precision({"fp32": [1.0, 1.0, 1.0], "bf16": [1.3, 1.3, 1.2]})
    assert name == "fp32" and why.endswith("(x0.83); not 5% faster: float32")
    assert autotune_rules.choose_precision({"fp32": [1.0] * 3, "bf16": [0.97] * 3})[0] == "fp32"
    # Not the faster in every turn (pass i of each, taken one after the other): inconclusive.
    name, why = autotune_rules.choose_precision({"fp32": [1.0, 1.3], "bf16": [0.8, 1.35]})
    assert name == "fp32" and why == (
        "inconclusive: bf16 0.800 s/step vs float32 1.000 (x1.25), but float32 was the faster in "
        "turn 2 of 2: float32"
    )
    # One slow float32 pass beside bf16 faster in every turn decides nothing (a probe of the
    # default model on an AMX CPU; the old rule kept float32 as "inconclusive").
    assert autotune_rules.choose_precision(
        {"fp32": [1.7156, 1.1228], "bf16": [0.7356, 0.7282]}
    ) == ("bf16", "measured here: bf16 0.728 s/step vs float32 1.123 (x1.54)")
    # Nothing (or nonsense) measured: float32, and why.
    assert autotune_rules.choose_precision({"fp32": [1.0]}) == (
        "fp32",
        "float32 1.000 s/step, the only candidate measured",
    )
    for times in ({}, {"fp32": [1.0], "bf16": [0.0]}):
        assert autotune_rules.choose_precision(times) == (
            "fp32",
            "the probe gave no usable float32 time: float32",
        )


def test_compilation_follows_the_measured_times_and_compile_cost():
    choose = autotune_rules.choose_compile
    assert choose(1.0, None, None, 100, paid=False) == (
        False,
        "compiled layers were not measured here",
    )
    on, why = choose(1.0, 1.1, 5.0, 1000, paid=True)
    assert not on and why.endswith("(x0.91); not 5% faster: eager")
    # The probe compiled already: any measured gain is this run's.
    assert choose(1.0, 0.8, 40.0, 3, paid=True) == (
        True,
        "measured here: compiled 0.800 s/step vs eager 1.000 (x1.25); compiled by the probe "
        "already",
    )
    # A later run: the saving over its steps must exceed the compile from the cache.
    on, why = choose(1.0, 0.8, 7.0, 40, paid=False)
    assert on and why.endswith("40 steps save 8.0 s, a compile from the cache costs 7.0 s")
    on, why = choose(1.0, 0.8, 7.0, 30, paid=False)
    assert not on and why.endswith(
        "30 steps save 6.0 s and a compile from the cache costs 7.0 s: eager"
    )
    assert choose(1.0, 0.8, None, 10**6, paid=False)[0] is False  # cost never measured


def scripted_times(log: list, bf16_s: float = 0.5, fp32_s: float = 1.0, bars: list | None = None):
    """A stand-in for autotune.time_steps: the step time of the model's frozen dtype (logged; with
    `bars`, together with how many stages the probe's bar says are done)."""

    def fake(pair_logps, batch, beta, n=autotune.PROBE_STEPS, warmup=1, on_pass=None):
        dtype = pair_logps.model.get_base_model().get_input_embeddings().weight.dtype
        log.append(dtype if bars is None else (dtype, bars[0].n))
        return [bf16_s if dtype == torch.bfloat16 else fp32_s] * n

    return fake


def test_a_new_setup_is_measured_once_then_read_from_the_cache(
    tmp_path, data, tiny_model_dir, own_cache, monkeypatch
):
    monkeypatch.setattr(autotune, "bf16_flag", lambda flags=None: "avx512_bf16")
    timed: list = []
    monkeypatch.setattr(autotune, "time_steps", scripted_times(timed))
    cfg = make_config(tmp_path, data, tiny_model_dir, precision="auto")
    plan = plan_run(cfg)
    assert plan.precision_probe and plan.precision == "fp32"
    assert plan.precision_reason == "not measured on this machine yet"
    model, tok = build_model(cfg, None, plan)
    batch = collate(load_pairs(cfg, tok)[0][:4], cfg.layout, tok.pad_token_id)
    chosen, plan = autotune.settle_precision(
        cfg, plan, model, batch, lambda p: build_model(cfg, None, p)[0]
    )
    # Two timed passes each, in turn (a busy spell slows both alike).
    assert timed == [torch.float32, torch.bfloat16] * 2
    assert (plan.precision, plan.base, plan.attention) == ("bf16", "bf16", "eager")
    assert plan.precision_reason == "measured here: bf16 0.500 s/step vs float32 1.000 (x2.00)"
    assert plan.autotune["candidates"] == {"fp32": [1.0, 1.0], "bf16": [0.5, 0.5]}
    assert chosen is not model and chosen.get_base_model().dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in chosen.parameters() if p.requires_grad)

    # The cache now answers for this setup, without measuring; the key knows the machine.
    ((key, stored),) = json.loads(own_cache.read_text())["setups"].items()
    assert stored["machine"] == autotune_cache.machine() and stored["precision"] == "bf16"
    again = plan_run(cfg)
    assert not again.precision_probe and again.precision == "bf16"
    assert again.precision_reason.startswith("measured here: bf16 0.500 s/step")
    assert "(cached " in again.precision_reason
    # Its started event still shows the step times the choice was made on; nothing was timed.
    assert again.autotune["candidates"] == plan.autotune["candidates"]
    assert again.autotune["probe_s"] == 0
    assert autotune.settle_precision(cfg, again, chosen, batch, None)[0] is chosen
    assert len(timed) == 4
    # Another adapter or layout is another setup; a CPU without bf16 support never measures.
    for changes in (dict(lora_r=4), dict(layout="prefix")):
        assert plan_run(
            make_config(tmp_path, data, tiny_model_dir, precision="auto", **changes)
        ).precision_probe
    # The same CPU with its kernels held below AMX is another machine: measured anew, and the
    # answer of the whole CPU is read again once the limit is gone.
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert plan_run(cfg).precision_probe
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert plan_run(cfg).precision == "bf16"
    monkeypatch.setattr(autotune, "bf16_flag", lambda flags=None: None)
    plan = plan_run(make_config(tmp_path, data, tiny_model_dir, precision="auto", lora_r=4))
    assert not plan.precision_probe and plan.precision == "fp32"
    assert plan.precision_reason.startswith("no bf16 support on this CPU")

    # A probe that fails trains in float32 on the model it has, says why, and caches nothing.
    own_cache.unlink()
    monkeypatch.setattr(autotune, "bf16_flag", lambda flags=None: "amx_bf16")

    def broken(plan):
        raise RuntimeError("no bf16 kernels")

    plan = plan_run(cfg)
    kept, plan = autotune.settle_precision(cfg, plan, model, batch, broken)
    assert kept is model and plan.precision == "fp32"
    assert plan.precision_reason == "the probe failed (RuntimeError: no bf16 kernels): float32"
    assert not own_cache.exists()


def test_the_probe_says_what_it_measures_and_a_stop_stops_it(
    tmp_path, data, tiny_model_dir, own_cache, monkeypatch
):
    """Each stage goes to the run's status line (not as "preparing data"); a stop request raised
    there ends the probe, caching nothing."""
    monkeypatch.setattr(autotune, "bf16_flag", lambda flags=None: "avx512_bf16")
    monkeypatch.setattr(autotune, "time_steps", scripted_times([]))
    cfg = make_config(tmp_path, data, tiny_model_dir, precision="auto")
    model, tok = build_model(cfg, None, plan_run(cfg))
    batch = collate(load_pairs(cfg, tok)[0][:4], cfg.layout, tok.pad_token_id)
    folder, stop = RunDir(tmp_path / "run"), threading.Event()
    folder.path.mkdir()
    progress, statuses = setup_progress(folder, stop, every_s=0), []

    def rebuild(plan):
        statuses.append(folder.read_status()["message"])
        return build_model(cfg, None, plan)[0]

    autotune.settle_precision(cfg, plan_run(cfg), model, batch, rebuild, progress)
    assert statuses == [
        "measuring float32 vs bf16 here (once per setup): loading a bf16 copy 1 / 3"
    ]
    assert folder.read_status()["message"].endswith("(once per setup): timing both again 2 / 3")
    own_cache.unlink()
    stop.set()
    with pytest.raises(StopRequested):
        autotune.settle_precision(cfg, plan_run(cfg), model, batch, rebuild, progress)
    assert len(statuses) == 1 and not own_cache.exists()
    # What the status line raises itself (a full disk, a callback's bug) ends the run as it was
    # raised: it is not the probe's failure, which would have trained on in float32.
    said = []

    def full(stage, done=0, total=0):
        said.append(stage)
        if len(said) == 2:  # after float32 was measured, as the bf16 copy loads
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left on device") as raised:
        autotune.settle_precision(cfg, plan_run(cfg), model, batch, rebuild, full)
    assert type(raised.value) is OSError and len(statuses) == 1 and not own_cache.exists()


def test_the_setup_says_each_stage_as_it_begins(tmp_path, data, tiny_model_dir, own_cache):
    """Before the started event a run says what it spends its seconds on, each stage once, to the
    callback (the CLI's lines, a notebook's progress bar) and never into metrics.jsonl."""
    from orpo_lab.cli import progress_line

    cfg = make_config(
        tmp_path, data, tiny_model_dir, torch_compile="auto", max_steps=1, save_every=None
    )
    records = []
    train(cfg, callback=records.append)
    first = next(i for i, r in enumerate(records) if r.get("event") == "started")
    said = [r["stage"] for r in records[:first]]
    assert all(r.get("event") == "preparing" for r in records[:first])
    assert "preparing" not in {r.get("event") for r in records[first:]}
    data_stages = [s for s in said if s.startswith("preparing data: ")]
    assert data_stages and data_stages[0].startswith("preparing data: reading and checking ")
    assert len(set(said)) == len(said)  # each once, however often its count moved
    assert [s for s in said if s not in data_stages] == [
        "loading the model",  # then one eager step, timed once per setup for the compile choice
        "timing one fp32 step here, for the compile choice (once per setup)",
    ]
    assert progress_line(records[first - 1]) == said[-1] + " ..."
    assert "preparing" not in {r.get("event") for r in lines(cfg.run_dir, "event")}
    # That one pass bounds a step: 1 step is far too short for a compile trial, so nothing more
    # was timed, and the started event says so.
    event = started(cfg.run_dir)
    (bound,) = event["autotune"]["eager_bound"].values()
    assert bound > 0 and "fp32" not in event["autotune"]["candidates"]
    assert event["autotune"]["probe_s"] >= round(bound, 1)
    assert event["torch_compile_reason"].endswith(
        f"this one is 1 step x {bound:.3f} s (at most: one cold pass) = {bound:.0f} s"
    )
    # A second run of the setup reads the cache: nothing measured, nothing said of it.
    cfg.run_name, records = "again", []
    train(cfg, callback=records.append)
    said = [r["stage"] for r in records if r.get("event") == "preparing"]
    assert said == ["loading the model"]  # the data too comes from the cache
    again = started(cfg.run_dir)["autotune"]
    assert again["eager_bound"] == {"fp32": bound} and again.get("probe_s", 0) == 0
    # status.json follows each new stage at once; a stage's counts, at most once a second.
    folder = RunDir(tmp_path / "status")
    folder.path.mkdir()
    progress = setup_progress(folder, None)
    progress("preparing data: tokenising train pairs", 8, 8)
    progress("loading the model")
    assert folder.read_status()["message"] == "loading the model"
    progress("measuring", 1, 3)
    progress("measuring", 2, 3)
    assert folder.read_status()["message"] == "measuring 1 / 3"


def test_each_candidate_is_timed_twice_in_turn_and_the_bar_follows(
    tmp_path, data, tiny_model_dir, own_cache, monkeypatch
):
    monkeypatch.setattr(autotune, "bf16_flag", lambda flags=None: "avx512_bf16")
    timed, bars = [], []  # the bar as each timing starts: it never says done while work is left

    class Bar(autotune.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(autotune, "tqdm", Bar)
    monkeypatch.setattr(autotune, "time_steps", scripted_times(timed, bf16_s=0.8, bars=bars))
    cfg = make_config(tmp_path, data, tiny_model_dir, precision="auto")
    model, tok = build_model(cfg, None, plan_run(cfg))
    batch = collate(load_pairs(cfg, tok)[0][:4], cfg.layout, tok.pad_token_id)
    _, plan = autotune.settle_precision(
        cfg, plan_run(cfg), model, batch, lambda p: build_model(cfg, None, p)[0]
    )
    # x1.25: the bar at 0, 2 (the copy loaded), 2, 2 stages done as each timing starts
    fp32, bf16 = torch.float32, torch.bfloat16
    assert timed == [(fp32, 0), (bf16, 2), (fp32, 2), (bf16, 2)]
    assert bars[0].n == bars[0].total == 3  # done once every timing is
    assert plan.autotune["candidates"] == {"fp32": [1.0, 1.0], "bf16": [0.8, 0.8]}
    assert plan.precision == "bf16"


def test_a_probe_on_a_busy_machine_decides_its_run_but_is_not_cached(
    tmp_path, data, tiny_model_dir, own_cache, monkeypatch
):
    """The probe that was cached on a starved machine (2026-12-06: bf16 looked x33 slower and
    every later run trained in float32) would not be cached now: its passes disagree."""
    starved = {"bf16": [42.73, 35.83, 22.87], "fp32": [1.29, 1.07, 1.73]}
    assert (
        autotune_rules.unsteady(starved)
        == "the bf16 passes were x1.87 apart (the machine was busy)"
    )
    assert autotune_rules.unsteady({"fp32": [1.0, 1.4], "bf16": [0.5, 0.55]}) is None
    monkeypatch.setattr(autotune, "bf16_flag", lambda flags=None: "avx512_bf16")
    passes = iter([1.0, 0.5, 1.1, 0.9])  # fp32, bf16, fp32, bf16: bf16's second pass x1.8 slower
    monkeypatch.setattr(autotune, "time_steps", lambda *args, **kwargs: [next(passes)])
    cfg = make_config(tmp_path, data, tiny_model_dir, precision="auto")
    model, tok = build_model(cfg, None, plan_run(cfg))
    batch = collate(load_pairs(cfg, tok)[0][:4], cfg.layout, tok.pad_token_id)
    rebuild = lambda p: build_model(cfg, None, p)[0]  # noqa: E731
    _, plan = autotune.settle_precision(cfg, plan_run(cfg), model, batch, rebuild)
    assert plan.precision == "bf16" and plan.autotune["candidates"]["bf16"] == [0.5, 0.9]
    assert plan.precision_reason == (
        "measured here: bf16 0.500 s/step vs float32 1.000 (x2.00); not cached: the bf16 passes "
        "were x1.80 apart (the machine was busy), the next run measures again"
    )
    assert not own_cache.exists() and plan_run(cfg).precision_probe  # measured again next time


def test_a_real_probe_picks_the_faster_and_leaves_the_run_unchanged(
    tmp_path, data, tiny_model_dir, own_cache, monkeypatch
):
    """Timed for real on the tiny model (both candidates, whatever the CPU: its flags are said to
    have bf16); the run then trains exactly as one that asked for the chosen precision."""
    monkeypatch.setattr(autotune, "bf16_flag", lambda flags=None: "avx512_bf16")
    probed = make_config(
        tmp_path,
        data,
        tiny_model_dir,
        run_name="probed",
        precision="auto",
        torch_compile="auto",
        max_steps=3,
        save_every=None,
    )
    train(probed)
    event = started(probed.run_dir)
    times = event["autotune"]["candidates"]
    assert times.keys() == {"fp32", "bf16"}
    assert all(len(v) == autotune.PROBE_STEPS and min(v) > 0 for v in times.values())
    name, why = autotune_rules.choose_precision(times)
    busy = autotune_rules.unsteady(times)  # the tiny model's passes take milliseconds
    if busy:
        why += f"; not cached: {busy}, the next run measures again"
    assert (event["precision"], event["precision_reason"]) == (name, why)
    assert event["autotune"]["probe_s"] > 0
    assert event["torch_compile"] is False  # 3 tiny steps: far from a run that tries a compile
    assert event["torch_compile_reason"].startswith(
        "compiled layers were never measured here; their first compile (30-50 s on 2 cores) "
        "is tried in runs of 10+ minutes eager, and this one is 3 steps x "
    )

    cached = make_config(
        tmp_path,
        data,
        tiny_model_dir,
        run_name="cached",
        precision="auto",
        torch_compile="auto",
        max_steps=3,
        save_every=None,
    )
    train(cached)
    event = started(cached.run_dir)
    if busy:  # nothing was cached: this run measured again
        assert event["autotune"]["probe_s"] > 0 and "(cached " not in event["precision_reason"]
    else:
        assert event["precision"] == name and "(cached " in event["precision_reason"]
        assert event["autotune"]["probe_s"] == 0  # nothing measured in this run: the cache's
        assert event["autotune"]["candidates"] == {
            k: [round(t, 4) for t in v] for k, v in times.items()
        }
    asked = make_config(
        tmp_path,
        data,
        tiny_model_dir,
        run_name="asked",
        precision=name,
        torch_compile="off",
        max_steps=3,
        save_every=None,
    )
    train(asked)
    for run in (probed, cached):  # the probe drew no random numbers and left no gradient behind
        if started(run.run_dir)["precision"] == name:  # (a second probe may have chosen otherwise)
            same_trajectory(lines(asked.run_dir), lines(run.run_dir))


def test_the_probe_times_the_first_pairs_cut_short():
    """Each part of a pair cut to PROBE_TOKENS (the prompt's end, the replies' starts); a pair that
    fits is timed as it is; the scale is the uncut pairs' tokens over the probe's."""
    n = autotune.PROBE_TOKENS
    long = {"prompt_ids": list(range(3 * n)), "chosen_ids": [7] * (2 * n), "rejected_ids": [8] * n}
    short = {"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6]}
    tokenizer = type("Tok", (), {"pad_token_id": 0})()
    batch, scale = autotune.probe_batch([short], "padded", tokenizer)
    assert scale == 1.0 and torch.equal(batch["input_ids"], collate([short])["input_ids"])
    batch, scale = autotune.probe_batch([long, short], "padded", tokenizer)
    cut = {"prompt_ids": list(range(2 * n, 3 * n)), "chosen_ids": [7] * n, "rejected_ids": [8] * n}
    assert torch.equal(batch["input_ids"], collate([cut, short])["input_ids"])
    assert batch["input_ids"].shape[1] == 2 * n  # the longest row: prompt + reply, cut
    assert scale == (2 * 3 * n + 2 * n + n + 2 * 3 + 2 + 1) / (2 * n + n + n + 2 * 3 + 2 + 1)


@pytest.fixture()
def pair_logps(tmp_path, data, tiny_model_dir):
    cfg = make_config(tmp_path, data, tiny_model_dir, torch_compile="auto")
    model, tok = build_model(cfg, None, plan_run(cfg))
    batch = collate(load_pairs(cfg, tok)[0][:4], cfg.layout, tok.pad_token_id)
    return cfg, PairLogps(model, cfg.nll_scope, 16), batch


def test_compiled_layers_are_tried_once_in_a_long_enough_run(pair_logps, own_cache, monkeypatch):
    """Injected timings: eager 1.0 s a step, compiled 0.7, a cold compile 40 s, from the cache 6."""
    cfg, wrapped, batch = pair_logps
    plan = plan_run(cfg)  # precision="fp32" asked for: only compilation is measured
    monkeypatch.setattr(compiling, "compiler_works", lambda: None)
    timed, probes = [], []

    def eager(pair_logps, batch, beta, n=autotune.PROBE_STEPS, warmup=1, on_pass=None):
        timed.append(n)
        return [1.0] * n

    def fake_probe(pair_logps, batch, beta):
        probes.append(1)
        compiling.compile_layers(pair_logps.model)
        return [0.7] * autotune.PROBE_STEPS, 40.0, 6.0

    monkeypatch.setattr(autotune, "time_steps", eager)
    monkeypatch.setattr(autotune, "_probe_compiled", fake_probe)

    def settle(steps, processes=1, device=CPU, scale=1.0, **changes):
        settled = autotune.settle_compile(
            cfg, replace(plan, **changes), wrapped, batch, steps, processes, device, scale
        )
        return settled.torch_compile, settled.torch_compile_reason

    # 599 steps x 1.0 s: under the 10 minutes that a first compile is tried in. Precision was
    # asked for, so no step was timed yet: one cold pass, an upper bound of a step, is timed and
    # kept, and the run is too short even at that bound.
    assert settle(599) == (
        False,
        "compiled layers were never measured here; their first compile "
        "(30-50 s on 2 cores) is tried in runs of 10+ minutes eager, and "
        "this one is 599 steps x 1.000 s (at most: one cold pass) = 599 s",
    )
    assert timed == [1]
    assert settle(10**6, sliced=True) == (
        False,
        "compiled layers were never measured here, and a time slice never tries them",
    )
    # The probe times the first pairs cut short (`probe_batch`): its step time x the token ratio.
    assert settle(149, scale=4.0) == (
        False,
        "compiled layers were never measured here; their "
        "first compile (30-50 s on 2 cores) is tried in runs "
        "of 10+ minutes eager, and this one is 149 steps x ~4.000 s "
        "(1.000 s at most: one cold pass, x4.0 the tokens) = 596 s",
    )
    assert timed == [1] and probes == []  # the bound came from the cache
    # A run long enough at the bound: the eager steps measured (two passes), then the trial.
    trial = autotune.settle_compile(cfg, plan, wrapped, batch, 600, 1, CPU)
    on, why = trial.torch_compile, trial.torch_compile_reason
    assert on and why.endswith("(x1.43); compiled by the probe already") and probes == [1]
    assert timed == [1, autotune.PROBE_STEPS]
    two = autotune.PROBE_STEPS
    assert trial.autotune["candidates"] == {"fp32": [1.0] * two, "fp32+compile": [0.7] * two}
    assert trial.autotune["compile_s"] == {"cold": 40.0, "cached": 6.0}
    # Later runs read the cache: compiled when 0.3 s a step repays the 6 s compile from the cache,
    # whatever the environment says (the old switch is gone).
    monkeypatch.setenv("ORPO_LAB_TORCH_COMPILE", "off")
    assert settle(19)[0] is False
    monkeypatch.setattr(autotune, "_compile_s", lambda *args: 9.0)  # what this process paid
    later = autotune.settle_compile(cfg, plan, wrapped, batch, 21, 1, CPU)
    on, why = later.torch_compile, later.torch_compile_reason
    assert on and why.endswith("21 steps save 6.3 s, a compile from the cache costs 6.0 s")
    assert later.autotune["candidates"] == {"fp32": [1.0] * two, "fp32+compile": [0.7] * two}
    # The compile this run paid (timed in the pass step 1 would have paid it in) is what the
    # next run decides on: 21 steps no longer repay it.
    assert later.autotune["compile_s"] == {"cold": 40.0, "cached": 9.0}
    assert settle(21)[0] is False and settle(31)[0] is True
    assert probes == [1] and len(timed) == 2  # the eager times came from the cache
    # The compiler worked when these were measured: a later run does not check it again (its
    # check is a compile of its own, seconds).
    monkeypatch.setattr(compiling, "compiler_works", lambda: pytest.fail("checked again"))
    assert settle(40)[0] is True
    # Not eligible: auto does not measure (compiling.plan says why).
    assert settle(1000, processes=2)[1].startswith("measured for single-process LoRA runs")
    assert settle(1000, device=torch.device("cuda"))[1].startswith("cuda: torch.compile is")


def test_an_error_of_the_progress_line_is_not_a_failed_compile_probe(
    pair_logps, own_cache, monkeypatch
):
    """A compile probe's `except` reads its own errors as "the compile probe failed: eager"; what
    the run's progress line raised in it ends the run instead, as it was raised."""
    cfg, wrapped, batch = pair_logps
    monkeypatch.setattr(autotune, "time_steps", lambda *args, **kwargs: [1.0])

    def broken(stage):
        raise KeyError("a callback's own bug")

    with pytest.raises(KeyError, match="a callback's own bug"):
        autotune.settle_compile(cfg, plan_run(cfg), wrapped, batch, 10**6, 1, CPU, 1.0, broken)
    # The same probe with a working progress line measures and goes on to its compile trial.
    monkeypatch.setattr(compiling, "compiler_works", lambda: "no compiler here")
    said = []
    plan = autotune.settle_compile(
        cfg, plan_run(cfg), wrapped, batch, 10**6, 1, CPU, 1.0, said.append
    )
    assert said[-1].startswith("compiling the decoder layers to time them") and len(said) == 3
    assert plan.torch_compile_reason == (
        "torch.compile does not work here (no compiler here): training without it"
    )


def test_compiled_layers_that_lose_are_undone(pair_logps, own_cache, monkeypatch):
    cfg, wrapped, batch = pair_logps
    monkeypatch.setattr(compiling, "compiler_works", lambda: None)
    monkeypatch.setattr(autotune, "time_steps", lambda *args, **kwargs: [1.0, 1.0])

    def slower(pair_logps, batch, beta):
        compiling.compile_layers(pair_logps.model)
        return [1.2, 1.2], 30.0, 5.0

    monkeypatch.setattr(autotune, "_probe_compiled", slower)
    plan = autotune.settle_compile(cfg, plan_run(cfg), wrapped, batch, 1000, 1, CPU)
    on, why = plan.torch_compile, plan.torch_compile_reason
    assert not on and why.endswith("(x0.83); not 5% faster: eager")
    assert plan.autotune["compile_s"] == {"cold": 30.0, "cached": 5.0}
    layers = compiling.decoder_layers(wrapped.model)
    assert layers and all(layer._compiled_call_impl is None for layer in layers)
