"""The data checked before a run, as the Train tab shows it: an uploaded file or the chat votes
made a dataset, its first pairs token by token, what the length budgets cut, and how many steps
the run will take. Pure functions of the form's values: text in, text out."""

from __future__ import annotations

import html
import math
import re
import shutil
from pathlib import Path

from orpo_lab.config import TrainConfig
from orpo_lab.token_view import tokens_html
from orpo_lab.ui.common import AppContext
from orpo_lab.ui.form_fields import DATA_OPTIONS, data_config
from orpo_lab.ui.views import escaped_block

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# Each part of a previewed pair: its label and the shade of its token spans.
PARTS = (("prompt", "#888888"), ("chosen", "#1f77b4"), ("rejected", "#d62728"))


def safe_filename(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name).lstrip(".")
    return stem or "upload"


def uploaded_dataset(ctx: AppContext, file: str) -> tuple[str | None, str]:
    """An uploaded file copied beside the runs: (its path, a note), or (None, why it is not used)."""
    if Path(file).suffix.lower() not in DATA_SUFFIXES:
        name = html.escape(Path(file).name)
        return None, (
            f"<p><b>Not used:</b> {name} is not a dataset file; upload "
            f"{' / '.join(DATA_SUFFIXES)}.</p>"
        )
    ctx.uploads.mkdir(parents=True, exist_ok=True)
    target = ctx.uploads / safe_filename(file)  # never a path the client chose
    shutil.copyfile(file, target)
    return str(target), f"<p>Uploaded as <code>{target}</code>: press Preview and check.</p>"


def votes_dataset(ctx: AppContext) -> tuple[str | None, str]:
    """The chat votes as a dataset file (ties, duplicates and contradictions left out): (its
    path, what was kept), or (None, why there is none)."""
    from orpo_lab.votes import clean_votes, describe, read_votes, votes_to_dataset

    pairs, report = clean_votes(read_votes(ctx.votes_path))
    if not pairs:
        return None, f"<p><b>No usable votes yet:</b> {describe(report)} Vote in the Chat tab.</p>"
    try:
        dataset = votes_to_dataset(pairs)
    except ValueError as err:
        return None, f"<p><b>Cannot use the votes:</b></p>{escaped_block(str(err))}"
    ctx.uploads.mkdir(parents=True, exist_ok=True)
    target = ctx.uploads / "chat-votes.jsonl"
    dataset.to_json(target, lines=True, force_ascii=False)
    return str(target), f"<p>{describe(report)}</p>"


def preview(ctx: AppContext, v: dict) -> str:
    """The first pairs exactly as trained (prompt tokens, response tokens), the held-out split, or
    what is wrong with the data or the model. `v`: the form's DATA_NAMES values."""
    from orpo_lab.data import preview_pairs
    from orpo_lab.model import load_tokenizer
    from orpo_lab.prepared import checked_splits, prepare_data

    try:
        cfg = data_config(v)
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
            "".join(
                f"<p><b>{part}</b>{cut if part == 'prompt' else ''}</p>"
                + tokens_html(pair[f"{part}_tokens"], shade=shade, show_newlines=False)
                for part, shade in PARTS
            )
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
    """How many optimiser steps the run will take: max_steps, or when it is empty what the epochs make of
    this dataset and batch ("1 epoch = 126 steps"), as the trainer counts them. `v`: the form's
    STEPS_NAMES values."""
    max_steps = None if v["max_steps"] in (None, -1, 0) else int(v["max_steps"])  # -1, 0: old
    if max_steps is not None and max_steps > 0:
        return (
            f"Run length: **{max_steps} steps** (max steps; empty it to train for epochs instead)."
        )
    if max_steps is not None:
        return (
            f"**max steps {max_steps} is refused:** empty lets epochs decide; a count above 0 "
            "sets the steps."
        )
    from orpo_lab.prepared import check_data

    try:
        cfg = data_config(
            v, batch_size=v["batch_size"], grad_accum=v["grad_accum"], epochs=v["epochs"]
        )
        pairs = check_data(cfg)["train_pairs"]  # cached: the run reads the same checked rows
    except Exception as err:  # the data is not usable yet: Preview and check says why
        problem = str(err).splitlines()[0][:200]
        return (
            f"Run length: empty max steps lets epochs decide (the data is not usable: {problem})."
        )
    per_epoch = pairs // cfg.batch_size  # batches per pass, as the trainer counts them
    epoch = max(1, math.ceil(per_epoch / cfg.grad_accum))
    total = max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))
    return (
        f"Run length: empty max steps lets epochs decide: **1 epoch = {epoch} steps** ({pairs} "
        f"training pairs / batch size {cfg.batch_size} / grad accumulation {cfg.grad_accum}); "
        f"{cfg.epochs:g} epoch(s) = **{total} steps**."
    )
