"""What the app shows as text and tables: pure functions of run summaries, statuses and metrics."""

from __future__ import annotations

import html
import math
import time

RUN_COLUMNS = [
    "run", "status", "step", "model", "data", "created", "time", "beta", "lr", "loss", "acc",
    "held-out acc", "checkpoints",
]  # fmt: skip


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
        text += f" · ETA {duration(last.get('eta_s'))} · elapsed {duration(last.get('elapsed_s'))}"
    message = (status.get("message") or "").strip()
    if state == "failed":
        return text + f"\n\n```\n{message}\n```"
    return text + (f" · {message}" if message else "")


def runs_table(summaries: list[dict]) -> list[list]:
    """One row per run, newest first (RUN_COLUMNS)."""
    rows = []
    for s in summaries:
        status, cfg = s["status"], s["config"]
        step = f"{status.get('step', 0)}/{status.get('total_steps') or '?'}"
        created = status.get("created")
        rows.append([
            s["name"], status["status"], step if status["status"] != "queued" else "-",
            _short(cfg.get("model")), _short(cfg.get("dataset")),
            time.strftime("%m-%d %H:%M", time.localtime(created)) if created else "",
            duration(s.get("train_s")), _fmt(cfg.get("beta")), _fmt(cfg.get("learning_rate")),
            _fmt(s["train"].get("loss")), _fmt(s["train"].get("rewards/accuracies")),
            _fmt(s["eval"].get("eval/accuracy")), ", ".join(s["checkpoints"]),
        ])  # fmt: skip
    return rows


def escaped_block(text: str) -> str:
    """Text shown exactly as written (no Markdown, no HTML), wrapping long lines."""
    return f'<pre style="white-space: pre-wrap; margin: 0">{html.escape(text)}</pre>'


EVAL_COLUMNS = ["family", "prompts", "base (in-domain)", "trained (in-domain)", "base (ood)",
                "trained (ood)"]  # fmt: skip


def pass_rate_table(summary: dict) -> list[list]:
    """evaluate_run's summary -> one row per family (and "all"), pass rates as percentages."""

    def pct(value) -> str:
        return (
            "-"
            if value is None or (isinstance(value, float) and math.isnan(value))
            else f"{100 * value:.0f}%"
        )

    base, trained = summary["base"], summary["trained"]
    families = sorted(k for k in base if k != "all") + ["all"]
    return [
        [family, base[family]["n"], pct(base[family]["in_domain"]), pct(trained[family]["in_domain"]),
         pct(base[family]["ood"]), pct(trained[family]["ood"])]
        for family in families
    ]  # fmt: skip


def token_delta_html(
    tokens: list[str], before: list[float], after: list[float], scale: float = 2.0
) -> str:
    """Tokens coloured by the change of their log-prob: green where a token became more likely,
    red where less, full colour at `scale` nats; the hover text gives both log-probs."""
    spans = []
    for token, old, new in zip(tokens, before, after, strict=True):
        change = new - old
        alpha = min(abs(change) / scale, 1.0)
        rgb = "44,160,44" if change > 0 else "214,39,40"
        shown = html.escape(token.replace("\n", "\u21b5\n"))  # a newline token stays visible
        hover = html.escape(f"{token!r}: log p {old:.3f} -> {new:.3f} ({change:+.3f})")
        spans.append(f'<span title="{hover}" style="background: rgba({rgb},{alpha:.2f}); '
                     f'border-radius: 3px; padding: 0 1px">{shown}</span>')  # fmt: skip
    return (
        '<div style="white-space: pre-wrap; font-family: monospace; line-height: 1.7">'
        + "".join(spans)
        + "</div>"
    )
