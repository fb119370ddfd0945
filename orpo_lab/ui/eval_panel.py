"""The judged evaluation of a checkpoint, under the runs panel: greedy (and sampled) answers of the
base model and the checkpoint to held-out prompts, checked by each family's judge
(`orpo_lab.evaluate`)."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import gradio as gr
import plotly.graph_objects as go

from orpo_lab.rate_tables import (
    EVAL_COLUMNS,
    SAMPLED_COLUMNS,
    pass_rate_table,
    sampled_rate_table,
)
from orpo_lab.ui.common import AppContext

ABOUT = (
    "Greedy answers to held-out prompts of the default dataset, each checked by its "
    "family's judge; out-of-domain (ood) prompts are of kinds never trained on. "
    "With samples above 0, each prompt is also answered that many times at the "
    "temperature (seeded): the share of samples that pass, with a 95% interval, "
    "and the share that do what the rejected replies do."
)


def eval_panel(ctx: AppContext, run: gr.Dropdown, checkpoint: gr.Dropdown) -> None:
    """Lay out and wire the evaluation of the `checkpoint` of the `run` shown."""
    p = SimpleNamespace()
    with gr.Accordion("evaluate: base model vs this checkpoint, judged", open=False):
        gr.Markdown(ABOUT)
        with gr.Row():
            p.prompts = gr.Slider(
                8, 280, 32, step=8, label="held-out prompts", elem_id="eval-prompts"
            )
            p.samples = gr.Slider(
                0,
                10,
                0,
                step=1,
                label="samples per prompt (0: greedy only)",
                elem_id="eval-samples",
            )
            p.temperature = gr.Slider(
                0.1, 1.5, 1.0, step=0.1, label="temperature", elem_id="eval-temperature"
            )
            p.top_p = gr.Slider(0.05, 1.0, 1.0, step=0.05, label="top-p", elem_id="eval-top-p")
            p.evaluate = gr.Button("Evaluate", elem_id="evaluate")
        p.table = gr.Dataframe(
            headers=EVAL_COLUMNS, value=[], interactive=False, elem_id="eval-table"
        )
        p.plot = gr.Plot(label="judged pass rates", elem_id="eval-plot")
        p.sampled = gr.Dataframe(
            headers=SAMPLED_COLUMNS,
            value=[],
            interactive=False,
            label="sampled answers",
            elem_id="eval-sampled",
        )
    p.evaluate.click(
        partial(evaluate, ctx, p),
        [run, checkpoint, p.prompts, p.samples, p.temperature, p.top_p],
        [p.table, p.plot, p.sampled],
        api_name="evaluate",
    )


def evaluate(
    ctx: AppContext,
    p: SimpleNamespace,
    name,
    checkpoint,
    prompts,
    samples=0,
    temperature=1.0,
    top_p=1.0,
    progress=gr.Progress(track_tqdm=True),  # noqa: B008
) -> dict:
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
    return {
        p.table: pass_rate_table(report["summary"]),
        p.plot: pass_rate_figure(report["summary"]),
        p.sampled: sampled_rate_table(report.get("sampled")),
    }


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
