"""ZeroGPU through the stand-in (`orpo_lab.zerogpu_standin`): the app's code decorated by the real
`spaces.GPU`, each call in a fresh fork, arguments and yields pickled, a kill at the duration.

Slices of a run give the numbers of the uninterrupted run; a slice killed at its deadline loses only
the steps after its last save and the next one resumes from it; a fault in a slice, and the quota,
end the run with a message that matches the folder; chat and the token view answer through it.
"""

from __future__ import annotations

import threading
import time

import gradio as gr
import pytest
import torch
from test_train import adapter, lines, make_config, write_pairs

import orpo_lab.train as engine
from orpo_lab import slice_worker, slices, zerogpu, zerogpu_standin
from orpo_lab.model_pool import ModelPool
from orpo_lab.rundir import RunDir
from orpo_lab.runs import RunManager
from orpo_lab.train import train


@pytest.fixture()
def standin(monkeypatch):
    monkeypatch.setenv("ORPO_LAB_ZEROGPU", "standin")
    monkeypatch.delenv("ORPO_LAB_ZEROGPU_QUOTA_S", raising=False)
    monkeypatch.setattr(zerogpu_standin, "_used_s", [0.0])
    zerogpu_standin.install()  # what `zerogpu.on_gpu` does under ORPO_LAB_ZEROGPU=standin
    yield
    zerogpu_standin.uninstall()


@pytest.fixture()
def data(tmp_path):
    return write_pairs(tmp_path / "train.jsonl", 16), write_pairs(
        tmp_path / "test.jsonl", 8, offset=100
    )


def run_sliced(cfg, runner: slices.SliceRunner, timeout: float = 120.0) -> RunManager:
    """Start `cfg` as the app does on ZeroGPU and wait until its chain of slices ends."""
    manager = RunManager(cfg.output_dir, slices=runner)
    name = manager.start(cfg)
    deadline = time.monotonic() + timeout
    time.sleep(0.2)
    while runner.owns(name):
        assert time.monotonic() < deadline, manager.status(name)
        time.sleep(0.05)
    return manager


def test_the_stand_in_forks_pickles_and_kills(standin):
    """What the app relies on: a fresh process per call, yields pickled, a kill at the duration,
    spaces's quota error before the call runs."""
    import os

    import spaces

    @spaces.GPU(duration=lambda n, pause: 1 + pause)
    def pids(n, pause):
        for _ in range(n):
            yield os.getpid()
        time.sleep(pause)

    first, second = list(pids(3, 0)), list(pids(1, 0))
    assert len(set(first)) == 1 and first[0] != os.getpid() and second[0] != first[0]
    assert len(list(pids(2, 1.5))) == 2  # 2.5 s allowed for 1.5 s of work: not killed

    @spaces.GPU(duration=1)
    def slow():
        time.sleep(3)
        return 1

    began = time.monotonic()
    with pytest.raises(gr.Error, match="GPU task aborted"):
        slow()
    assert time.monotonic() - began < 2.5

    @spaces.GPU(duration=5)
    def unpicklable():
        yield lambda: 0

    with pytest.raises(gr.Error, match="PicklingError|AttributeError"):
        list(unpicklable())
    os.environ["ORPO_LAB_ZEROGPU_QUOTA_S"] = "0"
    try:
        with pytest.raises(gr.Error, match="exceeded your free ZeroGPU quota"):
            list(pids(1, 0))
    finally:
        del os.environ["ORPO_LAB_ZEROGPU_QUOTA_S"]


