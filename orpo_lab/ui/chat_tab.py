"""The Chat tab: the base model and checkpoints answer the same message side by side, streamed;
votes on two answers become preference pairs (`orpo_lab.votes`), listed and undoable."""

from __future__ import annotations

import time
from functools import partial
from types import SimpleNamespace

import gradio as gr

from orpo_lab.chat import content_text
from orpo_lab.checkpoint import common_base
from orpo_lab.ui.common import BASE_CHOICE, OFF_CHOICE, AppContext, named
from orpo_lab.votes import blind_tally, read_votes, record_vote, undo_vote

COLUMNS = 3  # chat columns; each answers as the base model or as one checkpoint
VOTE_COLUMNS = ["time", "prompt", "winner", "chosen model", "rejected model"]
SETTING_NAMES = ["temperature", "top_p", "max_new_tokens", "seed"]
COLUMN_NAMES = [f"column_{i}" for i in range(COLUMNS)]
TALLY_COLUMNS = ["model", "other model", "its wins", "the other's wins", "ties"]
SIDES = ("A", "B")


def chat_tab(ctx: AppContext) -> SimpleNamespace:
    p = SimpleNamespace()
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
    p.blind = gr.State({"models": None, "revealed": False})  # the battle: which model is A and B
    with gr.Row():
        p.bots = [
            gr.Chatbot(elem_id=f"chat-{i + 1}", label=label, height=380, buttons=["copy"])
            for i, label in enumerate(model_labels([c.value for c in p.columns]))
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
    return p


def votes_table(ctx: AppContext) -> list[list]:
    rows = []
    for v in reversed(read_votes(ctx.votes_path)):  # newest first
        prompt = v["prompt"] if isinstance(v["prompt"], str) else v["prompt"][-1]["content"]
        rows.append(
            [
                time.strftime("%H:%M:%S", time.localtime(v.get("time", 0))),
                prompt[:80],
                v.get("winner"),
                v.get("chosen_model", "-"),
                v.get("rejected_model", "-"),
            ]
        )
    return rows


def column_updates(ctx: AppContext) -> list:
    """Every column may show the base model or any checkpoint; columns 2 and 3 may be off."""
    choices = [BASE_CHOICE, *ctx.checkpoint_choices()]
    return [gr.update(choices=[OFF_CHOICE, *choices] if i else choices) for i in range(COLUMNS)]


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


def panes(ctx: AppContext, v: dict) -> tuple[list[str], dict]:
    """The model each pane answers as, and the blind battle (a new one draws a new order).

    Outside blind mode the panes are the columns. In blind mode panes 1 and 2 are columns 1 and 2
    in an order drawn at random for each battle (a battle ends with its vote or a Clear).
    """
    columns = [v[n] for n in COLUMN_NAMES]
    if not v["blind_on"]:
        return columns, v["blind"]
    pair, state = columns[:2], v["blind"]
    if OFF_CHOICE in pair or not all(pair) or pair[0] == pair[1]:
        raise gr.Error("Blind mode compares two different models: set columns 1 and 2.")
    if (
        state.get("models") is None
        or state.get("revealed")
        or sorted(state["models"]) != sorted(pair)
    ):
        state = {"models": pair[::-1] if ctx.rng.random() < 0.5 else list(pair), "revealed": False}
    return [*state["models"], OFF_CHOICE], state


def model_labels(columns: list[str]) -> list[str]:
    """Each pane named for the model that answers in it ("column 3 (off)" when none does)."""
    return [c if c and c != OFF_CHOICE else f"column {i + 1} (off)" for i, c in enumerate(columns)]


def _pane_label(i: int, column: str, blind_on: bool):
    """A column's pane relabelled when its model changes (blind mode keeps "A" and "B")."""
    return gr.skip() if blind_on else gr.update(label=model_labels([OFF_CHOICE] * i + [column])[i])


def pane_labels(v: dict, state: dict) -> list[str]:
    """The models' names; "A" and "B" while a blind battle is open, with names once voted on."""
    if not v["blind_on"] or not state.get("models"):
        return model_labels([v[n] for n in COLUMN_NAMES])
    names = [
        f"{side}: {m}" if state["revealed"] else side
        for side, m in zip(SIDES, state["models"], strict=True)
    ]
    return [*names, "(off in blind mode)"]


def _shown(histories: list[list], labels: list[str]) -> list:
    return [gr.update(value=h, label=label) for h, label in zip(histories, labels, strict=True)]


def send(ctx: AppContext, v: dict):
    """Add the message to every pane that is on and stream their answers."""
    columns, state = panes(ctx, v)
    if not (v["message"] or "").strip() or not _on(columns):
        gr.Warning("Type a message first." if _on(columns) else "Switch at least one column on.")
        yield gr.skip(), gr.skip(), gr.skip(), *[gr.skip()] * COLUMNS  # nothing sent or changed
        return
    fresh = v["blind_on"] and state is not v["blind"]  # a new blind battle starts from nothing
    histories = [[] if fresh else list(h) for h in v["histories"]]
    for i in _on(columns):
        histories[i] += [
            {"role": "user", "content": v["message"]},
            {"role": "assistant", "content": ""},
        ]
    labels = pane_labels(v, state)
    # The box is emptied once, before the answers stream: what is typed meanwhile stays there.
    yield "", histories, state, *_shown(histories, labels)
    for updated in answer(ctx, histories, columns, _settings(v)):
        yield gr.skip(), updated, state, *_shown(updated, labels)


def regenerate(ctx: AppContext, v: dict):
    """Answer the last message again (other settings or seed), in the same panes."""
    columns = (
        [*v["blind"]["models"], OFF_CHOICE]
        if v["blind_on"] and v["blind"].get("models")
        else [v[n] for n in COLUMN_NAMES]
    )
    histories = [list(h) for h in v["histories"]]
    if not _on(columns) or any(not histories[i] for i in _on(columns)):
        gr.Warning("Nothing to regenerate yet: send a message first.")
        yield gr.skip(), *[gr.skip()] * COLUMNS
        return
    for i in _on(columns):
        histories[i][-1] = {"role": "assistant", "content": ""}
    labels = pane_labels(v, v["blind"])
    for updated in answer(ctx, histories, columns, _settings(v)):
        yield updated, *_shown(updated, labels)


def vote(ctx: AppContext, kind: str, v: dict):
    """Record which of the first two panes answered better (one vote per exchange). In blind mode
    the vote names the models behind A and B, and only then are they shown."""
    blind = bool(v["blind_on"] and v["blind"].get("models"))
    columns = [*v["blind"]["models"], OFF_CHOICE] if blind else [v[n] for n in COLUMN_NAMES]
    histories, on = v["histories"], _on(columns)
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
            columns[on[0]],
            columns[on[1]],
            blind=blind,
        )
    except ValueError as err:
        raise gr.Error(str(err)) from err
    total = len(read_votes(ctx.votes_path))
    message = (
        f"Vote saved ({kind}; replaces any earlier vote on this exchange): {total} vote(s) "
        f"in `{ctx.votes_path}`. Id {saved['id']}."
    )
    state = v["blind"]
    if blind:
        state = {**state, "revealed": True}
        winner = {"left": "A", "right": "B", "tie": "neither"}[kind]
        message = (
            f"A was **{columns[0]}**, B was **{columns[1]}**; you preferred {winner}. "
            "Send again for a new blind battle. " + message
        )
    labels = [gr.update(label=label) for label in pane_labels(v, state)]
    return message, votes_table(ctx), state, blind_tally(read_votes(ctx.votes_path)), *labels


