"""Pushing a run's adapter to the hub, up to the network call: the files and card that would be
uploaded, loadable as they are; a missing token or an unreachable hub says so and changes nothing."""

from __future__ import annotations

import pytest
import torch
from test_train import adapter, make_config, write_pairs

from orpo_lab.hub import HubError, push_to_hub, shareable_checkpoint, stage
from orpo_lab.model import attach_adapter
from orpo_lab.rundir import RunDir
from orpo_lab.train import train


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir):
    """A finished 2-step ORPO run whose last step scored every held-out pair."""
    tmp = tmp_path_factory.mktemp("hub")
    data = write_pairs(tmp / "train.jsonl", 16), write_pairs(tmp / "test.jsonl", 8, offset=100)
    cfg = make_config(
        tmp,
        data,
        tiny_model_dir,
        run_name="shared",
        beta=0.25,
        max_steps=2,
        save_every=None,
        eval_every=None,
    )
    train(cfg)
    return cfg


def snapshot(folder) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_staged_upload_is_the_adapter_tokenizer_and_a_card(finished, tiny_model_dir, tmp_path):
    from peft import get_peft_model_state_dict
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = RunDir(finished.run_dir)
    checkpoint = shareable_checkpoint(run.path)
    assert checkpoint == run.latest_checkpoint() and checkpoint.name == "step-000002"
    staged = stage(checkpoint, tmp_path / "upload")
    names = {p.name for p in staged.iterdir()}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "README.md",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= names
    assert not names & {"optimizer.pt", "scheduler.pt", "rng.pt", "trainer_state.json"}
    card = (staged / "README.md").read_text()
    final = [r for r in run.metrics() if r["kind"] == "eval"][-1]
    assert final["step"] == 2 and final["eval/pairs"] == 8
    for text in (
        f"base_model: {tiny_model_dir}",
        "library_name: peft",
        str(finished.dataset),
        "beta (lambda) 0.25",
        "NLL over the response",
        "steps: 2 of batch 4 x 1",
        "## Held-out evaluation (step 2, 8 pairs)",
        f"| preference accuracy (chosen mean log-prob above rejected) | "
        f"{final['eval/accuracy']:.4g} |",
        f"| mean log-prob of the rejected responses | {final['eval/logps_rejected']:.4g} |",
    ):
        assert text in card, text
    # What a user downloads loads as it is: the adapter on its base model, and the tokenizer.
    model = attach_adapter(AutoModelForCausalLM.from_pretrained(tiny_model_dir), staged)
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


def test_cli_push_to_an_unreachable_hub_says_so_and_changes_nothing(finished, monkeypatch, capsys):
    """`orpo-lab --push-to-hub` with a token but no hub (a closed local port): a clear error, exit 2,
    the run folder as it was."""
    import huggingface_hub

    from orpo_lab.cli import main

    run = RunDir(finished.run_dir)
    before = snapshot(run.path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 34)
    assert main(["--push-to-hub", str(run.path), "--repo-id", "me/adapter"]) == 2
    err = capsys.readouterr().err
    assert "error: The hub could not take the upload" in err and "ConnectError" in err, err
    assert "the run folder is unchanged" in err
    assert snapshot(run.path) == before
    assert main(["--push-to-hub", str(run.path)]) == 2
    assert "--push-to-hub needs --repo-id" in capsys.readouterr().err