def test_slices_give_the_numbers_of_an_uninterrupted_run(standin, tmp_path, data, tiny_model_dir):
    """Three slices of two steps each (a cosine schedule with warmup, evaluations every 2 steps):
    the same losses to 1e-6, the same evaluations and the same adapter as one run of 6 steps."""
    settings = dict(max_steps=6, save_every=None, lr_scheduler="cosine", warmup_steps=2)
    sliced = make_config(tmp_path, data, tiny_model_dir, run_name="sliced", **settings)
    manager = run_sliced(sliced, slices.SliceRunner(seconds=60, step_cap=2))
    run = manager.folder("sliced")
    # Its data was tokenised in the app, before the first GPU call: the first slice read it from
    # the cache (large data took a slice's whole seconds, and the user's quota, before step 1).
    (started,) = [r for r in lines(run.path, "event") if r["event"] == "started"]
    assert started["data_cache"] == "hit"
    whole = make_config(tmp_path, data, tiny_model_dir, run_name="whole", **settings)
    train(whole)
    done = run.slices()
    assert [s["outcome"] for s in done] == ["running"] * 2 + ["finished"]
    assert [s["steps"] for s in done] == [[0, 2], [2, 4], [4, 6]]
    assert run.read_status()["status"] == "finished"
    for kind, keys in (
        ("train", ("loss", "nll_loss", "logps/chosen", "lr")),
        ("eval", ("eval/logps_chosen", "eval/log_odds_ratio", "eval/accuracy")),
    ):
        a, b = lines(whole.run_dir, kind), lines(run.path, kind)
        assert [r["step"] for r in a] == [r["step"] for r in b]
        for x, y in zip(a, b, strict=True):
            for key in keys:
                assert abs(x[key] - y[key]) <= 1e-6, (kind, x["step"], key, x[key], y[key])
    ours, theirs = adapter(whole.run_dir), adapter(run.path)
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6)
    resumed = [r for r in lines(run.path, "event") if r["event"] == "resumed"]
    assert [r["step"] for r in resumed] == [2, 4]


def test_a_slice_killed_at_its_deadline_loses_only_the_steps_after_its_save(
    standin, tmp_path, data, tiny_model_dir, monkeypatch
):
    """A budget that never says no (inherited by the fork) trains until the stand-in kills the slice;
    the run says which step is on disk, the next slice resumes from it; then the quota runs out and
    the run stops resumable, and Resume finishes it with the numbers of an uninterrupted run."""
    settings = dict(max_steps=200, save_every=7, eval_every=None, lr_scheduler="constant")
    real_fits = slice_worker.SliceBudget.fits
    # Every step 60 ms longer: 200 steps outlast the 8 s slice on any machine (the tiny model alone
    # trained all 200 within it on a quiet one, and the kill found the run finished).
    monkeypatch.setattr(
        slice_worker.SliceBudget, "fits", lambda self, step: time.sleep(0.06) or True
    )
    monkeypatch.setenv("ORPO_LAB_ZEROGPU_QUOTA_S", "10")  # an 8 s slice, then not one more
    cfg = make_config(tmp_path, data, tiny_model_dir, run_name="cut", **settings)
    manager = run_sliced(cfg, slices.SliceRunner(seconds=8))
    run = manager.folder("cut")
    first, second = run.slices()
    on_disk = first["on_disk"]
    assert first["outcome"] == "cut off" and first["last_logged"] >= on_disk > 0, first
    # At most the steps since the last save (7 when the kill lands during the next save).
    assert on_disk % 7 == 0 and first["last_logged"] - on_disk <= 7
    assert second["outcome"] == "quota" and second["steps"] == [on_disk, on_disk]
    status = run.read_status()
    assert status["status"] == "stopped"
    assert status["message"].startswith("GPU quota used up; resume later")
    assert f"step-{on_disk:06d}" in status["message"]
    # The plots show what is on disk: the killed slice's records after its checkpoint are gone.
    assert [r["step"] for r in lines(run.path)][-1] == on_disk == status["step"]
    # Resumable: with quota again and a budget that works, the rest of the run (steps after the
    # save) trains from the checkpoint; the records after it were dropped and trained again.
    monkeypatch.setattr(slice_worker.SliceBudget, "fits", real_fits)
    monkeypatch.delenv("ORPO_LAB_ZEROGPU_QUOTA_S")
    manager.slices = slices.SliceRunner(seconds=60)
    assert manager.resume("cut") == f"step-{on_disk:06d}"
    deadline = time.monotonic() + 120
    time.sleep(0.2)
    while manager.slices.owns("cut"):  # the chain ends after it recorded the last slice
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert manager.status("cut")["status"] == "finished", manager.status("cut")
    steps = [r["step"] for r in lines(run.path)]
    assert steps == list(range(1, 201))  # nothing repeated, nothing lost
    assert run.slices()[2]["steps"][0] == on_disk


