"""Training options beyond the default LoRA run: full fine-tuning (resume, export), gradient
checkpointing, LoRA target lists; and the adapter download (PEFT adapter alone, with a model card)."""

from __future__ import annotations

import json
import threading
import weakref
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from safetensors.torch import load_file
from test_train import adapter, checkpoints, lines, make_config, same_trajectory, write_pairs
from transformers import AutoModelForCausalLM

from orpo_lab.adapter import export_adapter
from orpo_lab.checkpoint import Checkpointer, CheckpointError
from orpo_lab.train import train


@pytest.fixture()
def data(tmp_path):
    return write_pairs(tmp_path / "train.jsonl", 16), write_pairs(
        tmp_path / "test.jsonl", 8, offset=100
    )


def test_full_finetuning_resumes_exactly_and_is_already_a_model(tmp_path, data, tiny_model_dir):
    common = dict(
        full_finetune=True, max_steps=4, learning_rate=1e-3, save_every=None, eval_every=None
    )
    whole = make_config(tmp_path, data, tiny_model_dir, run_name="whole", **common)
    train(whole)
    parts = make_config(tmp_path, data, tiny_model_dir, run_name="parts", **common)
    stop = threading.Event()
    train(
        parts,
        callback=lambda r: r["kind"] == "train" and r["step"] == 2 and stop.set(),
        stop_event=stop,
    )
    parts.resume = True
    train(parts)
    same_trajectory(lines(whole.run_dir), lines(parts.run_dir))
    # A full fine-tuning checkpoint is a model folder: every weight saved, every weight moved.
    ckpt = checkpoints(whole.run_dir)[-1]
    tuned = AutoModelForCausalLM.from_pretrained(ckpt)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    moved = [n for n, p in tuned.named_parameters() if not torch.equal(p, base.get_parameter(n))]
    assert len(moved) == len(list(base.parameters()))
    resumed = AutoModelForCausalLM.from_pretrained(checkpoints(parts.run_dir)[-1])
    for (n, p), q in zip(tuned.named_parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=n)
    with pytest.raises(CheckpointError, match="already a model folder"):
        Checkpointer.export_merged(ckpt, tmp_path / "merged")
    with pytest.raises(CheckpointError, match="already a model folder"):
        export_adapter(ckpt, tmp_path / "adapter.zip")


class SavedForBackward:
    """The peak bytes of the tensors autograd holds for backward, the memory activation
    checkpointing exists to cut: each tensor counts from its save until its graph is freed."""

    def __init__(self):
        self.live = self.peak = 0

    @contextmanager
    def watch(self) -> Iterator[SavedForBackward]:
        def pack(tensor: torch.Tensor) -> _Held:
            held = _Held(tensor)
            size = tensor.numel() * tensor.element_size()
            self.live += size
            self.peak = max(self.peak, self.live)
            weakref.finalize(held, self._freed, size)  # when autograd drops what it saved
            return held

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda held: held.tensor):
            yield self

    def _freed(self, size: int) -> None:
        self.live -= size


class _Held:
    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


def test_gradient_checkpointing_changes_memory_not_results(tmp_path, data, tiny_model_dir):
    """Three steps with and without checkpointing: the same trajectory and adapter, and a lower peak
    of activations saved for backward. Without it each decoder layer keeps its inner activations
    (norms, q/k/v, attention output, the 128-wide MLP); with it only each layer's input. The logits
    (49,152 wide, kept by both runs) dominate the tiny model, so the cut is about a sixth (35.5 MB
    -> 29.8 MB with torch 2.13); less than a tenth means the layers' activations were kept."""
    runs, peaks = [], []
    for checkpointing in (False, True):
        cfg = make_config(
            tmp_path,
            data,
            tiny_model_dir,
            run_name=f"gc{int(checkpointing)}",
            gradient_checkpointing=checkpointing,
            max_steps=3,
            save_every=None,
        )
        with SavedForBackward().watch() as saved:
            train(cfg)
        assert saved.live == 0  # every graph freed: the count is the whole story
        runs.append(cfg.run_dir)
        peaks.append(saved.peak)
    plain, checkpointed = peaks
    assert checkpointed < 0.9 * plain, f"saved for backward: {plain:,} B plain, {checkpointed:,} B"
    same_trajectory(lines(runs[0]), lines(runs[1]))
    a, b = adapter(runs[0]), adapter(runs[1])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_lora_target_list_adapts_only_those_modules(tmp_path, data, tiny_model_dir):
    cfg = make_config(
        tmp_path,
        data,
        tiny_model_dir,
        lora_target_modules="q_proj, v_proj",
        max_steps=1,
        save_every=None,
        eval_every=None,
    )
    train(cfg)
    keys = adapter(cfg.run_dir).keys()
    adapted = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in keys}
    assert adapted == {"q_proj", "v_proj"}
    assert len(keys) == 2 * 2 * 2  # 2 layers x 2 modules x (lora_A, lora_B)


def test_adapter_download_is_the_adapter_alone_with_a_card(tmp_path, data, tiny_model_dir):
    cfg = make_config(tmp_path, data, tiny_model_dir, beta=0.25, max_steps=2, save_every=None)
    train(cfg)
    ckpt = checkpoints(cfg.run_dir)[-1]
    archive = export_adapter(ckpt, tmp_path / "out" / "a.zip")
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        config = json.loads(zf.read("adapter_config.json"))
        card = zf.read("README.md").decode()
        zf.extractall(tmp_path / "unzipped")
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= names
    assert not names & {"optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json"}
    assert config["base_model_name_or_path"] == str(tiny_model_dir)
    assert "beta (lambda) = 0.25" in card and str(data[0]) in card and "steps: 2" in card
    weights = load_file(tmp_path / "unzipped" / "adapter_model.safetensors")
    for k, v in adapter(cfg.run_dir).items():
        assert torch.equal(weights[k], v)
    # The optimizer state stays in the run folder, where resume needs it.
    assert (ckpt / "optimizer.pt").is_file()
    assert archive.stat().st_size < (ckpt / "optimizer.pt").stat().st_size + 10 * 2**20


def test_default_model_adapter_names_the_public_base():
    from orpo_lab.adapter import public_base_id
    from orpo_lab.model import DEFAULT_HUB_ID

    assert public_base_id("default") == DEFAULT_HUB_ID
    assert public_base_id("/models/mine") == "/models/mine"
