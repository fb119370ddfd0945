"""What the app shows as text and tables: pure functions of run summaries, statuses and metrics."""

from __future__ import annotations

import html
import math
import time

RUN_COLUMNS = [
    "run",
    "status",
    "step",
    "model",
    "data",
    "created",
    "time",
    "method",
    "lr",
    "loss",
    "acc",
    "held-out acc",
    "checkpoints",
]
# Wide enough that no header breaks inside a word ("be/ta"); the checkpoints cell is short.
RUN_WIDTHS = ["10%", "7%", "7%", "10%", "10%", "9%", "6%", "7%", "6%", "6%", "5%", "7%", "10%"]


def duration(seconds) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _fmt(value) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""


def method_cell(cfg: dict) -> str:
    """The objective and its weight: "ORPO 0.5", "SFT" (also ORPO with beta 0), "DPO 0.1", "PR 1"."""
    method = cfg.get("method", "orpo")
    if method == "sft" or (method == "orpo" and cfg.get("beta") == 0):
        return "SFT"
    weight = cfg.get("dpo_beta") if method == "dpo" else cfg.get("beta")
    name = {"orpo": "ORPO", "dpo": "DPO", "prob_ratio": "PR"}.get(method, str(method))
    return f"{name} {_fmt(weight)}".strip()


def _short(path: str, width: int = 24) -> str:
    """A model or dataset as a short name: its last path part ('default' and hub ids as given)."""
    text = str(path or "")
    if text.startswith(("/", ".", "~")):
        text = text.rstrip("/").rsplit("/", 1)[-1]
    return text if len(text) <= width else text[: width - 3] + "..."


def progress_text(name: str, status: dict, records: list[dict]) -> str:
    """One line: state, step/total, ETA, and the trainer's message (the log tail when it failed)."""
    train = [r for r in records if r.get("kind") == "train"]
    last = train[-1] if train else {}
    state = status.get("status", "unknown")
    if state == "queued":
        return f"**{name}**: queued · {status.get('message') or 'waiting for its device'}"
    step = status.get("step") or last.get("step", 0)
    total = status.get("total_steps") or last.get("total_steps", 0)
    text = f"**{name}**: {state}"
    if total:
        text += f" · step {step}/{total} ({100 * step / total:.0f}%)"
    if state == "running" and last:
        text += f" · ETA {duration(last.get('eta_s'))} · elapsed {duration(elapsed(records))}"
    message = (status.get("message") or "").strip()
    if state == "failed":  # quoted line by line: a long error wraps instead of scrolling sideways
        quoted = [f"> {html.escape(line)}  " for line in message.splitlines()]
        return text + "\n\n" + "\n".join(quoted)
    return text + (f" · {message}" if message else "")


def elapsed(records: list[dict]) -> float:
    """Training time so far across resumes: each process counts `elapsed_s` from its own start."""
    total, last = 0.0, 0.0
    for r in records:
        if r.get("kind") == "event" and r.get("event") == "resumed":
            total, last = total + last, 0.0
        elif r.get("kind") == "train" and isinstance(r.get("elapsed_s"), (int, float)):
            last = r["elapsed_s"]
    return total + last


def started_text(records: list[dict]) -> str:
    """The run's last `started` or `resumed` event as a few lines: where the held-out pairs came
    from, precision and why, the compile decision, truncation."""
    events = [r for r in records if r.get("event") in ("started", "resumed")]
    if not events:
        return "How the run started shows here once its model and data are loaded."
    e = events[-1]
    held_out = (e.get("data") or {}).get("held_out") or "their source was not recorded"
    cut = (e.get("truncation") or {}).get("train") or {}
    compiled = "on" if e.get("torch_compile") else "off"
    return "\n".join(
        [
            f"- **{e['event']} at step {e.get('step', 0)}:** {e.get('train_pairs')} training pairs, "
            f"{e.get('total_steps')} steps on {e.get('device')}",
            f"- **held-out pairs:** {e.get('eval_pairs', 0)} ({e.get('eval_subset_pairs', 0)} at each "
            f"evaluation, all at the end): {held_out}",
            f"- **precision:** {e.get('precision')}: {e.get('precision_reason')}",
            f"- **torch.compile:** {compiled}: {e.get('torch_compile_reason')}",
            f"- **truncation:** {cut.get('truncated_pairs', e.get('truncated_pairs', 0))} of "
            f"{cut.get('pairs', e.get('train_pairs'))} training pairs cut to fit max_length",
        ]
    )


def runs_table(summaries: list[dict]) -> list[list]:
    """One row per run, newest first (RUN_COLUMNS)."""
    rows = []
    for s in summaries:
        status, cfg = s["status"], s["config"]
        step = f"{status.get('step', 0)}/{status.get('total_steps') or '?'}"
        created = status.get("created")
        rows.append(
            [
                s["name"],
                status["status"],
                step if status["status"] != "queued" else "-",
                _short(cfg.get("model")),
                _short(cfg.get("dataset")),
                time.strftime("%m-%d %H:%M", time.localtime(created)) if created else "",
                duration(s.get("train_s")),
                method_cell(cfg),
                _fmt(cfg.get("learning_rate")),
                _fmt(s["train"].get("loss")),
                _fmt(s["train"].get("rewards/accuracies")),
                _fmt(s["eval"].get("eval/accuracy")),
                _checkpoints_cell(s["checkpoints"]),
            ]
        )
    return rows


def toast_text(message: str, limit: int = 400) -> str:
    """The start of a long message, fit for a toast: its first two lines (the problem and the first
    detail, as in "2 bad row(s). First problems: / line 4: ...") and more while under `limit`."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    shown = lines[:2]
    for line in lines[2:]:
        if len(" ".join(shown)) + len(line) > limit:
            break
        shown.append(line)
    text = " ".join(shown)
    return text if len(text) <= limit + 200 else text[: limit + 197] + "..."


def _checkpoints_cell(names: list[str]) -> str:
    """ "3, newest step-000030": the whole list would not fit the table's last column."""
    return f"{len(names)}, newest {names[-1]}" if len(names) > 1 else (names[0] if names else "-")


def escaped_block(text: str) -> str:
    """Text shown exactly as written (no Markdown, no HTML), wrapping long lines."""
    return f'<pre style="white-space: pre-wrap; margin: 0">{html.escape(text)}</pre>'


VOTE_COLUMNS = ["time", "prompt", "winner", "chosen model", "rejected model"]
TALLY_COLUMNS = ["model", "other model", "its wins", "the other's wins", "ties"]


def vote_rows(votes: list[dict]) -> list[list]:
    """The chat votes (orpo_lab.votes records), newest first (VOTE_COLUMNS)."""
    rows = []
    for v in reversed(votes):
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
