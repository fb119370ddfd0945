"""The "Inside ORPO" tab: one pair token by token, coloured by how training moved each token's
log-prob (a reference model -> a checkpoint, next to a second checkpoint such as the SFT run), with
the pair's mean log-probs, log-odds ratio and L_OR before and after (`orpo_lab.token_view`).
The handlers return {component: value} for the tab's components `p`."""

from __future__ import annotations

import dataclasses
import html
from functools import partial
from itertools import zip_longest
from types import SimpleNamespace

import gradio as gr

from orpo_lab.config import TrainConfig, upgraded
from orpo_lab.token_view import token_change, tokens_html
from orpo_lab.ui.common import BASE_CHOICE, AppContext

NONE_CHOICE = "(none)"
OWN_PAIR = "type my own pair"
INTRO = (
    "Pick a checkpoint (say the ORPO run's) and, next to it, another (the SFT run's): every token of "
    "a held-out pair's chosen and rejected responses is coloured by how much that checkpoint moved "
    "its log-prob from the reference model, **green** up and **red** down (hover for the numbers). "
    "ORPO pulls the chosen response up and pushes the rejected one down; SFT lifts both."
)


def inside_tab(ctx: AppContext, demo: gr.Blocks) -> None:
    """Lay out and wire the tab; a (re)loaded page lists every checkpoint."""
    p = SimpleNamespace()
    gr.Markdown(INTRO)
    with gr.Row():
        p.first = gr.Dropdown([], label="checkpoint", elem_id="view-first", allow_custom_value=True)
        p.second = gr.Dropdown(
            [NONE_CHOICE],
            value=NONE_CHOICE,
            label="next to it",
            elem_id="view-second",
            allow_custom_value=True,
        )
        p.reference = gr.Dropdown(
            [BASE_CHOICE],
            value=BASE_CHOICE,
            label="changes from",
            elem_id="view-reference",
            allow_custom_value=True,
        )
        p.refresh = gr.Button("Refresh checkpoints", size="sm", elem_id="view-refresh")
    p.pair = gr.Dropdown(
        [OWN_PAIR],
        value=OWN_PAIR,
        label="pair: a held-out pair of the run (type to search), or your own",
        info="where the data names families (the default data), they take turns in the list",
        elem_id="view-pair",
        allow_custom_value=True,
    )
    with gr.Row():
        p.prompt = gr.Textbox(label="prompt", lines=2, elem_id="view-prompt")
        p.chosen = gr.Textbox(label="chosen response", lines=2, elem_id="view-chosen")
        p.rejected = gr.Textbox(label="rejected response", lines=2, elem_id="view-rejected")
    p.show = gr.Button("Show the tokens", variant="primary", elem_id="view-show")
    p.view = gr.HTML(elem_id="token-view")
    with gr.Accordion("the numbers behind the colours", open=False):
        p.numbers = gr.JSON(elem_id="token-numbers")
    checkpoints = [p.first, p.second, p.reference]
    boxes = [p.prompt, p.chosen, p.rejected]
    # A value set by an event's output fires `.change` from the component in the page, which a
    # page still mounting (a reload mid-run, on a loaded machine) can miss: the pair dropdown then
    # showed a pair beside three empty boxes. The events that set the checkpoint and the pair are
    # followed, server-side, by filling boxes that are still empty.
    fill_empty = dict(
        fn=partial(fill_empty_boxes, ctx, p),
        inputs=[p.first, p.pair, *boxes],
        outputs=boxes,
        api_visibility="private",
    )
    p.refresh.click(
        partial(checkpoint_updates, ctx, p), None, checkpoints, api_name="view_checkpoints"
    ).then(**fill_empty)
    demo.load(partial(checkpoint_updates, ctx, p), None, checkpoints, api_visibility="private")
    p.first.change(partial(pair_choices, ctx), p.first, p.pair, api_name="view_pairs").then(
        **fill_empty
    )
    p.pair.change(partial(fill_pair, ctx, p), [p.first, p.pair], boxes, api_name="view_pair")
    p.show.click(
        partial(show_tokens, ctx, p),
        [p.first, p.second, p.reference, *boxes],
        [p.view, p.numbers],
        api_name="token_view",
    )


def checkpoint_updates(ctx: AppContext, p: SimpleNamespace) -> dict:
    choices = ctx.checkpoint_choices()
    return {
        p.first: gr.update(choices=choices, value=choices[0] if choices else None),
        p.second: gr.update(choices=[NONE_CHOICE, *choices]),
        p.reference: gr.update(choices=[BASE_CHOICE, *choices]),
    }


PAIRS_OFFERED = 400  # held-out pairs listed in the pair dropdown (typing there filters them)


def held_out_pairs(ctx: AppContext, choice: str | None) -> list[dict]:
    """The held-out pairs of the run a "run/checkpoint" choice belongs to (never its training
    pairs: the same split the run evaluated on), at most PAIRS_OFFERED."""
    from orpo_lab.splits import load_config_splits

    run = (choice or "").partition("/")[0]
    if run not in ctx.manager.names():
        return []
    _, held_out, _ = load_config_splits(TrainConfig.from_dict(upgraded(ctx.manager.config(run))))
    if held_out is None:
        return []
    return list(held_out.select(range(min(PAIRS_OFFERED, len(held_out)))))


def _prompt_text(prompt) -> str:
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def labelled_pairs(pairs: list[dict]) -> dict[str, dict]:
    """{label: pair}, families taking turns (a family column, as the default dataset has), so the
    first labels show every kind of pair: "12 · bullets: What are three ..."."""
    families: dict[str, list[int]] = {}
    for i, pair in enumerate(pairs):
        families.setdefault(str(pair.get("family") or ""), []).append(i)
    turns = [i for group in zip_longest(*families.values()) for i in group if i is not None]
    labels = {}
    for i in turns:
        family = pairs[i].get("family")
        kind = f" · {family}" if family else ""
        labels[f"{i + 1}{kind}: {_prompt_text(pairs[i]['prompt'])[:70]}"] = pairs[i]
    return labels