@pytest.mark.parametrize("fault", ["nan", "oom"])
def test_a_slice_that_fails_names_the_step_and_what_is_on_disk(
    standin, tmp_path, data, tiny_model_dir, monkeypatch, fault
):
    """NaN weights or out of memory in the second slice: the run ends failed, the message names the
    failing step and the checkpoint the first slice saved."""
    real = engine.forward_backward

    def faulty(accelerator, wrapped, batches, cfg, stop=None):
        if cfg.resume:  # the second slice (the fork inherits this patch)
            if fault == "oom":
                raise torch.OutOfMemoryError("CUDA out of memory (stand-in)")
            for name, param in wrapped.named_parameters():
                if "lora_" in name:
                    param.data.fill_(float("nan"))
        return real(accelerator, wrapped, batches, cfg, stop=stop)

    monkeypatch.setattr(engine, "forward_backward", faulty)
    cfg = make_config(tmp_path, data, tiny_model_dir, run_name=fault, max_steps=10, save_every=None)
    manager = run_sliced(cfg, slices.SliceRunner(seconds=60, step_cap=3))
    run = manager.folder(fault)
    status = run.read_status()
    assert [s["outcome"] for s in run.slices()] == ["running", "failed"]
    assert status["status"] == "failed"
    assert status["message"].startswith("slice 2 failed at step 4 (the last completed step is 3)")
    assert "step-000003" in status["message"]
    assert ("Out of memory" if fault == "oom" else "nan") in status["message"]
    assert [c.name for c in run.checkpoints()] == ["step-000003"]


def test_stop_between_and_during_slices_keeps_the_last_step(
    standin, tmp_path, data, tiny_model_dir
):
    cfg = make_config(
        tmp_path,
        data,
        tiny_model_dir,
        run_name="s",
        max_steps=100000,
        save_every=None,
        eval_every=None,
    )
    runner = slices.SliceRunner(seconds=60, step_cap=5)
    manager = RunManager(cfg.output_dir, slices=runner)
    manager.start(cfg)
    run = manager.folder("s")
    deadline = time.monotonic() + 60
    while len([r for r in run.metrics() if r["kind"] == "train"]) < 8:  # into the second slice
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert manager.stop("s") == "stopped"
    status = run.read_status()
    step = run.saved_step()
    assert status["status"] == "stopped" and step >= 8
    assert status["message"].startswith(f"stopped on request after step {step}")
    assert lines(run.path)[-1]["step"] == step
    assert not runner.owns("s") and not (run.path / "STOP").exists()


def test_a_stop_while_the_app_prepares_the_data_ends_the_run_there(tmp_path, data, tiny_model_dir):
    """The app prepares a ZeroGPU run's data before its first slice; a stop asked meanwhile ends
    the run with nothing trained, and no GPU call is made."""
    cfg = make_config(tmp_path, data, tiny_model_dir, run_name="p")
    run = RunDir(cfg.run_dir)
    run.path.mkdir(parents=True)
    cfg.to_yaml(run.config_path)
    stop = threading.Event()
    stop.set()
    assert slices.SliceRunner.prepare(run, stop) is False
    status = run.read_status()
    assert status["status"] == "stopped" and run.slices() == []
    assert (
        status["message"]
        == "stopped on request before the first step (nothing trained); no checkpoint on disk"
    )
    assert slices.SliceRunner.prepare(run, threading.Event()) is True  # no stop: prepared


