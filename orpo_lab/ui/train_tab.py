"""The Train tab's upper half: the dataset panel, the hyperparameters and the launch panel."""

from __future__ import annotations

import html
import math
import re
import shutil
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from orpo_lab.config import PRESETS, TrainConfig
from orpo_lab.trackers import TRACKERS, parse_report_to
from orpo_lab.ui.common import AppContext, named
from orpo_lab.ui.method_panel import (
    BETA_LABEL,
    METHOD_NAMES,
    method_components,
    method_config,
    wire_method,
)
from orpo_lab.ui.views import escaped_block, toast_text

HELP = {f.name: f.metadata["help"] for f in fields(TrainConfig)}
DEFAULTS = TrainConfig()
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
PRESET_CHOICES = {"CPU, quick": "cpu-quick", "GPU": "gpu"}


def _number(name: str, label: str, whole: bool = False):
    return gr.Number(
        getattr(DEFAULTS, name),
        label=label,
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


def form_values(config: dict) -> list:
    """A config's values in FORM order, as the form's components take them (trackers as a list)."""
    return [parse_report_to(config[n]) if n == "report_to" else config[n] for n in FORM_NAMES]


DATA_OPTIONS = ["column_map", "train_split", "test_split", "held_out_size", "chat_template"]
DATA_NAMES = ["model", "dataset", "trust_remote_code", "skip_bad_rows", *DATA_OPTIONS]
LAUNCH_NAMES = ["run_name", *METHOD_NAMES, "device"]


def safe_filename(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name).lstrip(".")
    return stem or "upload"


# ---------------------------------------------------------------- dataset panel


def dataset_panel(ctx: AppContext) -> SimpleNamespace:
    """Model and data: a path or hub id, an upload, the chat votes; a preview that checks them."""
    p = SimpleNamespace()
    p.model = gr.Textbox(ctx.model, label="model", info=HELP["model"], elem_id="model")
    p.dataset = gr.Textbox("default", label="dataset", info=HELP["dataset"], elem_id="dataset")
    with gr.Row():
        p.upload = gr.UploadButton(
            "Upload a dataset (.jsonl .json .csv .parquet)", size="sm", elem_id="upload"
        )
        p.votes = gr.Button("Use my chat votes", size="sm", elem_id="use-votes")
        p.preview_btn = gr.Button("Preview and check", size="sm", elem_id="preview-btn")
    with gr.Row():
        p.trust_remote_code = gr.Checkbox(
            False, label="trust remote code", info=HELP["trust_remote_code"]
        )
        p.skip_bad_rows = gr.Checkbox(
            False, label="skip bad rows", info=HELP["skip_bad_rows"], elem_id="skip-bad-rows"
        )
    with gr.Accordion(
        "data options: columns, splits, held-out pairs, chat template",
        open=False,
        elem_id="data-options",
    ):
        with gr.Row():
            p.column_map = gr.Textbox(
                "",
                label="column map",
                info=HELP["column_map"],
                elem_id="column-map",
                placeholder="question=prompt",
            )
            p.train_split = gr.Textbox(
                DEFAULTS.train_split,
                label="train split",
                info=HELP["train_split"],
                elem_id="train-split",
            )
            p.test_split = gr.Textbox(
                DEFAULTS.test_split,
                label="test split",
                info=HELP["test_split"],
                elem_id="test-split",
            )
        with gr.Row():
            p.held_out_size = gr.Number(
                DEFAULTS.held_out_size,
                label="held-out size",
                info=HELP["held_out_size"],
                elem_id="held-out-size",
            )
            p.chat_template = gr.Textbox(
                "", label="chat template", info=HELP["chat_template"], elem_id="chat-template"
            )
    return p


def data_components(p: SimpleNamespace) -> list:
    """The dataset panel's inputs, in DATA_NAMES order."""
    return [getattr(p, name) for name in DATA_NAMES]


def _tokens_html(tokens: list[str], colour: str) -> str:
    """Tokens as alternating shaded spans, so every token boundary is visible."""
    shades = (f"background:{colour}33", f"background:{colour}66")
    return "".join(
        f'<span style="{shades[i % 2]}">{html.escape(t)}</span>' for i, t in enumerate(tokens)
    )


def preview(ctx: AppContext, v: dict) -> str:
    """The first pairs exactly as trained (prompt tokens, response tokens), the held-out split, or
    what is wrong with the data or the model."""
    from orpo_lab.data import preview_pairs
    from orpo_lab.model import load_tokenizer
    from orpo_lab.prepared import checked_splits, prepare_data

    try:
        cfg = TrainConfig.from_dict(
            {k: v[k] for k in DATA_OPTIONS}
            | {
                "dataset": (v["dataset"] or "").strip() or "default",
                "skip_bad_rows": bool(v["skip_bad_rows"]),
            }
        )
        train, _, info = checked_splits(cfg)  # cached: the run reads the same checked rows
        tokenizer = load_tokenizer(
            (v["model"] or "").strip() or ctx.model, bool(v["trust_remote_code"]), cfg.chat_template
        )
        truncation = prepare_data(cfg, tokenizer).stats["truncation"]
        shown = preview_pairs(
            train,
            tokenizer,
            n=3,
            max_length=cfg.max_length,
            max_prompt_length=cfg.max_prompt_length,
        )
    except Exception as err:  # a broken file, a missing model, a template it needs: say so inline
        return f"<p><b>Cannot use this dataset/model:</b></p>{escaped_block(str(err))}"
    blocks = [
        f"<p>{info['train_pairs']} training pairs; held out: {html.escape(info['held_out'])}. "
        "The first pairs exactly as the model trains on them, one shaded span per token: "
        "<b>prompt</b> (grey, not scored), <b>chosen</b> (blue) and <b>rejected</b> (red) "
        "responses.</p>" + truncation_html(truncation, cfg)
    ]
    for pair in shown:
        cut = " <i>(cut to fit max_length)</i>" if pair["truncated"] else ""
        blocks.append(
            f"<p><b>prompt</b>{cut}</p><pre style='white-space:pre-wrap'>{_tokens_html(pair['prompt_tokens'], '#888888')}</pre>"
            f"<p><b>chosen</b></p><pre style='white-space:pre-wrap'>{_tokens_html(pair['chosen_tokens'], '#1f77b4')}</pre>"
            f"<p><b>rejected</b></p><pre style='white-space:pre-wrap'>{_tokens_html(pair['rejected_tokens'], '#d62728')}</pre>"
        )
    return "<hr>".join(blocks)


def truncation_html(truncation: dict, cfg: TrainConfig) -> str:
    """One line per split: how many pairs max_length / max_prompt_length cut, and by how much."""
    lines = []
    for split, r in truncation.items():
        name = "training" if split == "train" else "held-out"
        dropped = (
            f"; {r['empty_response_dropped']} dropped (a response with no token left)"
            if r["empty_response_dropped"]
            else ""
        )
        lines.append(
            f"{name}: {r['truncated_pairs']} of {r['pairs']} pairs cut to fit (prompt cut in "
            f"{r['prompt_cut_pairs']}, {r['prompt_tokens_cut']} tokens; a response cut in "
            f"{r['response_cut_pairs']}, {r['response_tokens_cut']} tokens){dropped}"
        )
    budget = f"max_length {cfg.max_length}, max_prompt_length {cfg.max_prompt_length}"
    return f"<p>Truncation ({budget}): {html.escape('; '.join(lines))}.</p>"


def wire_dataset(ctx: AppContext, p: SimpleNamespace) -> None:
    def upload_dataset(file):
        if not file:
            return gr.skip(), gr.skip()
        if Path(file).suffix.lower() not in DATA_SUFFIXES:
            name = html.escape(Path(file).name)
            return gr.skip(), (
                f"<p><b>Not used:</b> {name} is not a dataset file; upload "
                f"{' / '.join(DATA_SUFFIXES)}.</p>"
            )
        ctx.uploads.mkdir(parents=True, exist_ok=True)
        target = ctx.uploads / safe_filename(file)  # never a path the client chose
        shutil.copyfile(file, target)
        return str(target), f"<p>Uploaded as <code>{target}</code>: press Preview and check.</p>"

    def votes_dataset():
        """The chat votes as a dataset file (ties, duplicates and contradictions left out)."""
        from orpo_lab.votes import clean_votes, describe, read_votes, votes_to_dataset

        pairs, report = clean_votes(read_votes(ctx.votes_path))
        if not pairs:
            return (
                gr.skip(),
                f"<p><b>No usable votes yet:</b> {describe(report)} Vote in the Chat tab.</p>",
            )
        try:
            dataset = votes_to_dataset(pairs)
        except ValueError as err:
            return gr.skip(), f"<p><b>Cannot use the votes:</b></p>{escaped_block(str(err))}"
        ctx.uploads.mkdir(parents=True, exist_ok=True)
        target = ctx.uploads / "chat-votes.jsonl"
        dataset.to_json(target, lines=True, force_ascii=False)
        return str(target), f"<p>{describe(report)}</p>"

    p.upload.upload(upload_dataset, p.upload, [p.dataset, p.preview], api_name="upload")
    p.votes.click(votes_dataset, None, [p.dataset, p.preview], api_name="votes_dataset")
    p.preview_btn.click(
        named(DATA_NAMES, lambda v: preview(ctx, v)),
        data_components(p),
        p.preview,
        api_name="preview",
    )


# ---------------------------------------------------------------- hyperparameters and launch


def hyperparameter_panel() -> dict:
    """The form: field name -> component, folded away under the presets."""
    with gr.Accordion("hyperparameters", open=False, elem_id="hyperparameters"):
        with gr.Row(equal_height=True):
            return {name: make() for name, make in FORM.items()}


def launch_panel() -> SimpleNamespace:
    p = SimpleNamespace()
    p.run_name = gr.Textbox(
        "",
        label="run name",
        elem_id="run-name",
        info="letters, digits, '.', '_', '-'; empty: a timestamp",
    )
    p.preset = gr.Radio(
        list(PRESET_CHOICES),
        label="preset",
        elem_id="preset",
        info="fill the form with a starting point",
    )
    method_components(p)  # method, init_checkpoint, ref_checkpoint (orpo_lab.ui.method_panel)
    p.device = gr.Dropdown(
        ["auto", "cpu", "cuda"], value="auto", label="device", info=HELP["device"]
    )
    return p


def train_tab(ctx: AppContext) -> SimpleNamespace:
    """Lay out the upper half of the Train tab; returns its panels (data, form, launch)."""
    with gr.Row():
        with gr.Column(scale=2):
            data = dataset_panel(ctx)
        with gr.Column(scale=1):
            launch = launch_panel()
    data.preview = gr.HTML(elem_id="preview")
    form = hyperparameter_panel()
    launch.steps_note = gr.Markdown(elem_id="steps-note")  # what max_steps means for this data
    with gr.Row():
        launch.start = gr.Button("Start training", variant="primary", elem_id="start")
        launch.stop = gr.Button("Stop", variant="stop", elem_id="stop")
        launch.resume = gr.Button("Resume", elem_id="resume")
    launch.message = gr.Markdown(elem_id="train-message")
    return SimpleNamespace(data=data, form=form, launch=launch)


def form_config(v: dict, default_model: str, ctx: AppContext) -> dict:
    """Form values -> TrainConfig values (types are checked by TrainConfig.from_dict)."""
    config = {name: v[name] for name in FORM_NAMES}
    config["report_to"] = ",".join(v["report_to"] or []) or "none"  # the ticked trackers
    config.update({name: v[name] for name in DATA_OPTIONS})
    config.update(
        model=(v["model"] or "").strip() or default_model,
        dataset=(v["dataset"] or "").strip() or "default",
        trust_remote_code=bool(v["trust_remote_code"]),
        skip_bad_rows=bool(v["skip_bad_rows"]),
        device=v["device"] or "auto",
    )
    config.update(method_config(ctx, v))  # SFT: TrainConfig sets beta 0, as the form shows it
    return config


STEPS_NAMES = [
    "dataset",
    "skip_bad_rows",
    *DATA_OPTIONS,
    "max_steps",
    "epochs",
    "batch_size",
    "grad_accum",
]


def steps_note(v: dict) -> str:
    """How many optimiser steps the run will take: max_steps, or for -1 what the epochs make of
    this dataset and batch ("1 epoch = 126 steps"), as the trainer counts them."""
    max_steps = int(v["max_steps"] or 0)
    if max_steps > 0:
        return f"Run length: **{max_steps} steps** (max steps > 0; epochs is ignored)."
    if max_steps < -1:
        return (
            f"**max steps {max_steps} is refused:** -1 lets epochs decide; a count above 0 "
            "sets the steps."
        )
    from orpo_lab.prepared import check_data

    try:
        cfg = TrainConfig.from_dict(
            {k: v[k] for k in DATA_OPTIONS}
            | {
                "dataset": (v["dataset"] or "").strip() or "default",
                "skip_bad_rows": bool(v["skip_bad_rows"]),
                "batch_size": v["batch_size"],
                "grad_accum": v["grad_accum"],
                "epochs": v["epochs"],
            }
        )
        pairs = check_data(cfg)["train_pairs"]  # cached: the run reads the same checked rows
    except Exception as err:  # the data is not usable yet: Preview and check says why
        problem = str(err).splitlines()[0][:200]
        return f"Run length: max steps -1 lets epochs decide (the data is not usable: {problem})."
    per_epoch = pairs // cfg.batch_size  # batches per pass, as the trainer counts them
    epoch = max(1, math.ceil(per_epoch / cfg.grad_accum))
    total = max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))
    return (
        f"Run length: max steps -1 lets epochs decide: **1 epoch = {epoch} steps** ({pairs} "
        f"training pairs / batch size {cfg.batch_size} / grad accumulation {cfg.grad_accum}); "
        f"{cfg.epochs:g} epoch(s) = **{total} steps**."
    )


