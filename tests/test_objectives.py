"""The objectives in the one training loop (orpo_lab.objectives, orpo_lab.reference,
orpo_lab.pipeline): each method trains a tiny model and logs the shared metric names; DPO's
reference is the starting model (step-1 loss ln 2, margin 0); SFT then DPO and what it cost
(orpo_lab.costs); bad input refused before any training."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from test_chat import make_adapter
from test_train import lines, make_config, write_pairs

from orpo_lab.cli import main
from orpo_lab.collate import collate
from orpo_lab.config import TrainConfig
from orpo_lab.costs import held_out_curve, peak_memory, pipeline_costs
from orpo_lab.logps import PairLogps
from orpo_lab.loss import dpo_loss, preference_metrics
from orpo_lab.model import attach_adapter, load_model
from orpo_lab.objectives import model_inputs, objective_loss, response_counts
from orpo_lab.pipeline import sft_then_dpo, stage_configs
from orpo_lab.reference import BASE, as_reference, check_start, visited_pairs
from orpo_lab.step import TrainingError, micro_batch_indices
from orpo_lab.train import train

SHARED = {
    "loss",
    "nll_loss",
    "logps/chosen",
    "logps/rejected",
    "logps/margins",
    "rewards/accuracies",
    "log_odds_chosen",
    "log_odds_ratio",
    "or_loss",
}
OWN = {
    "orpo": {"rewards/chosen", "rewards/margins"},
    "sft": {"rewards/chosen"},
    "prob_ratio": {"pr_loss"},
    "dpo": {
        "dpo_loss",
        "dpo_rewards/chosen",
        "dpo_rewards/rejected",
        "dpo_rewards/margins",
        "dpo_rewards/accuracies",
    },
}
PAIRS = [
    {"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10, 11, 12, 13]},
    {"prompt_ids": [5, 14], "chosen_ids": [15, 16, 17], "rejected_ids": [18]},
]


@pytest.fixture()
def data(tmp_path):
    return write_pairs(tmp_path / "train.jsonl", 16), write_pairs(tmp_path / "test.jsonl", 8, 100)


def quick(tmp_path, data, model_dir, **changes) -> TrainConfig:
    values = dict(max_steps=3, eval_every=None, eval_at_start=False, save_every=None) | changes
    return make_config(tmp_path, data, model_dir, **values)


def started(run_dir) -> dict:
    return next(r for r in lines(run_dir, "event") if r["event"] == "started")


# ---------------------------------------------------------------- the dispatch, no model


@pytest.mark.parametrize("layout", ["padded", "packed", "prefix"])
def test_response_counts_are_the_response_lengths(layout):
    assert response_counts(collate(PAIRS, layout, 0)).tolist() == [2, 3, 4, 1]


def test_dpo_objective_sums_the_mean_logps_and_logs_the_shared_names():
    """PairLogps gives means; DPO trains on sums = means x response tokens; the shared metrics
    stay the means'. The reference log-probs ride in the batch but never reach the model."""
    batch = collate(PAIRS, "prefix", 0) | {
        "ref_logps": torch.tensor([[-9.0, -20.0], [-12.0, -3.0]])
    }
    assert "ref_logps" not in model_inputs(batch) and "input_ids" in model_inputs(batch)
    chosen, rejected, nll = (
        torch.tensor([-4.0, -3.5]),
        torch.tensor([-5.0, -2.0]),
        torch.tensor(4.0),
    )
    cfg = TrainConfig(method="dpo", dpo_beta=0.2)
    loss, m = objective_loss(cfg, batch, chosen, rejected, nll, pairs_in_step=2)
    expected, own = dpo_loss(
        torch.tensor([-8.0, -10.5]),
        torch.tensor([-20.0, -2.0]),
        torch.tensor([-9.0, -12.0]),
        torch.tensor([-20.0, -3.0]),
        0.2,
    )
    assert loss.item() == pytest.approx(expected.item())
    assert m == pytest.approx(preference_metrics(chosen, rejected, nll) | own)


def test_visited_pairs_are_those_the_steps_draw():
    cfg = TrainConfig(batch_size=3, grad_accum=2, seed=7)
    drawn = {i for k in range(2 * 2) for i in micro_batch_indices(k, 20, 3 * 2, 7)}
    assert visited_pairs(20, 2, cfg, world=2) == sorted(drawn)
    assert len(drawn) == 19  # epoch 0's 18 pairs, then one of the 2 it left out, in epoch 1