def _searched_text(pair: dict) -> str:
    parts = (_prompt_text(pair["prompt"]), pair["chosen"], pair["rejected"], pair.get("family"))
    return " ".join(str(part) for part in parts if part).lower()


def _pairs_of(ctx: AppContext, choice: str | None) -> dict[str, dict]:
    try:
        return labelled_pairs(held_out_pairs(ctx, choice))
    except ValueError:  # the run's data is gone or broken: only own pairs then
        return {}


def pair_choices(ctx: AppContext, choice: str | None):
    labels = list(_pairs_of(ctx, choice))
    return gr.update(choices=[*labels, OWN_PAIR], value=labels[0] if labels else OWN_PAIR)


def fill_pair(ctx: AppContext, p: SimpleNamespace, choice: str | None, label: str | None):
    """Put the picked held-out pair into the three boxes (a user turn's text for chat prompts).
    Typed text that is no label searches the pairs: the first that holds it is put there."""
    if not label or label == OWN_PAIR:
        return gr.skip()
    pairs = _pairs_of(ctx, choice)
    pair = pairs.get(label)
    if pair is None:
        wanted = label.strip().lower()
        found = [p for p in pairs.values() if wanted in _searched_text(p)]
        if not found:
            gr.Warning(
                f"No held-out pair holds {label.strip()!r}: pick one from the list, search "
                "for another word, or type your own pair in the three boxes."
            )
            return gr.skip()
        pair = found[0]
    return _boxes(p, pair)


def _boxes(p: SimpleNamespace, pair: dict) -> dict:
    return {
        p.prompt: _prompt_text(pair["prompt"]),
        p.chosen: pair["chosen"],
        p.rejected: pair["rejected"],
    }


def fill_empty_boxes(ctx: AppContext, p: SimpleNamespace, choice, label, *texts):
    """The picked held-out pair into the boxes when all three are empty (never over typed text)."""
    if any(texts) or not label or label == OWN_PAIR:
        return gr.skip()
    pair = _pairs_of(ctx, choice).get(label)
    return gr.skip() if pair is None else _boxes(p, pair)


def _summary(before, after) -> str:
    rows = [
        ("chosen mean log-prob", before.chosen.mean_logp, after.chosen.mean_logp),
        ("rejected mean log-prob", before.rejected.mean_logp, after.rejected.mean_logp),
        ("log-odds ratio", before.log_odds_ratio, after.log_odds_ratio),
        ("L_OR", before.or_loss, after.or_loss),
    ]
    cells = "".join(
        f"<tr><td>{name}</td><td>{b:.3f}</td><td>{a:.3f}</td><td>{a - b:+.3f}</td></tr>"
        for name, b, a in rows
    )
    return f"<table><tr><th></th><th>before</th><th>after</th><th>change</th></tr>{cells}</table>"


def _delta_html(tokens: list[str], before: list[float], after: list[float]) -> str:
    """Tokens green where their log-prob rose, red where it fell (full colour at 2 nats); the
    hover text gives both log-probs."""
    changes = [new - old for old, new in zip(before, after, strict=True)]
    titles = [
        f"{t!r}: log p {old:.3f} -> {new:.3f} ({new - old:+.3f})"
        for t, old, new in zip(tokens, before, after, strict=True)
    ]
    return tokens_html(tokens, changes, scale=2.0, titles=titles)


def _view(reference: str, target: str, before, after) -> str:
    title = f"<h4>{html.escape(reference)} &rarr; {html.escape(target)}</h4>"
    parts = [title, _summary(before, after)]
    for side in ("chosen", "rejected"):
        old, new = getattr(before, side), getattr(after, side)
        parts.append(
            f"<p><b>{side}</b></p>" + _delta_html(new.tokens, old.token_logps, new.token_logps)
        )
    return "<div style='flex: 1; min-width: 360px'>" + "".join(parts) + "</div>"


def show_tokens(
    ctx: AppContext, p: SimpleNamespace, first, second, reference, prompt, chosen, rejected
) -> dict:
    """Score the pair under the reference and the one or two checkpoints; colour every token."""
    from orpo_lab.checkpoint import common_base

    if not first:
        raise gr.Error("Pick a checkpoint first (train a run, then Refresh checkpoints).")
    if not all((text or "").strip() for text in (prompt, chosen, rejected)):
        raise gr.Error("A pair needs a prompt, a chosen and a rejected response.")
    targets = [c for c in (first, second) if c and c != NONE_CHOICE]
    try:
        paths = [ctx.checkpoint_of(c) for c in (reference, *targets)]
        ctx.pool.load(common_base(paths, ctx.pool.model_name))
        scores = ctx.pool.score({"prompt": prompt, "chosen": chosen, "rejected": rejected}, paths)
    except (ValueError, OSError) as err:
        raise gr.Error(str(err)) from err
    before, views, numbers = (
        scores[0],
        [],
        {"reference": reference, "before": dataclasses.asdict(scores[0])},
    )
    for target, after in zip(targets, scores[1:], strict=True):
        change = token_change(before, after)
        views.append(_view(reference, target, before, after))
        numbers[target] = {"after": dataclasses.asdict(after), "change": change}
    shown = "<div style='display: flex; gap: 24px; flex-wrap: wrap'>" + "".join(views) + "</div>"
    return {p.view: shown, p.numbers: numbers}
