"""Run control that keeps the work: a stop before the first step, stale STOP files, resume without
a checkpoint, Ctrl-C on the command line, config errors; and what the loop logs (SFT accuracy, lr).
A stop between micro-batches and its exact resume: test_train.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_train import (
    checkpoints,
    lines,
    make_config,
)

from orpo_lab.rundir import RunDir
from orpo_lab.setup import setup_progress
from orpo_lab.step import StopRequested
from orpo_lab.train import TrainingError, train


@pytest.fixture()
def data(tmp_path):
    from test_train import write_pairs

    return write_pairs(tmp_path / "train.jsonl", 16), write_pairs(
        tmp_path / "test.jsonl", 8, offset=100
    )


def status_of(cfg) -> dict:
    return RunDir(cfg.run_dir).read_status()


def test_stop_before_the_first_step_saves_nothing_and_says_so(
    tmp_path, data, tiny_model_dir, monkeypatch, capsys
):
    from orpo_lab import cli

    cfg = make_config(tmp_path, data, tiny_model_dir, max_steps=5)
    cfg.to_yaml(tmp_path / "run.yaml")
    # Ctrl-C while the run loads (the CLI's stop event set as soon as it exists): the step-0
    # evaluation and the loop end at once.
    monkeypatch.setattr(cli, "install_stop_signals", lambda stop: stop.set())
    assert cli.main(["--config", str(tmp_path / "run.yaml")]) == 0
    status = status_of(cfg)
    assert status["status"] == "stopped" and status["step"] == 0 and status["total_steps"] == 5
    assert "before the first step" in status["message"]
    # No step's record to print (it printed "{}"): what is on disk, then how to go on: with no
    # checkpoint, not "resume with ... --resume", which answers "Nothing to resume".
    out = capsys.readouterr().out
    again = f"orpo-lab --config {cfg.run_dir / 'config.yaml'}"
    assert out == f"{status['message']} (run folder {cfg.run_dir})\nstart it again with `{again}`\n"
    assert "no checkpoint on disk" in status["message"]
    assert checkpoints(cfg.run_dir) == [] and lines(cfg.run_dir, "eval") == []
    monkeypatch.setattr(cli, "install_stop_signals", lambda stop: None)  # the command, followed
    assert cli.main(again.split()[1:]) == 0 and status_of(cfg)["status"] == "finished"
    cfg.run_name = "again"
    # Resumed from step 2, then stopped while it loads: it stands at step 2, as on disk.
    cfg.max_steps, cfg.save_every = 2, 2
    train(cfg)
    cfg.max_steps, cfg.resume, said, stop = 5, True, [], threading.Event()
    stop.set()
    train(cfg, callback=said.append, stop_event=stop)
    status = status_of(cfg)
    assert status["status"] == "stopped" and status["step"] == 2 and status["total_steps"] == 5
    assert status["message"] == (
        "stopped on request after step 2; last checkpoint on disk: step-000002 (step 2)"
    )
    assert said == []  # stopped at its setup's first stage, before the model loaded


def test_a_multi_process_setup_leaves_a_stop_to_the_check_all_processes_make(tmp_path):
    """One process of a multi-process run that left its setup on a stop ended the others, which
    waited for it in DDP's first broadcast, with a gloo error. So there each stage is said, and the
    stop is left to `Run.stop_requested`, which every process asks together (the step-0
    evaluation, step 1). Seen by hand: torchrun, 2 processes, a STOP while 40,000 pairs were
    tokenised: both stopped before step 1, exit 0, nothing trained."""
    folder = RunDir(tmp_path / "run")
    folder.path.mkdir()
    folder.request_stop()
    one_of_two = setup_progress(folder, None, every_s=0, world=2)
    one_of_two("loading the model")
    assert folder.read_status()["message"] == "loading the model"
    with pytest.raises(StopRequested):  # a run of one process stops at once
        setup_progress(folder, None, every_s=0)("loading the model")


def test_stale_stop_file_does_not_end_a_resume(tmp_path, data, tiny_model_dir):
    """A killed run leaves STOP behind (for its dead pid); the next --resume must train on."""
    cfg = make_config(tmp_path, data, tiny_model_dir, max_steps=4, save_every=2, eval_every=None)
    stop = threading.Event()
    train(
        cfg,
        callback=lambda r: r["kind"] == "train" and r["step"] == 2 and stop.set(),
        stop_event=stop,
    )
    RunDir(cfg.run_dir).request_stop(pid=2**22 + 4321)  # meant for a process that is gone
    cfg.resume = True
    train(cfg)
    assert status_of(cfg)["status"] == "finished"
    assert [r["step"] for r in lines(cfg.run_dir)] == [1, 2, 3, 4]
    assert not (cfg.run_dir / "STOP").exists()


def test_resume_without_a_checkpoint_says_so_and_changes_nothing(tmp_path, data, tiny_model_dir):
    cfg = make_config(tmp_path, data, tiny_model_dir, resume=True)
    with pytest.raises(TrainingError, match="Nothing to resume.*no checkpoint"):
        train(cfg)
    assert not (cfg.run_dir / "metrics.jsonl").exists()


def test_sft_run_logs_its_real_preference_accuracy(tmp_path, data, learnable_model_dir):
    """beta = 0: accuracy comes from the log-probs, so it is not stuck at 0 as TRL's would be (its
    rewards, beta * logp, are all 0); TRL's reward margin stays 0, the log-prob margin does not."""
    cfg = make_config(tmp_path, data, learnable_model_dir, beta=0.0, max_steps=6, eval_every=3)
    train(cfg)
    rows, evals = lines(cfg.run_dir), lines(cfg.run_dir, "eval")
    assert all(r["rewards/margins"] == 0.0 and r["rewards/chosen"] == 0.0 for r in rows)
    assert rows[-1]["logps/margins"] > 0 and rows[-1]["rewards/accuracies"] > 0.5
    # The held-out pairs: one-word chosen replies become far likelier per token than rambling ones.
    assert (
        evals[-1]["eval/accuracy"] > 0.5
        and evals[-1]["eval/logps_chosen"] > evals[0]["eval/logps_chosen"]
    )


