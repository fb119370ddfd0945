"""ORPO Lab in the browser: train (in a separate process) and chat with checkpoints side by side.

A thin shell: runs live on disk and are driven by `orpo_lab.runs.RunManager`; generation is
`orpo_lab.chat.ModelPool`; datasets are read by `orpo_lab.preferences`. Start with
`python app.py` (127.0.0.1:7860) or `make app`; on a Hugging Face Space `demo` is served.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
from dataclasses import fields
from pathlib import Path

import gradio as gr
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from orpo_lab.chat import ModelPool, record_vote
from orpo_lab.config import PRESETS, TrainConfig
from orpo_lab.runs import RunManager

MAX_COLUMNS = 3  # chat columns; each answers as the base model or as one checkpoint
BASE_CHOICE = "base model"
OFF_CHOICE = "(off)"
HELP = {f.name: f.metadata["help"] for f in fields(TrainConfig)}
DEFAULTS = TrainConfig()
# The form's hyperparameters, in order: (field, component factory).
FORM = [
    ("beta", lambda info: gr.Number(DEFAULTS.beta, label="beta (lambda)", minimum=0, info=info)),
    ("learning_rate", lambda info: gr.Number(DEFAULTS.learning_rate, label="learning rate", info=info)),
    ("max_steps", lambda info: gr.Number(DEFAULTS.max_steps, label="max steps", precision=0, info=info)),
    ("epochs", lambda info: gr.Number(DEFAULTS.epochs, label="epochs", info=info)),
    ("batch_size", lambda info: gr.Number(DEFAULTS.batch_size, label="batch size", precision=0, info=info)),
    ("grad_accum", lambda info: gr.Number(DEFAULTS.grad_accum, label="grad accumulation", precision=0, info=info)),
    ("max_length", lambda info: gr.Number(DEFAULTS.max_length, label="max length", precision=0, info=info)),
    ("max_prompt_length", lambda info: gr.Number(DEFAULTS.max_prompt_length, label="max prompt length", precision=0, info=info)),
    ("lora_r", lambda info: gr.Number(DEFAULTS.lora_r, label="LoRA r", precision=0, info=info)),
    ("lora_alpha", lambda info: gr.Number(DEFAULTS.lora_alpha, label="LoRA alpha", precision=0, info=info)),
    ("nll_scope", lambda info: gr.Radio(["response", "prompt_response"], value=DEFAULTS.nll_scope, label="NLL scope", info=info)),
    ("eval_every", lambda info: gr.Number(DEFAULTS.eval_every, label="eval every (steps)", precision=0, info=info)),
    ("save_every", lambda info: gr.Number(DEFAULTS.save_every, label="save every (steps)", precision=0, info=info)),
]  # fmt: skip
FORM_NAMES = [name for name, _ in FORM]
PRESET_CHOICES = {"CPU, quick": "cpu-quick", "GPU": "gpu"}
# (subplot title, [(metric key, legend name)]); eval keys come from the held-out lines.
PANELS = [
    ("mean log-prob: chosen vs rejected", [("logps/chosen", "train chosen"), ("logps/rejected", "train rejected"),
                                           ("eval/logps_chosen", "held-out chosen"), ("eval/logps_rejected", "held-out rejected")]),
    ("log-odds ratio and its log-sigmoid", [("log_odds_chosen", "log odds ratio"), ("log_odds_ratio", "log sigmoid(log odds)"),
                                            ("eval/log_odds_chosen", "held-out log odds ratio")]),
    ("loss: NLL vs odds-ratio term", [("nll_loss", "NLL"), ("or_loss", "odds-ratio loss"), ("loss", "total")]),
    ("preference accuracy", [("rewards/accuracies", "train"), ("eval/accuracy", "held-out")]),
    ("learning rate", [("lr", "lr")]),
    ("margin (chosen - rejected)", [("rewards/margins", "train margin")]),
]  # fmt: skip


# ---------------------------------------------------------------- figures and text (pure functions)


def metrics_figure(records: list[dict], revision: str = "") -> go.Figure:
    """Every panel of one run; `revision` keeps the user's zoom across refreshes (uirevision)."""
    fig = make_subplots(rows=2, cols=3, subplot_titles=[title for title, _ in PANELS])
    for i, (_, series) in enumerate(PANELS):
        row, col = divmod(i, 3)
        for key, name in series:
            points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            if points:
                x, y = zip(*points, strict=True)
                mode = "lines+markers" if key.startswith("eval/") or len(points) < 30 else "lines"
                fig.add_trace(
                    go.Scatter(x=x, y=y, name=name, mode=mode, legendgroup=str(i)), row + 1, col + 1
                )
    fig.update_layout(height=560, margin=dict(l=40, r=20, t=40, b=30), uirevision=revision or "run",
                      legend=dict(orientation="h", y=-0.08), template="plotly_white")  # fmt: skip
    return fig


