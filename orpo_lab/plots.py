"""The figures of a run and of runs side by side: pure functions of metrics records -> plotly figures.

Read at a glance: every panel has its own legend (its title names the panel), axis titles, whole-number
steps; chosen is always blue and rejected red; lines are training batches and dots the held-out
pairs, sharing one legend entry per quantity; in the overlay each run keeps one colour in every
panel. Train curves jump (a new batch every step): `smoothing` draws an exponential moving average
over the faint raw line, as TensorBoard does. Held-out points are the same pairs every time.
"""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

CHOSEN, REJECTED, NEUTRAL = "#1f77b4", "#d62728", "#444444"
# Run colours of the overlay: never the blue and red that mean chosen and rejected elsewhere.
PALETTE = ["#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]

# (panel title, y-axis title, [(metric key, legend name, colour)]); eval/* keys are held-out points.
PANELS = [
    (
        "mean log-prob",
        "log-prob per token",
        [
            ("logps/chosen", "chosen", CHOSEN),
            ("logps/rejected", "rejected", REJECTED),
            ("eval/logps_chosen", "chosen", CHOSEN),
            ("eval/logps_rejected", "rejected", REJECTED),
        ],
    ),
    (
        "log-odds ratio",
        "log(odds_w / odds_l)",
        [("log_odds_chosen", "log OR", "#9467bd"), ("eval/log_odds_chosen", "log OR", "#9467bd")],
    ),
    (
        "loss",
        "loss",
        [
            ("nll_loss", "NLL (SFT term)", NEUTRAL),
            ("or_loss", "L_OR (unweighted)", "#ff7f0e"),
            ("pr_loss", "L_PR (unweighted)", "#17becf"),
            ("dpo_loss", "DPO loss", "#e377c2"),
            ("loss", "total", "#000000"),
        ],
    ),
    (
        "preference accuracy",
        "chosen above rejected",
        [
            ("rewards/accuracies", "accuracy", "#2ca02c"),
            ("eval/accuracy", "accuracy", "#2ca02c"),
            ("dpo_rewards/accuracies", "DPO reward accuracy", "#e377c2"),
        ],
    ),
    ("learning rate", "lr", [("lr", "lr", NEUTRAL)]),
    ("log-prob margin", "chosen - rejected", [("logps/margins", "train batch", "#8c564b")]),
]


def series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric, in logging order; records without a number there are skipped."""
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    points = [(s, v) for s, v in points if math.isfinite(v)]
    return [s for s, _ in points], [v for _, v in points]


def ema(values: list[float], weight: float) -> list[float]:
    """Exponential moving average with TensorBoard's debiasing (the first points are not pulled to 0)."""
    if not weight:
        return list(values)
    out, last, norm = [], 0.0, 0.0
    for v in values:
        last = weight * last + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out.append(last / norm)
    return out


def step_ticks(max_step: int) -> int:
    """A whole-number tick spacing giving at most ~8 ticks: 1, 2, 5, 10, 20, 50, ..."""
    target = max(1, max_step) / 8
    magnitude = 10 ** math.floor(math.log10(target)) if target >= 1 else 1
    for factor in (1, 2, 5, 10):
        if factor * magnitude >= target:
            return max(1, int(factor * magnitude))
    return int(10 * magnitude)


def steps_axis(fig: go.Figure, max_step: int) -> None:
    fig.update_xaxes(title_text="step", tick0=0, dtick=step_ticks(max_step), rangemode="tozero")


def metrics_figure(records: list[dict], smoothing: float = 0.0, revision: str = "") -> go.Figure:
    """Every panel of one run. `revision` keeps the user's zoom across refreshes (uirevision)."""
    rows, cols = 2, 3
    fig = make_subplots(rows=rows, cols=cols, vertical_spacing=0.24, horizontal_spacing=0.08)
    for i, (title, y_title, entries) in enumerate(PANELS):
        row, col = divmod(i, cols)
        legend = "legend" if i == 0 else f"legend{i + 1}"
        trained = {c for k, _, c in entries if not k.startswith("eval/") and series(records, k)[0]}
        for key, name, colour in entries:
            x, y = series(records, key)
            if not x:
                continue
            # One legend entry per quantity: its held-out dots share the entry (and its toggle).
            held_out = key.startswith("eval/")
            group = f"{i}:{colour}"
            show = not held_out or colour not in trained
            common = dict(
                name=name,
                legend=legend,
                legendgroup=group,
                showlegend=show,
                line=dict(color=colour),
            )
            cell = dict(row=row + 1, col=col + 1)
            if held_out:
                fig.add_trace(
                    go.Scatter(x=x, y=y, mode="lines+markers", marker=dict(size=7), **common),
                    **cell,
                )
            elif smoothing and key != "lr":  # a schedule is not noise
                fig.add_trace(
                    go.Scatter(
                        x=x,
                        y=y,
                        mode="lines",
                        opacity=0.25,
                        showlegend=False,
                        hoverinfo="skip",
                        legend=legend,
                        legendgroup=group,
                        line=dict(color=colour, width=1),
                    ),
                    **cell,
                )
                fig.add_trace(go.Scatter(x=x, y=ema(y, smoothing), mode="lines", **common), **cell)
            else:
                mode = "lines+markers" if len(x) < 30 else "lines"
                fig.add_trace(go.Scatter(x=x, y=y, mode=mode, opacity=0.6, **common), **cell)
        fig.update_yaxes(title_text=y_title, row=row + 1, col=col + 1)
        x_domain = fig.get_subplot(row + 1, col + 1).xaxis.domain
        y_domain = fig.get_subplot(row + 1, col + 1).yaxis.domain
        fig.update_layout(
            {
                legend: dict(
                    title=dict(text=f"<b>{title}</b>"),
                    orientation="h",
                    x=x_domain[0],
                    xanchor="left",
                    y=y_domain[1] + 0.01,
                    yanchor="bottom",
                    font=dict(size=10),
                    bgcolor="rgba(0,0,0,0)",
                )
            }
        )
    fig.update_yaxes(tickformat=".3~g")  # no float noise such as 99.9999999997u in the labels
    fig.update_yaxes(range=[-0.02, 1.02], row=2, col=1)  # accuracy is a fraction
    fig.update_yaxes(tickformat=".1e", row=2, col=2)  # the learning rate
    steps_axis(fig, max((r.get("step", 0) for r in records), default=1))
    fig.update_layout(
        height=640,
        margin=dict(l=50, r=20, t=70, b=40),
        template="plotly_white",
        uirevision=revision or "run",
    )
    return fig


# (panel title, metric key) of the overlay: train batches on the first row, held-out on the second.
COMPARE_PANELS = [
    ("chosen log-prob (train)", "logps/chosen"),
    ("rejected log-prob (train)", "logps/rejected"),
    ("preference accuracy (train)", "rewards/accuracies"),
    ("chosen log-prob (held-out)", "eval/logps_chosen"),
    ("rejected log-prob (held-out)", "eval/logps_rejected"),
    ("preference accuracy (held-out)", "eval/accuracy"),
]


def run_colours(names: list[str]) -> dict[str, str]:
    """One colour per run, by position in the given list: the same in every panel."""
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def compare_figure(runs: dict[str, list[dict]], smoothing: float = 0.0) -> go.Figure:
    """Several runs overlaid (e.g. SFT vs ORPO); each run one colour in every panel, one legend."""
    fig = make_subplots(
        rows=2,
        cols=3,
        subplot_titles=[t for t, _ in COMPARE_PANELS],
        vertical_spacing=0.16,
        horizontal_spacing=0.08,
    )
    colours = run_colours(list(runs))
    max_step = 1
    for name, records in runs.items():
        for i, (_, key) in enumerate(COMPARE_PANELS):
            x, y = series(records, key)
            if not x:
                continue
            max_step = max(max_step, x[-1])
            held_out = key.startswith("eval/")
            shown = ema(y, smoothing) if not held_out else y
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=shown,
                    name=name,
                    legendgroup=name,
                    showlegend=i == 0,
                    mode="lines+markers" if held_out or len(x) < 30 else "lines",
                    line=dict(color=colours[name]),
                ),
                i // 3 + 1,
                i % 3 + 1,
            )
    for col in (1, 2):
        for row in (1, 2):
            fig.update_yaxes(title_text="mean log-prob", row=row, col=col)
    for row in (1, 2):
        fig.update_yaxes(title_text="fraction of pairs", range=[-0.02, 1.02], row=row, col=3)
    steps_axis(fig, max_step)
    fig.update_layout(
        height=620,
        margin=dict(l=50, r=20, t=60, b=40),
        template="plotly_white",
        uirevision="compare",
        legend=dict(title=dict(text="run")),
    )
    return fig
