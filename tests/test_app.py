"""Every endpoint of the app through gradio_client, with the tiny model and a temporary runs folder."""

from __future__ import annotations

import html
import json
import re
import socket
import time
import zipfile

import pytest
import yaml
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from test_chat import make_adapter

from orpo_lab.model_pool import ModelPool
from orpo_lab.presets import PRESETS
from orpo_lab.rundir import RunDir
from orpo_lab.ui import BASE_CHOICE, build_app
from orpo_lab.ui.form_fields import FORM_NAMES
from orpo_lab.weighting_plot import NO_WEIGHTING

FAKE_RUN = "fake-done"
FORM_VALUES = dict(
    beta=0.5,
    dpo_beta=0.1,
    learning_rate=5e-4,
    max_steps=400,
    epochs=1.0,
    batch_size=2,
    grad_accum=1,
    max_length=96,
    max_prompt_length=48,
    lora_r=4,
    lora_alpha=8,
    nll_scope="response",
    eval_every=None,
    eval_at_start=True,
    save_every=None,
    report_to=[],
)
SETTINGS = [1.0, 1.0, 16, 7, False]  # temperature, top p, max new tokens, seed, blind mode: the
# random tiny model writes only newlines when greedy, so the tests sample (seeded)


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
    """(client, manager, runs_dir, pairs): the app on a free port, with one finished SFT run."""
    runs = tmp_path_factory.mktemp("app") / "runs"
    run = RunDir(runs / FAKE_RUN)
    make_adapter(tiny_model_dir, run.checkpoints_dir / "step-000010", seed=5)
    old = {"max_steps": -1, "save_every": 0}  # an earlier version's sentinels: loaded as None
    run.config_path.write_text(yaml.safe_dump({"model": str(tiny_model_dir), "beta": 0.0} | old))
    run.write_status("finished", "finished 10 steps", step=10, total_steps=10)
    for step in range(1, 11):
        run.append_metrics(
            {
                "kind": "train",
                "step": step,
                "loss": 2 / step,
                "step_s": 1.0,
                "logps/chosen": -3 + step / 10,
                "rewards/accuracies": 0.75,
            }
        )
    pairs = write_pairs(runs.parent / "pairs.jsonl")
    demo = build_app(str(tiny_model_dir), runs, device="cpu")
    demo.orpo_manager.grace_s = 60
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
    yield Client(url, verbose=False), demo.orpo_manager, runs, str(pairs)
    demo.close()


def value(output):
    """The value of a component output, which the client hands over as an update dict (None when
    the output was skipped)."""
    return output.get("value") if isinstance(output, dict) and "__type__" in output else output


def form(**changes):
    return list({**FORM_VALUES, **changes}.values())


DATA_OPTIONS = ["", "train", "test", 0.1, ""]  # column map, splits, held-out size, chat template


def data_args(model, dataset, skip_bad_rows=False, **options):
    values = (
        dict(
            zip(
                ["column_map", "train_split", "test_split", "held_out_size", "chat_template"],
                DATA_OPTIONS,
                strict=True,
            )
        )
        | options
    )
    return [model, dataset, False, skip_bad_rows, *values.values()]


def start_args(model, dataset, run_name="", method="orpo", init="", ref="", **changes):
    return [*data_args(model, dataset), run_name, method, init, ref, "cpu", *form(**changes)]


def plot_data(plot) -> list[dict]:
    return json.loads(plot["plot"])["data"]


def test_preset_fills_the_form(served):
    client, *_ = served
    values = client.predict("CPU, quick", api_name="/preset")
    assert values[FORM_NAMES.index("max_steps")] == PRESETS["cpu-quick"]["max_steps"]
    assert values[FORM_NAMES.index("beta")] == PRESETS["cpu-quick"]["beta"]


