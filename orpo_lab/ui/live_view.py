"""What the runs panel draws of the run shown, and when: its curves with a caption per panel, its
progress, how it started and its log, and the runs table, redrawn by the timer only when the runs
folder changed. The handlers return {component: value} for the runs panel's components `p`."""

from __future__ import annotations

import time
from types import SimpleNamespace

import gradio as gr
import yaml

from orpo_lab.plots import metrics_figure
from orpo_lab.rundir import ACTIVE
from orpo_lab.ui.common import BUSY_TICK_S, IDLE_TICK_S, AppContext
from orpo_lab.ui.views import progress_text, runs_table, started_text
from orpo_lab.weighting_plot import weighting_figure

# The curves of a run that trains on are redrawn at most this often; its progress line and log at
# every tick. A redraw of the six panels costs the browser ~0.8 s of work: redrawn at every 2 s
# tick, an open page took 70% of a core while a run trained, 40% at this pace (bench/page_cost.py).
CURVES_EVERY_S = 6.0

WEIGHTING_HELP = (
    "**How hard each pair pulls**, at every held-out evaluation: ORPO's gradient is delta(d) times the "
    "chosen and rejected gradients scaled by 1/(1-P) (paper section 4.3; notebook "
    "`02_loss_gradient.ipynb` derives it). delta falls as pairs are separated; the line is the median "
    "pair, the bands hold the middle 50% and 80% of the pairs."
)
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
CURVES_CAPTION = CURVES_HELP + "\n" + "\n".join(f"- **{t}**: {c}" for t, c in PANEL_CAPTIONS)


def checkpoint_update(ctx: AppContext, name: str | None, current: str | None = None):
    """The run's checkpoints; the newest selected unless the user picked one (`current`)."""
    choices = ctx.manager.checkpoints(name) if name in ctx.manager.names() else []
    if current in choices:
        return gr.update(choices=choices)  # keep what the user picked
    return gr.update(choices=choices, value=choices[-1] if choices else None)


def details(ctx: AppContext, p: SimpleNamespace, name: str | None, records: list[dict]) -> dict:
    """The run's config, how it started (its `started` event) and the end of its train.log."""
    if not name or name not in ctx.manager.names():
        return {p.config: "", p.started: "", p.log: ""}
    return {
        p.config: yaml.safe_dump(ctx.manager.config(name), sort_keys=False),
        p.started: started_text(records),
        p.log: ctx.manager.folder(name).log_tail(60) or "(nothing logged yet)",
    }


def _drawn(
    ctx: AppContext, p: SimpleNamespace, name: str | None, smoothing, curves: bool = True
) -> tuple[dict, list]:
    """The progress of the run `name` and, with `curves`, its curves and weighting (blank for
    None), and its records."""
    if not name:
        return {p.plot: None, p.progress: "", p.weighting: None}, []
    records, status = ctx.manager.metrics(name), ctx.manager.status(name)
    drawn = {p.progress: progress_text(name, status, records)}
    if curves:
        drawn |= {
            p.plot: metrics_figure(records, smoothing, name),
            p.weighting: weighting_figure(records),
        }
    return drawn, records


def show(ctx: AppContext, p: SimpleNamespace, name, smoothing) -> dict:
    """Everything about the run shown, when another run is picked."""
    known = name if name and name in ctx.manager.names() else None
    drawn, records = _drawn(ctx, p, known, smoothing)
    files = {p.checkpoint: checkpoint_update(ctx, known), p.download: None}
    return drawn | files | details(ctx, p, known, records)


def tick(
    ctx: AppContext, p: SimpleNamespace, name, seen, smoothing, checkpoint, pinned, drawn_at
) -> dict:
    """Every 2 s: redraw what changed on disk, nothing when nothing did (an idle page is cheap),
    and the curves of the run shown while it trains at most every CURVES_EVERY_S.
    The first tick of a (re)loaded page draws everything, the config of the run shown included.

    A value the user picked is never overwritten (a tick in flight would undo their click):
    only choices follow the disk, and a value only when the old one is gone.
    """
    signature = f"{ctx.manager.signature()}|{name}|{smoothing}"
    if signature == seen:
        return gr.skip()
    summaries = ctx.manager.list_runs()
    names = [s["name"] for s in summaries]
    active = [s["name"] for s in summaries if s["status"]["status"] in ACTIVE]
    shown = name if name in names else ([*active, *names, None][0])
    run = gr.update(choices=names) if shown == name else gr.update(choices=names, value=shown)
    listed = {
        p.run: run,
        p.table: runs_table(summaries),
        p.overlay: gr.update(choices=names),
        p.checkpoint: checkpoint_update(ctx, shown, checkpoint if pinned else None),
        p.timer: gr.Timer(BUSY_TICK_S if active else IDLE_TICK_S),  # an idle page is cheap
    }
    training = shown == name and shown in active
    curves = not training or time.monotonic() - drawn_at >= CURVES_EVERY_S
    drawn, records = _drawn(ctx, p, shown, smoothing, curves)
    if curves:  # else `seen` stays behind, so that a later tick looks again
        drawn |= {p.seen: signature, p.drawn_at: time.monotonic()}
    return drawn | listed | details(ctx, p, shown, records)
