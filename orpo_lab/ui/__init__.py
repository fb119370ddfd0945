"""The Gradio app, one small function per panel, each creating its components and wiring its events.

    train_tab.py   dataset panel, hyperparameters, launch (start, stop, resume)
    runs_panel.py  the run shown live, the runs table and overlay, artefacts, judged evaluation
    chat_tab.py    side-by-side chat with checkpoints, votes, blind A/B battles
    inside_tab.py  one pair token by token: what a checkpoint did to each token's log-prob
    views.py       the text and tables shown (pure functions, tested without a browser)

All state is on disk (runs, votes) or in the `AppContext`; `build_app` creates no thread or
folder until it is called.
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
from orpo_lab.ui.chat_tab import chat_tab, column_updates, votes_table, wire_chat
from orpo_lab.ui.common import BASE_CHOICE, OFF_CHOICE, AppContext, named
from orpo_lab.ui.inside_tab import checkpoint_updates, inside_tab, wire_inside
from orpo_lab.ui.runs_panel import live_panel, runs_panel, wire_runs
from orpo_lab.ui.train_tab import (
    STEPS_NAMES,
    steps_inputs,
    steps_note,
    train_tab,
    wire_dataset,
    wire_launch,
    wire_steps_note,
)
from orpo_lab.votes import blind_tally, read_votes

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
        with gr.Tab("Train"):
            train = train_tab(ctx)
            live = live_panel(ctx)
            runs = runs_panel(ctx)
        with gr.Tab("Chat"):
            chat = chat_tab(ctx)
        with gr.Tab("Inside ORPO"):
            inside = inside_tab(ctx)
        wire_dataset(ctx, train.data)
        wire_launch(ctx, train.data, train.form, train.launch, live)
        wire_steps_note(train.data, train.form, train.launch)
        wire_runs(ctx, live, runs, train)
        wire_chat(ctx, chat)
        wire_inside(ctx, inside)
        # A (re)loaded page lists every checkpoint and the votes so far (the timer draws the runs).
        demo.load(lambda: column_updates(ctx), None, chat.columns, api_visibility="private")
        demo.load(
            lambda: checkpoint_updates(ctx),
            None,
            [inside.first, inside.second, inside.reference],
            api_visibility="private",
        )
        demo.load(
            named(STEPS_NAMES, steps_note),
            steps_inputs(train.data, train.form),
            train.launch.steps_note,
            api_visibility="private",
        )
        demo.load(
            lambda: (votes_table(ctx), blind_tally(read_votes(ctx.votes_path))),
            None,
            [chat.votes, chat.tally],
            api_visibility="private",
        )
    manager.watch()  # the queue advances and crashes show even with no page open
    demo.orpo_context, demo.orpo_manager, demo.orpo_pool = (
        ctx,
        manager,
        ctx.pool,
    )  # tests, notebooks
    return demo
