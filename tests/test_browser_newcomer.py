"""What a newcomer hits first, in headless chromium against one app shared by the module (issue 31).

The app serves the tiny model and a runs folder with one finished run ("done", on the default
dataset, so its held-out pairs hold every family) and no evaluations. Each test opens the page
afresh; none trains: a run that would need a trainer uses a stand-in that loads forever.
"""

from __future__ import annotations

import json
import sys
import time

import pytest
import yaml
from test_app import write_pairs
from test_browser import CHROMIUM, fill, open_app, set_form, text_of, wait_text
from test_chat import make_adapter

from orpo_lab.config import TrainConfig
from orpo_lab.rundir import RunDir
from orpo_lab.ui import build_app

pytestmark = pytest.mark.browser
DONE = "done"
STARTED = {
    "kind": "event",
    "step": 0,
    "event": "started",
    "train_pairs": 1015,
    "eval_pairs": 210,
    "eval_subset_pairs": 64,
    "total_steps": 10,
    "device": "cpu",
    "precision": "float32",
    "data": {"held_out": "split 'test' of default"},
    "precision_reason": "a CPU without bf16 units",
    "torch_compile": False,
    "torch_compile_reason": "off (ORPO_LAB_TORCH_COMPILE)",
    "data_cache": "miss",
    "truncation": {"train": {"pairs": 1015, "truncated_pairs": 3}},
}
# A trainer that never gets past loading (a slow model download, a long compile) and ignores STOP.
LOADS_FOREVER = """
import os, sys, time
from orpo_lab.rundir import RunDir
RunDir(os.path.dirname(sys.argv[-1])).write_status("running", "loading model and data", step=0,
                                                   total_steps=0, pid=os.getpid())
time.sleep(120)
"""


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    """(browser, demo, runs folder, pairs file): one finished run, its config, log and records."""
    sync_api = pytest.importorskip("playwright.sync_api")
    from pathlib import Path

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    root = tmp_path_factory.mktemp("newcomer")
    runs = root / "runs"
    run = RunDir(runs / DONE)
    make_adapter(tiny_model_dir, run.checkpoints_dir / "step-000010", seed=3)
    TrainConfig(
        model=str(tiny_model_dir),
        dataset="default",
        output_dir=str(runs),
        run_name=DONE,
        max_steps=10,
    ).to_yaml(run.config_path)
    run.write_status(
        "finished",
        "finished 10 steps; checkpoint step-000010 saved",
        step=10,
        total_steps=10,
        created=time.time(),
    )
    run.append_metrics(STARTED)
    for step in range(1, 11):
        run.append_metrics(
            {
                "kind": "train",
                "step": step,
                "loss": 2 / step,
                "step_s": 1.0,
                "logps/chosen": -3 + step / 10,
                "logps/rejected": -3 - step / 10,
                "rewards/accuracies": 0.75,
                "elapsed_s": 100.0 + step,
            }
        )
    run.log_path.write_text("orpo-lab: reading and checking default ...\nstep 10/10 done\n")
    pairs = write_pairs(root / "pairs.jsonl")
    demo = build_app(str(tiny_model_dir), runs, device="cpu", seed=0)
    with sync_api.sync_playwright() as p:
        from test_browser import ARGS

        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser, demo, runs, pairs
        browser.close()
    demo.close()


@pytest.fixture
def page(app, tmp_path):
    browser, demo = app[0], app[1]
    page = open_app(browser, demo)
    yield page
    page.screenshot(path=str(tmp_path / "last.png"), full_page=True)
    page.close()


def toasts(page) -> str:
    return " | ".join(page.locator(".toast-body").all_inner_texts())


def test_chat_keeps_text_typed_while_answers_stream(page):
    """Typing during a stream keeps the text; Send during a stream queues the message."""
    page.get_by_role("tab", name="Chat").click()
    page.get_by_text("generation settings").click()
    fill(page, "temperature", 1)  # the random tiny model writes only newlines when greedy
    # A long answer: 256 tokens stream for ~12 s here (the page shows each token), far longer
    # than the typing below.
    fill(page, "max-new-tokens", 256)
    fill(page, "chat-message", "Name a colour.")
    page.locator("#send").click()
    page.locator("#chat-1 .message.bot, #chat-1 [data-testid='bot']").last.wait_for()
    box = page.locator("#chat-message textarea")
    box.press_sequentially("Name a month.", delay=20)
    page.wait_for_timeout(1000)  # several chunks arrive meanwhile
    assert box.input_value() == "Name a month."
    # The queued message needs no long answer (one would stream on into the next tests).
    fill(page, "max-new-tokens", 8)
    page.locator("#send").click()  # while the first answer still streams: queued, not dropped
    wait_text(page, "chat-1", "Name a month.", timeout=120_000)
    page.wait_for_function("() => document.querySelector('#chat-message textarea').value === ''")
    assert "Name a colour." in text_of(page, "chat-1")
    assert page.locator("#chat-1 [data-testid='block-label']").inner_text() == "base model"