def test_logged_learning_rate_is_the_one_the_step_used(tmp_path, data, tiny_model_dir):
    """Linear warmup over 4 steps from 0: step 1 trains at lr 0, step 2 at lr/4, ..."""
    cfg = make_config(
        tmp_path,
        data,
        tiny_model_dir,
        max_steps=5,
        warmup_steps=4,
        lr_scheduler="linear",
        learning_rate=1e-2,
        save_every=None,
        eval_every=None,
    )
    train(cfg)
    assert [r["lr"] for r in lines(cfg.run_dir)] == pytest.approx([0.0, 2.5e-3, 5e-3, 7.5e-3, 1e-2])


CLI = [sys.executable, "-m", "orpo_lab.cli"]


def cli_args(cfg) -> list[str]:
    cfg_path = cfg.run_dir.parent / f"{cfg.run_name}.yaml"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg.to_yaml(cfg_path)
    return [*CLI, "--config", str(cfg_path)]


class Child:
    """A command-line run in a process of its own, its output in files (a pipe nobody reads can fill
    and stall the child). `wait_for` polls a condition and fails, with the child's output, as soon as
    the child has exited or the deadline has passed, so a dead child never leaves the test spinning."""

    def __init__(self, args: list[str], folder):
        self.out_path, self.err_path = folder / "child.out", folder / "child.err"
        with self.out_path.open("w") as out, self.err_path.open("w") as err:
            # A session of its own: Ctrl-C can reach its whole process group, and a failed test
            # ends the workers it forked too.
            self.proc = subprocess.Popen(
                args, stdout=out, stderr=err, text=True, start_new_session=True
            )

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()

    def output(self) -> tuple[str, str]:
        return self.out_path.read_text(), self.err_path.read_text()

    def wait_for(self, what: str, done, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while not done():
            if self.proc.poll() is not None:
                pytest.fail(
                    f"the run exited ({self.proc.returncode}) before {what}:\n{self.tail()}"
                )
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"no {what} within {seconds:.0f} s:\n{self.tail()}")
            time.sleep(0.2)

    def finish(self, seconds: float) -> tuple[str, str]:
        try:
            self.proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the run was still going {seconds:.0f} s after Ctrl-C:\n{self.tail()}")
        return self.output()

    def tail(self) -> str:
        out, err = self.output()
        return f"stdout: ...{out[-1500:]}\nstderr: ...{err[-3000:]}"