def compare_figure(runs: dict[str, list[dict]]) -> go.Figure:
    """Overlay of several runs (e.g. SFT vs ORPO): chosen and rejected log-probs, and accuracy."""
    fig = make_subplots(
        rows=1,
        cols=3,
        subplot_titles=["chosen mean log-prob", "rejected mean log-prob", "preference accuracy"],
    )
    for name, records in runs.items():
        for col, key in enumerate(
            ["logps/chosen", "logps/rejected", "rewards/accuracies"], start=1
        ):
            points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            if points:
                x, y = zip(*points, strict=True)
                fig.add_trace(
                    go.Scatter(x=x, y=y, name=f"{name}", legendgroup=name, showlegend=col == 1),
                    1,
                    col,
                )
    fig.update_layout(
        height=340,
        margin=dict(l=40, r=20, t=40, b=30),
        uirevision="compare",
        template="plotly_white",
    )
    return fig


def _duration(seconds) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def progress_text(name: str, status: dict, records: list[dict]) -> str:
    """One line: status, step/total, ETA and the message of the trainer (an error, if it failed)."""
    train = [r for r in records if r.get("kind") == "train"]
    last = train[-1] if train else {}
    step, total = (
        status.get("step") or last.get("step", 0),
        status.get("total_steps") or last.get("total_steps", 0),
    )
    pct = f" ({100 * step / total:.0f}%)" if total else ""
    state = status.get("status", "unknown")
    text = f"**{name}**: {state} · step {step}/{total or '?'}{pct}"
    if state == "running":
        text += (
            f" · ETA {_duration(last.get('eta_s'))} · elapsed {_duration(last.get('elapsed_s'))}"
        )
    message = (status.get("message") or "").strip()
    if state == "failed":
        return text + f"\n\n```\n{message}\n```"
    return text + (f" · {message}" if message else "")


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else ""


def runs_table(summaries: list[dict]) -> list[list]:
    return [
        [s["name"], s["status"]["status"], f"{s['status'].get('step', 0)}/{s['status'].get('total_steps', 0)}",
         _fmt(s["config"].get("beta")), _fmt(s["config"].get("learning_rate")), _fmt(s["train"].get("loss")),
         _fmt(s["train"].get("rewards/accuracies")), _fmt(s["eval"].get("eval/accuracy")), ", ".join(s["checkpoints"])]
        for s in summaries
    ]  # fmt: skip


RUN_COLUMNS = [
    "run",
    "status",
    "step",
    "beta",
    "lr",
    "loss",
    "train acc",
    "held-out acc",
    "checkpoints",
]


def _safe_filename(name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(name).name).lstrip(".")
    return stem or "upload"


# ---------------------------------------------------------------- the app