# ---------------------------------------------------------------- bad input, before training


def test_config_refuses_unknown_methods_and_impossible_dpo_settings():
    with pytest.raises(
        ValueError, match="method must be one of orpo, sft, dpo, prob_ratio; got 'dop'"
    ):
        TrainConfig(method="dop")
    with pytest.raises(ValueError, match=r"dpo_beta must be > 0 \(TRL's default is 0.1\); got 0"):
        TrainConfig(method="dpo", dpo_beta=0)
    with pytest.raises(
        ValueError, match="ref_checkpoint is DPO's reference model, but method is 'orpo'"
    ):
        TrainConfig(ref_checkpoint="runs/sft")
    assert TrainConfig(method="sft", beta=0.7).beta == 0.0  # SFT's beta is 0, as the app shows it
    assert TrainConfig(beta=0.0).method == "orpo"  # an old SFT config still trains the same


def test_checkpoints_of_another_model_or_kind_are_refused(tmp_path, tiny_model_dir):
    ours = make_adapter(tiny_model_dir, tmp_path / "ours" / "checkpoints" / "step-000010", seed=1)
    other = tmp_path / "other" / "checkpoints" / "step-000003"
    other.mkdir(parents=True)
    (other / "trainer_state.json").write_text(
        json.dumps({"step": 3, "config": {"model": "org/other"}})
    )
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    base = dict(model=str(tiny_model_dir), method="dpo")
    cases = [
        (
            dict(ref_checkpoint=str(tmp_path / "other")),
            "ref_checkpoint .*step-000003 was trained on the base model 'org/other'",
        ),
        (dict(init_checkpoint=str(tmp_path / "gone")), "init_checkpoint '.*gone' does not exist"),
        (dict(init_checkpoint=str(tmp_path / "empty")), "run .*empty has no checkpoint yet"),
        (
            dict(init_checkpoint=str(ours), full_finetune=True),
            "holds a LoRA adapter, but full_finetune",
        ),
        (dict(init_checkpoint=str(tmp_path)), "is not an ORPO Lab checkpoint"),
    ]
    for changes, message in cases:
        with pytest.raises(ValueError, match=message):
            check_start(TrainConfig(**(base | changes)))
    check_start(TrainConfig(**base, init_checkpoint=str(tmp_path / "ours"), ref_checkpoint=BASE))


def test_cli_says_what_is_wrong_before_a_run_exists(tmp_path, data, tiny_model_dir, capsys):
    with pytest.raises(SystemExit):
        main(["--method", "dop"])
    assert "invalid choice: 'dop'" in capsys.readouterr().err
    cfg = quick(tmp_path, data, tiny_model_dir, method="dpo")
    flags = [
        "--model",
        cfg.model,
        "--dataset",
        cfg.dataset,
        "--output-dir",
        cfg.output_dir,
        "--method",
        "dpo",
        "--ref-checkpoint",
        str(tmp_path / "nowhere"),
    ]
    assert main(flags) == 2
    assert "ref_checkpoint '" in capsys.readouterr().err and not cfg.run_dir.parent.exists()
    assert main([*flags[:-2], "--max-steps", "4", "--sft-then-dpo", "4"]) == 2
    assert "give it between 1 and 3 steps" in capsys.readouterr().err


# ---------------------------------------------------------------- DPO's reference