def steps_inputs(data, form: dict) -> list:
    """The components steps_note reads, in STEPS_NAMES order."""
    return [form[n] if n in form else getattr(data, n) for n in STEPS_NAMES]


def wire_steps_note(data, form: dict, launch) -> None:
    """The run length under the form follows the data, the batch and the steps as they change."""
    texts = [data.dataset, data.column_map, data.train_split, data.test_split, data.chat_template]
    triggers = [
        *[t.blur for t in texts],
        *[t.submit for t in texts],
        data.skip_bad_rows.change,
        data.held_out_size.change,
        *[form[n].change for n in STEPS_NAMES[-4:]],
    ]
    gr.on(
        triggers,
        named(STEPS_NAMES, steps_note),
        steps_inputs(data, form),
        launch.steps_note,
        api_name="steps_note",
        show_progress="hidden",
    )


def wire_launch(ctx, data, form: dict, launch, live) -> None:
    """Presets, the method, Start, Stop and Resume; `live` is the run shown below."""
    manager = ctx.manager
    form_inputs = list(form.values())

    def apply_preset(label):
        values = form_values({**DEFAULTS.to_dict(), **PRESETS[PRESET_CHOICES[label]]})
        # The trackers are the user's choice, not the preset's: left as they are.
        return [
            gr.skip() if n == "report_to" else v for n, v in zip(FORM_NAMES, values, strict=True)
        ]

    def start(v):
        try:
            config = form_config(v, ctx.model, ctx)
            name = manager.start(config, (v["run_name"] or "").strip() or None)
        except ValueError as err:  # RunError is a ValueError too
            gr.Warning(toast_text(str(err)))  # the full message is in the launch panel
            return gr.skip(), f"**Not started:** {err}", gr.skip()
        queued = manager.status(name)["status"] == "queued"
        when = "it starts when its device is free" if queued else "it started at once"
        return (
            gr.update(choices=manager.names(), value=name),
            f"Created run **{name}** ({when}).",
            gr.Timer(2.0),
        )

    def stop(name):
        if not name:
            return "Select a run first."
        try:
            how = manager.stop(name)
        except ValueError as err:
            return f"**Error:** {err}"
        status = manager.status(name)
        verb = {
            "stopped": "Stopped",
            "killed": "Killed",
            "cancelled": "Cancelled",
            "stopping": "Stopping",
        }.get(how)
        if verb is None:
            return f"**{name}** is not running ({status.get('status')})."
        return f"{verb} **{name}**: {status.get('message')}"  # the status says what is on disk

    def resume(name):
        try:
            checkpoint = manager.resume(name or "")
        except ValueError as err:
            return gr.skip(), f"**Not resumed:** {err}", gr.skip()
        return gr.update(value=name), f"Resumed **{name}** from {checkpoint}.", gr.Timer(2.0)

    launch.preset.change(apply_preset, launch.preset, form_inputs, api_name="preset")
    wire_method(ctx, launch, form["beta"])
    names = DATA_NAMES + LAUNCH_NAMES + FORM_NAMES
    inputs = [*data_components(data), *[getattr(launch, n) for n in LAUNCH_NAMES], *form_inputs]
    busy = [live.run, launch.message, live.timer]  # a new or resumed run: follow it closely again
    launch.start.click(named(names, start), inputs, busy, api_name="start")
    launch.stop.click(stop, live.run, launch.message, api_name="stop")
    launch.resume.click(resume, live.run, busy, api_name="resume")
