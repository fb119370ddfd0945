"""Pushing a run's adapter to the hub, up to the network call: the files and card that would be
uploaded, loadable as they are; a missing token or an unreachable hub says so and changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from test_train import adapter, make_config, write_pairs

from orpo_lab.hub import HubError, push_to_hub, shareable_checkpoint, stage
from orpo_lab.rundir import RunDir
from orpo_lab.train import train


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir):
    """A finished 2-step ORPO run whose last step scored every held-out pair."""
    tmp = tmp_path_factory.mktemp("hub")
    data = write_pairs(tmp / "train.jsonl", 16), write_pairs(tmp / "test.jsonl", 8, offset=100)
    cfg = make_config(tmp, data, tiny_model_dir, run_name="shared", beta=0.25, max_steps=2,
                      save_every=0, eval_every=0)  # fmt: skip
    train(cfg)
    return cfg


def snapshot(folder) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_staged_upload_is_the_adapter_tokenizer_and_a_card(finished, tiny_model_dir, tmp_path):
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = RunDir(finished.run_dir)
    checkpoint = shareable_checkpoint(run.path)
    assert checkpoint == run.latest_checkpoint() and checkpoint.name == "step-000002"
    staged = stage(checkpoint, tmp_path / "upload")
    names = {p.name for p in staged.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "tokenizer.json",
            "tokenizer_config.json"} <= names  # fmt: skip
    assert not names & {"optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json"}
    card = (staged / "README.md").read_text()
    final = [r for r in run.metrics() if r["kind"] == "eval"][-1]
    assert final["step"] == 2 and final["eval/pairs"] == 8
    for text in (f"base_model: {tiny_model_dir}", "library_name: peft", str(finished.dataset),
                 "beta (lambda) 0.25", "NLL over the response", "steps: 2 of batch 4 x 1",
                 "## Held-out evaluation (step 2, 8 pairs)",
                 f"| preference accuracy (chosen mean log-prob above rejected) | "
                 f"{final['eval/accuracy']:.4g} |",
                 f"| mean log-prob of the rejected responses | "
                 f"{final['eval/logps_rejected']:.4g} |"):  # fmt: skip
        assert text in card, text
    # What a user downloads loads as it is: the adapter on its base model, and the tokenizer.
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), staged)
    trained, loaded = adapter(run.path), get_peft_model_state_dict(model)
    assert trained.keys() == loaded.keys()
    assert all(torch.equal(trained[k], loaded[k]) for k in trained)
    assert AutoTokenizer.from_pretrained(staged).chat_template


def test_no_token_a_running_run_or_a_wrong_checkpoint_is_refused(finished, monkeypatch, tmp_path):
    import huggingface_hub

    run = RunDir(finished.run_dir)
    before = snapshot(run.path)
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(HubError, match="No Hugging Face token: log in with `hf auth login`"):
        push_to_hub(run.path, "me/adapter")
    with pytest.raises(HubError, match="has: step-000002"):
        push_to_hub(run.path, "me/adapter", checkpoint="step-000001")
    with pytest.raises(HubError, match="not 'name' or 'owner/name'"):
        push_to_hub(run.path, "a/b/c")
    status = run.read_status()
    run.write_status("running")
    try:
        with pytest.raises(HubError, match="still running: stop it or let it finish"):
            push_to_hub(run.path, "me/adapter")
    finally:
        run.write_status(status["status"])
    assert {p: s for p, s in snapshot(run.path).items() if p.name != "status.json"} == {
        p: s for p, s in before.items() if p.name != "status.json"
    }


def test_cli_push_to_an_unreachable_hub_says_so_and_changes_nothing(finished, tmp_path):
    """`orpo-lab --push-to-hub` with a token but no hub (a closed port): a clear error, exit 2."""
    run = RunDir(finished.run_dir)
    before = snapshot(run.path)
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9",
           "HF_TOKEN": "hf_" + "x" * 34, "HF_HUB_ETAG_TIMEOUT": "2"}  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "orpo_lab.cli", "--push-to-hub", str(run.path),
                             "--repo-id", "me/adapter"], capture_output=True, text=True, env=env,
                            timeout=120)  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "error: The hub could not take the upload" in result.stderr
    assert "the run folder is unchanged" in result.stderr
    assert snapshot(run.path) == before
    missing = subprocess.run([sys.executable, "-m", "orpo_lab.cli", "--push-to-hub", str(run.path)],
                             capture_output=True, text=True, env=env, timeout=120)  # fmt: skip
    assert missing.returncode == 2 and "--push-to-hub needs --repo-id" in missing.stderr
