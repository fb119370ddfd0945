"""The training form as config values: its fields in order, the components that show them, and a
run's config <-> the form's values. The Train tab builds and reads the form with these; the runs
panel loads a run's config back into it."""

from __future__ import annotations

from dataclasses import fields

import gradio as gr

from orpo_lab.config import TrainConfig, upgraded
from orpo_lab.trackers import TRACKERS, parse_report_to
from orpo_lab.ui.common import AppContext

HELP = {f.name: f.metadata["help"] for f in fields(TrainConfig)}
DEFAULTS = TrainConfig()
OPTIONAL = {f.name: f.metadata["none"][0] for f in fields(TrainConfig) if f.metadata["none"]}
BETA_LABEL, BETA_LOCKED = "beta (lambda)", "beta (lambda): locked at 0 by the SFT method"


def _number(name: str, label: str, whole: bool = False):
    """A number box; an optional field's None is the empty box (its help says what None means)."""
    optional = name in OPTIONAL
    return gr.Number(
        getattr(DEFAULTS, name),
        label=label + (f" (empty: {OPTIONAL[name]})" if optional else ""),
        info=HELP[name],
        elem_id=f"hp-{name}",
        precision=0 if whole else None,
    )


# The form's hyperparameters, in order: field -> component factory.
FORM = {
    "beta": lambda: gr.Number(
        DEFAULTS.beta, label=BETA_LABEL, minimum=0, info=HELP["beta"], elem_id="hp-beta"
    ),
    "dpo_beta": lambda: _number("dpo_beta", "DPO beta"),
    "learning_rate": lambda: _number("learning_rate", "learning rate"),
    "max_steps": lambda: _number("max_steps", "max steps", whole=True),
    "epochs": lambda: _number("epochs", "epochs"),
    "batch_size": lambda: _number("batch_size", "batch size", whole=True),
    "grad_accum": lambda: _number("grad_accum", "grad accumulation", whole=True),
    "max_length": lambda: _number("max_length", "max length", whole=True),
    "max_prompt_length": lambda: _number("max_prompt_length", "max prompt length", whole=True),
    "lora_r": lambda: _number("lora_r", "LoRA r", whole=True),
    "lora_alpha": lambda: _number("lora_alpha", "LoRA alpha", whole=True),
    "nll_scope": lambda: gr.Radio(
        ["response", "prompt_response"],
        value=DEFAULTS.nll_scope,
        label="NLL scope",
        info=HELP["nll_scope"],
        elem_id="hp-nll_scope",
    ),
    "eval_every": lambda: _number("eval_every", "eval every (steps)", whole=True),
    "eval_at_start": lambda: gr.Checkbox(
        True, label="evaluate before step 1", info=HELP["eval_at_start"], elem_id="hp-eval_at_start"
    ),
    "save_every": lambda: _number("save_every", "save every (steps)", whole=True),
    "report_to": lambda: gr.CheckboxGroup(
        list(TRACKERS), value=[], label="report to", info=HELP["report_to"], elem_id="hp-report_to"
    ),
}
FORM_NAMES = list(FORM)
DATA_OPTIONS = ["column_map", "train_split", "test_split", "held_out_size", "chat_template"]
DATA_NAMES = ["model", "dataset", "trust_remote_code", "skip_bad_rows", *DATA_OPTIONS]
METHOD_NAMES = ["method", "init_checkpoint", "ref_checkpoint"]
LAUNCH_NAMES = ["run_name", *METHOD_NAMES, "device"]
# What "Load into the form" fills from a run's config, in this order (the /load_config outputs).
LOADED_NAMES = [*FORM_NAMES, "model", "dataset", *DATA_OPTIONS, "run_name", *METHOD_NAMES]

METHODS = [
    ("ORPO", "orpo"),
    ("SFT (beta = 0, the baseline)", "sft"),
    ("DPO", "dpo"),
    ("probability ratio (paper, 7.1)", "prob_ratio"),
]
START_BASE = ("the base model", "")
REF_START = ("the run's starting point", "")
REF_BASE = ("the base model", "base")


def form_values(config: dict) -> list:
    """A config's values in FORM order, as the form's components take them (trackers as a list)."""
    return [parse_report_to(config[n]) if n == "report_to" else config[n] for n in FORM_NAMES]


def method_values(config: dict) -> list:
    """A run's config as the method components show it (ORPO with beta 0 is the SFT baseline)."""
    method = config.get("method", "orpo")
    if method == "orpo" and config.get("beta") == 0:
        method = "sft"
    return [method, config.get("init_checkpoint", ""), config.get("ref_checkpoint", "")]


def loaded_values(config: dict, run_name: str) -> dict:
    """{LOADED_NAMES name: value}: a run's config (defaults for what it lacks) as the form shows
    it, under a new run name."""
    config = {**DEFAULTS.to_dict(), **upgraded(config)}  # an earlier version's 0s: empty boxes
    values = [
        *form_values(config),
        config["model"],
        config["dataset"],
        *[config[n] for n in DATA_OPTIONS],
        run_name,
        *method_values(config),
    ]
    return dict(zip(LOADED_NAMES, values, strict=True))


def checkpoint_value(ctx: AppContext, choice: str | None) -> str:
    """A dropdown's value as the config takes it: "run/step-000060" -> its folder; "", "base" or
    a typed path as they are."""
    choice = (choice or "").strip()
    if choice.count("/") == 1 and choice in ctx.checkpoint_choices():
        return str(ctx.checkpoint_of(choice))
    return choice


def form_config(ctx: AppContext, v: dict) -> dict:
    """The form's values (DATA_NAMES, LAUNCH_NAMES, FORM_NAMES) -> TrainConfig values (types are
    checked by TrainConfig.from_dict). SFT: TrainConfig sets beta 0, as the form shows it."""
    config = {name: v[name] for name in FORM_NAMES}
    config["report_to"] = ",".join(v["report_to"] or []) or "none"  # the ticked trackers
    config.update({name: v[name] for name in DATA_OPTIONS})
    config.update(
        model=(v["model"] or "").strip() or ctx.model,
        dataset=(v["dataset"] or "").strip() or "default",
        trust_remote_code=bool(v["trust_remote_code"]),
        skip_bad_rows=bool(v["skip_bad_rows"]),
        device=v["device"] or "auto",
        method=v["method"] or "orpo",
        init_checkpoint=checkpoint_value(ctx, v["init_checkpoint"]),
        ref_checkpoint=checkpoint_value(ctx, v["ref_checkpoint"]),
    )
    return config


def data_config(v: dict, **more) -> TrainConfig:
    """The data fields of the form (and `more`) as a TrainConfig, as the data checks read them."""
    return TrainConfig.from_dict(
        {k: v[k] for k in DATA_OPTIONS}
        | {
            "dataset": (v["dataset"] or "").strip() or "default",
            "skip_bad_rows": bool(v["skip_bad_rows"]),
        }
        | more
    )
