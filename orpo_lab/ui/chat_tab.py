"""The Chat tab: the base model and checkpoints answer the same message side by side, streamed;
votes on two answers become preference pairs (`orpo_lab.votes`), listed and undoable; blind A/B
battles hide which model answers where until the vote (`battle`)."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import gradio as gr

from orpo_lab.chat import content_text
from orpo_lab.checkpoint import common_base
from orpo_lab.ui import battle
from orpo_lab.ui.common import BASE_CHOICE, OFF_CHOICE, AppContext, named
from orpo_lab.ui.views import TALLY_COLUMNS, VOTE_COLUMNS, vote_rows
from orpo_lab.votes import blind_tally, read_votes, record_vote, undo_vote

COLUMNS = 3  # chat columns; each answers as the base model or as one checkpoint
COLUMN_NAMES = [f"column_{i}" for i in range(COLUMNS)]
# The named inputs of Regenerate and the votes; Send adds "message" in front.
NAMES = ["histories", *COLUMN_NAMES, "temperature", "top_p", "max_new_tokens", "seed"]
NAMES += ["blind_on", "blind"]


def _layout(ctx: AppContext, p: SimpleNamespace) -> None:
    with gr.Row():
        p.columns = [
            gr.Dropdown(
                [BASE_CHOICE] if i == 0 else [OFF_CHOICE, BASE_CHOICE],
                value=BASE_CHOICE if i == 0 else OFF_CHOICE,
                label=f"column {i + 1}",
                elem_id=f"column-{i + 1}",
                allow_custom_value=True,
            )
            for i in range(COLUMNS)
        ]
        p.refresh = gr.Button("Refresh checkpoints", size="sm", elem_id="refresh-columns")
    p.blind_on = gr.Checkbox(
        False,
        label="blind A/B vote",
        elem_id="blind",
        info="columns 1 and 2 answer as A and B in random order; their names "
        "show after your vote (as in arena evaluations)",
    )
    p.blind = gr.State(battle.new_battle())  # the battle: which model is A and B
    with gr.Row():
        p.bots = [
            gr.Chatbot(elem_id=f"chat-{i + 1}", label=label, height=380, buttons=["copy"])
            for i, label in enumerate(battle.model_labels([c.value for c in p.columns]))
        ]
    p.histories = gr.State([[] for _ in range(COLUMNS)])  # what each column's model has seen
    p.message = gr.Textbox(
        label="message",
        placeholder="Ask all columns the same thing; Enter sends",
        elem_id="chat-message",
    )
    with gr.Row():
        p.send = gr.Button("Send", variant="primary", elem_id="send")
        p.regenerate = gr.Button("Regenerate", elem_id="regenerate")
        p.clear = gr.Button("Clear", elem_id="clear")
    with gr.Accordion("generation settings (shared by every column)", open=False):
        with gr.Row():
            p.settings = [
                gr.Slider(
                    0,
                    2,
                    0.0,
                    step=0.05,
                    label="temperature",
                    info="0 = greedy",
                    elem_id="temperature",
                ),
                gr.Slider(0.05, 1, 1.0, step=0.05, label="top p"),
                gr.Slider(8, 1024, 128, step=8, label="max new tokens", elem_id="max-new-tokens"),
                gr.Number(0, label="seed", precision=0),
            ]
    with gr.Row():
        p.left = gr.Button("Left is better", elem_id="vote-left")
        p.tie = gr.Button("Tie", elem_id="vote-tie")
        p.right = gr.Button("Right is better", elem_id="vote-right")
    p.vote_message = gr.Markdown(
        f"Votes compare the first two columns that are on; one vote per exchange (a new click "
        f"replaces it). They go to `{ctx.votes_path}`, which the Train tab can train on.",
        elem_id="vote-message",
    )
    with gr.Accordion("recorded votes", open=False):
        p.votes = gr.Dataframe(headers=VOTE_COLUMNS, value=[], interactive=False, elem_id="votes")
        p.undo = gr.Button("Undo the last vote", size="sm", elem_id="undo-vote")
    with gr.Accordion("blind votes: wins per pair of models", open=False):
        p.tally = gr.Dataframe(headers=TALLY_COLUMNS, value=[], interactive=False, elem_id="tally")


def chat_tab(ctx: AppContext, demo: gr.Blocks) -> None:
    """Lay out and wire the Chat tab; a (re)loaded page lists every checkpoint and the votes."""
    p = SimpleNamespace()
    _layout(ctx, p)
    inputs = [p.histories, *p.columns, *p.settings, p.blind_on, p.blind]
    panes = [p.histories, p.blind, *p.bots]
    p.refresh.click(partial(column_updates, ctx, p), None, p.columns, api_name="checkpoints")
    demo.load(partial(column_updates, ctx, p), None, p.columns, api_visibility="private")
    # Send (or Enter) while answers stream is queued: it runs when they end ("always_last").
    gr.on(
        [p.send.click, p.message.submit],
        named(["message", *NAMES], partial(send, ctx, p)),
        [p.message, *inputs],
        [p.message, *panes],
        api_name="send",
        trigger_mode="always_last",
    )
    p.regenerate.click(
        named(NAMES, partial(regenerate, ctx, p)),
        inputs,
        [p.histories, *p.bots],
        api_name="regenerate",
    )
    p.clear.click(partial(clear, p), None, panes, api_name="clear")
    vote_outputs = [p.vote_message, p.votes, p.blind, p.tally, *p.bots]
    for button, kind in ((p.left, "left"), (p.right, "right"), (p.tie, "tie")):
        button.click(
            named(NAMES, partial(vote, ctx, p, kind)), inputs, vote_outputs, api_name=f"vote_{kind}"
        )
    votes = [p.vote_message, p.votes, p.tally]
    p.undo.click(partial(undo, ctx, p), None, votes, api_name="undo_vote")
    demo.load(partial(vote_tables, ctx, p), None, votes[1:], api_visibility="private")
    p.blind_on.change(partial(blind_switch, p), [p.blind_on, *p.columns], panes, api_name="blind")
    for i, (column, bot) in enumerate(zip(p.columns, p.bots, strict=True)):
        column.change(partial(pane_label, i), [column, p.blind_on], bot, api_visibility="private")


def vote_tables(ctx: AppContext, p: SimpleNamespace) -> dict:
    """The votes recorded, newest first, and the blind battles' wins per pair of models."""
    votes = read_votes(ctx.votes_path)
    return {p.votes: vote_rows(votes), p.tally: blind_tally(votes)}


