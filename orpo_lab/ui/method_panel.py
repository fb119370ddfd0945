"""The Train tab's objective: ORPO, SFT, DPO or the paper's probability ratio, where a run starts
(the base model or a checkpoint) and DPO's reference model. Runs of every method log the same
metric names, so they overlay in the runs panel; chat and the token view take any checkpoint."""

from __future__ import annotations

from dataclasses import fields
from types import SimpleNamespace

import gradio as gr

from orpo_lab.config import TrainConfig
from orpo_lab.ui.common import AppContext

HELP = {f.name: f.metadata["help"] for f in fields(TrainConfig)}
METHODS = [
    ("ORPO", "orpo"),
    ("SFT (beta = 0, the baseline)", "sft"),
    ("DPO", "dpo"),
    ("probability ratio (paper, 7.1)", "prob_ratio"),
]
BETA_LABEL, BETA_LOCKED = "beta (lambda)", "beta (lambda): locked at 0 by the SFT method"
START_BASE = ("the base model", "")
REF_START = ("the run's starting point", "")
REF_BASE = ("the base model", "base")
METHOD_NAMES = ["method", "init_checkpoint", "ref_checkpoint"]


def method_components(p: SimpleNamespace) -> None:
    """Add the method choice, the starting checkpoint and DPO's reference to a launch panel `p`."""
    p.method = gr.Radio(
        METHODS,
        value="orpo",
        label="method",
        elem_id="method",
        info="the objective; SFT then DPO: an SFT run, then DPO starting from it",
    )
    p.init_checkpoint = gr.Dropdown(
        [START_BASE],
        value="",
        label="start from",
        allow_custom_value=True,
        elem_id="init-checkpoint",
        info=HELP["init_checkpoint"],
    )
    p.ref_checkpoint = gr.Dropdown(
        [REF_START, REF_BASE],
        value="",
        label="DPO reference",
        allow_custom_value=True,
        elem_id="ref-checkpoint",
        info=HELP["ref_checkpoint"],
    )
    p.beta_memory = gr.State(None)  # beta as it was before SFT was chosen


def method_switch(method: str, beta, remembered):
    """SFT trains with beta 0: show it and keep the field from edits; other methods give the
    previous value back. Returns (the beta field's update, the value to remember)."""
    if method == "sft":
        locked = beta if remembered is None else remembered
        return gr.update(value=0, interactive=False, label=BETA_LOCKED), locked
    return gr.update(
        value=remembered if remembered is not None else beta, interactive=True, label=BETA_LABEL
    ), None


def checkpoint_updates(ctx: AppContext, start: str, ref: str):
    """Both dropdowns listing every checkpoint of every run, keeping what is selected."""
    checkpoints = [(c, c) for c in ctx.checkpoint_choices()]
    return (
        gr.update(choices=[START_BASE, *checkpoints], value=start),
        gr.update(choices=[REF_START, REF_BASE, *checkpoints], value=ref),
    )


def checkpoint_value(ctx: AppContext, choice: str | None) -> str:
    """A dropdown's value as the config takes it: "run/step-000060" -> its folder; "", "base" or
    a typed path as they are."""
    choice = (choice or "").strip()
    if choice.count("/") == 1 and choice in ctx.checkpoint_choices():
        return str(ctx.checkpoint_of(choice))
    return choice


def method_config(ctx: AppContext, v: dict) -> dict:
    """The method fields of a form's values (TrainConfig names)."""
    return {
        "method": v["method"] or "orpo",
        "init_checkpoint": checkpoint_value(ctx, v["init_checkpoint"]),
        "ref_checkpoint": checkpoint_value(ctx, v["ref_checkpoint"]),
    }


def method_values(config: dict) -> list:
    """A run's config as the method components show it (ORPO with beta 0 is the SFT baseline)."""
    method = config.get("method", "orpo")
    if method == "orpo" and config.get("beta") == 0:
        method = "sft"
    return [method, config.get("init_checkpoint", ""), config.get("ref_checkpoint", "")]


def wire_method(ctx: AppContext, launch: SimpleNamespace, beta) -> None:
    launch.method.change(
        method_switch,
        [launch.method, beta, launch.beta_memory],
        [beta, launch.beta_memory],
        api_name="method_switch",
    )
    boxes = [launch.init_checkpoint, launch.ref_checkpoint]
    for box in boxes:  # a run may have saved a checkpoint since the page loaded
        box.focus(
            lambda s, r: checkpoint_updates(ctx, s, r),
            boxes,
            boxes,
            api_visibility="private",
            show_progress="hidden",
        )
