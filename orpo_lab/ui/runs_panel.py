"""The Train tab's lower half: the run shown live, the runs table, the overlay, a run's artefacts
(checkpoint zip, merged export, config, delete) and the judged evaluation of a checkpoint."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import gradio as gr
import plotly.graph_objects as go
import yaml

from orpo_lab.plots import compare_figure, metrics_figure
from orpo_lab.rate_tables import pass_rate_table, sampled_rate_table
from orpo_lab.rundir import ACTIVE
from orpo_lab.ui.common import AppContext
from orpo_lab.ui.method_panel import method_values
from orpo_lab.ui.train_tab import DATA_OPTIONS, DEFAULTS, form_values
from orpo_lab.ui.views import (
    EVAL_COLUMNS,
    RUN_COLUMNS,
    RUN_WIDTHS,
    SAMPLED_COLUMNS,
    progress_text,
    runs_table,
    started_text,
)
from orpo_lab.weighting_plot import weighting_figure

WEIGHTING_HELP = (
    "**How hard each pair pulls**, at every held-out evaluation: ORPO's gradient is delta(d) times the "
    "chosen and rejected gradients scaled by 1/(1-P) (paper section 4.3; notebook "
    "`02_loss_gradient.ipynb` derives it). delta falls as pairs are separated; the line is the median "
    "pair, the bands hold the middle 50% and 80% of the pairs."
)
BUSY_TICK_S, IDLE_TICK_S = 2.0, 10.0  # poll the runs folder often only while a run is not over
CURVES_HELP = (
    "Lines are the training batches (a new batch every step, so they jump); dots are the same "
    "held-out pairs at every evaluation: the numbers to compare. Chosen is blue, rejected red. "
    "Each panel, what it shows and what to expect (the notebooks in `notebooks/` derive them):"
)
# One line per panel of `plots.metrics_figure`, in its order: what it shows, what to expect.
PANEL_CAPTIONS = [
    (
        "mean log-prob",
        "the average log-probability per token of the chosen and the rejected "
        "response. Expect chosen to rise; ORPO keeps rejected down, SFT lifts both "
        "(`00_why_orpo.ipynb`, `03_text_to_logps.ipynb`).",
    ),
    (
        "log-odds ratio",
        "log(odds of chosen / odds of rejected), odds = P / (1 - P) of the mean "
        "per-token probability P. Starts near 0; expect it to climb as the pairs separate "
        "(`01_odds.ipynb`).",
    ),
    (
        "loss",
        "total = NLL (the SFT term on chosen) + beta x L_OR; L_OR (unweighted) is "
        "-log sigmoid(log-odds ratio), drawn before beta scales it. Expect NLL to fall; L_OR falls "
        "from ln 2 = 0.69 as the ratio grows (`02_loss_gradient.ipynb`). Other methods: prob_ratio "
        "adds L_PR (a probability ratio) instead, DPO's total is its own loss (from ln 2 at step 1); "
        "`06_objectives.ipynb` compares the methods.",
    ),
    (
        "preference accuracy",
        "the fraction of pairs whose chosen response has the higher mean "
        "log-prob. Expect it to rise from about 0.5 towards 1; the held-out dots are the honest "
        "number (`04_training.ipynb`).",
    ),
    (
        "learning rate",
        "the schedule: warm-up, then decay. Expect the shape you set; a curve that "
        "turns where the rate does is following it.",
    ),
    (
        "log-prob margin",
        "chosen minus rejected mean log-prob, per training batch. Expect it to "
        "grow; the log-odds ratio follows it, stretched where P is high (`01_odds.ipynb`).",
    ),
]


def live_panel(ctx: AppContext) -> SimpleNamespace:
    p = SimpleNamespace()
    with gr.Row():
        p.run = gr.Dropdown(
            ctx.manager.names(),
            label="run shown",
            elem_id="run-select",
            scale=3,
            allow_custom_value=True,
        )
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
    gr.Markdown(
        CURVES_HELP + "\n" + "\n".join(f"- **{t}**: {c}" for t, c in PANEL_CAPTIONS),
        elem_id="curves-help",
    )
    p.plot = gr.Plot(label="training curves", elem_id="train-plot")
    gr.Markdown(WEIGHTING_HELP, elem_id="weighting-help")
    p.weighting = gr.Plot(
        label="gradient weighting on the held-out pairs", elem_id="weighting-plot"
    )
    p.seen = gr.State("")  # what the page last drew: redraw only when the folder changed
    p.pinned = gr.State(False)  # the user picked a checkpoint: stop following the newest
    p.timer = gr.Timer(BUSY_TICK_S)
    return p


def runs_panel(ctx: AppContext) -> SimpleNamespace:
    p = SimpleNamespace()
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
    with gr.Accordion("evaluate: base model vs this checkpoint, judged", open=False):
        gr.Markdown(
            "Greedy answers to held-out prompts of the default dataset, each checked by its "
            "family's judge; out-of-domain (ood) prompts are of kinds never trained on. "
            "With samples above 0, each prompt is also answered that many times at the "
            "temperature (seeded): the share of samples that pass, with a 95% interval, "
            "and the share that do what the rejected replies do."
        )
        with gr.Row():
            p.eval_prompts = gr.Slider(
                8, 280, 32, step=8, label="held-out prompts", elem_id="eval-prompts"
            )
            p.eval_samples = gr.Slider(
                0,
                10,
                0,
                step=1,
                label="samples per prompt (0: greedy only)",
                elem_id="eval-samples",
            )
            p.eval_temperature = gr.Slider(
                0.1, 1.5, 1.0, step=0.1, label="temperature", elem_id="eval-temperature"
            )
            p.eval_top_p = gr.Slider(0.05, 1.0, 1.0, step=0.05, label="top-p", elem_id="eval-top-p")
            p.evaluate = gr.Button("Evaluate", elem_id="evaluate")
        p.eval_table = gr.Dataframe(
            headers=EVAL_COLUMNS, value=[], interactive=False, elem_id="eval-table"
        )
        p.eval_plot = gr.Plot(label="judged pass rates", elem_id="eval-plot")
        p.eval_sampled = gr.Dataframe(
            headers=SAMPLED_COLUMNS,
            value=[],
            interactive=False,
            label="sampled answers",
            elem_id="eval-sampled",
        )
    return p


def _checkpoint_update(ctx: AppContext, name: str | None, current: str | None = None):
    """The run's checkpoints; the newest selected unless the user picked one (`current`)."""
    names = ctx.manager.names()
    choices = ctx.manager.checkpoints(name) if name in names else []
    if current in choices:
        return gr.update(choices=choices)  # keep what the user picked
    return gr.update(choices=choices, value=choices[-1] if choices else None)


