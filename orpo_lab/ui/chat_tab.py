"""The Chat tab: the base model and checkpoints answer the same message side by side, streamed;
votes on two answers become preference pairs (`orpo_lab.votes`), listed and undoable."""

from __future__ import annotations

import time
from functools import partial
from types import SimpleNamespace

import gradio as gr

from orpo_lab.chat import common_base, content_text
from orpo_lab.ui.common import BASE_CHOICE, OFF_CHOICE, AppContext, named
from orpo_lab.votes import read_votes, record_vote, undo_vote

COLUMNS = 3  # chat columns; each answers as the base model or as one checkpoint
VOTE_COLUMNS = ["time", "prompt", "winner", "chosen model", "rejected model"]
SETTING_NAMES = ["temperature", "top_p", "max_new_tokens", "seed"]
COLUMN_NAMES = [f"column_{i}" for i in range(COLUMNS)]


def chat_tab(ctx: AppContext) -> SimpleNamespace:
    p = SimpleNamespace()
    with gr.Row():
        p.columns = [
            gr.Dropdown([BASE_CHOICE] if i == 0 else [OFF_CHOICE, BASE_CHOICE],
                        value=BASE_CHOICE if i == 0 else OFF_CHOICE, label=f"column {i + 1}",
                        elem_id=f"column-{i + 1}", allow_custom_value=True)
            for i in range(COLUMNS)
        ]  # fmt: skip
        p.refresh = gr.Button("Refresh checkpoints", size="sm", elem_id="refresh-columns")
    with gr.Row():
        p.bots = [gr.Chatbot(elem_id=f"chat-{i + 1}", label=f"column {i + 1}", height=380,
                             buttons=["copy"]) for i in range(COLUMNS)]  # fmt: skip
    p.histories = gr.State([[] for _ in range(COLUMNS)])  # what each column's model has seen
    p.message = gr.Textbox(label="message", placeholder="Ask all columns the same thing; Enter sends",
                           elem_id="chat-message")  # fmt: skip
    with gr.Row():
        p.send = gr.Button("Send", variant="primary", elem_id="send")
        p.regenerate = gr.Button("Regenerate", elem_id="regenerate")
        p.clear = gr.Button("Clear", elem_id="clear")
    with gr.Accordion("generation settings (shared by every column)", open=False):
        with gr.Row():
            p.settings = [
                gr.Slider(0, 2, 0.0, step=0.05, label="temperature", info="0 = greedy",
                          elem_id="temperature"),
                gr.Slider(0.05, 1, 1.0, step=0.05, label="top p"),
                gr.Slider(8, 1024, 128, step=8, label="max new tokens", elem_id="max-new-tokens"),
                gr.Number(0, label="seed", precision=0),
            ]  # fmt: skip
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
    return p


def votes_table(ctx: AppContext) -> list[list]:
    rows = []
    for v in reversed(read_votes(ctx.votes_path)):  # newest first
        prompt = v["prompt"] if isinstance(v["prompt"], str) else v["prompt"][-1]["content"]
        rows.append([time.strftime("%H:%M:%S", time.localtime(v.get("time", 0))), prompt[:80],
                     v.get("winner"), v.get("chosen_model", "-"), v.get("rejected_model", "-")])  # fmt: skip
    return rows


def column_updates(ctx: AppContext) -> list:
    """Every column may show the base model or any checkpoint; columns 2 and 3 may be off."""
    choices = [BASE_CHOICE, *ctx.checkpoint_choices()]
    return [gr.update(choices=[OFF_CHOICE, *choices] if i else choices) for i in range(COLUMNS)]


def _on(columns: list[str]) -> list[int]:
    return [i for i, c in enumerate(columns) if c and c != OFF_CHOICE]


def _settings(v: dict) -> dict:
    return dict(temperature=v["temperature"], top_p=v["top_p"],
                max_new_tokens=int(v["max_new_tokens"]), seed=int(v["seed"] or 0))  # fmt: skip


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