def test_start_refuses_a_missing_model_before_any_run_folder(page, app):
    runs, pairs = app[2], app[3]
    fill(page, "model", "/no/such/model")
    fill(page, "dataset", pairs)
    fill(page, "run-name", "badmodel")
    page.locator("#start").click()
    message = wait_text(page, "train-message", "Not started")
    assert "/no/such/model" in message
    assert not (runs / "badmodel").exists()


def test_negative_max_steps_is_refused_and_empty_says_what_it_means(page, app):
    runs, pairs = app[2], app[3]
    fill(page, "dataset", pairs)
    fill(page, "run-name", "negative")
    set_form(page, {"batch_size": 2, "max_steps": -5})
    page.locator("#start").click()
    message = wait_text(page, "train-message", "Not started")
    assert "max_steps" in message and "-5" in message
    assert not (runs / "negative").exists()
    set_form(page, {"max_steps": ""})  # empty: epochs decide
    # 16 pairs, 2 held out (held_out_size 0.1), batch 2: 7 steps per epoch.
    wait_text(page, "steps-note", "1 epoch = 7 steps", timeout=60_000)


CONFIG_SHOWN = """() => [...document.querySelectorAll('.cm-content')]
                     .some(e => e.innerText.includes('run_name: done'))"""


def test_config_of_the_run_shown_is_filled_on_load(page):
    for _ in range(2):  # the first load, then a reload
        page.get_by_text("config of the run shown").click()
        page.wait_for_function(CONFIG_SHOWN, timeout=30_000)
        page.reload()


def _inside(page) -> None:
    page.get_by_role("tab", name="Inside ORPO").click()
    page.wait_for_function(  # the first held-out pair fills the boxes
        "() => document.querySelector('#view-prompt textarea').value.length > 0", timeout=60_000
    )


def test_inside_orpo_typed_pair_searches_and_never_errors(page):
    _inside(page)
    pair = page.locator("#view-pair input")
    pair.fill("no pair says this")
    pair.press("Enter")
    page.wait_for_function("() => document.querySelector('.toast-body') !== null", timeout=30_000)
    assert "No held-out pair" in toasts(page)
    assert (
        page.locator("#view-prompt, #view-chosen, #view-rejected").get_by_text("Error").count() == 0
    )
    pair.fill("countries")  # a search term: the first held-out pair that holds it
    pair.press("Enter")
    page.wait_for_function(
        "() => document.querySelector('#view-prompt textarea').value.includes('countries')",
        timeout=30_000,
    )


def test_inside_orpo_never_shows_a_pair_beside_empty_boxes(page):
    """Emptied boxes are filled again by the next refresh (which sets the same checkpoint, so no
    `.change` fires); a box holding typed text is never overwritten by it."""
    _inside(page)
    filled = page.locator("#view-prompt textarea").input_value()
    for box in ("view-prompt", "view-chosen", "view-rejected"):
        fill(page, box, "")
    page.locator("#view-refresh").click()
    page.wait_for_function(
        "(text) => document.querySelector('#view-prompt textarea').value === text",
        arg=filled,
        timeout=30_000,
    )
    fill(page, "view-prompt", "my own prompt")
    fill(page, "view-chosen", "")
    page.locator("#view-refresh").click()
    page.wait_for_timeout(3000)  # what the refresh and its follow-up would have written by now
    assert page.locator("#view-prompt textarea").input_value() == "my own prompt"
    assert page.locator("#view-chosen textarea").input_value() == ""


def test_inside_orpo_offers_pairs_of_every_family(page):
    _inside(page)
    page.locator("#view-pair input").click()
    options = page.locator("#view-pair").get_by_role("option").all_inner_texts()
    for family in ("arithmetic", "bullets", "concise", "ranked"):
        assert any(family in o for o in options[:12]), options[:12]  # among the first few
    assert len(options) > 40  # more than the first 40 held-out pairs (the list shows 100 at most)