def build_app(
    model: str = "default", runs_dir: str | Path = "runs", device: str = "auto"
) -> gr.Blocks:
    """The Blocks app over a runs folder; `model` is the default base model of training and chat."""
    manager = RunManager(runs_dir)
    manager.watch()
    pool = ModelPool(model, device=device)
    votes_path = manager.runs_dir / "votes.jsonl"
    uploads = manager.runs_dir.parent / (manager.runs_dir.name + "-uploads")

    # ---- train tab handlers

    def apply_preset(label):
        values = {**DEFAULTS.to_dict(), **PRESETS[PRESET_CHOICES[label]]}
        return [values[name] for name in FORM_NAMES]

    def upload_dataset(file):
        if not file:
            return gr.skip()
        uploads.mkdir(parents=True, exist_ok=True)
        target = uploads / _safe_filename(file)  # never a path the client chose
        shutil.copyfile(file, target)
        return str(target)

    def votes_dataset():
        """The chat votes (ties dropped) as a dataset file the trainer reads."""
        from orpo_lab.preferences import votes_to_dataset

        if not votes_path.is_file():
            return gr.skip(), "**No votes yet:** vote in the Chat tab first."
        try:
            pairs = votes_to_dataset(votes_path)
        except ValueError as err:
            return gr.skip(), f"**Cannot use the votes:** {err}"
        uploads.mkdir(parents=True, exist_ok=True)
        target = uploads / "chat-votes.jsonl"
        pairs.to_json(target, lines=True, force_ascii=False)
        return str(target), f"{len(pairs)} preference pairs from your chat votes (ties dropped)."

    def preview(model_name, dataset, trust_remote_code):
        from orpo_lab.model import load_tokenizer
        from orpo_lab.preferences import load_preferences

        try:
            pairs = list(load_preferences(dataset.strip() or "default", split="train"))
            tokenizer = load_tokenizer(
                model_name.strip() or model, trust_remote_code=bool(trust_remote_code)
            )
        except Exception as err:  # a broken file or a missing model: say so inline
            return f"**Cannot use this dataset/model:** {err}"
        blocks = [
            f"{len(pairs)} training pairs. The first ones, as the chat template renders them:"
        ]
        for pair in pairs[:3]:
            prompt = pair["prompt"]
            messages = (
                [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            )
            rendered = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            blocks.append(
                f"```\n{rendered}\n```\n**chosen:** {pair['chosen']}\n\n**rejected:** {pair['rejected']}"
            )
        return "\n\n---\n\n".join(blocks)

    def start(run_name, model_name, dataset, trust_remote_code, sft, device_choice, *values):
        config = dict(zip(FORM_NAMES, values, strict=True))
        config.update(model=model_name.strip() or model, dataset=dataset.strip() or "default",
                      trust_remote_code=bool(trust_remote_code), device=device_choice)  # fmt: skip
        for name in ("max_steps", "batch_size", "grad_accum", "max_length", "max_prompt_length",
                     "lora_r", "lora_alpha", "eval_every", "save_every"):  # fmt: skip
            config[name] = (
                int(config[name]) if config[name] is not None else getattr(DEFAULTS, name)
            )
        if sft:
            config["beta"] = 0.0  # the SFT baseline: the same loop with the odds-ratio term off
        try:
            name = manager.start(config, run_name.strip() or None)
        except ValueError as err:  # RunError is a ValueError too
            gr.Warning(str(err).splitlines()[0])
            return gr.skip(), f"**Not started:** {err}"
        state = manager.status(name)["status"]
        return gr.update(choices=manager.names(), value=name), f"Run **{name}** {state}."

    def refresh(name, seen):
        """Timer tick: redraw only when the run has new lines or a new status."""
        if not name or name not in manager.names():
            return gr.skip(), gr.skip(), seen
        records, status = manager.metrics(name), manager.status(name)
        signature = f"{name}:{len(records)}:{status.get('status')}:{status.get('step')}"
        if signature == seen:
            return gr.skip(), gr.skip(), seen
        return metrics_figure(records, name), progress_text(name, status, records), signature

    def stop(name):
        if not name:
            return "Select a run first."
        try:
            how = manager.stop(name)
        except ValueError as err:
            return f"**Error:** {err}"
        status = manager.status(name)
        return {
            "stopped": f"Stopped **{name}** at step {status.get('step')}: {status.get('message')}",
            "killed": f"Killed **{name}**: it did not stop within {manager.grace_s:g} s (the last checkpoint is kept).",
            "cancelled": f"Cancelled **{name}** before it started.",
        }.get(how, f"**{name}** is not running ({status.get('status')}).")

    def current_run():
        summaries = manager.list_runs()
        active = [
            s["name"]
            for s in summaries
            if s["status"]["status"] in ("running", "starting", "queued")
        ]
        names = [s["name"] for s in summaries]
        value = (active or names or [None])[0]
        return (
            gr.update(choices=names, value=value),
            runs_table(summaries),
            gr.update(choices=names),
        )

    def list_runs():
        summaries = manager.list_runs()
        return runs_table(summaries)

    def compare(names):
        return compare_figure({n: manager.metrics(n) for n in names or [] if n in manager.names()})

    def run_checkpoints(name):
        choices = manager.checkpoints(name) if name and name in manager.names() else []
        return gr.update(choices=choices, value=choices[-1] if choices else None)

    def delete(name):
        try:
            manager.delete(name)
        except ValueError as err:
            gr.Warning(str(err))
            return gr.skip(), f"**Not deleted:** {err}"
        names = manager.names()
        return gr.update(choices=names, value=names[0] if names else None), f"Deleted **{name}**."

    def download(name, checkpoint):
        try:
            return str(manager.zip_checkpoint(name, checkpoint))
        except ValueError as err:
            raise gr.Error(str(err)) from err

    def export(name, checkpoint):
        try:
            return f"Merged model written to `{manager.export(name, checkpoint)}`."
        except ValueError as err:
            return f"**Export failed:** {err}"

    # ---- chat tab handlers

    def column_choices():
        return [BASE_CHOICE] + [f"{n}/{c}" for n in manager.names() for c in manager.checkpoints(n)]

    def refresh_columns(*current):
        choices = column_choices()
        return [
            gr.update(choices=[OFF_CHOICE, *choices] if i else choices) for i in range(MAX_COLUMNS)
        ]

    def resolve_columns(selected):
        """[(column index, checkpoint path or None)] for the columns that are on; loads their base."""
        columns, bases = [], set()
        for i, choice in enumerate(selected):
            if not choice or choice == OFF_CHOICE:
                continue
            if choice == BASE_CHOICE:
                columns.append((i, None))
                continue
            run, _, checkpoint = choice.partition("/")
            columns.append((i, manager.checkpoint_path(run, checkpoint)))
            bases.add(manager.config(run).get("model", model))
        if len(bases) > 1:
            raise gr.Error(
                f"These checkpoints come from different base models ({', '.join(sorted(bases))}); compare one base at a time."
            )
        pool.load(bases.pop() if bases else pool.model_name)
        return columns

    def answer(histories, selected, settings):
        try:  # a missing checkpoint or model: a readable error box, other columns untouched
            columns = resolve_columns(selected)
            if not columns:
                raise gr.Error("Switch at least one column on.")
            # Each history ends with the assistant message being written: the model sees what precedes it.
            conversations = [histories[i][:-1] for i, _ in columns]
            stream = pool.stream(conversations, [c for _, c in columns], **settings)
            for texts in stream:
                # Fresh lists every time: Gradio streams the difference to the previous value it holds.
                histories = [list(h) for h in histories]
                for (i, _), text in zip(columns, texts, strict=True):
                    histories[i][-1] = {"role": "assistant", "content": text}
                yield histories
        except (ValueError, OSError) as err:
            raise gr.Error(str(err)) from err

    def send(message, temperature, top_p, max_new_tokens, seed, *rest):
        selected, histories = rest[:MAX_COLUMNS], [list(h or []) for h in rest[MAX_COLUMNS:]]
        if not (message or "").strip():
            raise gr.Error("Type a message first.")
        settings = dict(
            temperature=temperature, top_p=top_p, max_new_tokens=int(max_new_tokens), seed=int(seed)
        )
        for i, choice in enumerate(selected):
            if choice and choice != OFF_CHOICE:
                histories[i] += [
                    {"role": "user", "content": message},
                    {"role": "assistant", "content": ""},
                ]
        for updated in answer(histories, selected, settings):
            yield "", *updated

    def regenerate(temperature, top_p, max_new_tokens, seed, *rest):
        selected, histories = rest[:MAX_COLUMNS], [list(h or []) for h in rest[MAX_COLUMNS:]]
        settings = dict(
            temperature=temperature, top_p=top_p, max_new_tokens=int(max_new_tokens), seed=int(seed)
        )
        for i, choice in enumerate(selected):
            if choice and choice != OFF_CHOICE:
                if not histories[i] or histories[i][-1]["role"] != "assistant":
                    raise gr.Error("Nothing to regenerate yet.")
                histories[i][-1] = {"role": "assistant", "content": ""}
        yield from answer(histories, selected, settings)

    def vote(kind, *rest):
        selected, histories = rest[:MAX_COLUMNS], rest[MAX_COLUMNS:]
        on = [i for i, c in enumerate(selected) if c and c != OFF_CHOICE]
        if len(on) < 2:
            raise gr.Error("Voting compares two columns: switch on at least two.")
        left, right = histories[on[0]] or [], histories[on[1]] or []
        if (
            not left
            or not right
            or left[-1]["role"] != "assistant"
            or right[-1]["role"] != "assistant"
        ):
            raise gr.Error("Nothing to vote on yet: ask something first.")
        try:
            record_vote(
                votes_path,
                left[:-1],
                _text(left[-1]),
                _text(right[-1]),
                kind,
                selected[on[0]],
                selected[on[1]],
            )
        except ValueError as err:
            raise gr.Error(str(err)) from err
        lines = sum(1 for _ in votes_path.open())
        return f"Vote saved ({kind}); {lines} votes in `{votes_path}` (use it as the dataset in the Train tab)."

    # ---- layout

    with gr.Blocks(title="ORPO Lab") as demo:
        gr.Markdown(
            "# ORPO Lab\nOdds Ratio Preference Optimization: train a LoRA adapter on preference pairs, then chat with it."
        )
        with gr.Tab("Train"):
            with gr.Row():
                with gr.Column(scale=2):
                    model_box = gr.Textbox(
                        model, label="model", info=HELP["model"], elem_id="model"
                    )
                    dataset_box = gr.Textbox(
                        "default", label="dataset", info=HELP["dataset"], elem_id="dataset"
                    )
                    with gr.Row():
                        upload = gr.File(
                            label="upload a dataset (.jsonl / .json / .csv / .parquet)",
                            file_types=[".jsonl", ".json", ".csv", ".parquet"],
                            height=90,
                        )
                        with gr.Column():
                            votes_btn = gr.Button("Use my chat votes", size="sm")
                            preview_btn = gr.Button("Preview and check", size="sm")
                    trust_box = gr.Checkbox(
                        False, label="trust remote code", info=HELP["trust_remote_code"]
                    )
                with gr.Column(scale=1):
                    run_name_box = gr.Textbox(
                        "",
                        label="run name",
                        info="letters, digits, '.', '_', '-'; empty: a timestamp",
                        elem_id="run-name",
                    )
                    preset = gr.Radio(
                        list(PRESET_CHOICES),
                        label="preset",
                        info="fill the form with a starting point",
                        elem_id="preset",
                    )
                    sft_box = gr.Checkbox(
                        False,
                        label="SFT baseline (beta = 0)",
                        info="the same loop without the odds-ratio term, to compare",
                    )
                    device_box = gr.Dropdown(
                        ["auto", "cpu", "cuda"], value="auto", label="device", info=HELP["device"]
                    )
            preview_md = gr.Markdown(elem_id="preview")
            with gr.Accordion("hyperparameters", open=False):
                with gr.Row(equal_height=True):
                    form = []
                    for name, make in FORM:
                        form.append(make(HELP[name]))
                        form[-1].elem_id = f"hp-{name}"
            with gr.Row():
                start_btn = gr.Button("Start training", variant="primary", elem_id="start")
                stop_btn = gr.Button("Stop", variant="stop", elem_id="stop")
            message_md = gr.Markdown(elem_id="train-message")
            run_select = gr.Dropdown(
                manager.names(), label="run shown", allow_custom_value=True, elem_id="run-select"
            )
            progress_md = gr.Markdown(elem_id="progress")
            plot = gr.Plot(label="training curves", elem_id="train-plot")
            seen = gr.State("")
            timer = gr.Timer(2.0)
            gr.Markdown("## Runs")
            runs_df = gr.Dataframe(
                headers=RUN_COLUMNS,
                value=runs_table([]),
                interactive=False,
                wrap=True,
                elem_id="runs-table",
            )
            with gr.Row():
                compare_select = gr.Dropdown(
                    manager.names(),
                    multiselect=True,
                    label="overlay runs (e.g. SFT vs ORPO)",
                    scale=3,
                    allow_custom_value=True,
                )
                compare_btn = gr.Button("Overlay", scale=1)
            compare_plot = gr.Plot(label="runs compared")
            with gr.Row():
                checkpoint_select = gr.Dropdown(
                    [], label="checkpoint of the run shown", allow_custom_value=True
                )
                download_btn = gr.Button("Zip adapter")
                export_btn = gr.Button("Merge and export")
                delete_btn = gr.Button("Delete run", variant="stop")
            download_file = gr.File(label="adapter zip", interactive=False)
            artefact_md = gr.Markdown()

        with gr.Tab("Chat"):
            with gr.Row():
                column_boxes = [
                    gr.Dropdown(
                        [BASE_CHOICE] if i == 0 else [OFF_CHOICE, BASE_CHOICE],
                        value=BASE_CHOICE if i == 0 else OFF_CHOICE,
                        label=f"column {i + 1}",
                        elem_id=f"column-{i + 1}",
                        allow_custom_value=True,
                    )
                    for i in range(MAX_COLUMNS)
                ]
                refresh_btn = gr.Button("Refresh checkpoints", size="sm", elem_id="refresh-columns")
            with gr.Row():
                chatbots = [
                    gr.Chatbot(
                        elem_id=f"chat-{i + 1}",
                        label=f"column {i + 1}",
                        height=380,
                        buttons=["copy"],
                    )
                    for i in range(MAX_COLUMNS)
                ]
            message_box = gr.Textbox(
                label="message",
                placeholder="Ask all columns the same thing; Enter sends",
                elem_id="chat-message",
            )
            with gr.Row():
                send_btn = gr.Button("Send", variant="primary", elem_id="send")
                regen_btn = gr.Button("Regenerate")
                clear_btn = gr.Button("Clear")
            with gr.Accordion("generation settings (shared by every column)", open=False):
                with gr.Row():
                    temperature = gr.Slider(
                        0,
                        2,
                        0.0,
                        step=0.05,
                        label="temperature",
                        info="0 = greedy",
                        elem_id="temperature",
                    )
                    top_p = gr.Slider(0.05, 1, 1.0, step=0.05, label="top p")
                    max_new = gr.Slider(
                        8, 1024, 128, step=8, label="max new tokens", elem_id="max-new-tokens"
                    )
                    seed = gr.Number(0, label="seed", precision=0)
            with gr.Row():
                left_btn = gr.Button("Left is better", elem_id="vote-left")
                tie_btn = gr.Button("Tie", elem_id="vote-tie")
                right_btn = gr.Button("Right is better", elem_id="vote-right")
            vote_md = gr.Markdown(
                f"Votes compare the first two columns that are on and go to `{votes_path}`.",
                elem_id="vote-message",
            )

        # ---- events
        preset.change(apply_preset, preset, form, api_name="preset")
        upload.upload(upload_dataset, upload, dataset_box, api_name="upload")
        votes_btn.click(votes_dataset, None, [dataset_box, preview_md], api_name="votes_dataset")
        preview_btn.click(
            preview, [model_box, dataset_box, trust_box], preview_md, api_name="preview"
        )
        start_btn.click(start, [run_name_box, model_box, dataset_box, trust_box, sft_box, device_box, *form],
                        [run_select, message_md], api_name="start")  # fmt: skip
        stop_btn.click(stop, run_select, message_md, api_name="stop")
        run_select.change(
            lambda n: refresh(n, ""), [run_select], [plot, progress_md, seen], api_name="show_run"
        )
        run_select.change(
            run_checkpoints, run_select, checkpoint_select, api_name="run_checkpoints"
        )
        timer.tick(
            refresh,
            [run_select, seen],
            [plot, progress_md, seen],
            api_visibility="private",
            show_progress="hidden",
        )
        timer.tick(list_runs, None, runs_df, api_name="runs", show_progress="hidden")
        compare_btn.click(compare, compare_select, compare_plot, api_name="compare")
        download_btn.click(
            download, [run_select, checkpoint_select], download_file, api_name="download"
        )
        export_btn.click(export, [run_select, checkpoint_select], artefact_md, api_name="export")
        delete_btn.click(delete, run_select, [run_select, artefact_md], api_name="delete")
        demo.load(current_run, None, [run_select, runs_df, compare_select], api_name="current_run")

        inputs = [temperature, top_p, max_new, seed, *column_boxes, *chatbots]
        refresh_btn.click(refresh_columns, column_boxes, column_boxes, api_name="checkpoints")
        demo.load(refresh_columns, column_boxes, column_boxes, api_visibility="private")
        send_btn.click(send, [message_box, *inputs], [message_box, *chatbots], api_name="send")
        message_box.submit(
            send, [message_box, *inputs], [message_box, *chatbots], api_visibility="private"
        )
        regen_btn.click(regenerate, inputs, chatbots, api_name="regenerate")
        clear_btn.click(lambda: [[] for _ in range(MAX_COLUMNS)], None, chatbots, api_name="clear")
        for button, kind in ((left_btn, "left"), (right_btn, "right"), (tie_btn, "tie")):
            button.click(
                lambda *rest, kind=kind: vote(kind, *rest),
                [*column_boxes, *chatbots],
                vote_md,
                api_name=f"vote_{kind}",
            )
    demo.orpo_manager, demo.orpo_pool = manager, pool  # for tests and notebooks
    return demo


def _text(message) -> str:
    from orpo_lab.chat import content_text

    return content_text(message.get("content") if isinstance(message, dict) else message)


demo = build_app(
    os.environ.get("ORPO_LAB_MODEL", "default"), os.environ.get("ORPO_LAB_RUNS", "runs")
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="ORPO Lab: train with ORPO and chat with checkpoints."
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (0.0.0.0 exposes the app to your network)",
    )
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    parser.add_argument(
        "--model", default="default", help="base model: 'default', a model directory or a hub id"
    )
    parser.add_argument("--runs-dir", default="runs", help="folder of the training runs")
    parser.add_argument(
        "--share", action="store_true", help="create a public gradio.live link (off by default)"
    )
    args = parser.parse_args(argv)
    app = demo
    if args.model != "default" or args.runs_dir != "runs":
        app = build_app(args.model, args.runs_dir)
    host = "0.0.0.0" if os.environ.get("SPACE_ID") else args.host
    # Client-side rendering everywhere: a Space may set GRADIO_SSR_MODE, and the page the browser
    # tests drive is the client-rendered one.
    app.queue(default_concurrency_limit=4).launch(
        server_name=host, server_port=args.port, share=args.share, ssr_mode=False
    )


if __name__ == "__main__":
    main()
