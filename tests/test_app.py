"""Every endpoint of app.py through gradio_client, with the tiny model and a temporary runs folder."""

from __future__ import annotations

import json
import socket
import time

import pytest
import yaml
from gradio_client import Client, handle_file
from test_chat import make_adapter

import app as app_module
from orpo_lab.chat import ModelPool
from orpo_lab.config import PRESETS
from orpo_lab.runs import write_status

FAKE_RUN = "fake-done"
FORM_VALUES = dict(
    beta=0.5, learning_rate=5e-4, max_steps=400, epochs=1.0, batch_size=2, grad_accum=1,
    max_length=96, max_prompt_length=48, lora_r=4, lora_alpha=8, nll_scope="response",
    eval_every=0, save_every=0,
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_pairs(path, n: int = 16):
    """A small preference file: the shipped default dataset is not needed for app tests."""
    with path.open("w") as f:
        for i in range(n):
            row = {
                "prompt": f"What is {i} + 1?",
                "chosen": f"{i} + 1 = {i + 1}.",
                "rejected": "No idea.",
            }
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture(scope="module")
def served(tiny_model_dir, tmp_path_factory):
    """(client, manager, runs_dir): the app on a free port, with one finished run holding an adapter."""
    runs = tmp_path_factory.mktemp("app") / "runs"
    run = runs / FAKE_RUN
    make_adapter(tiny_model_dir, run / "checkpoints" / "step-000010", seed=5)
    (run / "config.yaml").write_text(yaml.safe_dump({"model": str(tiny_model_dir), "beta": 0.0}))
    write_status(run, "finished", "finished 10 steps", step=10, total_steps=10)
    with (run / "metrics.jsonl").open("w") as f:
        for step in range(1, 11):
            row = {"kind": "train", "step": step, "loss": 2 / step, "logps/chosen": -3 + step / 10}
            f.write(json.dumps(row) + "\n")
    pairs = write_pairs(runs.parent / "pairs.jsonl")
    demo = app_module.build_app(str(tiny_model_dir), runs, device="cpu")
    demo.orpo_manager.grace_s = 60
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
    yield Client(url, verbose=False), demo.orpo_manager, runs, str(pairs)
    demo.close()


def value(output):
    """The value of a component output, which the client hands over as an update dict."""
    return output["value"] if isinstance(output, dict) and "__type__" in output else output


def form(**changes):
    return list({**FORM_VALUES, **changes}.values())


def test_preset_fills_the_form(served):
    client, *_ = served
    values = client.predict("CPU, quick", api_name="/preset")
    assert values[app_module.FORM_NAMES.index("max_steps")] == PRESETS["cpu-quick"]["max_steps"]
    assert values[app_module.FORM_NAMES.index("beta")] == PRESETS["cpu-quick"]["beta"]


def test_preview_renders_the_chat_template_and_reports_bad_files(served, tiny_model_dir, tmp_path):
    client, _, runs, pairs = served
    text = client.predict(str(tiny_model_dir), pairs, False, api_name="/preview")
    assert "<|im_start|>user" in text and "**chosen:**" in text
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "chosen": "a"}\nnot json\n')
    uploaded = client.predict(handle_file(str(bad)), api_name="/upload")
    assert uploaded.startswith(str(runs)) and uploaded.endswith("bad.jsonl")  # copied inside
    error = client.predict(str(tiny_model_dir), uploaded, False, api_name="/preview")
    assert error.startswith("**Cannot use") and "line" in error
    missing = client.predict("/no/such/model", pairs, False, api_name="/preview")
    assert missing.startswith("**Cannot use")


def test_start_refuses_impossible_settings_and_bad_names(served, tiny_model_dir):
    client, manager, _, pairs = served
    args = ["", str(tiny_model_dir), pairs, False, False, "cpu"]
    _, message = client.predict(
        *args, *form(max_length=32, max_prompt_length=32), api_name="/start"
    )
    assert message.startswith("**Not started:**") and "max_prompt_length" in message
    args[0] = "../escape"
    _, message = client.predict(*args, *form(), api_name="/start")
    assert "not allowed" in message
    assert manager.names() == [FAKE_RUN]


