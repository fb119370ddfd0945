"""The Train tab's upper half: the dataset panel, the method and the hyperparameters, and the launch
buttons (start, stop, resume). Its fields are named as TrainConfig names them (`form_fields`)."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import gradio as gr

from orpo_lab.presets import PRESETS
from orpo_lab.ui.common import BUSY_TICK_S, AppContext, named
from orpo_lab.ui.data_preview import (
    STEPS_NAMES,
    preview,
    steps_note,
    uploaded_dataset,
    votes_dataset,
)
from orpo_lab.ui.form_fields import (
    BETA_LABEL,
    BETA_LOCKED,
    DATA_NAMES,
    DEFAULTS,
    FORM,
    FORM_NAMES,
    HELP,
    LAUNCH_NAMES,
    LOADED_NAMES,
    METHODS,
    REF_BASE,
    REF_START,
    START_BASE,
    form_config,
    form_values,
)
from orpo_lab.ui.views import toast_text

PRESET_CHOICES = {"CPU, quick": "cpu-quick", "GPU": "gpu"}
STOPPED = {
    "stopped": "Stopped",
    "killed": "Killed",
    "cancelled": "Cancelled",
    "stopping": "Stopping",
}


def _dataset_panel(ctx: AppContext, p: SimpleNamespace) -> None:
    """Model and data: a path or hub id, an upload, the chat votes, and the data options."""
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
    options = "data options: columns, splits, held-out pairs, chat template"
    with gr.Accordion(options, open=False, elem_id="data-options"):
        with gr.Row():
            for name, default, placeholder in (
                ("column_map", "", "question=prompt"),
                ("train_split", DEFAULTS.train_split, None),
                ("test_split", DEFAULTS.test_split, None),
            ):
                setattr(p, name, _data_option(name, default, placeholder=placeholder))
        with gr.Row():
            p.held_out_size = gr.Number(
                DEFAULTS.held_out_size,
                label="held-out size",
                info=HELP["held_out_size"],
                elem_id="held-out-size",
            )
            p.chat_template = _data_option("chat_template", "")


def _data_option(name: str, default: str, placeholder: str | None = None) -> gr.Textbox:
    label = name.replace("_", " ")
    elem_id = name.replace("_", "-")
    return gr.Textbox(
        default, label=label, info=HELP[name], elem_id=elem_id, placeholder=placeholder
    )


def _launch_panel(p: SimpleNamespace) -> None:
    """The run's name, a preset, the method with its starting point and reference, the device."""
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
    p.device = gr.Dropdown(
        ["auto", "cpu", "cuda"], value="auto", label="device", info=HELP["device"]
    )


def train_tab(ctx: AppContext, demo: gr.Blocks, shown: SimpleNamespace) -> dict:
    """Lay out and wire the upper half of the Train tab. Start and Resume select the new run in
    `shown` (common.run_shown) and speed up its timer; Stop stops the run shown.
    Returns {name: component} for the fields a run's config fills (form_fields.LOADED_NAMES)."""
    p = SimpleNamespace(run=shown.run, timer=shown.timer)
    with gr.Row():
        with gr.Column(scale=2):
            _dataset_panel(ctx, p)
        with gr.Column(scale=1):
            _launch_panel(p)
    p.preview = gr.HTML(elem_id="preview")
    with gr.Accordion("hyperparameters", open=False, elem_id="hyperparameters"):
        with gr.Row(equal_height=True):
            p.form = {name: make() for name, make in FORM.items()}
    p.steps_note = gr.Markdown(elem_id="steps-note")  # what max_steps means for this data
    with gr.Row():
        p.start = gr.Button("Start training", variant="primary", elem_id="start")
        p.stop = gr.Button("Stop", variant="stop", elem_id="stop")
        p.resume = gr.Button("Resume", elem_id="resume")
    p.message = gr.Markdown(elem_id="train-message")
    fields = {**p.form, **{n: getattr(p, n) for n in [*DATA_NAMES, *LAUNCH_NAMES]}}

    p.upload.upload(partial(upload, ctx, p), p.upload, [p.dataset, p.preview], api_name="upload")
    p.votes.click(
        partial(use_votes, ctx, p), None, [p.dataset, p.preview], api_name="votes_dataset"
    )
    data = [fields[n] for n in DATA_NAMES]
    preview_fn = named(DATA_NAMES, partial(preview, ctx))
    p.preview_btn.click(preview_fn, data, p.preview, api_name="preview")
    p.preset.change(partial(apply_preset, p), p.preset, list(p.form.values()), api_name="preset")
    p.method.change(
        partial(method_switch, p),
        [p.method, p.form["beta"], p.beta_memory],
        [p.form["beta"], p.beta_memory],
        api_name="method_switch",
    )
    boxes = [p.init_checkpoint, p.ref_checkpoint]
    for box in boxes:  # a run may have saved a checkpoint since the page loaded
        box.focus(
            partial(checkpoint_updates, ctx, p),
            boxes,
            boxes,
            api_visibility="private",
            show_progress="hidden",
        )
    names = DATA_NAMES + LAUNCH_NAMES + FORM_NAMES
    busy = [p.run, p.message, p.timer]  # a new or resumed run: follow it closely again
    p.start.click(
        named(names, partial(start, ctx, p)), [fields[n] for n in names], busy, api_name="start"
    )
    p.stop.click(partial(stop, ctx), p.run, p.message, api_name="stop")
    p.resume.click(partial(resume, ctx, p), p.run, busy, api_name="resume")

    # The run length under the form follows the data, the batch and the steps as they change.
    texts = [p.dataset, p.column_map, p.train_split, p.test_split, p.chat_template]
    triggers = [
        *[t.blur for t in texts],
        *[t.submit for t in texts],
        p.skip_bad_rows.change,
        p.held_out_size.change,
        *[p.form[n].change for n in STEPS_NAMES[-4:]],
    ]
    note, note_inputs = named(STEPS_NAMES, steps_note), [fields[n] for n in STEPS_NAMES]
    gr.on(triggers, note, note_inputs, p.steps_note, api_name="steps_note", show_progress="hidden")
    demo.load(note, note_inputs, p.steps_note, api_visibility="private")
    return {n: fields[n] for n in LOADED_NAMES}


