"""Experiment trackers, read back with each tracker's own reader: TensorBoard's event files, Trackio's
local store, W&B's offline run files, across a stop and a resume; a tracker that is missing or
fails costs one warning, never the run; report_to in the config, YAML and CLI."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import pytest
from test_train import make_config, write_pairs

from orpo_lab.config import TrainConfig
from orpo_lab.config_flags import build_parser, config_from_args
from orpo_lab.rundir import RunDir
from orpo_lab.trackers import tracker_metrics
from orpo_lab.train import train

# Trackio reads its store's folder once, when it is imported: a folder of the tests' own, never the
# user's; each test logs to a project of its own in it and removes it afterwards.
os.environ.setdefault("TRACKIO_DIR", str(Path(tempfile.gettempdir()) / "orpo-lab-tests-trackio"))


@pytest.fixture()
def data(tmp_path):
    return write_pairs(tmp_path / "train.jsonl", 16), write_pairs(
        tmp_path / "test.jsonl", 8, offset=100
    )


@pytest.fixture()
def offline(monkeypatch):
    """W&B offline (its files on disk, no network), a Trackio project of the test's own."""
    project = f"orpo-lab-test-{uuid.uuid4().hex[:8]}"
    for key, value in (
        ("WANDB_MODE", "offline"),
        ("WANDB_SILENT", "true"),
        ("WANDB_PROJECT", project),
        ("TRACKIO_PROJECT", project),
    ):
        monkeypatch.setenv(key, value)
    yield project
    trackio = pytest.importorskip("trackio")
    from trackio.sqlite_storage import SQLiteStorage

    assert str(trackio.utils.TRACKIO_DIR) == os.environ["TRACKIO_DIR"]
    for path in Path(os.environ["TRACKIO_DIR"]).glob(f"{project}*"):
        path.unlink()
    assert not SQLiteStorage.get_project_db_path(project).exists()


def expected_scalars(records: list[dict]) -> dict[str, dict[int, float]]:
    """tag -> {step: value}, from the run's own metrics.jsonl."""
    out: dict[str, dict[int, float]] = {}
    for record in records:
        for tag, value in tracker_metrics(record).items():
            assert record["step"] not in out.get(tag, {}), (tag, record["step"])  # each step once
            out.setdefault(tag, {})[record["step"]] = value
    return out


TAGS = (
    "train/loss",
    "train/rewards/chosen",
    "train/rewards/accuracies",
    "train/nll_loss",
    "train/log_odds_ratio",
    "train/log_odds_chosen",
    "train/learning_rate",
    "eval/rewards/accuracies",
    "eval/logps/rejected",
    "eval/delta_q50",
)