def test_sft_method_shows_beta_zero_and_gives_the_old_value_back(served):
    client, *_ = served
    ticked = client.predict("sft", 0.7, api_name="/method_switch")
    assert ticked["value"] == 0 and ticked["interactive"] is False
    assert "locked at 0" in ticked["label"]  # a greyed number box alone looks editable
    unticked = client.predict("dpo", 0, api_name="/method_switch")
    assert unticked["value"] == 0.7 and unticked["interactive"] is True
    assert "locked" not in unticked["label"]


def test_preview_shows_text_exactly_and_reports_bad_files(served, tiny_model_dir, tmp_path):
    client, _, runs, pairs = served
    text = client.predict(*data_args(str(tiny_model_dir), pairs), api_name="/preview")
    assert (
        "&lt;|im_start|&gt;" in text and "<b>chosen</b>" in text and "held out: 2 of the 16" in text
    )
    tricky = tmp_path / "tricky.jsonl"
    tricky.write_text(
        json.dumps(
            {"prompt": "List two.", "chosen": "- a\n- b", "rejected": "<iframe src=x></iframe>"}
        )
        + "\n"
    )
    shown = client.predict(*data_args(str(tiny_model_dir), str(tricky)), api_name="/preview")
    plain = html.unescape(re.sub(r"<[^>]+>", "", shown))  # the text without the token spans
    assert "<iframe src=x></iframe>" in plain and "<iframe" not in shown  # shown, never run
    assert "- a\n- b" in plain  # a list reply as written, not rendered as Markdown
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "chosen": "a"}\nnot json\n')
    uploaded, note = client.predict(handle_file(str(bad)), api_name="/upload")
    assert uploaded.startswith(str(runs)) and uploaded.endswith("bad.jsonl")  # copied inside
    error = client.predict(*data_args(str(tiny_model_dir), uploaded), api_name="/preview")
    assert "Cannot use" in error and "line 1" in error and "skip bad rows" in error
    skipped = client.predict(*data_args(str(tiny_model_dir), uploaded, True), api_name="/preview")
    assert "Cannot use" in skipped and "no usable preference pairs" in skipped  # both rows bad
    missing = client.predict(*data_args("/no/such/model", pairs), api_name="/preview")
    assert "Cannot use" in missing and "/no/such/model" in missing
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    kept, refused = client.predict(handle_file(str(text_file)), api_name="/upload")
    assert value(kept) is None and "notes.txt is not a dataset file" in refused  # box unchanged


def test_start_refuses_impossible_settings_bad_names_and_too_little_data(
    served, tiny_model_dir, tmp_path
):
    client, manager, _, pairs = served
    _, message, _ = client.predict(
        *start_args(str(tiny_model_dir), pairs, max_length=32, max_prompt_length=32),
        api_name="/start",
    )
    assert message.startswith("**Not started:**") and "max_prompt_length" in message
    _, message, _ = client.predict(
        *start_args(str(tiny_model_dir), pairs, "../escape"), api_name="/start"
    )
    assert "not allowed" in message
    _, message, _ = client.predict(
        *start_args(str(tiny_model_dir), pairs, batch_size=None), api_name="/start"
    )  # an empty box where a number is needed (an empty max steps is valid: epochs decide)
    assert "batch_size: empty; expected a whole number" in message
    two = write_pairs(tmp_path / "two.jsonl", n=2)
    _, message, _ = client.predict(
        *start_args(str(tiny_model_dir), str(two), "tiny-data", batch_size=4), api_name="/start"
    )
    assert "1 usable training pair(s), fewer than one batch of 4" in message  # 1 held out
    other = tmp_path / "other-run" / "checkpoints" / "step-000001"  # a checkpoint of another model
    other.mkdir(parents=True)
    (other / "trainer_state.json").write_text(
        json.dumps({"step": 1, "config": {"model": "someone/another-model"}, "metrics": {}})
    )
    _, message, _ = client.predict(
        *start_args(str(tiny_model_dir), pairs, method="dpo", ref=str(other.parent.parent)),
        api_name="/start",
    )
    assert "trained on the base model 'someone/another-model'" in message
    _, message, _ = client.predict(
        *start_args(str(tiny_model_dir), pairs, method="dpo", init="gone/step-000010"),
        api_name="/start",
    )
    assert "init_checkpoint 'gone/step-000010' does not exist" in message
    assert manager.names() == [FAKE_RUN]  # nothing was created