def test_ctrl_c_saves_the_last_step_and_exits_cleanly(tmp_path, data, tiny_model_dir):
    cfg = make_config(
        tmp_path, data, tiny_model_dir, max_steps=100000, save_every=None, eval_every=None
    )
    child = Child(cli_args(cfg), tmp_path)
    metrics = cfg.run_dir / "metrics.jsonl"
    child.wait_for("three logged steps", lambda: len(lines_if(metrics)) >= 3)
    child.proc.send_signal(signal.SIGINT)
    out, err = child.finish(120)
    assert child.proc.returncode == 0, err[-2000:]
    assert "stop requested" in err
    status = status_of(cfg)
    assert status["status"] == "stopped"
    # What is on disk (the status's message names the checkpoint), where, and how to go on.
    assert status["message"].startswith(f"stopped on request after step {status['step']}; ")
    assert f"\n{status['message']} (run folder {cfg.run_dir})\n" in out
    assert f"resume with `orpo-lab --config {cfg.run_dir / 'config.yaml'} --resume`" in out
    (saved,) = checkpoints(cfg.run_dir)
    assert int(saved.name.removeprefix("step-")) == status["step"] >= 2


SLOW_TOKENISING = """
import sys, time
from orpo_lab import prepared
from orpo_lab.cli import main
real = prepared._tokenize_batch
def slow(batch, **kwargs):
    time.sleep(1.5)  # a large dataset: each batch of 1,000 rows takes a while
    return real(batch, **kwargs)
prepared._tokenize_batch = slow
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_while_workers_tokenise_stops_them_all(tmp_path, data, tiny_model_dir):
    """Ctrl-C reaches the whole process group, datasets' tokenising workers (a dataset of 2,000+
    pairs is tokenised in parallel) included: the run stops with nothing trained, each worker
    ends, and nothing but the one stop line is said. The workers inherit the command's signal
    handler: as a stop there, their pool's SIGTERM left them running and the stop waiting for
    ever (a STOP file, the app's Stop, hung the same way), and Ctrl-C printed "stop requested"
    once per worker, then "exiting now, without saving"."""
    from test_train import write_pairs

    many = write_pairs(tmp_path / "many.jsonl", 4000)
    cfg = make_config(tmp_path, (many, data[1]), tiny_model_dir, max_steps=5, save_every=None)
    child = Child([sys.executable, "-c", SLOW_TOKENISING, *cli_args(cfg)[3:]], tmp_path)
    child.wait_for(
        "the tokenising workers",  # the pool's and datasets' result queue's processes
        lambda: (
            "tokenising train" in status_of(cfg).get("message", "")
            and len(child_pids(child.proc.pid)) >= 2
        ),
    )
    os.killpg(child.proc.pid, signal.SIGINT)
    out, err = child.finish(60)
    assert child.proc.returncode == 0, err[-2000:]
    with pytest.raises(ProcessLookupError):  # no process left in its group: the workers ended
        os.killpg(child.proc.pid, 0)
    status = status_of(cfg)
    assert (status["status"], status["step"]) == ("stopped", 0)
    assert status["message"].startswith("stopped on request before the first step")
    assert err.count("stop requested") == 1 and "second stop signal" not in err
    assert "Traceback" not in err and "Exception ignored" not in err  # a clean stop reads clean


def child_pids(pid: int) -> list[int]:
    """The processes `pid` forked (Linux: /proc/PID/task/*/children)."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        found += map(int, Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    return found


def lines_if(path) -> list[dict]:
    if not path.is_file():
        return []
    text = path.read_text()
    complete = text.splitlines()[: text.count("\n")]  # a line being written is not read yet
    records = (json.loads(line) for line in complete)
    return [record for record in records if record.get("kind") == "train"]


SLOW_SAVE = """
import sys, time
from orpo_lab.checkpoint import Checkpointer
from orpo_lab.cli import main
real = Checkpointer.save
def slow(*args, **kwargs):
    print("slow save begins", file=sys.stderr, flush=True)
    time.sleep(60)  # a save that takes long: the second Ctrl-C must not wait for it
    return real(*args, **kwargs)
Checkpointer.save = slow
sys.exit(main(sys.argv[1:]))
"""


def test_second_ctrl_c_exits_at_once(tmp_path, data, tiny_model_dir):
    cfg = make_config(
        tmp_path, data, tiny_model_dir, max_steps=100000, save_every=None, eval_every=None
    )
    child = Child([sys.executable, "-c", SLOW_SAVE, *cli_args(cfg)[3:]], tmp_path)
    child.wait_for("a logged step", lambda: lines_if(cfg.run_dir / "metrics.jsonl"))
    child.proc.send_signal(signal.SIGINT)
    # The first stop is saving (slowly); the handler's own line says "saving" too, so wait for the save.
    child.wait_for(
        "the slow save", lambda: "slow save begins" in child.err_path.read_text(), seconds=60
    )
    began = time.monotonic()
    child.proc.send_signal(signal.SIGINT)
    _, err = child.finish(30)
    assert child.proc.returncode == 128 + signal.SIGINT and "exiting now" in err
    assert time.monotonic() - began < 10


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("max_steps: five\n", ["max_steps: expected a whole number, or epochs / none, got 'five'"]),
        (
            "beta: [1, 2]\nlora_r: 2.5\n",
            ["beta: expected a number", "lora_r: expected a whole number"],
        ),
        ("learning_rate: .inf\n", ["learning_rate: expected a finite number"]),
        ("max_stepz: 3\n", ["Unknown config keys: max_stepz"]),
        ("- a list\n", ["must hold a mapping"]),
    ],
)
def test_config_errors_name_field_value_and_expectation(tmp_path, text, fragments):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    proc = subprocess.run(
        [*CLI, "--config", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr


def heavy_after(code: str) -> subprocess.CompletedProcess:
    """`code` run in a fresh interpreter, which then prints the heavy modules it imported."""
    heavy = ("torch", "transformers", "datasets", "peft")
    code += f"\nimport sys\nprint('HEAVY', [m for m in {heavy!r} if m in sys.modules])"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def test_help_answers_before_heavy_imports():
    """--help must not wait for torch: nothing heavy is imported before the arguments are parsed."""
    out = heavy_after(
        "from orpo_lab.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"
    )
    assert "--eval-prompts" in out.stdout and "HEAVY []" in out.stdout, out.stdout[-500:]


def test_a_training_command_says_what_it_reads_before_heavy_imports(tmp_path):
    """The first line of `orpo-lab` (the dataset it reads and checks) comes before torch loads,
    seconds on a slow CPU: nothing heavy is imported until launch.check_launch runs."""
    out = heavy_after(  # the CLI's first line ends the command: what had it imported by then?
        "import orpo_lab.cli as cli\n"
        "def say(text):\n    print('SAID', text)\n    raise SystemExit(0)\n"
        "cli.say = say\n"
        f"try:\n    cli.main(['--run-name', 'x', '--output-dir', {str(tmp_path)!r}])\n"
        "except SystemExit:\n    pass"
    )
    assert "SAID reading and checking the dataset default\n" in out.stdout, out.stdout[-500:]
    assert "HEAVY []" in out.stdout, out.stdout[-500:]
    # A typo of the model's name is refused before anything heavy loads, the data included.
    out = heavy_after(
        "from orpo_lab.config import TrainConfig; from orpo_lab.launch import check_launch\n"
        "try:\n    check_launch(TrainConfig(model='Defualt'))\nexcept ValueError as err:\n"
        "    print('REFUSED', err)"
    )
    assert "REFUSED Model 'Defualt' is not a folder here: did you mean 'default'" in out.stdout
    assert "HEAVY []" in out.stdout, out.stdout[-500:]
    # A missing dataset file: refused after datasets loads (it reads the data), before torch.
    missing = tmp_path / "none.jsonl"
    out = heavy_after(
        "from orpo_lab.config import TrainConfig; from orpo_lab.launch import check_launch\n"
        f"try:\n    check_launch(TrainConfig(dataset={str(missing)!r}))\nexcept ValueError as err:\n"
        "    print('REFUSED', err)"
    )
    assert f"REFUSED {missing}: file not found." in out.stdout, out.stdout[-500:]
    assert "HEAVY ['datasets']" in out.stdout, out.stdout[-500:]


def test_a_bad_dataset_is_reported_before_the_model_loads(tmp_path, capsys):
    """The model's name is checked first (instant: a missing folder or a typo of 'default'),
    then the data; the model itself (a tokenizer from the hub) only after the data passed."""
    from orpo_lab.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "chosen": "a"}\n')
    args = ["--dataset", str(bad), "--run-name", "x", "--output-dir", str(tmp_path), "--model"]
    began = time.monotonic()
    proc = subprocess.run(  # a process of its own: a hub look-up offline would retry for a minute
        [*CLI, *args, "nobody/no-such-model"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "line 1" in proc.stderr and "rejected" in proc.stderr
    assert "no-such-model" not in proc.stderr  # the model was never looked at
    assert time.monotonic() - began < 60
    for model, said in (
        ("defualt", "did you mean 'default'"),
        ("/no/such/model", "does not exist"),
    ):
        assert main([*args, model]) == 2
        err = capsys.readouterr().err  # refused before the data was read, and says only that
        assert err.startswith("error: Model"), err
        assert said in err and "line 1" not in err and "reading and checking" not in err
    assert not (tmp_path / "x").exists()