def test_trackers_hold_every_step_across_a_stop_and_resume(tmp_path, data, tiny_model_dir, offline):
    """A 6-step run with all three trackers, stopped after step 3 and resumed: TensorBoard's reader
    and Trackio's API each give back steps 1-6 (train) and 0, 2, 4, 6 (held out) once, with the
    values of metrics.jsonl, under TRL's names; the resume continued the same tracker runs; W&B
    wrote its offline run files for both parts, under the one run id."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    trackio = pytest.importorskip("trackio")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from trackio.sqlite_storage import SQLiteStorage

    cfg = make_config(
        tmp_path,
        data,
        tiny_model_dir,
        run_name="tracked",
        max_steps=6,
        save_every=None,
        report_to="tensorboard,trackio,wandb",
    )
    stop = threading.Event()
    train(
        cfg,
        callback=lambda r: r["kind"] == "train" and r["step"] == 3 and stop.set(),
        stop_event=stop,
    )
    run = RunDir(cfg.run_dir)
    assert run.read_status()["status"] == "stopped" and run.read_status()["step"] == 3
    first = run.read_trackers()
    assert set(first) == {"tensorboard", "trackio", "wandb"}
    cfg.resume = True
    train(cfg)
    assert run.read_status()["status"] == "finished"
    assert run.read_trackers() == first  # the same tracker runs, continued
    expected = expected_scalars(run.metrics())
    assert sorted(expected["train/loss"]) == [1, 2, 3, 4, 5, 6]
    assert sorted(expected["eval/rewards/accuracies"]) == [0, 2, 4, 6]

    board = EventAccumulator(str(run.tensorboard_dir), size_guidance={"scalars": 0})
    board.Reload()
    for tag in TAGS:
        events = board.Scalars(tag)
        assert [e.step for e in events] == sorted(expected[tag]), tag
        assert [e.value for e in events] == pytest.approx(
            [expected[tag][e.step] for e in events], rel=1e-6, abs=1e-7
        ), tag
    assert "config/text_summary" in board.Tags()["tensors"]  # the run's config, as text

    project, (stored,) = offline, [r for r in trackio.Api().runs(offline)]
    assert (stored.name, stored.id) == (first["trackio"]["name"], first["trackio"]["id"])
    assert stored.config["beta"] == cfg.beta and stored.config["report_to"] == cfg.report_to
    logs = SQLiteStorage.get_logs(project, run=stored.name, run_id=stored.id)
    for tag in TAGS:
        got = {log["step"]: log[tag] for log in logs if tag in log}
        assert got == pytest.approx(expected[tag], rel=1e-6, abs=1e-7), tag

    run_id = first["wandb"]["id"]
    parts = sorted(run.wandb_dir.glob(f"offline-run-*-{run_id}"))
    assert len(parts) == 2, list(run.wandb_dir.iterdir())  # the stopped part and the resumed one
    for part in parts:
        log = (part / f"run-{run_id}.wandb").read_bytes()
        assert b"train/rewards/chosen" in log and b"eval/rewards/accuracies" in log


def test_a_missing_or_failing_tracker_warns_once_and_training_goes_on(
    tmp_path, data, tiny_model_dir, monkeypatch, capsys
):
    """W&B not installed (its import fails) and a TensorBoard writer that fails on its first write:
    one warning each (stderr and the run log), saying what to do, and the run finishes."""
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    monkeypatch.setattr(SummaryWriter, "add_scalar", disk_full)
    cfg = make_config(
        tmp_path, data, tiny_model_dir, max_steps=3, save_every=None, report_to="wandb,tensorboard"
    )
    assert train(cfg)["step"] == 3
    run = RunDir(cfg.run_dir)
    assert run.read_status()["status"] == "finished"
    err = capsys.readouterr().err
    assert err.count("warning: tracker") == 2, err
    assert "tracker wandb could not start (ModuleNotFoundError" in err
    assert "pip install 'orpo-lab[trackers]'" in err
    assert "tracker tensorboard failed while logging (OSError" in err
    assert "training goes on without it" in err
    warned = [r for r in run.metrics() if r.get("event") == "tracker_warning"]
    assert [(r["tracker"], r["step"]) for r in warned] == [("wandb", 0), ("tensorboard", 0)]
    assert [r["step"] for r in run.metrics() if r["kind"] == "train"] == [1, 2, 3]


def test_report_to_in_the_config_yaml_and_cli(tmp_path):
    assert TrainConfig().report_to == "none"
    assert TrainConfig(report_to=" TensorBoard , wandb").report_to == "tensorboard,wandb"
    assert TrainConfig(report_to=["trackio", "wandb"]).report_to == "trackio,wandb"
    (tmp_path / "c.yaml").write_text("report_to: tensorboard, wandb\n")
    args = build_parser().parse_args(["--config", str(tmp_path / "c.yaml")])
    assert config_from_args(args).report_to == "tensorboard,wandb"
    args = build_parser().parse_args(["--report-to", "trackio,tensorboard"])
    assert config_from_args(args).report_to == "trackio,tensorboard"
    for bad, says in (("tensorbord", "unknown 'tensorbord'"), ("none,wandb", "none with trackers")):
        with pytest.raises(ValueError, match=says) as err:
            TrainConfig(report_to=bad)
        assert "any of tensorboard, trackio, wandb" in str(err.value)


def test_metric_names_are_trls_where_they_mean_the_same():
    train_record = {
        "kind": "train",
        "step": 4,
        "total_steps": 9,
        "epoch": 0.5,
        "loss": 1.0,
        "rewards/chosen": -0.2,
        "log_odds_ratio": -0.6,
        "nll_loss": 0.9,
        "lr": 1e-3,
        "grad_norm": None,
        "tokens_per_s": 50.0,
    }
    assert tracker_metrics(train_record) == {
        "train/epoch": 0.5,
        "train/loss": 1.0,
        "train/rewards/chosen": -0.2,
        "train/log_odds_ratio": -0.6,
        "train/nll_loss": 0.9,
        "train/learning_rate": 1e-3,
        "train/tokens_per_s": 50.0,
    }
    eval_record = {
        "kind": "eval",
        "step": 4,
        "eval/accuracy": 0.75,
        "eval/logps_chosen": -1.0,
        "eval/logps_rejected": -2.0,
        "eval/log_odds_chosen": 1.5,
        "eval/pairs": 8,
    }
    assert tracker_metrics(eval_record) == {
        "eval/rewards/accuracies": 0.75,
        "eval/logps/chosen": -1.0,
        "eval/logps/rejected": -2.0,
        "eval/log_odds_chosen": 1.5,
        "eval/pairs": 8.0,
    }
    assert tracker_metrics({"kind": "event", "step": 0, "event": "started"}) == {}