def test_bad_row_toast_shows_the_problem(page, app, tmp_path):
    runs = app[2]
    bad = write_pairs(tmp_path / "bad.jsonl")
    lines = bad.read_text().splitlines()
    lines[3] = json.dumps({"prompt": "Hi", "chosen": "Hello.", "rejected": "Hello."})
    bad.write_text("\n".join(lines) + "\n")
    fill(page, "dataset", bad)
    fill(page, "run-name", "badrow")
    page.locator("#start").click()
    wait_text(page, "train-message", "Not started")
    page.wait_for_function("() => document.querySelector('.toast-body') !== null")
    shown = toasts(page)
    assert "line 4" in shown and "identical to chosen" in shown, shown
    assert not (runs / "badrow").exists()


def test_csv_without_rejected_is_one_message_naming_the_columns(page, tmp_path):
    csv = tmp_path / "norejected.csv"
    csv.write_text("prompt,chosen\n" + "".join(f"What is {i}?,{i}.\n" for i in range(8)))
    fill(page, "dataset", csv)
    page.locator("#preview-btn").click()
    message = wait_text(page, "preview", "Cannot use")
    assert "'rejected'" in message and "prompt, chosen" in message, message
    assert "bad row" not in message and "skip" not in message, message


def test_stop_while_loading_ends_cleanly_before_the_first_step(page, app, tmp_path):
    demo, runs, pairs = app[1], app[2], app[3]
    manager = demo.orpo_manager
    script = tmp_path / "loads_forever.py"
    script.write_text(LOADS_FOREVER)
    trainer, grace = manager.trainer, manager.grace_s
    manager.trainer, manager.grace_s = [sys.executable, str(script)], 3.0
    try:
        fill(page, "dataset", pairs)
        fill(page, "run-name", "loading")
        page.locator("#start").click()
        wait_text(page, "train-message", "Created run loading")
        wait_text(page, "progress", "loading model and data", timeout=60_000)
        page.locator("#stop").click()
        page.wait_for_function(
            "() => /Stopped|Killed/.test(document.querySelector('#train-message').innerText)",
            timeout=60_000,
        )
        message = text_of(page, "train-message")
        assert message.startswith("Stopped loading"), message
        assert "before the first step (nothing trained)" in message and "killed" not in message
        status = manager.status("loading")
        assert status["status"] == "stopped" and "before the first step" in status["message"]
    finally:
        manager.trainer, manager.grace_s = trainer, grace
    assert yaml.safe_load((runs / "loading" / "config.yaml").read_text())["run_name"] == "loading"


def test_the_run_shown_says_how_it_started_its_log_panels_and_folder(page, app):
    runs = app[2]
    assert str(runs) in text_of(page, "runs-folder")
    page.get_by_text("how the run started").click()
    started = wait_text(page, "run-started", "precision", timeout=30_000)
    for fragment in (
        "float32: a CPU without bf16 units",
        "torch.compile: off",
        "split 'test' of default",
        "3 of 1015 training pairs cut",
    ):
        assert fragment in started, started
    wait_text(page, "run-log", "step 10/10 done")
    captions = text_of(page, "curves-help")
    for panel in (
        "mean log-prob",
        "log-odds ratio",
        "L_OR (unweighted)",
        "preference accuracy",
        "learning rate",
        "log-prob margin",
        "01_odds.ipynb",
    ):
        assert panel in captions, captions
    page.wait_for_function(  # no evaluations: the weighting panels say so instead of empty axes
        "() => (document.querySelector('#weighting-plot .js-plotly-plot')?.layout?.annotations"
        " || []).some(a => a.text.startsWith('No held-out evaluation'))",
        timeout=30_000,
    )
    # Each header of the runs table on one line: no word broken ("be/ta", "ac/c").
    lines = page.evaluate(  # [header, how many lines its text takes]
        """() => [...document.querySelectorAll('#runs-table thead th')].map(th => {
               const walk = document.createTreeWalker(th, NodeFilter.SHOW_TEXT);
               const tops = new Set(); let text = '';
               while (walk.nextNode()) {
                 if (!walk.currentNode.textContent.trim()) continue;
                 text += walk.currentNode.textContent.trim();
                 const range = document.createRange(); range.selectNodeContents(walk.currentNode);
                 for (const r of range.getClientRects()) tops.add(Math.round(r.top));
               }
               return [text, tops.size]; })"""
    )
    broken = [h for h in lines if h[0] and " " not in h[0] and h[1] > 1]
    assert len(lines) == 13 and not broken, lines
