"""The Gradio app: one function per section, each creating its components and wiring its events.

    train_tab.py    the Train tab's upper half: dataset, method, hyperparameters, start/stop/resume
    runs_panel.py   its lower half: the run shown live, the runs table and overlay, artefacts
    eval_panel.py   the judged evaluation of a checkpoint of the run shown
    chat_tab.py     side-by-side chat with checkpoints, votes, blind A/B battles
    inside_tab.py   one pair token by token: what a checkpoint did to each token's log-prob
and what the sections use, none of them a section:
    common.py       the context, the run shown (shared by train_tab and runs_panel), named inputs
    form_fields.py  the training form: its fields, a run's config <-> the form's values
    data_preview.py the data checked before a run (preview, truncation, run length)
    live_view.py    what the runs panel draws of the run shown, and when (the timer)
    battle.py       the blind battle: which model answers in which pane, and its labels
    views.py        the text and tables shown (pure functions, tested without a browser)

No section imports another: `build_app` lays them out and hands each the few components it
shares. All state is on disk (runs, votes) or in the `AppContext`; `build_app` creates no
thread or folder until it is called.
"""

from __future__ import annotations

import random
from pathlib import Path

import gradio as gr
from tqdm import tqdm

from orpo_lab import zerogpu
from orpo_lab.model_pool import ModelPool
from orpo_lab.runs import RunManager
from orpo_lab.slices import SliceRunner
from orpo_lab.ui.chat_tab import chat_tab
from orpo_lab.ui.common import BASE_CHOICE, OFF_CHOICE, AppContext, run_shown
from orpo_lab.ui.eval_panel import eval_panel
from orpo_lab.ui.inside_tab import inside_tab
from orpo_lab.ui.runs_panel import runs_panel
from orpo_lab.ui.train_tab import train_tab

__all__ = ["BASE_CHOICE", "OFF_CHOICE", "AppContext", "build_app"]

INTRO = (
    "# ORPO Lab\nOdds Ratio Preference Optimization: train a LoRA adapter on preference pairs, "
    "watch chosen and rejected log-probs move apart, then chat with the result."
)


def build_app(
    model: str = "default",
    runs_dir: str | Path = "runs",
    device: str = "auto",
    seed: int | None = None,
) -> gr.Blocks:
    """The app over a runs folder; `model` is the default base model of training and chat.
    `seed` fixes the blind A/B order (tests); None draws it fresh."""
    # Two handlers reading data at once: datasets' parallel map and tqdm's thread_map make tqdm's
    # class lock for their duration and delete it after when there was none, so a bar that another
    # handler closes meanwhile fails ("type object 'tqdm' has no attribute '_lock'"). Made here,
    # it is never deleted.
    tqdm.get_lock()
    hardware = zerogpu.mode()
    pool, slices, evaluate = ModelPool(model, device=device), None, None
    if hardware == "zerogpu":  # training in GPU slices; generation and scoring in GPU calls
        pool, slices = zerogpu.GpuPool(pool), SliceRunner()
        evaluate = zerogpu.gpu_evaluate()
    manager = RunManager(runs_dir, slices=slices)
    ctx = AppContext(
        model=model,
        manager=manager,
        pool=pool,
        votes_path=manager.runs_dir / "votes.jsonl",
        uploads=manager.runs_dir / ".uploads",
        rng=random.Random(seed),
        evaluate=evaluate,
    )
    with gr.Blocks(title="ORPO Lab") as demo:
        gr.Markdown(INTRO)
        gr.Markdown(zerogpu.hardware_line(hardware), elem_id="hardware")
        shown = run_shown(ctx)  # set by Start and Resume, drawn by the runs panel
        with gr.Tab("Train"):
            form = train_tab(ctx, demo, shown)
            checkpoint = runs_panel(ctx, shown, form)
            eval_panel(ctx, shown.run, checkpoint)
        with gr.Tab("Chat"):
            chat_tab(ctx, demo)
        with gr.Tab("Inside ORPO"):
            inside_tab(ctx, demo)
    manager.watch()  # the queue advances and crashes show even with no page open
    demo.orpo_context, demo.orpo_manager, demo.orpo_pool = (
        ctx,
        manager,
        ctx.pool,
    )  # tests, notebooks
    return demo