def _config_text(ctx: AppContext, name: str | None) -> str:
    if not name or name not in ctx.manager.names():
        return ""
    return yaml.safe_dump(ctx.manager.config(name), sort_keys=False)


def details(ctx: AppContext, name: str | None, records: list[dict]) -> tuple[str, str, str]:
    """The run's config, how it started (its `started` event) and the end of its train.log."""
    if not name or name not in ctx.manager.names():
        return "", "", ""
    log = ctx.manager.folder(name).log_tail(60)
    return _config_text(ctx, name), started_text(records), log or "(nothing logged yet)"


def pass_rate_figure(summary: dict) -> go.Figure:
    """Bars of judged pass rates: base vs trained, in-domain and out-of-domain, per family."""
    families = sorted(k for k in summary["base"] if k != "all") + ["all"]
    fig = go.Figure()
    for model, colour in (("base", "#7f7f7f"), ("trained", "#2ca02c")):
        for domain, pattern in (("in_domain", ""), ("ood", "/")):
            fig.add_bar(
                x=families,
                y=[100 * summary[model][f][domain] for f in families],
                name=f"{model}, {domain.replace('_', '-')}",
                marker_color=colour,
                marker_pattern_shape=pattern,
            )
    fig.update_layout(
        barmode="group",
        yaxis_title="pass rate (%)",
        yaxis_range=[0, 100],
        height=340,
        template="plotly_white",
        margin=dict(l=50, r=20, t=30, b=40),
    )
    return fig