def column_updates(ctx: AppContext, p: SimpleNamespace) -> dict:
    """Every column may show the base model or any checkpoint; columns 2 and 3 may be off."""
    choices = [BASE_CHOICE, *ctx.checkpoint_choices()]
    return {
        c: gr.update(choices=[OFF_CHOICE, *choices] if i else choices)
        for i, c in enumerate(p.columns)
    }


def _on(columns: list[str]) -> list[int]:
    return [i for i, c in enumerate(columns) if c and c != OFF_CHOICE]


def _settings(v: dict) -> dict:
    return dict(
        temperature=v["temperature"],
        top_p=v["top_p"],
        max_new_tokens=int(v["max_new_tokens"]),
        seed=int(v["seed"] or 0),
    )


def answer(ctx: AppContext, histories: list[list], columns: list[str], settings: dict):
    """Stream the columns that are on; each history ends with the assistant message being written."""
    on = _on(columns)
    try:  # a missing checkpoint or model: a readable error, the other columns untouched
        checkpoints = [ctx.checkpoint_of(columns[i]) for i in on]
        ctx.pool.load(common_base(checkpoints, ctx.pool.model_name))
        # The models see the conversation up to the user's message, never the empty placeholder.
        stream = ctx.pool.stream([histories[i][:-1] for i in on], checkpoints, **settings)
        for texts in stream:
            # Fresh lists every time: Gradio streams the difference to the previous value it holds.
            histories = [list(h) for h in histories]
            for i, text in zip(on, texts, strict=True):
                histories[i][-1] = {"role": "assistant", "content": text}
            yield histories
    except (ValueError, OSError) as err:
        raise gr.Error(str(err)) from err


def _shown(p: SimpleNamespace, histories: list[list], labels: list[str]) -> dict:
    """The histories in the panes, each labelled; and the histories the models have seen."""
    panes = zip(p.bots, histories, labels, strict=True)
    return {p.histories: histories} | {b: gr.update(value=h, label=lb) for b, h, lb in panes}


