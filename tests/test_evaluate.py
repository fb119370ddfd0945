"""Generation judging: base vs a trained checkpoint on the default dataset's held-out prompts."""

from __future__ import annotations

import json
import re

import pytest

from orpo_lab.answers import BASE_ANSWERS_DIR
from orpo_lab.checkpoint import CheckpointError
from orpo_lab.config import TrainConfig
from orpo_lab.default_judges import judge, rejected_like
from orpo_lab.evaluate import evaluate_run, pass_rates, stratified
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
    records = [{"family": "x", "ood": False}] * 3 + [{"family": "x", "ood": True}] * 1
    rates = pass_rates(records, [True, False, True, True])
    assert rates["x"] == {
        "in_domain": 2 / 3,
        "ood": 1.0,
        "all": 0.75,
        "n": 4,
        "n_in_domain": 3,
        "n_ood": 1,
    }
    assert rates["all"]["all"] == 0.75


def test_evaluate_run_judges_base_and_checkpoint(tmp_path, tiny_model_dir):
    cfg = TrainConfig(
        model=str(tiny_model_dir),
        dataset="default",
        output_dir=str(tmp_path),
        run_name="r",
        max_steps=2,
        batch_size=2,
        max_length=128,
        max_prompt_length=64,
        eval_every=None,
        max_eval_pairs=8,
        device="cpu",
        learning_rate=1e-2,
    )
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
        (f, o) for f in ("arithmetic", "bullets", "concise", "ranked") for o in (False, True)
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
    # Another precision generates anew in that dtype; the run's own (auto: float32 on a CPU) is
    # the one asked for by "fp32", so its answers are reused.
    in_bf16 = evaluate_run(cfg.run_dir, max_prompts=12, max_new_tokens=4, precision="bf16")
    assert in_bf16["base_answers_reused"] is False
    assert len(list((tmp_path / BASE_ANSWERS_DIR).iterdir())) == 3
    in_fp32 = evaluate_run(cfg.run_dir, max_prompts=12, max_new_tokens=4, precision="fp32")
    assert in_fp32["base_answers_reused"] is True and in_fp32["summary"] == report["summary"]
    assert RunManager(tmp_path).names() == ["r"]  # the runs list does not show the folder


def test_sampled_evaluation_is_seeded_judged_and_pooled(tmp_path, tiny_model_dir):
    """samples=k: k answers per prompt for base and trained, each judged and checked for the
    rejected replies' property; the rates pool them per family and domain with Wilson intervals;
    the same seed gives the same samples (the base's from the cache), another seed others."""
    from orpo_lab.sampling import wilson_interval

    cfg = TrainConfig(
        model=str(tiny_model_dir),
        dataset="default",
        output_dir=str(tmp_path),
        run_name="s",
        max_steps=1,
        batch_size=2,
        max_length=128,
        max_prompt_length=64,
        eval_every=None,
        max_eval_pairs=8,
        device="cpu",
    )
    train(cfg)
    with pytest.raises(ValueError, match="temperature > 0"):
        evaluate_run(cfg.run_dir, max_prompts=8, samples=2, temperature=0.0)
    report = evaluate_run(cfg.run_dir, max_prompts=8, max_new_tokens=4, samples=3, sample_seed=5)
    assert report["sampled"]["settings"] == {
        "k": 3,
        "temperature": 1.0,
        "top_p": 1.0,
        "seed": 5,
        "max_new_tokens": 4,
    }
    gens = report["generations"]
    for side in ("base", "trained"):
        assert all(len(g[f"{side}_samples"]) == 3 for g in gens)
        flat = [(g, s) for g in gens for s in g[f"{side}_samples"]]
        for g, s in flat:
            record = {"prompt": g["prompt"], "family": g["family"]}
            assert s["pass"] is judge(g["family"], record, s["text"])
            assert s["rejected_like"] is rejected_like(g["family"], record, s["text"])
        cell = report["sampled"][side]["all"]["all"]["pass"]
        passed = sum(s["pass"] for _, s in flat)
        assert cell["n"] == 24 and cell["rate"] == pytest.approx(passed / 24)
        assert (cell["low"], cell["high"]) == pytest.approx(wilson_interval(passed, 24))
        ood = report["sampled"][side]["ranked"]["ood"]["rejected_like"]
        assert ood["n"] == 3  # one ood ranked prompt in 8 stratified ones, 3 samples
    again = evaluate_run(cfg.run_dir, max_prompts=8, max_new_tokens=4, samples=3, sample_seed=5)
    other = evaluate_run(cfg.run_dir, max_prompts=8, max_new_tokens=4, samples=3, sample_seed=6)
    for side in ("base", "trained"):
        texts = [[s["text"] for s in g[f"{side}_samples"]] for g in gens]
        assert texts == [[s["text"] for s in g[f"{side}_samples"]] for g in again["generations"]]
        assert texts != [[s["text"] for s in g[f"{side}_samples"]] for g in other["generations"]]


def test_cli_evaluate_samples_flags(tmp_path, tiny_model_dir, capsys):
    """--samples/--temperature/--top-p/--sample-seed reach evaluate_run: the sampled table is
    printed (a row per family and domain); impossible settings are refused before any model loads."""
    from orpo_lab.cli import main

    assert main(["--evaluate", str(tmp_path / "none"), "--samples", "2", "--temperature", "0"]) == 2
    assert "temperature > 0" in capsys.readouterr().err
    assert main(["--evaluate", str(tmp_path / "none"), "--samples", "2", "--top-p", "0"]) == 2
    assert "top_p in (0, 1]" in capsys.readouterr().err
    cfg = TrainConfig(
        model=str(tiny_model_dir),
        dataset="default",
        output_dir=str(tmp_path),
        run_name="c",
        max_steps=1,
        batch_size=2,
        max_length=128,
        max_prompt_length=64,
        eval_every=None,
        max_eval_pairs=8,
        device="cpu",
    )
    train(cfg)
    args = [
        "--evaluate",
        str(cfg.run_dir),
        "--eval-prompts",
        "8",
        "--samples",
        "2",
        "--temperature",
        "0.7",
        "--top-p",
        "0.9",
        "--sample-seed",
        "3",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    saved = json.loads((cfg.run_dir / "generations.json").read_text())
    assert saved["sampled"]["settings"]["seed"] == 3
    greedy, sampled = out.split("\nsampled: 2 per prompt, temperature 0.7, top-p 0.9, seed 3; ")
    # The greedy table under its heading: the saved pass rates, a row per family and "all".
    heading, columns, *rows = greedy.splitlines()
    assert (
        heading.startswith("judged greedy answers to held-out prompts") and "step-000001" in heading
    )
    assert re.split(r"  +", columns)[:3] == [
        "family",
        "prompts (in-domain + ood)",
        "base (in-domain)",
    ]
    base = saved["summary"]["base"]["all"]
    assert rows[-1].split() == ["all", "4", "+", "4"] + [
        f"{100 * saved['summary'][m]['all'][d]:.0f}%"
        for d in ("in_domain", "ood")
        for m in ("base", "trained")
    ]
    assert base["n"] == 8
    rows = [line.split() for line in sampled.splitlines() if line.split()[:1] == ["ranked"]]
    assert [row[:3] for row in rows] == [
        ["ranked", "in-domain", "2"],
        ["ranked", "ood", "2"],
        ["ranked", "all", "4"],
    ]
    assert out.rstrip().endswith(f"every answer and verdict: {cfg.run_dir / 'generations.json'}")