def show(ctx: AppContext, name, smoothing):
    """Everything about the run shown, when another run is picked."""
    if not name or name not in ctx.manager.names():
        return None, "", gr.update(choices=[], value=None), None, None, "", "", ""
    records, status = ctx.manager.metrics(name), ctx.manager.status(name)
    return (
        metrics_figure(records, smoothing, name),
        progress_text(name, status, records),
        _checkpoint_update(ctx, name),
        None,
        weighting_figure(records),
        *details(ctx, name, records),
    )


def tick(ctx: AppContext, name, seen, smoothing, checkpoint, pinned):
    """Every 2 s: redraw what changed on disk, nothing when nothing did (an idle page is cheap).
    The first tick of a (re)loaded page draws everything, the config of the run shown included.

    A value the user picked is never overwritten (a tick in flight would undo their click):
    only choices follow the disk, and a value only when the old one is gone.
    """
    signature = f"{ctx.manager.signature()}|{name}|{smoothing}"
    if signature == seen:
        return [gr.skip()] * 12
    summaries = ctx.manager.list_runs()
    names = [s["name"] for s in summaries]
    active = [s["name"] for s in summaries if s["status"]["status"] in ACTIVE]
    shown = name if name in names else ([*active, *names, None][0])
    plot, progress, weighting, records = None, "", None, []
    if shown:
        records, status = ctx.manager.metrics(shown), ctx.manager.status(shown)
        plot, progress = (
            metrics_figure(records, smoothing, shown),
            progress_text(shown, status, records),
        )
        weighting = weighting_figure(records)
    run = gr.update(choices=names) if shown == name else gr.update(choices=names, value=shown)
    interval = BUSY_TICK_S if active else IDLE_TICK_S  # an idle page costs almost nothing
    return (
        run,
        plot,
        progress,
        signature,
        runs_table(summaries),
        gr.update(choices=names),
        _checkpoint_update(ctx, shown, checkpoint if pinned else None),
        weighting,
        gr.Timer(interval),
        *details(ctx, shown, records),
    )


def overlay(ctx: AppContext, names, smoothing):
    present = [n for n in names or [] if n in ctx.manager.names()]
    return compare_figure({n: ctx.manager.metrics(n) for n in present}, smoothing)


def download(ctx: AppContext, name, checkpoint):
    try:
        return str(ctx.manager.zip_checkpoint(name, checkpoint)), ""
    except ValueError as err:
        return None, f"**Not zipped:** {err}"


def export(ctx: AppContext, name, checkpoint):
    try:
        return f"Merged model written to `{ctx.manager.export(name, checkpoint)}`."
    except ValueError as err:
        return f"**Export failed:** {err}"


def push(ctx: AppContext, name, checkpoint, repo_id, public):
    """The checkpoint's adapter, tokenizer and model card to a hub repository (`orpo_lab.hub`)."""
    from orpo_lab.hub import push_to_hub

    try:
        path = ctx.manager.checkpoint_path(name or "", checkpoint or "")
        url = push_to_hub(path.parent.parent, repo_id, path, private=not public)
    except ValueError as err:
        return f"**Not pushed:** {err}"
    return (
        f"Pushed the adapter of {name}/{checkpoint} to {url} ({'public' if public else 'private'})."
    )


def delete(ctx: AppContext, name):
    if not name:  # the confirmation was declined (or nothing selected)
        return gr.skip(), "Nothing deleted."
    try:
        ctx.manager.delete(name)
    except ValueError as err:
        return gr.skip(), f"**Not deleted:** {err}"
    names = ctx.manager.names()
    return gr.update(choices=names, value=names[0] if names else None), f"Deleted **{name}**."


