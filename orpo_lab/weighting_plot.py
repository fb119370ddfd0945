"""The gradient-weighting figure: how ORPO's per-pair weights (notebook 02) spread over the held-out
pairs, evaluation by evaluation; a pure function of metrics records -> a plotly figure, drawn in the
house style of `orpo_lab.plots`.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from orpo_lab.plots import CHOSEN, REJECTED, series, steps_axis

# The gradient weighting of notebook 02, measured on the held-out pairs at every evaluation:
# (metric stem, panel title, y-axis title, colour). Keys: eval/<stem>_q10 ... eval/<stem>_q90.
WEIGHTING = [
    ("delta", "delta(d): how hard each pair pulls", "1 / (1 + odds ratio)", "#9467bd"),
    ("weight_chosen", "1/(1-P) on the chosen response", "weight", CHOSEN),
    ("weight_rejected", "1/(1-P) on the rejected response", "weight", REJECTED),
]
QUANTILES = (10, 25, 50, 75, 90)
NO_WEIGHTING = (
    "No held-out evaluation in this run yet: these panels fill at each one "
    "(eval every > 0, or before step 1, with held-out pairs)."
)


def _band(fig, x, low, high, colour: str, opacity: float, col: int, name: str) -> None:
    """A filled band between two lines (no legend entry of its own)."""
    fig.add_trace(
        go.Scatter(
            x=x,
            y=high,
            mode="lines",
            line=dict(width=0),
            showlegend=False,
            hoverinfo="skip",
            legendgroup=name,
        ),
        1,
        col,
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=low,
            mode="lines",
            line=dict(width=0),
            fill="tonexty",
            fillcolor=colour,
            opacity=opacity,
            showlegend=False,
            hoverinfo="skip",
            legendgroup=name,
        ),
        1,
        col,
    )


def weighting_figure(records: list[dict]) -> go.Figure:
    """How the per-pair gradient weights are spread over the held-out pairs, evaluation by
    evaluation: the median line, the middle half (25-75%) and 80% (10-90%) of the pairs shaded."""
    fig = make_subplots(
        rows=1, cols=3, subplot_titles=[t for _, t, _, _ in WEIGHTING], horizontal_spacing=0.08
    )
    max_step = 1
    for col, (stem, _, y_title, colour) in enumerate(WEIGHTING, start=1):
        lines = {q: series(records, f"eval/{stem}_q{q}") for q in QUANTILES}
        x = lines[50][0]
        if not x:
            continue
        max_step = max(max_step, x[-1])
        rgba = _rgba(colour)
        _band(fig, x, lines[10][1], lines[90][1], rgba(0.15), 1.0, col, stem)
        _band(fig, x, lines[25][1], lines[75][1], rgba(0.3), 1.0, col, stem)
        fig.add_trace(
            go.Scatter(
                x=x,
                y=lines[50][1],
                mode="lines+markers",
                name=f"{stem} median",
                line=dict(color=colour),
                showlegend=False,
            ),
            1,
            col,
        )
        fig.update_yaxes(title_text=y_title, row=1, col=col)
    steps_axis(fig, max_step)
    fig.update_layout(
        height=330,
        margin=dict(l=50, r=20, t=50, b=40),
        template="plotly_white",
        uirevision="weighting",
    )
    if max_step == 1 and not fig.data:  # no held-out evaluation yet: say so, not empty axes
        fig.add_annotation(
            text=NO_WEIGHTING,
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.5,
            showarrow=False,
            font=dict(size=14),
        )
    return fig


def _rgba(hex_colour: str):
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return lambda alpha: f"rgba({r},{g},{b},{alpha})"
