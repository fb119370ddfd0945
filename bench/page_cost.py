"""What an open app page costs while a run trains: the CPU of the app's server (this process) and
of the browser (headless chromium, every chromium process on the machine), over a window of a run
of the tiny test model started from the page, plus Chrome's own counters for the page's main
thread (Performance.getMetrics: task, script, layout and style time).

    .venv/bin/python bench/page_cost.py --seconds 30
    .venv/bin/python bench/page_cost.py --seconds 30 --skip plot   # which output costs what

`--skip` leaves outputs of the live view's tick out (the curves, the weighting figure, the config /
started / log panels) to attribute the cost. Uses the browser tests' helpers (tests/test_browser.py)
and needs /usr/bin/chromium; run it alone on the machine, the numbers are CPU seconds.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]


def chromium_cpu() -> float:
    """CPU seconds of every chromium process alive now."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if "chrom" not in Path(f"/proc/{pid}/comm").read_text():
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return total


def skip_outputs(parts: set[str]) -> None:
    """Make the live view's tick leave `parts` out (gr.skip), for attribution."""
    import gradio as gr

    from orpo_lab.ui import live_view

    drawn, details = live_view._drawn, live_view.details

    def _drawn(ctx, p, name, smoothing, curves=True):
        out, records = drawn(ctx, p, name, smoothing, curves)
        for part, component in (("plot", p.plot), ("weighting", p.weighting)):
            if part in parts and component in out:
                out[component] = gr.skip()
        return out, records

    def _details(ctx, p, name, records):
        out = details(ctx, p, name, records)
        return {k: gr.skip() for k in out} if "details" in parts else out

    live_view._drawn, live_view.details = _drawn, _details


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="the measured window")
    parser.add_argument("--skip", default="", help="comma list of plot, weighting, details")
    args = parser.parse_args()
    if args.skip:
        skip_outputs(set(args.skip.split(",")))

    from conftest import build_tiny_model
    from playwright.sync_api import sync_playwright
    from test_app import write_pairs
    from test_browser import (
        ARGS,
        CHROMIUM,
        TINY_FORM,
        open_app,
        start_run,
        text_of,
        wait_step,
        wait_text,
    )
    from transformers import AutoTokenizer

    from orpo_lab.model import default_model_dir
    from orpo_lab.ui import build_app

    tmp = Path(tempfile.mkdtemp(prefix="page-cost-"))
    tokenizer = AutoTokenizer.from_pretrained(default_model_dir())
    build_tiny_model(len(tokenizer)).save_pretrained(tmp / "tiny")
    tokenizer.save_pretrained(tmp / "tiny")
    pairs = write_pairs(tmp / "pairs.jsonl")
    demo = build_app(str(tmp / "tiny"), tmp / "runs", device="cpu")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        page = open_app(browser, demo)
        cdp = page.context.new_cdp_session(page)
        cdp.send("Performance.enable")
        start_run(page, "orpo", pairs, TINY_FORM | dict(max_steps=100_000))
        wait_step(page, "orpo", 3)

        def metrics() -> dict:
            return {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}

        m0, c0, r0, t0 = metrics(), chromium_cpu(), resource.getrusage(0), time.time()
        time.sleep(args.seconds)
        m1, c1, r1, t1 = metrics(), chromium_cpu(), resource.getrusage(0), time.time()
        progress = text_of(page, "progress")
        page.locator("#stop").click()
        wait_text(page, "train-message", "Stopped orpo")
        page.close()
        browser.close()
    demo.close()
    window = t1 - t0
    server = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    print(f"skip: {args.skip or '-'}; {window:.0f} s while the run trained ({progress})")
    print(
        f"  app server CPU {server:.1f} s, chromium CPU {c1 - c0:.1f} s: together "
        f"{(server + c1 - c0) / window:.0%} of a core"
    )
    for key in ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration"):
        print(f"  page main thread {key}: {m1[key] - m0[key]:.2f} s")


if __name__ == "__main__":
    main()
