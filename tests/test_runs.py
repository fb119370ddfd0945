"""runs.py: process handling with a stand-in trainer script.

The stand-in (FAKE_TRAINER) follows the trainer's file contract (status.json, metrics.jsonl, STOP)
and is only a test double for process management. The real trainer started, followed, stopped
(a loadable checkpoint) and zipped by a RunManager: test_app.py's
test_train_stop_download_export_delete, through the app.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time

import pytest

from orpo_lab.rundir import RunDir, read_metrics
from orpo_lab.runs import RunError, RunManager, validate_run_name

# Behaviour by run name: "crash*" dies, "stubborn*" ignores STOP, anything else trains slowly and
# honours STOP; "quick*" finishes after 3 steps. It speaks the run-folder protocol through RunDir,
# as the real trainer does, and a resumed run (--resume) continues after its last checkpoint.
FAKE_TRAINER = textwrap.dedent(
    """
    import json, os, sys, time, yaml
    from orpo_lab.rundir import RunDir
    cfg = yaml.safe_load(open(sys.argv[sys.argv.index("--config") + 1]))
    run = RunDir(os.path.join(cfg["output_dir"], cfg["run_name"]))
    name = cfg["run_name"]
    latest = run.latest_checkpoint()
    start = int(latest.name.removeprefix("step-")) if "--resume" in sys.argv and latest else 0
    run.clear_stale_stop(os.getpid(), time.time() - 1)
    # Printed before "running" is written: a test that sees "running" finds the line in the log.
    print("fake trainer started", "resume" if start else "", flush=True)
    run.write_status("running", "training", step=start, total_steps=100, pid=os.getpid(),
                     step_s=0.05)
    if name.startswith("crash"):
        raise SystemExit("Traceback: something broke in the fake trainer")
    def save(step):
        folder = run.checkpoints_dir / f"step-{step:06d}"
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text("{}")
        (folder / "trainer_state.json").write_text(json.dumps({"step": step}))
    total = 3 if name.startswith("quick") else 100
    for step in range(start + 1, total + 1):
        run.append_metrics({"kind": "train", "step": step, "loss": 1.0 / step, "step_s": 0.05})
        run.write_status(step=step)
        if run.stop_requested() and not name.startswith("stubborn"):
            save(step)
            run.clear_stop()
            run.write_status("stopped", f"stopped on request after step {step}; "
                             + run.describe_checkpoints())
            sys.exit(0)
        time.sleep(0.05)
    save(total)
    run.write_status("finished", f"finished {total} steps")
    """
)


@pytest.fixture
def manager(tmp_path):
    script = tmp_path / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    return RunManager(tmp_path / "runs", trainer=[sys.executable, str(script)], grace_s=3)


def wait_for(predicate, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("bad", ["", ".hidden", "-x", "../escape", "a/b", "a b", "x" * 101, "é"])
def test_run_names_cannot_escape(bad):
    with pytest.raises(RunError):
        validate_run_name(bad)


def test_good_run_names_pass():
    assert validate_run_name("orpo_beta-0.1") == "orpo_beta-0.1"


def test_metrics_reader_tolerates_a_truncated_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n{"step": 3, "lo')
    records, offset = read_metrics(path)
    assert [r["step"] for r in records] == [1, 2]
    with path.open("a") as f:
        f.write('ss": 0.5}\n')
    more, _ = read_metrics(path, offset)
    assert more == [{"step": 3, "loss": 0.5}]


def test_start_follow_and_finish(manager):
    name = manager.start({"max_steps": 3}, "quick-1")
    assert wait_for(lambda: manager.status(name)["status"] == "finished")
    manager.poll()
    assert [r["step"] for r in manager.metrics(name)] == [1, 2, 3]
    summary = manager.list_runs()[0]
    assert summary["name"] == name and summary["train"]["step"] == 3
    assert summary["config"]["max_steps"] == 3
    assert "fake trainer started" in (manager.run_dir(name) / "train.log").read_text()


def test_invalid_config_or_duplicate_name_writes_nothing(manager):
    with pytest.raises(ValueError, match="max_prompt_length"):
        manager.start({"max_length": 64, "max_prompt_length": 64}, "bad-config")
    assert not manager.run_dir("bad-config").exists()
    manager.start({}, "quick-dup")
    with pytest.raises(RunError, match="already exists"):
        manager.start({}, "quick-dup")


def test_queue_runs_one_at_a_time_and_stop_saves(manager):
    first = manager.start({"device": "cpu"}, "slow-a")
    second = manager.start({"device": "cpu"}, "slow-b")
    assert wait_for(lambda: manager.status(first)["status"] == "running")
    assert manager.status(second)["status"] == "queued"
    assert wait_for(lambda: len(manager.metrics(first)) >= 2)
    assert manager.stop(first) == "stopped"
    status = manager.status(first)
    assert status["status"] == "stopped"
    (saved,) = manager.checkpoints(first)  # the trainer saved at its next step, and says which
    assert saved in status["message"]
    # The queue advanced: the second run started as soon as the device was free.
    assert wait_for(lambda: manager.status(second)["status"] == "running")
    with pytest.raises(RunError, match="stop it first"):
        manager.delete(second)
    assert manager.stop(second) == "stopped"
    manager.delete(second)
    assert second not in manager.names()


def test_stop_escalates_to_kill(manager):
    name = manager.start({}, "stubborn-1")
    assert wait_for(lambda: len(manager.metrics(name)) >= 1)
    started = time.monotonic()
    assert manager.stop(name, grace_s=1) == "killed"
    assert time.monotonic() - started < 8
    status = manager.status(name)
    assert status["status"] == "stopped" and "killed" in status["message"]
    assert "no checkpoint on disk" in status["message"]  # what the folder holds, nothing more
    assert not (manager.run_dir(name) / "STOP").exists()


def test_cancel_a_queued_run(manager):
    manager.start({"device": "cpu"}, "slow-busy")
    queued = manager.start({"device": "cpu"}, "slow-waiting")
    assert manager.stop(queued) == "cancelled"
    assert manager.status(queued)["status"] == "stopped"
    manager.stop("slow-busy")


def test_crash_is_detected_with_the_log_tail(manager):
    name = manager.start({}, "crash-1")
    assert wait_for(lambda: manager.poll() or manager.status(name)["status"] == "failed")
    status = manager.status(name)
    assert "exited with code 1" in status["message"]
    assert "something broke in the fake trainer" in status["message"]
    other = manager.start({}, "quick-after-crash")  # other runs are untouched and can still start
    assert wait_for(lambda: manager.status(other)["status"] == "finished")


def test_a_run_whose_process_vanished_is_failed_after_restart(manager, tmp_path):
    name = manager.start({}, "quick-orphan")
    assert wait_for(lambda: manager.status(name)["status"] == "finished")
    status_file = manager.run_dir(name) / "status.json"
    # As if the app had restarted while a run was "running" and its process then died.
    status_file.write_text(json.dumps({"status": "running", "pid": 2**22 + 12345, "step": 1}))
    fresh = RunManager(manager.runs_dir, trainer=manager.trainer)
    fresh.poll()
    assert fresh.status(name)["status"] == "failed"


def test_unknown_run_and_checkpoint_are_refused(manager):
    with pytest.raises(RunError):
        manager.status("nope")
    manager.start({}, "quick-ck")
    with pytest.raises(RunError, match="no checkpoint"):
        manager.checkpoint_path("quick-ck", "../../etc")


def test_resume_continues_a_stopped_run_from_its_checkpoint(manager):
    name = manager.start({}, "slow-resume")
    assert wait_for(lambda: len(manager.metrics(name)) >= 3)
    assert manager.stop(name) == "stopped"
    (first,) = manager.checkpoints(name)
    manager.resume(name)
    assert wait_for(lambda: manager.status(name)["status"] == "running")
    assert "resume" in (manager.run_dir(name) / "train.log").read_text()
    after = int(first.removeprefix("step-"))
    assert wait_for(lambda: manager.metrics(name)[-1]["step"] > after + 2)
    steps = [r["step"] for r in manager.metrics(name)]
    assert steps == list(range(1, len(steps) + 1))  # no step twice, none missing
    with pytest.raises(RunError, match="nothing to resume yet"):
        manager.resume(name)
    assert manager.stop(name) == "stopped"


def test_grace_grows_with_the_measured_step_time(manager):
    name = manager.start({"max_steps": 3}, "quick-grace")
    assert wait_for(lambda: manager.status(name)["status"] == "finished")
    RunDir(manager.run_dir(name)).write_status(step_s=40.0)  # a slow CPU step
    assert manager.grace(name) == manager.grace_s + 120.0


def test_too_small_dataset_is_refused_before_a_run_exists(manager, tmp_path):
    votes = tmp_path / "two.jsonl"
    votes.write_text(
        '{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
        '{"prompt": "d", "chosen": "e", "rejected": "f"}\n'
    )
    with pytest.raises(RunError, match="1 usable training pair.*one batch of 4"):  # 1 held out
        manager.start({"dataset": str(votes), "batch_size": 4}, "too-small")
    assert not manager.run_dir("too-small").exists()


def test_resume_needs_a_checkpoint_and_an_ended_run(manager):
    busy = manager.start({"device": "cpu"}, "slow-busy2")
    queued = manager.start({"device": "cpu"}, "slow-queued")
    assert manager.stop(queued) == "cancelled"
    with pytest.raises(RunError, match="no checkpoint to resume from"):
        manager.resume(queued)
    assert not (manager.run_dir(queued) / "checkpoints").exists()
    with pytest.raises(RunError, match="nothing to resume yet"):
        manager.resume(busy)
    manager.stop(busy)
