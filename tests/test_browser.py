"""The app as a user sees it: headless chromium (Playwright) against the app with the tiny model.

Start a short run, watch the curves get points, stop it, ask the base model and the new checkpoint
the same question side by side (streamed), vote, and find the vote in the votes file. Screenshots
go to $ORPO_LAB_SCREENSHOTS when it is set (`ORPO_LAB_SCREENSHOTS=docs` refreshes the README's),
else to the test's temporary folder.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from test_app import free_port, write_pairs

import app as app_module

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()


def fill(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input, #{elem_id} textarea").first
    box.fill(str(value))
    box.press("Tab")  # Gradio takes the value on change/blur


def pick_second_column(page, column: str) -> None:
    """In the Chat tab: list the checkpoints again and put `column` in the second column."""
    page.locator("#refresh-columns").click()
    page.locator("#column-2 input").click()
    page.get_by_role("option", name=column).click()


def ask_both(page, question: str, timeout: int) -> list[str]:
    """Send `question` to the columns; wait until both answers are complete and return them."""
    fill(page, "chat-message", question)
    page.locator("#send").click()
    bots = [page.locator(f"#chat-{i} .message.bot, #chat-{i} [data-testid='bot']") for i in (1, 2)]
    for bot in bots:
        bot.last.wait_for(timeout=timeout)
    page.wait_for_function(
        "() => !document.querySelector('#send button, button#send')?.disabled", timeout=timeout
    )
    page.wait_for_timeout(500)
    return [bot.last.inner_text().strip() for bot in bots]


def shots_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("ORPO_LAB_SCREENSHOTS") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_train_stop_chat_vote(browser, tiny_model_dir, tmp_path):
    runs, shots = tmp_path / "runs", shots_dir(tmp_path)
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    demo = app_module.build_app(str(tiny_model_dir), runs, device="cpu")
    demo.orpo_manager.grace_s = 60
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(url)
        # ---- Train tab: a short run on the tiny model
        fill(page, "dataset", pairs)
        fill(page, "run-name", "browser-run")
        page.get_by_text("hyperparameters").click()
        hyper = dict(max_steps=400, batch_size=2, max_length=96, max_prompt_length=48,
                     lora_r=4, lora_alpha=8, eval_every=0, save_every=0)  # fmt: skip
        page.locator("#hp-save_every input").wait_for()  # the folded form mounts when first opened
        for name, value in hyper.items():
            fill(page, f"hp-{name}", value)
        page.wait_for_timeout(500)
        for name, value in hyper.items():  # a field filled while it mounted can fall back: refill
            if page.locator(f"#hp-{name} input").input_value() != str(value):
                fill(page, f"hp-{name}", value)
        page.get_by_text("hyperparameters").click()  # fold it again for the screenshot
        page.locator("#start").click()
        try:
            page.wait_for_function(
                "() => /running · step ([3-9]|\\d\\d+)\\//.test(document.querySelector('#progress').innerText)",
                timeout=120_000,
            )
        except Exception as err:  # say what the page and the run showed instead
            log = runs / "browser-run" / "train.log"
            raise AssertionError(
                f"progress: {page.locator('#progress').inner_text()!r}; message: "
                f"{page.locator('#train-message').inner_text()!r}; log tail: "
                f"{log.read_text()[-1500:] if log.is_file() else 'no log'}"
            ) from err
        points = page.wait_for_function(
            """() => { const p = document.querySelector('#train-plot .js-plotly-plot');
                       return p && p.data && p.data.length && p.data[0].x.length >= 2 && p.data[0].x.length; }""",
            timeout=30_000,
        ).json_value()
        assert points >= 2
        page.locator("#train-plot").scroll_into_view_if_needed()
        page.screenshot(path=str(shots / "train.png"), full_page=True)
        page.locator("#stop").click()
        page.wait_for_function(
            "() => document.querySelector('#train-message').innerText.includes('Stopped browser-run')",
            timeout=90_000,
        )
        assert "checkpoint saved" in page.locator("#train-message").inner_text()
        (checkpoint,) = demo.orpo_manager.checkpoints("browser-run")

        # ---- Chat tab: base model and the new checkpoint answer side by side
        page.get_by_role("tab", name="Chat").click()
        column = f"browser-run/{checkpoint}"
        pick_second_column(page, column)
        page.get_by_text("generation settings").click()
        fill(page, "temperature", 1)  # the random tiny model writes only newlines when greedy
        fill(page, "max-new-tokens", 256)
        # Count the updates the right column receives while it streams.
        page.evaluate(
            """() => { window.lengths = [];
                       new MutationObserver(() => window.lengths.push(
                         document.querySelector('#chat-2').innerText.length))
                       .observe(document.querySelector('#chat-2'),
                                {childList: true, subtree: true, characterData: true}); }"""
        )
        answers = ask_both(page, "Tell me something.", timeout=60_000)
        assert all(answers) and answers[0] != answers[1]
        lengths = page.evaluate("window.lengths")
        assert len(set(lengths)) >= 3, lengths  # the answer grew in several steps: streamed
        page.screenshot(path=str(shots / "chat.png"), full_page=True)

        # ---- vote: the right column (the checkpoint) is better
        page.locator("#vote-right").click()
        page.wait_for_function(
            "() => document.querySelector('#vote-message').innerText.includes('Vote saved')",
            timeout=30_000,
        )
        (line,) = (runs / "votes.jsonl").read_text().splitlines()
        vote = json.loads(line)
        assert vote["prompt"] == "Tell me something." and vote["winner"] == "right"
        assert vote["chosen_model"] == column
        # The page shows the answer as Markdown: compare the first letters only.
        assert re.sub(r"\W+", "", vote["chosen"])[:12] == re.sub(r"\W+", "", answers[1])[:12]
    finally:
        page.close()
        demo.close()


@pytest.mark.slow
def test_real_model_and_orpo_checkpoint_side_by_side(browser, tmp_path):
    """The default model and a checkpoint of a 60-step default-recipe ORPO run, in the Chat tab: the
    checkpoint answers an out-of-domain "three things" question as a bullet list, the base does not."""
    from orpo_lab.config import PRESETS, TrainConfig
    from orpo_lab.default_dataset import judge
    from orpo_lab.train import train

    runs, shots = tmp_path / "runs", shots_dir(tmp_path)
    cfg = TrainConfig(**(PRESETS["cpu-quick"] | dict(output_dir=str(runs), run_name="orpo",
                                                     max_steps=60, eval_every=0, save_every=0,
                                                     device="cpu")))  # fmt: skip
    train(cfg)
    demo = app_module.build_app("default", runs, device="cpu")
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(url)
        page.get_by_role("tab", name="Chat").click()
        pick_second_column(page, "orpo/step-000060")
        page.get_by_text("generation settings").click()
        fill(page, "temperature", 0)  # greedy: the same answers every run
        fill(page, "max-new-tokens", 96)
        question = "What are three countries?"  # bullets family, a kind of prompt never trained on
        ask_both(page, question, timeout=120_000)
        page.screenshot(path=str(shots / "chat.png"), full_page=True)
        # Judge what the model wrote (the votes file keeps the raw text; the page shows Markdown).
        page.locator("#vote-right").click()
        page.wait_for_function(
            "() => document.querySelector('#vote-message').innerText.includes('Vote saved')",
            timeout=30_000,
        )
        vote = json.loads((runs / "votes.jsonl").read_text().splitlines()[-1])
        record = {"prompt": question}
        assert judge("bullets", record, vote["chosen"]), vote["chosen"]  # the checkpoint
        assert not judge("bullets", record, vote["rejected"]), vote["rejected"]  # the base model
    finally:
        page.close()
        demo.close()