def test_chat_and_token_view_answer_through_the_stand_in(standin, tmp_path, data, tiny_model_dir):
    """A checkpoint and the base model answer in a GPU call exactly as in place; the token view's
    numbers are the same; a wrong checkpoint's message crosses the fork."""
    cfg = make_config(tmp_path, data, tiny_model_dir, run_name="c", max_steps=2)
    train(cfg)
    checkpoint = cfg.run_dir / "checkpoints" / "step-000002"
    conversations = [[{"role": "user", "content": "Name an animal."}]] * 2
    here = ModelPool(str(tiny_model_dir), device="cpu")
    gpu = zerogpu.GpuPool(ModelPool(str(tiny_model_dir), device="cpu"))
    settings = dict(max_new_tokens=12, temperature=1.0, seed=0)  # sampled, seeded: repeatable
    expected = here.generate(conversations, [None, checkpoint], **settings)
    streamed = list(gpu.stream(conversations, [None, checkpoint], **settings))
    assert streamed[-1] == expected and len(streamed) > 1  # streamed, token by token
    assert gpu.adapters == {}  # the adapter was loaded in the call's process, not here
    pair = {"prompt": "Name animal number 3.", "chosen": "Fox.", "rejected": "Well, let me think."}
    a, b = here.score(pair, [None, checkpoint]), gpu.score(pair, [None, checkpoint])
    assert [s.chosen.token_logps for s in a] == [s.chosen.token_logps for s in b]
    assert a[1].log_odds_ratio == b[1].log_odds_ratio
    with pytest.raises(gr.Error, match="not a LoRA checkpoint"):
        gpu.score(pair, [tmp_path])


def test_the_header_line_and_a_wrong_slice_length(monkeypatch):
    monkeypatch.delenv("ORPO_LAB_ZEROGPU", raising=False)
    assert zerogpu.mode() == "cpu" and "Hardware: CPU" in zerogpu.hardware_line()
    monkeypatch.setenv("ORPO_LAB_ZEROGPU", "standin")
    monkeypatch.setenv("ORPO_LAB_SLICE_S", "45")
    assert zerogpu.mode() == "zerogpu"
    assert "training runs in slices of 45 s; each uses your GPU quota" in zerogpu.hardware_line()
    for wrong in ("soon", "5"):
        monkeypatch.setenv("ORPO_LAB_SLICE_S", wrong)
        with pytest.raises(ValueError, match=f"ORPO_LAB_SLICE_S='{wrong}' is not a slice length"):
            zerogpu.slice_seconds()


def test_an_app_restart_mid_slice_shows_the_truth(standin, tmp_path):
    """A restarted app finds a run "running" whose slice died with the old app: it says so and names
    the checkpoint on disk, from which Resume continues."""
    from orpo_lab.rundir import RunDir

    run = RunDir(tmp_path / "runs" / "r")
    (run.checkpoints_dir / "step-000012").mkdir(parents=True)
    (run.checkpoints_dir / "step-000012" / "trainer_state.json").write_text('{"step": 12}')
    run.config_path.write_text("max_steps: 40\n")
    run.write_status(
        "running",
        "slice 3: waiting for the GPU (from step 12)",
        step=14,
        total_steps=40,
        pid=2**22 + 1,
        slice_s=60,
    )
    manager = RunManager(tmp_path / "runs", slices=slices.SliceRunner(seconds=60))
    manager.poll()
    status = run.read_status()
    assert status["status"] == "failed"
    assert status["message"].startswith(
        "the app restarted while its GPU slices ran without finishing; last checkpoint on disk: "
        "step-000012 (step 12)."
    )


def test_the_evaluation_generates_in_a_gpu_call(standin, tmp_path, tiny_model_dir):
    """The judged evaluation through the stand-in gives the report it gives in place; a run without
    a checkpoint gets its own message across the fork."""
    from orpo_lab.config import TrainConfig
    from orpo_lab.evaluate import evaluate_run

    cfg = TrainConfig(
        model=str(tiny_model_dir),
        dataset="default",
        output_dir=str(tmp_path),
        run_name="r",
        max_steps=1,
        batch_size=2,
        max_length=128,
        max_prompt_length=64,
        eval_every=None,
        max_eval_pairs=8,
        device="cpu",
        precision="fp32",
    )
    on_gpu = zerogpu.gpu_evaluate()
    with pytest.raises(gr.Error, match="has no checkpoint to evaluate"):
        on_gpu(str(cfg.run_dir), None, 6)
    train(cfg)
    checkpoint = str(cfg.run_dir / "checkpoints" / "step-000001")
    here = evaluate_run(cfg.run_dir, checkpoint, 6, 4)
    there = on_gpu(str(cfg.run_dir), checkpoint, 6, 4)
    assert there["summary"] == here["summary"] and len(there["generations"]) == 6
    assert [g["trained"] for g in there["generations"]] == [
        g["trained"] for g in here["generations"]
    ]
