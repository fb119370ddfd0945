"""Generation judging: base vs a trained checkpoint on the default dataset's held-out prompts."""

from __future__ import annotations

import json

import pytest

from orpo_lab.checkpoint import CheckpointError
from orpo_lab.config import TrainConfig
from orpo_lab.default_dataset import judge
from orpo_lab.evaluate import BASE_ANSWERS_DIR, evaluate_run, pass_rates, stratified
from orpo_lab.preferences import load_preferences
from orpo_lab.runs import RunManager
from orpo_lab.train import train


def test_judges_read_conversational_prompts():
    """load_preferences turns a prompt string into messages; the judges must still read it."""
    rec = next(r for r in load_preferences("default", split="test") if r["family"] == "arithmetic")
    assert isinstance(rec["prompt"], list)
    assert judge("arithmetic", rec, rec["chosen"]) is True
    assert judge("arithmetic", rec, rec["rejected"]) is False


def test_stratified_takes_every_group_in_turn():
    records = [
        {"family": f, "ood": o, "i": i} for f in "ab" for o in (False, True) for i in range(5)
    ]
    picked = stratified(records, 6)
    groups = [(r["family"], r["ood"]) for r in picked]
    assert len(picked) == 6 and len(set(groups)) == 4  # all four groups, not the first six of one
    assert stratified(records, 0) == records


def test_pass_rates_split_in_domain_and_ood():
    records = [{"family": "x", "ood": False}] * 2 + [{"family": "x", "ood": True}] * 2
    rates = pass_rates(records, [True, False, True, True])
    assert rates["x"] == {"in_domain": 0.5, "ood": 1.0, "all": 0.75, "n": 4}
    assert rates["all"]["all"] == 0.75


def test_evaluate_run_judges_base_and_checkpoint(tmp_path, tiny_model_dir):
    cfg = TrainConfig(model=str(tiny_model_dir), dataset="default", output_dir=str(tmp_path),
                      run_name="r", max_steps=2, batch_size=2, max_length=128,
                      max_prompt_length=64, eval_every=0, max_eval_pairs=8, device="cpu",
                      learning_rate=1e-2)  # fmt: skip
    with pytest.raises(CheckpointError, match="no checkpoint"):
        evaluate_run(cfg.run_dir)
    train(cfg)
    report = evaluate_run(cfg.run_dir, max_prompts=12, max_new_tokens=4)
    saved = json.loads((cfg.run_dir / "generations.json").read_text())
    assert saved["summary"] == report["summary"]
    gens = report["generations"]
    assert len(gens) == 12
    # Stratified: every family, in-domain and out-of-domain, is in a 12-prompt sample.
    assert {(g["family"], g["ood"]) for g in gens} == {
        (f, o) for f in ("arithmetic", "bullets", "concise") for o in (False, True)
    }
    for side in ("base", "trained"):
        assert report["summary"][side]["all"]["n"] == 12
        passed = [g[f"{side}_pass"] for g in gens]
        assert report["summary"][side]["all"]["all"] == pytest.approx(sum(passed) / 12)
        assert all(isinstance(g[side], str) for g in gens)

    # The base model's answers are kept for the runs of this folder: a second evaluation (of the
    # same or another run) reuses them, and they are what a fresh generation gives.
    assert report["base_answers_reused"] is False
    (kept,) = (tmp_path / BASE_ANSWERS_DIR).iterdir()
    again = evaluate_run(cfg.run_dir, max_prompts=12, max_new_tokens=4)
    assert again["base_answers_reused"] is True
    assert [g["base"] for g in again["generations"]] == [g["base"] for g in gens]
    kept.unlink()
    fresh = evaluate_run(cfg.run_dir, max_prompts=12, max_new_tokens=4)
    assert fresh["base_answers_reused"] is False
    assert [g["base"] for g in fresh["generations"]] == [g["base"] for g in gens]
    # Anything that changes the answers changes the key: another token budget generates anew.
    longer = evaluate_run(cfg.run_dir, max_prompts=12, max_new_tokens=5)
    assert longer["base_answers_reused"] is False
    assert len(list((tmp_path / BASE_ANSWERS_DIR).iterdir())) == 2
    assert RunManager(tmp_path).names() == ["r"]  # the runs list does not show the folder
