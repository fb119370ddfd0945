"""The Train tab's lower half: the run shown live (`live_view` draws it), the runs table and the
overlay, and the run's artefacts: checkpoint zip, merged export, hub push, config, delete."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import gradio as gr

from orpo_lab.plots import compare_figure
from orpo_lab.ui.common import AppContext
from orpo_lab.ui.form_fields import LOADED_NAMES, loaded_values
from orpo_lab.ui.live_view import CURVES_CAPTION, WEIGHTING_HELP, show, tick
from orpo_lab.ui.views import RUN_COLUMNS, RUN_WIDTHS

CONFIRM_DELETE = (
    "(run) => (run && confirm(`Delete run ${run}, its checkpoints and metrics?`)) ? run : null"
)


def _live_area(p: SimpleNamespace) -> None:
    """The run shown: its progress, how it started, its curves and its gradient weighting."""
    with gr.Row():
        p.run.render()
        p.smoothing = gr.Slider(
            0,
            0.95,
            0.6,
            step=0.05,
            label="smoothing of the training lines",
            info="0 = raw",
            scale=1,
            elem_id="smoothing",
        )
    p.progress = gr.Markdown(elem_id="progress")
    with gr.Accordion(
        "how the run started (data, held-out pairs, precision, compile) and its log",
        open=False,
        elem_id="run-start",
    ):
        p.started = gr.Markdown(elem_id="run-started")
        p.log = gr.Code(label="train.log (its last lines)", interactive=False, elem_id="run-log")
    gr.Markdown(CURVES_CAPTION, elem_id="curves-help")
    p.plot = gr.Plot(label="training curves", elem_id="train-plot")
    gr.Markdown(WEIGHTING_HELP, elem_id="weighting-help")
    p.weighting = gr.Plot(
        label="gradient weighting on the held-out pairs", elem_id="weighting-plot"
    )
    p.seen = gr.State("")  # what the page last drew: redraw only when the folder changed
    p.drawn_at = gr.State(0.0)  # when it last drew the curves (time.monotonic())
    p.pinned = gr.State(False)  # the user picked a checkpoint: stop following the newest
    p.timer.render()


def _runs_area(ctx: AppContext, p: SimpleNamespace) -> None:
    """Every run in a table, an overlay of some, and the artefacts of the run shown."""
    gr.Markdown(
        f"## Runs\nin `{ctx.manager.runs_dir}` (one folder per run: config.yaml, "
        "status.json, metrics.jsonl, train.log, checkpoints/)",
        elem_id="runs-folder",
    )
    p.table = gr.Dataframe(
        headers=RUN_COLUMNS,
        value=[],
        interactive=False,
        wrap=True,
        column_widths=RUN_WIDTHS,
        elem_id="runs-table",
    )
    with gr.Row():
        p.overlay = gr.Dropdown(
            [],
            multiselect=True,
            label="overlay runs (e.g. SFT vs ORPO)",
            scale=3,
            elem_id="overlay-select",
            allow_custom_value=True,
        )
        p.overlay_btn = gr.Button("Overlay", scale=1, elem_id="overlay-btn")
    p.compare = gr.Plot(label="runs compared", elem_id="compare-plot")
    gr.Markdown("### The run shown: its checkpoints and files")
    with gr.Row():
        # Choices follow the disk; the handlers check every value they are sent.
        p.checkpoint = gr.Dropdown(
            [], label="checkpoint", elem_id="checkpoint-select", allow_custom_value=True
        )
        p.zip = gr.Button("Download adapter (zip)", elem_id="zip")
        p.export = gr.Button("Merge and export", elem_id="export")
        p.delete = gr.Button("Delete run", variant="stop", elem_id="delete")
    with gr.Row():
        p.repo_id = gr.Textbox(
            "",
            label="hub repository",
            placeholder="owner/name",
            scale=3,
            info="needs a hub login (`hf auth login` or HF_TOKEN)",
            elem_id="hub-repo",
        )
        p.public = gr.Checkbox(
            False, label="public", info="private unless ticked", elem_id="hub-public"
        )
        p.push = gr.Button("Push adapter to the hub", elem_id="push-hub")
    p.download = gr.File(label="adapter zip", interactive=False, elem_id="download")
    p.artefact = gr.Markdown(elem_id="artefact-message")
    with gr.Accordion("config of the run shown", open=False):
        p.config = gr.Code(
            language="yaml", label="config.yaml", interactive=False, elem_id="run-config"
        )
        p.load_config = gr.Button("Load into the form", size="sm", elem_id="load-config")


def runs_panel(ctx: AppContext, shown: SimpleNamespace, form: dict) -> gr.Dropdown:
    """Lay out and wire the lower half of the Train tab around the run `shown` (common.run_shown);
    "Load into the form" fills `form` ({name: component}, form_fields.LOADED_NAMES).
    Returns the checkpoint dropdown of the run shown."""
    p = SimpleNamespace(run=shown.run, timer=shown.timer)
    _live_area(p)
    _runs_area(ctx, p)
    run, checkpoint = p.run, p.checkpoint

    show_outputs = [p.plot, p.progress, checkpoint, p.download, p.weighting, p.config]
    show_outputs += [p.started, p.log]
    run.change(partial(show, ctx, p), [run, p.smoothing], show_outputs, api_name="show_run")
    run.change(lambda: False, None, p.pinned, api_visibility="private")
    checkpoint.input(lambda: True, None, p.pinned, api_visibility="private")
    p.smoothing.change(
        lambda n, s: show(ctx, p, n, s)[p.plot],
        [run, p.smoothing],
        p.plot,
        api_visibility="private",
        show_progress="hidden",
    )
    tick_outputs = [run, p.plot, p.progress, p.seen, p.table, p.overlay, checkpoint, p.weighting]
    tick_outputs += [p.timer, p.config, p.started, p.log, p.drawn_at]
    p.timer.tick(
        partial(tick, ctx, p),
        [run, p.seen, p.smoothing, checkpoint, p.pinned, p.drawn_at],
        tick_outputs,
        api_name="tick",
        show_progress="hidden",
    )
    p.overlay_btn.click(
        partial(overlay, ctx), [p.overlay, p.smoothing], p.compare, api_name="compare"
    )
    p.zip.click(
        partial(download, ctx, p), [run, checkpoint], [p.download, p.artefact], api_name="download"
    )
    p.export.click(partial(export, ctx), [run, checkpoint], p.artefact, api_name="export")
    p.push.click(
        partial(push, ctx),
        [run, checkpoint, p.repo_id, p.public],
        p.artefact,
        api_name="push_to_hub",
    )
    p.delete.click(
        partial(delete, ctx, p), run, [run, p.artefact], api_name="delete", js=CONFIRM_DELETE
    )
    p.load_config.click(
        partial(load_config, ctx, form),
        run,
        [form[n] for n in LOADED_NAMES],
        api_name="load_config",
    )
    return checkpoint


def overlay(ctx: AppContext, names, smoothing):
    present = [n for n in names or [] if n in ctx.manager.names()]
    return compare_figure({n: ctx.manager.metrics(n) for n in present}, smoothing)


def download(ctx: AppContext, p: SimpleNamespace, name, checkpoint) -> dict:
    try:
        return {p.download: str(ctx.manager.zip_checkpoint(name, checkpoint)), p.artefact: ""}
    except ValueError as err:
        return {p.download: None, p.artefact: f"**Not zipped:** {err}"}


def export(ctx: AppContext, name, checkpoint) -> str:
    try:
        return f"Merged model written to `{ctx.manager.export(name, checkpoint)}`."
    except ValueError as err:
        return f"**Export failed:** {err}"


def push(ctx: AppContext, name, checkpoint, repo_id, public) -> str:
    """The checkpoint's adapter, tokenizer and model card to a hub repository (`orpo_lab.hub`)."""
    from orpo_lab.hub import push_to_hub

    try:
        path = ctx.manager.checkpoint_path(name or "", checkpoint or "")
        url = push_to_hub(path.parent.parent, repo_id, path, private=not public)
    except ValueError as err:
        return f"**Not pushed:** {err}"
    where = "public" if public else "private"
    return f"Pushed the adapter of {name}/{checkpoint} to {url} ({where})."


def delete(ctx: AppContext, p: SimpleNamespace, name) -> dict:
    if not name:  # the confirmation was declined (or nothing selected)
        return {p.artefact: "Nothing deleted."}
    try:
        ctx.manager.delete(name)
    except ValueError as err:
        return {p.artefact: f"**Not deleted:** {err}"}
    names = ctx.manager.names()
    return {
        p.run: gr.update(choices=names, value=names[0] if names else None),
        p.artefact: f"Deleted **{name}**.",
    }


def load_config(ctx: AppContext, form: dict, name) -> dict:
    """The form, model and dataset as the run had them, and a fresh run name."""
    config = ctx.manager.config(name) if name in ctx.manager.names() else {}
    values = loaded_values(config, f"{name}-again" if name else "")
    return {form[n]: value for n, value in values.items()}
