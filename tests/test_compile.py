"""torch.compile of the decoder layers (orpo_lab.compiling): the same training as eager, which runs
"auto" may measure, a real probe of compiled layers (tests/test_autotune.py: the probe's logic),
a broken compiler, YAML on/off."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from test_train import adapter, lines, make_config, same_trajectory, same_weights, write_pairs

from orpo_lab import autotune, autotune_rules, compiling
from orpo_lab.build import build_model, load_pairs
from orpo_lab.collate import collate
from orpo_lab.config import TrainConfig
from orpo_lab.logps import PairLogps
from orpo_lab.plan import plan_run
from orpo_lab.train import train


@pytest.fixture()
def data(tmp_path):
    return write_pairs(tmp_path / "train.jsonl", 16), write_pairs(
        tmp_path / "test.jsonl", 8, offset=100
    )


def dynamo_frames() -> int:
    """Frames dynamo has compiled in this process (a test-only look at its counters)."""
    from torch._dynamo.utils import counters

    return counters["frames"]["ok"]


def started(run_dir) -> dict:
    return next(r for r in lines(run_dir, "event") if r["event"] == "started")


def test_compiled_layers_train_like_eager_and_a_real_probe_times_them(
    tmp_path, data, tiny_model_dir, monkeypatch
):
    """A compiled run trains as the eager one; then autotune's probe compiles the same layers for
    real (one test: with `pytest -n` two tests could each pay the tiny model's cold compile at once
    on the two workers, 40-85 s each on a 2-core Zen 3)."""

    def run(name, **changes):
        cfg = make_config(
            tmp_path,
            data,
            tiny_model_dir,
            run_name=name,
            **{"max_steps": 3, "eval_every": None, "save_every": None, **changes},
        )
        train(cfg)
        event = started(cfg.run_dir)
        return cfg.run_dir, event["torch_compile"], event["torch_compile_reason"]

    eager, compiled, why = run("eager", torch_compile="off")
    assert (compiled, why) == (False, "torch_compile=off was asked for")
    torch._dynamo.reset()  # counted from nothing: no frame of an earlier test is reused
    frames = dynamo_frames()
    on, compiled, why = run("on", torch_compile="on")
    assert (compiled, why) == (True, "torch_compile=on was asked for")
    # Three frames: the compiler check, one training graph for both decoder layers and one no-grad
    # graph for the evaluations. (Frozen embeddings left the first layer's input without grad and
    # the second's with it: dynamo compiled the first layer apart, a fourth frame, until
    # compile_layers made the embeddings' output require grad while grad is on.)
    assert dynamo_frames() - frames == 3
    # float32: inductor's fused kernels round differently only in the last bits.
    same_trajectory(lines(eager), lines(on))
    same_trajectory(
        lines(eager, "eval"),
        lines(on, "eval"),
        keys=("eval/logps_chosen", "eval/logps_rejected", "eval/log_odds_ratio"),
    )
    # The checkpoint keeps peft's parameter names: compiling did not wrap the modules.
    same_weights(adapter(eager), adapter(on))
    probe_compiled_layers(tmp_path, data, tiny_model_dir, monkeypatch)


def probe_compiled_layers(tmp_path, data, tiny_model_dir, monkeypatch) -> None:
    """orpo_lab.autotune's probe of the tiny model's layers, compiled for real (after the run
    above compiled them): step times and both compile times measured, the layers left compiled
    exactly when the measured choice says so."""
    monkeypatch.setenv("ORPO_LAB_AUTOTUNE_CACHE", str(tmp_path / "autotune.json"))
    cfg = make_config(tmp_path, data, tiny_model_dir, torch_compile="auto")
    model, tok = build_model(cfg, None, plan_run(cfg))
    batch = collate(load_pairs(cfg, tok)[0][:4], cfg.layout, tok.pad_token_id)
    plan = plan_run(cfg)
    # A run of 10**6 tiny steps: long enough (eager) that a first compile is tried.
    plan = autotune.settle_compile(
        cfg, plan, PairLogps(model, cfg.nll_scope, 16), batch, 10**6, 1, torch.device("cpu")
    )
    on, why = plan.torch_compile, plan.torch_compile_reason
    record = plan.autotune
    eager, compiled = record["candidates"]["fp32"], record["candidates"]["fp32+compile"]
    assert len(eager) == len(compiled) == autotune.PROBE_STEPS and min(eager + compiled) > 0
    assert record["compile_s"]["cold"] >= 0 and record["compile_s"]["cached"] >= 0
    expected = autotune_rules.choose_compile(
        min(eager), min(compiled), record["compile_s"]["cached"], 10**6, paid=True
    )
    assert (on, why) == expected
    assert all(
        (layer._compiled_call_impl is not None) == on for layer in compiling.decoder_layers(model)
    )
    stored = json.loads((tmp_path / "autotune.json").read_text())["setups"]
    assert [e["compiled"]["fp32"] for e in stored.values()] == [compiled]


@pytest.fixture()
def lora_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return get_peft_model(base, LoraConfig(r=4, target_modules="all-linear"))


def test_which_runs_auto_may_measure_and_why_the_others_do_not(lora_model, monkeypatch):
    monkeypatch.setattr(compiling, "compiler_works", lambda: None)
    cpu = torch.device("cpu")
    assert len(compiling.decoder_layers(lora_model)) == 2  # the tiny Llama's two layers

    def plan(processes=1, device=cpu, **changes):
        return compiling.plan(TrainConfig(**changes), lora_model, processes, device)

    assert plan(torch_compile="off") == (False, "torch_compile=off was asked for")
    assert plan(torch_compile="on") == (True, "torch_compile=on was asked for")
    assert plan(torch_compile="on", device=torch.device("cuda"))[0] is True
    assert plan() == (None, "")  # auto: measured (orpo_lab.autotune)
    on, why = plan(device=torch.device("cuda"))
    assert not on and why.startswith("cuda: torch.compile is measured on CPUs only")
    for changes in (dict(processes=2), dict(full_finetune=True), dict(gradient_checkpointing=True)):
        on, why = plan(**changes)
        assert on is False and why.startswith("measured for single-process LoRA runs"), changes
    embeddings = lora_model.get_base_model().get_input_embeddings()
    ids = torch.arange(6).view(1, 6)
    compiling.compile_layers(lora_model)
    assert all(m._compiled_call_impl is not None for m in compiling.decoder_layers(lora_model))
    # The first layer's input requires grad like the others' (one training graph), not under no_grad.
    assert embeddings(ids).requires_grad
    with torch.no_grad():
        assert not embeddings(ids).requires_grad
    compiling.uncompile_layers(lora_model)
    assert all(m._compiled_call_impl is None for m in compiling.decoder_layers(lora_model))
    assert not embeddings(ids).requires_grad


def test_yaml_on_and_off_read_as_the_choices(tmp_path):
    """YAML 1.1 reads a bare `on` / `off` as true / false: both mean the choices of those names."""
    import yaml

    for text, value in (("on", "on"), ("off", "off"), ("auto", "auto"), ("'on'", "on")):
        path = tmp_path / "c.yaml"
        path.write_text(f"torch_compile: {text}\n")
        assert yaml.safe_load(path.read_text())["torch_compile"] in (True, False, value)
        cfg = TrainConfig.from_yaml(path)
        assert cfg.torch_compile == value
        cfg.to_yaml(path)
        assert TrainConfig.from_yaml(path).torch_compile == value
    with pytest.raises(ValueError, match="torch_compile must be one of auto, on, off; got 'yes'"):
        TrainConfig(torch_compile="yes")


def test_a_model_without_decoder_layer_names_or_a_broken_compiler_trains_eager(
    lora_model, monkeypatch
):
    cfg, cpu = TrainConfig(torch_compile="on"), torch.device("cpu")
    bare = SimpleNamespace(modules=lambda: [], config=None)  # no _no_split_modules
    assert compiling.decoder_layers(bare) == []
    on, why = compiling.plan(cfg, bare, 1, cpu)
    assert not on and why.startswith("the model names no decoder layer class")

    def no_compiler(fn, **kwargs):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore")

    monkeypatch.setattr(torch, "compile", no_compiler)
    assert compiling.compiler_works() == (
        "RuntimeError: InvalidCxxCompiler: No working C++ compiler found"
    )
    on, why = compiling.plan(cfg, lora_model, 1, cpu)
    assert (on, why) == (
        False,
        "torch.compile does not work here (RuntimeError: InvalidCxxCompiler: No working C++ "
        "compiler found): training without it",
    )