def load_config(ctx: AppContext, name):
    """The form, model and dataset as the run had them, and a fresh run name."""
    config = {
        **DEFAULTS.to_dict(),
        **(ctx.manager.config(name) if name in ctx.manager.names() else {}),
    }
    new_name = f"{name}-again" if name else ""
    data = [config[n] for n in DATA_OPTIONS]
    return form_values(config) + [
        config["model"],
        config["dataset"],
        *data,
        new_name,
        *method_values(config),
    ]


def evaluate(
    ctx: AppContext,
    name,
    checkpoint,
    prompts,
    samples=0,
    temperature=1.0,
    top_p=1.0,
    progress=gr.Progress(track_tqdm=True),  # noqa: B008
):
    from orpo_lab.evaluate import evaluate_run

    try:
        path = ctx.manager.checkpoint_path(name or "", checkpoint or "")
        run_evaluation = ctx.evaluate or evaluate_run  # a GPU call on ZeroGPU
        report = run_evaluation(
            str(ctx.manager.run_dir(name)),
            str(path),
            int(prompts),
            samples=int(samples),
            temperature=float(temperature),
            top_p=float(top_p),
        )
    except (ValueError, OSError) as err:
        raise gr.Error(str(err)) from err
    return (
        pass_rate_table(report["summary"]),
        pass_rate_figure(report["summary"]),
        sampled_rate_table(report.get("sampled")),
    )


def wire_runs(ctx: AppContext, live, runs, train) -> None:
    show_outputs = [
        live.plot,
        live.progress,
        runs.checkpoint,
        runs.download,
        live.weighting,
        runs.config,
        live.started,
        live.log,
    ]
    live.run.change(
        partial(show, ctx), [live.run, live.smoothing], show_outputs, api_name="show_run"
    )
    live.run.change(lambda: False, None, live.pinned, api_visibility="private")
    runs.checkpoint.input(lambda: True, None, live.pinned, api_visibility="private")
    live.smoothing.change(
        lambda n, s: show(ctx, n, s)[0],
        [live.run, live.smoothing],
        live.plot,
        api_visibility="private",
        show_progress="hidden",
    )
    live.timer.tick(
        partial(tick, ctx),
        [live.run, live.seen, live.smoothing, runs.checkpoint, live.pinned],
        [
            live.run,
            live.plot,
            live.progress,
            live.seen,
            runs.table,
            runs.overlay,
            runs.checkpoint,
            live.weighting,
            live.timer,
            runs.config,
            live.started,
            live.log,
        ],
        api_name="tick",
        show_progress="hidden",
    )
    runs.overlay_btn.click(
        partial(overlay, ctx), [runs.overlay, live.smoothing], runs.compare, api_name="compare"
    )
    runs.zip.click(
        partial(download, ctx),
        [live.run, runs.checkpoint],
        [runs.download, runs.artefact],
        api_name="download",
    )
    runs.export.click(
        partial(export, ctx), [live.run, runs.checkpoint], runs.artefact, api_name="export"
    )
    runs.push.click(
        partial(push, ctx),
        [live.run, runs.checkpoint, runs.repo_id, runs.public],
        runs.artefact,
        api_name="push_to_hub",
    )
    runs.delete.click(
        partial(delete, ctx),
        live.run,
        [live.run, runs.artefact],
        api_name="delete",
        js="(run) => (run && confirm(`Delete run ${run}, its checkpoints and metrics?`)) ? run : null",
    )
    launch, data = train.launch, train.data
    runs.load_config.click(
        partial(load_config, ctx),
        live.run,
        [
            *train.form.values(),
            data.model,
            data.dataset,
            *[getattr(data, n) for n in DATA_OPTIONS],
            launch.run_name,
            launch.method,
            launch.init_checkpoint,
            launch.ref_checkpoint,
        ],
        api_name="load_config",
    )
    runs.evaluate.click(
        partial(evaluate, ctx),
        [
            live.run,
            runs.checkpoint,
            runs.eval_prompts,
            runs.eval_samples,
            runs.eval_temperature,
            runs.eval_top_p,
        ],
        [runs.eval_table, runs.eval_plot, runs.eval_sampled],
        api_name="evaluate",
    )
