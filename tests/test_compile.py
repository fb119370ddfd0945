"""torch.compile of the decoder layers (orpo_lab.compiling): the same training as eager, the marker
that lets "auto" compile a later short run, and every reason "auto" gives for staying eager."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from test_train import adapter, lines, make_config, same_trajectory, same_weights, write_pairs

from orpo_lab import compiling
from orpo_lab.config import TrainConfig
from orpo_lab.train import train


@pytest.fixture()
def data(tmp_path):
    return write_pairs(tmp_path / "train.jsonl", 16), write_pairs(
        tmp_path / "test.jsonl", 8, offset=100
    )


@pytest.fixture()
def own_cache(tmp_path, monkeypatch):
    """Markers in a fresh folder (what this test compiles must not make other runs compile), and
    "auto" deciding for itself (conftest turns it off for the rest of the suite)."""
    monkeypatch.setenv("ORPO_LAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ORPO_LAB_TORCH_COMPILE", raising=False)
    return tmp_path / "cache"


def dynamo_frames() -> int:
    """Frames dynamo has compiled in this process (a test-only look at its counters)."""
    from torch._dynamo.utils import counters

    return counters["frames"]["ok"]


def started(run_dir) -> dict:
    return next(r for r in lines(run_dir, "event") if r["event"] == "started")


def test_compiled_layers_train_like_eager_and_let_auto_compile_the_next_run(
    tmp_path, data, tiny_model_dir, own_cache
):
    steps = compiling.AUTO_MIN_STEPS_CACHED  # 40 tiny steps: a few seconds

    def run(name, **changes):
        cfg = make_config(tmp_path, data, tiny_model_dir, run_name=name,
                          **{"max_steps": steps, "eval_every": 0, "save_every": 0, **changes})  # fmt: skip
        train(cfg)
        event = started(cfg.run_dir)
        return cfg.run_dir, event["torch_compile"], event["torch_compile_reason"]

    # Eager and compiled side by side over 3 steps (float32 rounding drifts apart over 40).
    eager, compiled, why = run("eager", torch_compile="off", max_steps=3)
    assert (compiled, why) == (False, "torch_compile=off was asked for")

    # Before anything compiled, "auto" keeps a run shorter than 300 steps eager, and says why.
    _, compiled, why = run("first")
    assert not compiled and why.startswith(f"a run of {steps} steps whose setup never compiled")

    frames = dynamo_frames()
    on, compiled, why = run("on", torch_compile="on", max_steps=3)
    assert (compiled, why) == (True, "torch_compile=on was asked for")
    # dynamo compiled the decoder layer (train and no-grad eval graphs), not only the probe.
    assert dynamo_frames() - frames >= 2
    # float32: inductor's fused kernels round differently only in the last bits.
    same_trajectory(lines(eager), lines(on))
    same_trajectory(lines(eager, "eval"), lines(on, "eval"),
                    keys=("eval/logps_chosen", "eval/logps_rejected", "eval/log_odds_ratio"))  # fmt: skip
    # The checkpoint keeps peft's parameter names: compiling did not wrap the modules.
    same_weights(adapter(eager), adapter(on))

    markers = list((own_cache / "compile").glob("*.json"))
    assert len(markers) == 1
    record = json.loads(markers[0].read_text())
    assert record["first_step_s"] > 0 and any(Path(record["kernel_cache"]).iterdir())

    # Now the same setup compiled here before: "auto" compiles a run of 40+ steps, from the cache,
    again, compiled, why = run("again")
    assert compiled and why.startswith("this model, adapter and precision compiled before")
    same_trajectory(lines(eager), lines(again)[:3])  # a constant learning rate: the same 3 steps
    # but not a run of a few steps, nor another adapter (another setup), nor with the switch off.
    _, compiled, why = run("short", max_steps=3)
    assert not compiled and why.startswith("a short run (3 steps): even a compile from the cache")
    assert run("other", lora_r=4)[1] is False
    monkeypatch = pytest.MonkeyPatch()
    with monkeypatch.context() as m:
        m.setenv("ORPO_LAB_TORCH_COMPILE", "off")
        assert run("switched-off")[1:] == (
            False,
            "ORPO_LAB_TORCH_COMPILE=off: auto does not compile on this machine",
        )


@pytest.fixture()
def lora_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return get_peft_model(base, LoraConfig(r=4, target_modules="all-linear"))


def test_auto_compiles_only_what_was_measured_and_says_why(lora_model, own_cache, monkeypatch):
    monkeypatch.setattr(compiling, "compiler_works", lambda: None)
    cpu, sig = torch.device("cpu"), compiling.signature(lora_model, None, "prefix")
    assert len(compiling.decoder_layers(lora_model)) == 2  # the tiny Llama's two layers

    def plan(steps=10, processes=1, device=cpu, **changes):
        return compiling.plan(TrainConfig(**changes), lora_model, steps, processes, device, sig)

    assert plan(torch_compile="off") == (False, "torch_compile=off was asked for")
    assert plan(torch_compile="on") == (True, "torch_compile=on was asked for")
    on, why = plan(device=torch.device("cuda"))
    assert not on and why.startswith("cuda: torch.compile is measured on CPUs only")
    for changes in (dict(processes=2), dict(full_finetune=True), dict(gradient_checkpointing=True)):
        on, why = plan(steps=1000, **changes)
        assert not on and why.startswith("measured for single-process LoRA runs"), changes
    assert plan(steps=compiling.AUTO_MIN_STEPS - 1)[0] is False
    assert plan(steps=compiling.AUTO_MIN_STEPS - 1, torch_compile="on")[0] is True
    on, why = plan(steps=compiling.AUTO_MIN_STEPS)
    assert on and why.startswith(f"a long run ({compiling.AUTO_MIN_STEPS} steps)")

    # A marker whose kernel cache is gone (a reboot emptied /tmp) does not count.
    kernels = own_cache / "kernels"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(kernels))
    compiling.mark_compiled(sig, 12.0)
    cached = compiling.AUTO_MIN_STEPS_CACHED
    assert plan(steps=cached)[0] is False
    kernels.mkdir()
    (kernels / "some-kernel").write_text("x")
    on, why = plan(steps=cached)
    assert on and why.startswith("this model, adapter and precision compiled before")
    assert plan(steps=cached - 1)[0] is False
    # The signature ignores the batch and length, but not the adapter or the layout.
    assert compiling.signature(lora_model, None, "padded") != sig
    assert compiling.signature(lora_model, torch.bfloat16, "prefix") != sig


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
    on, why = compiling.plan(cfg, bare, 10, 1, cpu, "sig")
    assert not on and why.startswith("the model names no decoder layer class")

    def no_compiler(fn, **kwargs):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore")

    monkeypatch.setattr(torch, "compile", no_compiler)
    assert compiling.compiler_works() == (
        "RuntimeError: InvalidCxxCompiler: No working C++ compiler found"
    )
    on, why = compiling.plan(cfg, lora_model, 10, 1, cpu, "sig")
    assert (on, why) == (
        False,
        "torch.compile does not work here (RuntimeError: InvalidCxxCompiler: No working C++ "
        "compiler found): training without it",
    )