def test_train_follow_stop_download_export_delete(served, tiny_model_dir):
    client, manager, runs, pairs = served
    args = ["live", str(tiny_model_dir), pairs, False, False, "cpu"]
    selected, message = client.predict(*args, *form(), api_name="/start")
    assert value(selected) == "live" and "live" in message
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        _, progress = client.predict("live", api_name="/show_run")
        if "running · step" in progress and not progress.split("step ")[1].startswith("0/"):
            break
        time.sleep(0.5)
    assert "running" in progress, progress
    # Chat answers while the run trains (in its own process), base and a checkpoint alike.
    columns = [app_module.BASE_CHOICE, f"{FAKE_RUN}/step-000010", "(off)"]
    _, left, right, _ = client.predict(
        "Still there?", 1.0, 1.0, 8, 3, *columns, [], [], [], api_name="/send"
    )
    assert left[-1]["content"][0]["text"] and right[-1]["content"][0]["text"]
    assert manager.status("live")["status"] == "running"
    plot, _ = client.predict("live", api_name="/show_run")
    assert plot is not None
    assert "stop it first" in client.predict("live", api_name="/delete")[1]
    stopped = client.predict("live", api_name="/stop")
    assert stopped.startswith("Stopped **live**") and "checkpoint saved" in stopped
    table = client.predict(api_name="/runs")
    assert {row[0]: row[1] for row in table["data"]} == {"live": "stopped", FAKE_RUN: "finished"}
    checkpoint = value(client.predict("live", api_name="/run_checkpoints"))
    assert checkpoint.startswith("step-")
    archive = client.predict("live", checkpoint, api_name="/download")
    assert archive.endswith(".zip")
    exported = client.predict("live", checkpoint, api_name="/export")
    assert exported.startswith("Merged model written to")
    assert "Export failed" in client.predict(FAKE_RUN, "step-000010", api_name="/export")
    assert "Export failed" in client.predict("live", "../../x", api_name="/export")
    overlay = client.predict(["live", FAKE_RUN], api_name="/compare")
    assert overlay is not None
    _, deleted = client.predict("live", api_name="/delete")
    assert deleted == "Deleted **live**." and not (runs / "live").exists()


def test_chat_side_by_side_regenerate_vote_and_votes_dataset(served, tiny_model_dir):
    client, manager, runs, pairs = served
    column = f"{FAKE_RUN}/step-000010"
    updates = client.predict(app_module.BASE_CHOICE, "(off)", "(off)", api_name="/checkpoints")
    assert [column in u["choices"][-1] for u in updates] == [True] * 3
    settings = [1.0, 1.0, 16, 7]  # sampling: greedy, the random tiny model only writes newlines
    columns = [app_module.BASE_CHOICE, column, "(off)"]
    message, left, right, third = client.predict(
        "Say something.", *settings, *columns, [], [], [], api_name="/send"
    )
    assert message == "" and third == []
    answers = [h[-1]["content"][0]["text"] for h in (left, right)]
    assert all(answers) and answers[0] != answers[1]  # base and adapter differ, one base in memory
    # The models saw the conversation up to the user's message, nothing after it: the same batch
    # (base row and adapter row, same seed) straight through a fresh pool gives the same answers.
    asked = [{"role": "user", "content": "Say something."}]
    direct = ModelPool(str(tiny_model_dir), device="cpu").generate(
        [asked, asked], [None, runs / FAKE_RUN / "checkpoints" / "step-000010"],
        temperature=1.0, top_p=1.0, max_new_tokens=16, seed=7,
    )  # fmt: skip
    assert [d.strip() for d in direct] == [a.strip() for a in answers]  # the page trims
    again = client.predict(*settings, *columns, left, right, [], api_name="/regenerate")
    assert [h[-1]["content"][0]["text"] for h in again[:2]] == answers  # same seed, same answers
    saved = client.predict(*columns, left, right, [], api_name="/vote_right")
    assert "Vote saved" in saved
    client.predict(*columns, left, right, [], api_name="/vote_tie")
    lines = [json.loads(line) for line in (runs / "votes.jsonl").read_text().splitlines()]
    assert lines[0]["chosen"] == answers[1] and lines[0]["rejected"] == answers[0]
    assert lines[0]["prompt"] == "Say something." and lines[1]["tie"] is True
    dataset, note = client.predict(api_name="/votes_dataset")
    assert "1 preference pairs" in note
    assert json.loads(open(dataset).readline())["chosen"] == answers[1]
    with pytest.raises(Exception, match="two"):
        client.predict(
            app_module.BASE_CHOICE, "(off)", "(off)", left, [], [], api_name="/vote_left"
        )
    assert client.predict(api_name="/clear") == ([], [], [])


def test_chat_reports_a_missing_checkpoint(served):
    client, *_ = served
    with pytest.raises(Exception, match="no checkpoint"):
        client.predict(
            "hi", 0.0, 1.0, 8, 0, "base model", f"{FAKE_RUN}/step-999", "(off)", [], [], [],
            api_name="/send",
        )  # fmt: skip


def test_page_load_shows_the_latest_run(served):
    client, *_ = served
    selected, table, _ = client.predict(api_name="/current_run")
    assert value(selected) in {row[0] for row in table["data"]}