def send(ctx: AppContext, p: SimpleNamespace, v: dict):
    """Add the message to every pane that is on and stream their answers. In blind mode the
    panes answer as the battle's A and B (a new battle starts from empty panes)."""
    columns, state = [v[n] for n in COLUMN_NAMES], v["blind"]
    if v["blind_on"]:
        try:
            state = battle.draw_battle(ctx.rng, columns, state)
        except ValueError as err:
            raise gr.Error(str(err)) from err
    models = battle.pane_models(columns, v["blind_on"], state)
    if not (v["message"] or "").strip() or not _on(models):
        gr.Warning("Type a message first." if _on(models) else "Switch at least one column on.")
        yield gr.skip()  # nothing sent or changed
        return
    fresh = v["blind_on"] and state is not v["blind"]  # a new blind battle starts from nothing
    histories = [[] if fresh else list(h) for h in v["histories"]]
    for i in _on(models):
        histories[i] += [
            {"role": "user", "content": v["message"]},
            {"role": "assistant", "content": ""},
        ]
    labels = battle.pane_labels(columns, v["blind_on"], state)
    # The box is emptied once, before the answers stream: what is typed meanwhile stays there.
    yield {p.message: "", p.blind: state} | _shown(p, histories, labels)
    for updated in answer(ctx, histories, models, _settings(v)):
        yield {p.blind: state} | _shown(p, updated, labels)


def regenerate(ctx: AppContext, p: SimpleNamespace, v: dict):
    """Answer the last message again (other settings or seed), in the same panes."""
    columns = [v[n] for n in COLUMN_NAMES]
    models = battle.pane_models(columns, v["blind_on"], v["blind"])
    histories = [list(h) for h in v["histories"]]
    if not _on(models) or any(not histories[i] for i in _on(models)):
        gr.Warning("Nothing to regenerate yet: send a message first.")
        yield gr.skip()
        return
    for i in _on(models):
        histories[i][-1] = {"role": "assistant", "content": ""}
    labels = battle.pane_labels(columns, v["blind_on"], v["blind"])
    for updated in answer(ctx, histories, models, _settings(v)):
        yield _shown(p, updated, labels)


def vote(ctx: AppContext, p: SimpleNamespace, kind: str, v: dict) -> dict:
    """Record which of the first two panes answered better (one vote per exchange). In blind mode
    the vote names the models behind A and B, and only then are they shown."""
    columns, state = [v[n] for n in COLUMN_NAMES], v["blind"]
    blind = bool(v["blind_on"] and state.get("models"))
    models = battle.pane_models(columns, v["blind_on"], state)
    histories, on = v["histories"], _on(models)
    if len(on) < 2:
        raise gr.Error("Voting compares two columns: switch on at least two.")
    left, right = histories[on[0]], histories[on[1]]
    if not left or not right or left[-1]["role"] != "assistant" or right[-1]["role"] != "assistant":
        raise gr.Error("Nothing to vote on yet: ask something first.")
    try:
        saved = record_vote(
            ctx.votes_path,
            left[:-1],
            content_text(left[-1]["content"]),
            content_text(right[-1]["content"]),
            kind,
            models[on[0]],
            models[on[1]],
            blind=blind,
        )
    except ValueError as err:
        raise gr.Error(str(err)) from err
    total = len(read_votes(ctx.votes_path))
    message = (
        f"Vote saved ({kind}; replaces any earlier vote on this exchange): {total} vote(s) "
        f"in `{ctx.votes_path}`. Id {saved['id']}."
    )
    if blind:
        state = {**state, "revealed": True}
        winner = {"left": "A", "right": "B", "tie": "neither"}[kind]
        message = (
            f"A was **{models[0]}**, B was **{models[1]}**; you preferred {winner}. "
            "Send again for a new blind battle. " + message
        )
    labels = battle.pane_labels(columns, v["blind_on"], state)
    return (
        {p.vote_message: message, p.blind: state}
        | vote_tables(ctx, p)
        | {bot: gr.update(label=label) for bot, label in zip(p.bots, labels, strict=True)}
    )


def undo(ctx: AppContext, p: SimpleNamespace) -> dict:
    removed = undo_vote(ctx.votes_path)
    said = f"Removed the vote {removed['id']} ({removed['winner']})." if removed else None
    return {p.vote_message: said or "No votes to undo."} | vote_tables(ctx, p)


def clear(p: SimpleNamespace) -> dict:
    """Empty panes (their labels kept) and no battle."""
    return {p.histories: [[] for _ in range(COLUMNS)], p.blind: battle.new_battle()} | {
        bot: [] for bot in p.bots
    }


def blind_switch(p: SimpleNamespace, blind_on: bool, *columns: str) -> dict:
    """Entering or leaving blind mode starts from empty panes, labelled for the mode."""
    labels = battle.mode_labels(blind_on, list(columns))
    panes = {bot: gr.update(value=[], label=lb) for bot, lb in zip(p.bots, labels, strict=True)}
    return clear(p) | panes


def pane_label(i: int, column: str, blind_on: bool):
    """A column's pane relabelled when its model changes (blind mode keeps "A" and "B")."""
    return (
        gr.skip()
        if blind_on
        else gr.update(label=battle.model_labels([OFF_CHOICE] * i + [column])[i])
    )
