"""The Chat tab's blind A/B battles: which model each pane answers as, and what its label says.

Outside blind mode the panes are the columns. In blind mode panes 1 and 2 answer as columns 1 and
2 in an order drawn at random for each battle, labelled "A" and "B" until the vote reveals them
(as in arena evaluations); a battle ends with its vote or a Clear. Its state is a plain dict,
{"models": [model of A, model of B] or None, "revealed": bool}, made by `new_battle` only.
"""

from __future__ import annotations

import random

from orpo_lab.ui.common import OFF_CHOICE

SIDES = ("A", "B")
BLIND_OFF = "(off in blind mode)"  # the third pane's label in blind mode


def new_battle(models: list[str] | None = None) -> dict:
    """The state of a battle: `models` behind A and B (None: none drawn yet), not revealed."""
    return {"models": models, "revealed": False}


def draw_battle(rng: random.Random, columns: list[str], state: dict) -> dict:
    """The battle for columns 1 and 2: `state` while it is open on the same models, else a new
    one in a random order. ValueError unless the two columns are two different models."""
    pair = columns[:2]
    if OFF_CHOICE in pair or not all(pair) or pair[0] == pair[1]:
        raise ValueError("Blind mode compares two different models: set columns 1 and 2.")
    models = state.get("models")
    if models is None or state.get("revealed") or sorted(models) != sorted(pair):
        return new_battle(pair[::-1] if rng.random() < 0.5 else list(pair))
    return state


def pane_models(columns: list[str], blind_on: bool, state: dict) -> list[str]:
    """The model each pane answers as: the battle's A and B while one is open, else the columns."""
    if blind_on and state.get("models"):
        return [*state["models"], OFF_CHOICE]
    return list(columns)


def model_labels(columns: list[str]) -> list[str]:
    """Each pane named for the model that answers in it ("column 3 (off)" when none does)."""
    return [c if c and c != OFF_CHOICE else f"column {i + 1} (off)" for i, c in enumerate(columns)]


def pane_labels(columns: list[str], blind_on: bool, state: dict) -> list[str]:
    """The models' names; "A" and "B" while a blind battle is open, with names once voted on."""
    if not blind_on or not state.get("models"):
        return model_labels(columns)
    names = [
        f"{side}: {m}" if state["revealed"] else side
        for side, m in zip(SIDES, state["models"], strict=True)
    ]
    return [*names, BLIND_OFF]


def mode_labels(blind_on: bool, columns: list[str]) -> list[str]:
    """The labels of empty panes as a mode starts: "A", "B" in blind mode, else the models."""
    return [*SIDES, BLIND_OFF] if blind_on else model_labels(columns)