def send(ctx: AppContext, v: dict):
    """Add the message to every column that is on and stream their answers."""
    columns = [v[n] for n in COLUMN_NAMES]
    if not (v["message"] or "").strip() or not _on(columns):
        gr.Warning("Type a message first." if _on(columns) else "Switch at least one column on.")
        yield gr.skip(), gr.skip(), *[gr.skip()] * COLUMNS  # nothing sent, nothing changed
        return
    histories = [list(h) for h in v["histories"]]
    for i in _on(columns):
        histories[i] += [{"role": "user", "content": v["message"]},
                         {"role": "assistant", "content": ""}]  # fmt: skip
    for updated in answer(ctx, histories, columns, _settings(v)):
        yield "", updated, *updated


def regenerate(ctx: AppContext, v: dict):
    """Answer the last message again (other settings or seed)."""
    columns, histories = [v[n] for n in COLUMN_NAMES], [list(h) for h in v["histories"]]
    if not _on(columns) or any(not histories[i] for i in _on(columns)):
        gr.Warning("Nothing to regenerate yet: send a message first.")
        yield gr.skip(), *[gr.skip()] * COLUMNS
        return
    for i in _on(columns):
        histories[i][-1] = {"role": "assistant", "content": ""}
    for updated in answer(ctx, histories, columns, _settings(v)):
        yield updated, *updated


def vote(ctx: AppContext, kind: str, v: dict):
    """Record which of the first two columns answered better (one vote per exchange)."""
    columns, histories = [v[n] for n in COLUMN_NAMES], v["histories"]
    on = _on(columns)
    if len(on) < 2:
        raise gr.Error("Voting compares two columns: switch on at least two.")
    left, right = histories[on[0]], histories[on[1]]
    if not left or not right or left[-1]["role"] != "assistant" or right[-1]["role"] != "assistant":
        raise gr.Error("Nothing to vote on yet: ask something first.")
    try:
        vote = record_vote(ctx.votes_path, left[:-1], content_text(left[-1]["content"]),
                           content_text(right[-1]["content"]), kind, columns[on[0]],
                           columns[on[1]])  # fmt: skip
    except ValueError as err:
        raise gr.Error(str(err)) from err
    total = len(read_votes(ctx.votes_path))
    return (f"Vote saved ({kind}; replaces any earlier vote on this exchange): {total} vote(s) "
            f"in `{ctx.votes_path}`. Id {vote['id']}."), votes_table(ctx)  # fmt: skip


def undo(ctx: AppContext):
    removed = undo_vote(ctx.votes_path)
    if removed is None:
        return "No votes to undo.", votes_table(ctx)
    return f"Removed the vote {removed['id']} ({removed['winner']}).", votes_table(ctx)


def wire_chat(ctx: AppContext, p: SimpleNamespace) -> None:
    inputs = [p.histories, *p.columns, *p.settings]
    names = ["histories", *COLUMN_NAMES, *SETTING_NAMES]
    outputs = [p.histories, *p.bots]

    p.refresh.click(lambda: column_updates(ctx), None, p.columns, api_name="checkpoints")
    send_inputs, send_names = [p.message, *inputs], ["message", *names]
    p.send.click(
        named(send_names, partial(send, ctx)), send_inputs, [p.message, *outputs], api_name="send"
    )
    p.message.submit(named(send_names, partial(send, ctx)), send_inputs, [p.message, *outputs],
                     api_visibility="private")  # fmt: skip
    p.regenerate.click(
        named(names, partial(regenerate, ctx)), inputs, outputs, api_name="regenerate"
    )
    empty = [[] for _ in range(COLUMNS)]
    p.clear.click(lambda: (empty, *empty), None, outputs, api_name="clear")
    for button, kind in ((p.left, "left"), (p.right, "right"), (p.tie, "tie")):
        button.click(named(names, partial(vote, ctx, kind)), inputs,
                     [p.vote_message, p.votes], api_name=f"vote_{kind}")  # fmt: skip
    p.undo.click(partial(undo, ctx), None, [p.vote_message, p.votes], api_name="undo_vote")