def upload(ctx: AppContext, p: SimpleNamespace, file) -> dict:
    if not file:
        return gr.skip()
    path, note = uploaded_dataset(ctx, file)
    return {p.preview: note} | ({p.dataset: path} if path else {})  # a refused file: box kept


def use_votes(ctx: AppContext, p: SimpleNamespace) -> dict:
    path, note = votes_dataset(ctx)
    return {p.preview: note} | ({p.dataset: path} if path else {})


def apply_preset(p: SimpleNamespace, label: str) -> dict:
    values = form_values({**DEFAULTS.to_dict(), **PRESETS[PRESET_CHOICES[label]]})
    # The trackers are the user's choice, not the preset's: left as they are.
    return {p.form[n]: v for n, v in zip(FORM_NAMES, values, strict=True) if n != "report_to"}


def method_switch(p: SimpleNamespace, method: str, beta, remembered) -> dict:
    """SFT trains with beta 0: show it and keep the field from edits, remembering the value;
    other methods give the previous value back."""
    if method == "sft":
        locked = beta if remembered is None else remembered
        return {
            p.form["beta"]: gr.update(value=0, interactive=False, label=BETA_LOCKED),
            p.beta_memory: locked,
        }
    value = remembered if remembered is not None else beta
    return {
        p.form["beta"]: gr.update(value=value, interactive=True, label=BETA_LABEL),
        p.beta_memory: None,
    }


def checkpoint_updates(ctx: AppContext, p: SimpleNamespace, start: str, ref: str) -> dict:
    """Both dropdowns listing every checkpoint of every run, keeping what is selected."""
    checkpoints = [(c, c) for c in ctx.checkpoint_choices()]
    return {
        p.init_checkpoint: gr.update(choices=[START_BASE, *checkpoints], value=start),
        p.ref_checkpoint: gr.update(choices=[REF_START, REF_BASE, *checkpoints], value=ref),
    }


def start(ctx: AppContext, p: SimpleNamespace, v: dict) -> dict:
    try:
        config = form_config(ctx, v)
        name = ctx.manager.start(config, (v["run_name"] or "").strip() or None)
    except ValueError as err:  # RunError is a ValueError too
        gr.Warning(toast_text(str(err)))  # the full message is in the launch panel
        return {p.message: f"**Not started:** {err}"}
    queued = ctx.manager.status(name)["status"] == "queued"
    when = "it starts when its device is free" if queued else "it started at once"
    return {
        p.run: gr.update(choices=ctx.manager.names(), value=name),
        p.message: f"Created run **{name}** ({when}).",
        p.timer: gr.Timer(BUSY_TICK_S),
    }


def stop(ctx: AppContext, name: str | None) -> str:
    if not name:
        return "Select a run first."
    try:
        how = ctx.manager.stop(name)
    except ValueError as err:
        return f"**Error:** {err}"
    status = ctx.manager.status(name)
    if how not in STOPPED:
        return f"**{name}** is not running ({status.get('status')})."
    return f"{STOPPED[how]} **{name}**: {status.get('message')}"  # the status says what is on disk


def resume(ctx: AppContext, p: SimpleNamespace, name: str | None) -> dict:
    try:
        checkpoint = ctx.manager.resume(name or "")
    except ValueError as err:
        return {p.message: f"**Not resumed:** {err}"}
    return {
        p.run: gr.update(value=name),
        p.message: f"Resumed **{name}** from {checkpoint}.",
        p.timer: gr.Timer(BUSY_TICK_S),
    }
