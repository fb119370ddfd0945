"""What the panels of the app share: the context (runs, models, files), the run shown (set by the
launch buttons, drawn by the runs panel) and named handler inputs."""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from orpo_lab.model_pool import ModelPool
from orpo_lab.runs import RunManager

BASE_CHOICE = "base model"
OFF_CHOICE = "(off)"
BUSY_TICK_S, IDLE_TICK_S = 2.0, 10.0  # poll the runs folder often only while a run is not over


@dataclass
class AppContext:
    """The state behind the page: every panel reads and changes it through these objects."""

    model: str  # the default base model of training and chat
    manager: RunManager  # the runs folder and its training processes
    pool: ModelPool  # the chat's base model and loaded adapters
    votes_path: Path  # votes.jsonl (orpo_lab.votes)
    uploads: Path  # uploaded datasets, kept beside the runs
    rng: random.Random = field(default_factory=random.Random)  # blind A/B order (seeded in tests)
    evaluate: Callable | None = None  # evaluate_run as a GPU call on ZeroGPU; None: in place

    def checkpoint_choices(self) -> list[str]:
        """ "run/step-000040" for every checkpoint of every run, newest run first."""
        return [f"{n}/{c}" for n in self.manager.names() for c in self.manager.checkpoints(n)]

    def checkpoint_of(self, choice: str) -> Path | None:
        """The folder of a "run/checkpoint" choice; None for the base model."""
        if choice == BASE_CHOICE:
            return None
        run, _, checkpoint = choice.partition("/")
        return self.manager.checkpoint_path(run, checkpoint)


def run_shown(ctx: AppContext) -> SimpleNamespace:
    """The run the Train tab follows: `run`, its dropdown, and `timer`, which redraws it.

    Start and Resume set both (a new run is followed closely again) and Stop reads the run; the
    runs panel places them (`.render()`) and draws the run.
    """
    run = gr.Dropdown(
        ctx.manager.names(),
        label="run shown",
        elem_id="run-select",
        scale=3,
        allow_custom_value=True,
        render=False,
    )
    return SimpleNamespace(run=run, timer=gr.Timer(BUSY_TICK_S, render=False))


def named(names: list[str], fn: Callable[[dict], object]) -> Callable:
    """A Gradio handler that hands `fn` one dict {name: value} instead of positional values.

    Gradio passes input components positionally, in the order given; naming them here keeps the
    handlers readable and the API's parameter order stable. Generators stay generators (streaming).
    """
    if inspect.isgeneratorfunction(fn):

        def stream(*values):
            yield from fn(dict(zip(names, values, strict=True)))

        handler = stream
    else:

        def handler(*values):
            return fn(dict(zip(names, values, strict=True)))

    inner = getattr(fn, "func", fn)  # a functools.partial names the function it wraps
    handler.__name__ = getattr(inner, "__name__", "handler")
    handler.__doc__ = inner.__doc__
    return handler