def test_reference_as_base_or_second_adapter_leaves_the_trained_model_as_it_was(
    tmp_path, tiny_model_dir
):
    """A LoRA run that starts from checkpoint A: its reference can be the base (adapter disabled)
    or checkpoint B (a second adapter); each equals that model loaded on its own, and afterwards
    the model computes and trains exactly as before."""
    a = make_adapter(tiny_model_dir, tmp_path / "a" / "checkpoints" / "step-000010", seed=1)
    b = make_adapter(tiny_model_dir, tmp_path / "b" / "checkpoints" / "step-000010", seed=2)
    cfg = TrainConfig(model=str(tiny_model_dir), device="cpu")
    batch = collate(PAIRS, "prefix", 0)

    def means(model) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat(PairLogps(model, "response", 16)(**batch)[:2])

    model = attach_adapter(load_model(str(tiny_model_dir), "cpu")[0], a, is_trainable=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    pair_logps, own = PairLogps(model, "response", 16), means(model)
    for source, expected in (
        (BASE, means(load_model(str(tiny_model_dir), "cpu")[0])),
        (b, means(attach_adapter(load_model(str(tiny_model_dir), "cpu")[0], b))),
    ):
        with as_reference(pair_logps, cfg, source) as reference, torch.no_grad():
            got = torch.cat(reference(**batch)[:2])
        assert torch.allclose(got, expected, atol=1e-6) and not torch.allclose(got, own, atol=1e-3)
        assert torch.equal(means(model), own) and list(model.peft_config) == ["default"]
        assert {n for n, p in model.named_parameters() if p.requires_grad} == trainable
    # Every weight trained (no adapter to switch): the reference is loaded as a model of its own.
    plain = load_model(str(tiny_model_dir), "cpu")[0]
    with as_reference(PairLogps(plain, "response", 16), cfg, b) as reference, torch.no_grad():
        assert torch.allclose(
            torch.cat(reference(**batch)[:2]),
            means(attach_adapter(load_model(str(tiny_model_dir), "cpu")[0], b)),
            atol=1e-6,
        )


# ---------------------------------------------------------------- tiny runs, one per method


@pytest.mark.parametrize("method", ["orpo", "sft", "prob_ratio"])
def test_each_method_trains_and_logs_the_shared_names(tmp_path, data, tiny_model_dir, method):
    cfg = quick(tmp_path, data, tiny_model_dir, method=method)
    train(cfg)
    rows = lines(cfg.run_dir)
    assert started(cfg.run_dir)["method"] == method
    assert all(SHARED | OWN[method] <= set(r) for r in rows)
    assert rows[-1]["nll_loss"] < rows[0]["nll_loss"]  # the chosen replies got likelier
    if method == "sft":
        assert all(r["loss"] == r["nll_loss"] for r in rows)
    else:  # the pair term is in the loss: beta x L_OR or beta x L_PR on top of the NLL
        term = "or_loss" if method == "orpo" else "pr_loss"
        assert rows[0]["loss"] == pytest.approx(rows[0]["nll_loss"] + cfg.beta * rows[0][term])
    assert {"eval/accuracy", "eval/logps_chosen", "eval/logps_rejected"} <= set(
        lines(cfg.run_dir, "eval")[-1]
    )


def test_dpo_starts_at_log_two_against_its_starting_model_and_trains(
    tmp_path, data, tiny_model_dir
):
    cfg = quick(tmp_path, data, tiny_model_dir, method="dpo", learning_rate=3e-2)
    train(cfg, fits=lambda step: step <= 2)  # paused after step 2, as a time slice ends
    train(TrainConfig.from_dict(cfg.to_dict() | {"resume": True}))  # reads the reference back
    rows, event = lines(cfg.run_dir), started(cfg.run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert event["method"] == "dpo" and event["reference"].startswith("the starting point")
    assert event["reference_pairs"] == 12  # 3 steps of 4 pairs, each pair once: computed once each
    assert all(SHARED | OWN["dpo"] <= set(r) for r in rows)
    # Step 1 trains the starting model against itself: every margin 0, the loss ln 2.
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert rows[0]["dpo_rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert rows[-1]["dpo_rewards/margins"] > 0 and rows[-1]["loss"] < math.log(2)
    table = torch.load(cfg.run_dir / "reference_logps.pt", weights_only=True)["logps"]
    assert table.shape == (16, 2) and int(torch.isfinite(table).all(dim=1).sum()) == 12


def test_sft_then_dpo_at_one_runs_step_budget(tmp_path, data, tiny_model_dir):
    """Two runs, 2 + 2 steps; DPO starts from SFT's checkpoint, its reference (ln 2 at step 1).
    Resuming DPO reads the saved reference back; without it the resume is refused, nothing run."""
    cfg = quick(tmp_path, data, tiny_model_dir, max_steps=4, run_name="two")
    sft_cfg, dpo_cfg = stage_configs(cfg, 2)
    last = sft_then_dpo(cfg, 2)
    assert last["sft"]["step"] == 2 and last["dpo"]["step"] == 2
    assert started(sft_cfg.run_dir)["method"] == "sft"
    event = started(dpo_cfg.run_dir)
    assert event["init_checkpoint"].endswith("two-sft/checkpoints/step-000002")
    first = lines(dpo_cfg.run_dir)[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["dpo_rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    # Both runs' step 1 draw the same pairs (same seed): SFT scored them with the base model,
    # DPO with SFT's weights, which made the chosen replies likelier.
    assert first["logps/chosen"] > lines(sft_cfg.run_dir)[0]["logps/chosen"] + 0.01
    again = TrainConfig.from_dict(dpo_cfg.to_dict() | {"resume": True, "max_steps": 3})
    with pytest.raises(TrainingError, match="cover the pairs of the steps it started with"):
        train(again)  # step 3 draws pairs that steps 1-2 did not: they have no reference
    (dpo_cfg.run_dir / "reference_logps.pt").unlink()
    with pytest.raises(TrainingError, match="its reference log-probs .* are gone"):
        train(again)
    assert [r["step"] for r in lines(dpo_cfg.run_dir)] == [1, 2]
    shutil.rmtree(sft_cfg.run_dir)  # the DPO run still names it; a new run from it is refused
    with pytest.raises(ValueError, match="init_checkpoint '.*two-sft' does not exist"):
        check_start(dpo_cfg)


def test_costs_and_curve_of_sft_then_dpo_read_from_its_folders(tmp_path, data, tiny_model_dir):
    """One held-out curve over both stages (DPO's step 0, SFT's last weights, drawn once); DPO's
    reference forwards counted once per distinct pair, on top of one forward per pair visited."""
    cfg = quick(
        tmp_path,
        data,
        tiny_model_dir,
        max_steps=4,
        run_name="two",
        eval_every=1,
        eval_at_start=True,
    )
    sft_cfg, dpo_cfg = stage_configs(cfg, 2)
    sft_then_dpo(cfg, 2)
    dirs = [sft_cfg.run_dir, dpo_cfg.run_dir]
    costs = pipeline_costs(dirs, wall_s=1.5, peak_rss_gb=0.5)
    visits = 4 * cfg.batch_size * cfg.grad_accum
    assert costs["steps"] == 4 and costs["pair_visits"] == visits
    assert [s["method"] for s in costs["stages"]] == ["sft", "dpo"]
    assert costs["reference_forwards"] == started(dpo_cfg.run_dir)["reference_pairs"] == 8
    assert costs["forwards_per_pair_visit"] == pytest.approx(1 + 8 / visits)
    sft_evals, dpo_evals = lines(sft_cfg.run_dir, "eval"), lines(dpo_cfg.run_dir, "eval")
    curve = held_out_curve(dirs)
    assert [p["step"] for p in curve] == [0, 1, 2, 3, 4]
    assert [p["rejected"] for p in curve] == [
        r["eval/logps_rejected"] for r in sft_evals + dpo_evals[1:]
    ]
    assert costs["chosen_first"] == sft_evals[0]["eval/logps_chosen"]
    assert costs["chosen"] == dpo_evals[-1]["eval/logps_chosen"] == curve[-1]["chosen"]


def test_peak_memory_is_the_peak_of_the_stretch_alone():
    with peak_memory() as big:
        block = bytearray(b"x") * (256 * 2**20)  # written, so resident
        del block
    with peak_memory() as small:  # the high-water mark starts again from what is resident now
        pass
    assert not small["since_start"]  # Linux: the peak was reset
    assert big["peak_rss_gb"] - small["peak_rss_gb"] > 0.2


def test_runs_table_and_model_card_name_the_method():
    from orpo_lab.adapter import method_words
    from orpo_lab.ui.views import method_cell

    configs = [
        {"beta": 0.0},
        {"method": "orpo", "beta": 0.5},
        {"method": "sft", "beta": 0.0},
        {"method": "dpo", "dpo_beta": 0.1, "beta": 0.5, "init_checkpoint": "runs/s"},
        {"method": "prob_ratio", "beta": 1.0},
    ]
    assert [method_cell(c) for c in configs] == ["SFT", "ORPO 0.5", "SFT", "DPO 0.1", "PR 1"]
    assert [method_words(c) for c in configs] == [
        "SFT (beta = 0, the baseline)",
        "ORPO, beta (lambda) = 0.5",
        "SFT (beta = 0, the baseline)",
        "DPO, beta 0.1, from runs/s, reference its start",
        "probability ratio (ORPO paper, section 7.1), lambda = 1.0",
    ]