def wait_running(client, name: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, progress, *_ = client.predict(name, 0.0, api_name="/show_run")
        if "running · step" in progress and int(progress.split("step ")[1].split("/")[0]) > 0:
            return progress
        time.sleep(0.5)
    raise AssertionError(progress)


def test_train_stop_download_export_delete(served, tiny_model_dir):
    """Resume after the stop (its message, no step twice or missing): test_browser.py, which clicks
    Resume in the page and follows the run to its end."""
    client, manager, runs, pairs = served
    selected, message, _ = client.predict(
        *start_args(str(tiny_model_dir), pairs, "live"), api_name="/start"
    )
    assert value(selected) == "live" and "Created run **live**" in message
    wait_running(client, "live")
    # Chat answers while the run trains (in its own process), base and a checkpoint alike.
    _, left, right, _ = map(
        value,
        client.predict(
            "Still there?",
            BASE_CHOICE,
            f"{FAKE_RUN}/step-000010",
            "(off)",
            *SETTINGS,
            api_name="/send",
        ),
    )
    assert left[-1]["content"][0]["text"] and right[-1]["content"][0]["text"]
    assert "stop it first" in client.predict("live", api_name="/delete")[1]
    stopped = client.predict("live", api_name="/stop")
    (checkpoint,) = manager.checkpoints("live")  # the last completed step, saved on the way out
    step = int(checkpoint.removeprefix("step-"))
    assert stopped.startswith("Stopped **live**") and f"after step {step}" in stopped
    assert f"{checkpoint} (step {step})" in stopped  # the message names what is on disk
    # The real trainer's records streamed into the run folder.
    train = [r for r in manager.metrics("live") if r["kind"] == "train"]
    assert train and {"loss", "nll_loss", "or_loss", "logps/chosen"} <= set(train[-1])
    # The tick brings the new checkpoint into the dropdown without a page reload.
    _, _, _, table, overlay, checkpoints, *_ = client.predict("live", 0.0, None, api_name="/tick")
    assert value(checkpoints) == checkpoint and ["live", "live"] in overlay["choices"]
    assert {row[0]: row[1] for row in table["data"]} == {"live": "stopped", FAKE_RUN: "finished"}
    latest = manager.checkpoints("live")[-1]
    archive, _ = client.predict("live", latest, api_name="/download")
    with zipfile.ZipFile(archive) as zf:
        assert "adapter_model.safetensors" in zf.namelist() and "optimizer.pt" not in zf.namelist()
    assert client.predict("live", latest, api_name="/export").startswith("Merged model written to")
    assert "Export failed" in client.predict("live", "../../x", api_name="/export")
    overlay = client.predict(["live", FAKE_RUN], 0.0, api_name="/compare")
    sft_accuracy = [t for t in plot_data(overlay) if t["name"] == FAKE_RUN and t["yaxis"] == "y3"]
    assert sft_accuracy and set(sft_accuracy[0]["y"]) == {0.75}  # beta 0, accuracy shown as logged
    _, deleted = client.predict("live", api_name="/delete")
    assert deleted == "Deleted **live**." and not (runs / "live").exists()


def test_chat_votes_one_per_exchange_with_undo_and_dataset(served, tiny_model_dir):
    client, manager, runs, pairs = served
    column = f"{FAKE_RUN}/step-000010"
    updates = client.predict(api_name="/checkpoints")
    assert [column in u["choices"][-1] for u in updates] == [True] * 3
    columns = [BASE_CHOICE, column, "(off)"]
    client.predict(api_name="/clear")  # the session's conversation so far is kept until cleared
    job = client.submit("Say something.", *columns, *SETTINGS, api_name="/send")
    job.result()
    updates = [[value(o) for o in outputs] for outputs in job.outputs()]
    # The box is emptied once, before the answers stream; later updates leave what is typed there.
    assert updates[0][0] == "" and all(u[0] is None for u in updates[1:])
    _, left, right, third = updates[-1]
    assert third == []
    answers = [h[-1]["content"][0]["text"] for h in (left, right)]
    assert all(answers) and answers[0] != answers[1]  # base and adapter differ, one base in memory
    # The models saw the conversation up to the user's message, nothing after it: the same batch
    # (base row and adapter row, same seed) straight through a fresh pool gives the same answers.
    asked = [{"role": "user", "content": "Say something."}]
    direct = ModelPool(str(tiny_model_dir), device="cpu").generate(
        [asked, asked],
        [None, runs / FAKE_RUN / "checkpoints" / "step-000010"],
        temperature=1.0,
        top_p=1.0,
        max_new_tokens=16,
        seed=7,
    )
    assert [d.strip() for d in direct] == [a.strip() for a in answers]  # the page trims
    again = [value(h) for h in client.predict(*columns, *SETTINGS, api_name="/regenerate")]
    assert [h[-1]["content"][0]["text"] for h in again[:2]] == answers  # same seed, same answers
    for kind in ("right", "right", "left", "tie"):  # a user changing their mind
        saved, table, *_ = client.predict(*columns, *SETTINGS, api_name=f"/vote_{kind}")
        assert "Vote saved" in saved
    (vote,) = [json.loads(line) for line in (runs / "votes.jsonl").read_text().splitlines()]
    assert vote["winner"] == "tie" and len(table["data"]) == 1  # one vote: the last click
    client.predict(*columns, *SETTINGS, api_name="/vote_right")
    (vote,) = [json.loads(line) for line in (runs / "votes.jsonl").read_text().splitlines()]
    assert vote["chosen"].strip() == answers[1] and vote["rejected"].strip() == answers[0]
    assert vote["prompt"] == "Say something." and vote["chosen_model"] == column
    dataset, note = client.predict(api_name="/votes_dataset")
    assert "1 preference pair(s) from 1 vote(s)" in note
    assert json.loads(open(dataset).readline())["chosen"].strip() == answers[1]
    message, table, _ = client.predict(api_name="/undo_vote")
    assert "Removed the vote" in message and table["data"] == []
    assert client.predict(api_name="/undo_vote")[0] == "No votes to undo."
    with pytest.raises(AppError, match="Voting compares two columns: switch on at least two"):
        client.predict(BASE_CHOICE, "(off)", "(off)", *SETTINGS, api_name="/vote_left")
    assert client.predict(api_name="/clear") == ([], [], [])  # the three panes, emptied


def test_empty_message_changes_nothing(served):
    """A blank Send is answered with a notice; no pane turns into an error, no turn is added."""
    client, *_ = served
    columns = [BASE_CHOICE, "(off)", "(off)"]
    client.predict(api_name="/clear")
    _, first, _, _ = map(value, client.predict("Hello?", *columns, *SETTINGS, api_name="/send"))
    outputs = client.predict("   ", *columns, *SETTINGS, api_name="/send")
    assert all(value(out) is None for out in outputs)  # every output skipped: nothing changed
    regenerated = value(client.predict(*columns, *SETTINGS, api_name="/regenerate")[0])
    assert [m["role"] for m in regenerated] == ["user", "assistant"] == [m["role"] for m in first]


def test_chat_reports_a_missing_checkpoint(served):
    client, *_ = served
    with pytest.raises(AppError, match=f"Run '{FAKE_RUN}' has no checkpoint 'step-999'"):
        client.predict(
            "hi",
            BASE_CHOICE,
            f"{FAKE_RUN}/step-999",
            "(off)",
            0.0,
            1.0,
            8,
            0,
            False,
            api_name="/send",
        )


def test_tick_shows_the_latest_run_and_its_config_loads_into_the_form(served, tiny_model_dir):
    from orpo_lab.ui.views import started_text

    client, manager, *_ = served
    selected, plot, progress, table, _, checkpoint, weighting, timer, config, started, log = (
        client.predict(None, 0.6, None, api_name="/tick")
    )
    assert yaml.safe_load(value(config)) == manager.config(value(selected))  # filled on load
    shown = manager.folder(value(selected))  # the run's started event and log, as on disk
    assert value(started) == started_text(manager.metrics(shown.name))
    assert value(log) == (shown.log_tail(60) or "(nothing logged yet)")
    # The gradient-weighting figure: no held-out records here, so no traces and a note saying so.
    drawn = json.loads(weighting["plot"])
    notes = [a["text"] for a in drawn["layout"].get("annotations", [])]
    assert drawn["data"] == [] and notes[-1:] == [NO_WEIGHTING]
    assert (
        value(timer) == 10.0
    )  # nothing is running: the page polls slowly (2 s while a run is active)
    assert value(selected) in {row[0] for row in table["data"]}
    assert value(checkpoint) and progress.startswith(f"**{value(selected)}**")
    names = {t.get("name") for t in plot_data(plot)}
    assert {"chosen", "total", "accuracy"} <= names
    loaded = client.predict(FAKE_RUN, api_name="/load_config")
    names = [
        *FORM_NAMES,
        "model",
        "dataset",
        "column_map",
        "train_split",
        "test_split",
        "held_out_size",
        "chat_template",
        "run_name",
        "method",
        "init_checkpoint",
        "ref_checkpoint",
    ]
    values = dict(zip(names, loaded, strict=True))
    assert (
        values["model"] == str(tiny_model_dir)
        and values["beta"] == 0.0
        and values["method"] == "sft"
    )
    assert values["run_name"] == f"{FAKE_RUN}-again"
    # The old -1 and 0 are empty boxes (None), the default 25 as it is.
    assert (values["max_steps"], values["save_every"], values["eval_every"]) == (None, None, 25)


def test_evaluate_judges_base_and_checkpoint_or_says_why_not(served, tiny_model_dir):
    """The Evaluate button: a run on the default dataset gets a pass-rate table and bar chart; a run
    on data without judges gets a message saying why."""
    from orpo_lab.config import TrainConfig
    from orpo_lab.train import train

    client, manager, runs, pairs = served
    common = dict(
        model=str(tiny_model_dir),
        output_dir=str(runs),
        max_steps=1,
        batch_size=2,
        max_eval_pairs=4,
        max_length=96,
        max_prompt_length=64,
        device="cpu",
    )
    train(TrainConfig(dataset="default", run_name="judged", max_train_pairs=8, **common))
    train(TrainConfig(dataset=pairs, run_name="unjudged", **common))
    table, chart, sampled = client.predict(
        "judged", "step-000001", 8, 2, 1.0, 1.0, api_name="/evaluate"
    )
    rows = {row[0]: row for row in table["data"]}
    assert set(rows) == {"arithmetic", "bullets", "concise", "ranked", "all"}
    # 8 prompts, one per family and domain: "in-domain + ood" prompts.
    assert rows["all"][1] == "4 + 4" and all(
        row[1] == "1 + 1" for f, row in rows.items() if f != "all"
    )
    assert all(cell.endswith("%") for row in rows.values() for cell in row[2:])
    # Two samples per prompt: a row per family and domain, one prompt each, so 2 samples a row.
    sampled_rows = {(row[0], row[1]): row for row in sampled["data"]}
    assert set(sampled_rows) == {(f, d) for f in (*rows,) for d in ("in-domain", "ood")}
    assert all(row[2] == (8 if row[0] == "all" else 2) for row in sampled_rows.values())
    assert all(
        re.fullmatch(r"\d+% \[\d+-\d+\]", cell)
        for row in sampled_rows.values()
        for cell in row[3:5]
    )
    bars = json.loads(chart["plot"])["data"]
    assert [b["name"] for b in bars] == [
        "base, in-domain",
        "base, ood",
        "trained, in-domain",
        "trained, ood",
    ]
    assert (runs / "judged" / "generations.json").is_file()
    with pytest.raises(AppError, match="Generation judging needs a 'family' column"):
        client.predict("unjudged", "step-000001", 8, 0, 1.0, 1.0, api_name="/evaluate")


def test_blind_battles_hide_names_until_the_vote_and_count_models_not_sides(
    tiny_model_dir, tmp_path
):
    """Blind mode: columns 1 and 2 answer as A and B in a seeded random order per battle; the labels
    hide the names until the vote; the vote and the tally name the model that won, not the side."""
    import random

    runs = tmp_path / "runs"
    make_adapter(tiny_model_dir, runs / "ckpt" / "checkpoints" / "step-000010", seed=5)
    (runs / "ckpt" / "config.yaml").write_text(yaml.safe_dump({"model": str(tiny_model_dir)}))
    demo = build_app(str(tiny_model_dir), runs, device="cpu", seed=3)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
    client, column = Client(url, verbose=False), "ckpt/step-000010"
    blind = [*SETTINGS[:4], True]
    asked = [{"role": "user", "content": "Pick one."}]
    pool, ckpt = (
        ModelPool(str(tiny_model_dir), device="cpu"),
        runs / "ckpt" / "checkpoints" / "step-000010",
    )
    settings = dict(temperature=1.0, top_p=1.0, max_new_tokens=16, seed=7)
    # The batch order changes what each row samples: the direct answers of both orders.
    base_first = pool.generate([asked, asked], [None, ckpt], **settings)
    ckpt_first = pool.generate([asked, asked], [ckpt, None], **settings)
    draws = random.Random(3)
    expected = [column if draws.random() < 0.5 else BASE_CHOICE for _ in range(4)]
    try:
        seen = []
        for _ in range(4):
            _, a, b, third = client.predict(
                "Pick one.", BASE_CHOICE, column, "(off)", *blind, api_name="/send"
            )
            assert (a["label"], b["label"]) == ("A", "B")  # no name before the vote
            texts = [x["value"][-1]["content"][0]["text"].strip() for x in (a, b)]
            if texts == [t.strip() for t in base_first]:
                model_a = BASE_CHOICE
            else:
                assert texts == [t.strip() for t in ckpt_first], texts
                model_a = column
            seen.append(model_a)
            message, _, tally, a, b, _ = client.predict(
                BASE_CHOICE, column, "(off)", *blind, api_name="/vote_left"
            )
            model_b = column if model_a == BASE_CHOICE else BASE_CHOICE
            assert f"A was **{model_a}**, B was **{model_b}**" in message
            assert (a["label"], b["label"]) == (f"A: {model_a}", f"B: {model_b}")
            vote = json.loads((runs / "votes.jsonl").read_text().splitlines()[-1])
            assert vote["blind"] and vote["chosen_model"] == model_a and vote["winner"] == "left"
        assert seen == expected and set(seen) == {BASE_CHOICE, column}  # seeded, both orders
        # Every vote went to side A. A battle repeated word for word is the same exchange (its vote
        # replaces the earlier one): two exchanges remain, one per order, so each model won once.
        # Counted by side, A would have 2 wins and B none.
        assert tally["data"] == [[BASE_CHOICE, column, 1, 1, 0]]
    finally:
        demo.close()


def test_push_to_hub_button_says_what_is_missing(served, monkeypatch, tmp_path):
    """The Push button: without a hub login, or for a checkpoint the run does not have, a message
    that says so (the upload itself needs hub access: tests/test_hub.py stages its files)."""
    import huggingface_hub

    client, *_ = served
    for key in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    said = client.predict(FAKE_RUN, "step-000010", "me/adapter", False, api_name="/push_to_hub")
    assert said.startswith("**Not pushed:** No Hugging Face token"), said
    said = client.predict(FAKE_RUN, "step-000099", "me/adapter", False, api_name="/push_to_hub")
    assert "has no checkpoint 'step-000099'" in said, said


def test_elapsed_counts_every_process_of_a_resumed_run_and_errors_wrap():
    """Each trainer process counts elapsed_s from its own start: after a resume the page adds
    the time before it (40 s + 25 s), instead of starting again from 0."""
    from orpo_lab.ui.views import elapsed, progress_text

    records = [
        {"kind": "train", "step": 1, "elapsed_s": 20.0},
        {"kind": "train", "step": 2, "elapsed_s": 40.0},
        {"kind": "event", "step": 2, "event": "resumed"},
        {"kind": "train", "step": 3, "elapsed_s": 25.0, "eta_s": 5.0},
    ]
    assert elapsed(records) == 65.0 and elapsed(records[:2]) == 40.0
    running = progress_text("r", {"status": "running", "step": 3, "total_steps": 4}, records)
    assert "elapsed 1m 05s" in running
    failed = progress_text("r", {"status": "failed", "message": "a\n<b>" + "x" * 300}, records)
    assert "```" not in failed and "> &lt;b&gt;" in failed  # quoted lines wrap; not a code block


def test_a_data_read_in_one_handler_leaves_the_bars_of_another_working(tmp_path, tiny_model_dir):
    """datasets' parallel map (and tqdm's thread_map) wrap their work in tqdm's `ensure_lock`,
    which deletes tqdm's class lock afterwards when there was none; a bar that another handler
    closed after that raised AttributeError (seen in the app: two handlers loading the held-out
    pairs at once). The app makes the lock, so it is never deleted."""
    from tqdm import tqdm
    from tqdm.contrib.concurrent import ensure_lock

    if hasattr(tqdm, "_lock"):
        del tqdm._lock  # a fresh process: no bar made yet
    build_app(str(tiny_model_dir), tmp_path / "runs", device="cpu")
    with (
        open(tmp_path / "bar.txt", "w") as out,
        ensure_lock(tqdm),  # what a parallel map does around its workers, in one handler
    ):
        bar = tqdm(total=1, file=out)  # another handler's bar, made meanwhile
    bar.close()  # without the app's lock: AttributeError (the lock went with ensure_lock)
    assert hasattr(tqdm, "_lock")


def test_a_training_run_has_its_curves_redrawn_at_most_every_few_seconds(
    tiny_model_dir, tmp_path, monkeypatch
):
    """While the run shown trains, a tick redraws its curves only CURVES_EVERY_S after the last
    drawing (each redraw costs the browser ~0.8 s of work); its progress line follows every step.
    The run's end is drawn at once."""
    import os

    from orpo_lab.ui import live_view

    monkeypatch.setattr(live_view, "CURVES_EVERY_S", 1.5)
    run = RunDir(tmp_path / "runs" / "live")
    run.path.mkdir(parents=True)
    run.config_path.write_text(yaml.safe_dump({"model": str(tiny_model_dir)}))

    def trained(step: int, status: str = "running") -> None:
        run.append_metrics({"kind": "train", "step": step, "loss": 2 / step, "step_s": 1.0})
        run.write_status(status, f"step {step}", step=step, total_steps=9, pid=os.getpid())

    def plotted_steps(plot) -> list | None:
        plot = value(plot)  # None: skipped
        return None if plot is None else json.loads(plot["plot"])["data"][0]["x"]

    trained(1)
    demo = build_app(str(tiny_model_dir), tmp_path / "runs", device="cpu")
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
    try:
        client = Client(url, verbose=False)

        def tick():
            selected, plot, progress, *_ = client.predict("live", 0.6, None, api_name="/tick")
            return plotted_steps(plot), value(progress)

        assert tick()[0] == [1]  # a page's first tick draws everything
        trained(2)
        plot, progress = tick()
        assert plot is None and "step 2/9" in progress  # the curves wait, the progress does not
        time.sleep(1.6)
        assert tick()[0] == [1, 2]
        trained(3, status="finished")
        plot, progress = tick()
        assert plot == [1, 2, 3] and "finished" in progress  # the end at once
    finally:
        demo.close()