def undo(ctx: AppContext):
    removed = undo_vote(ctx.votes_path)
    tally = blind_tally(read_votes(ctx.votes_path))
    if removed is None:
        return "No votes to undo.", votes_table(ctx), tally
    return f"Removed the vote {removed['id']} ({removed['winner']}).", votes_table(ctx), tally


def blind_switch(on: bool, *columns: str):
    """Entering or leaving blind mode starts from empty panes, labelled for the mode."""
    labels = [*SIDES, "(off in blind mode)"] if on else model_labels(list(columns))
    empty = [[] for _ in range(COLUMNS)]
    return (
        empty,
        {"models": None, "revealed": False},
        *[gr.update(value=[], label=label) for label in labels],
    )


def wire_chat(ctx: AppContext, p: SimpleNamespace) -> None:
    inputs = [p.histories, *p.columns, *p.settings, p.blind_on, p.blind]
    names = ["histories", *COLUMN_NAMES, *SETTING_NAMES, "blind_on", "blind"]
    outputs = [p.histories, *p.bots]
    send_inputs, send_names = [p.message, *inputs], ["message", *names]
    send_outputs = [p.message, p.histories, p.blind, *p.bots]

    p.refresh.click(lambda: column_updates(ctx), None, p.columns, api_name="checkpoints")
    # Send (or Enter) while answers stream is queued: it runs when they end ("always_last").
    gr.on(
        [p.send.click, p.message.submit],
        named(send_names, partial(send, ctx)),
        send_inputs,
        send_outputs,
        api_name="send",
        trigger_mode="always_last",
    )
    p.regenerate.click(
        named(names, partial(regenerate, ctx)), inputs, outputs, api_name="regenerate"
    )
    empty = [[] for _ in range(COLUMNS)]
    p.clear.click(
        lambda: (empty, {"models": None, "revealed": False}, *empty),
        None,
        [p.histories, p.blind, *p.bots],
        api_name="clear",
    )
    vote_outputs = [p.vote_message, p.votes, p.blind, p.tally, *p.bots]
    for button, kind in ((p.left, "left"), (p.right, "right"), (p.tie, "tie")):
        button.click(
            named(names, partial(vote, ctx, kind)), inputs, vote_outputs, api_name=f"vote_{kind}"
        )
    p.undo.click(partial(undo, ctx), None, [p.vote_message, p.votes, p.tally], api_name="undo_vote")
    p.blind_on.change(
        blind_switch, [p.blind_on, *p.columns], [p.histories, p.blind, *p.bots], api_name="blind"
    )
    for i, (column, bot) in enumerate(zip(p.columns, p.bots, strict=True)):
        column.change(partial(_pane_label, i), [column, p.blind_on], bot, api_visibility="private")
