"""The app as a user sees it: headless chromium (Playwright) against the app with the tiny model.

Start a short run, watch the curves get points, stop it, ask the base model and the new checkpoint
the same question side by side (streamed), vote, and find the vote in the votes file. Screenshots
for the README land in docs/.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_app import free_port, write_pairs

import app as app_module

pytestmark = pytest.mark.browser
DOCS = Path(__file__).resolve().parent.parent / "docs"
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


def test_train_stop_chat_vote(browser, tiny_model_dir, tmp_path):
    runs = tmp_path / "runs"
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
        for name, value in dict(max_steps=400, batch_size=2, max_length=96, max_prompt_length=48,
                                lora_r=4, lora_alpha=8, eval_every=0, save_every=0).items():  # fmt: skip
            fill(page, f"hp-{name}", value)
        page.get_by_text("hyperparameters").click()  # fold it again for the screenshot
        page.locator("#start").click()
        page.wait_for_function(
            "() => /running · step ([3-9]|\\d\\d+)\\//.test(document.querySelector('#progress').innerText)",
            timeout=120_000,
        )
        points = page.wait_for_function(
            """() => { const p = document.querySelector('#train-plot .js-plotly-plot');
                       return p && p.data && p.data.length && p.data[0].x.length >= 2 && p.data[0].x.length; }""",
            timeout=30_000,
        ).json_value()
        assert points >= 2
        page.locator("#train-plot").scroll_into_view_if_needed()
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS / "train.png"), full_page=True)
        page.locator("#stop").click()
        page.wait_for_function(
            "() => document.querySelector('#train-message').innerText.includes('Stopped browser-run')",
            timeout=90_000,
        )
        assert "checkpoint saved" in page.locator("#train-message").inner_text()
        (checkpoint,) = demo.orpo_manager.checkpoints("browser-run")

        # ---- Chat tab: base model and the new checkpoint answer side by side
        page.get_by_role("tab", name="Chat").click()
        page.locator("#refresh-columns").click()
        column = f"browser-run/{checkpoint}"
        box = page.locator("#column-2 input")
        box.click()
        page.get_by_role("option", name=column).click()
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
        fill(page, "chat-message", "Tell me something.")
        page.locator("#send").click()
        bots = [
            page.locator(f"#chat-{i} .message.bot, #chat-{i} [data-testid='bot']") for i in (1, 2)
        ]
        for bot in bots:
            bot.last.wait_for(timeout=60_000)
        page.wait_for_function(
            "() => !document.querySelector('#send button, button#send')?.disabled", timeout=60_000
        )
        page.wait_for_timeout(500)
        answers = [bot.last.inner_text().strip() for bot in bots]
        assert all(answers) and answers[0] != answers[1]
        lengths = page.evaluate("window.lengths")
        assert len(set(lengths)) >= 3, lengths  # the answer grew in several steps: streamed
        page.screenshot(path=str(DOCS / "chat.png"), full_page=True)

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
