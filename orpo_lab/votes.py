"""The votes file: judgements of two answers from the chat, and the preference pairs they make.

    votes.jsonl, one JSON object per line:
      {"id", "exchange", "prompt": str | [messages], "left", "right", "left_model", "right_model",
       "winner": "left" | "right" | "tie", "chosen", "rejected", "chosen_model", "rejected_model"
       (not for a tie), "blind": bool, "time"}

One vote per exchange (the same conversation, the same two answers from the same two models): a
new click on it replaces the old vote instead of piling up. Turning votes into pairs drops ties,
merges duplicates (the same prompt and answers judged again) and drops contradictions (the same
two answers preferred both ways), and says how many of each, before anything trains on them.
This module alone reads and writes the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import datasets

from orpo_lab.chat import normalize_messages
from orpo_lab.preferences import check_rows, good_rows, with_extras
from orpo_lab.rundir import json_objects
from orpo_lab.sources import RowError, json_rows, read_jsonl

_LOCK = threading.Lock()


def exchange_id(prompt, left: str, right: str, left_model: str = "", right_model: str = "") -> str:
    """A short stable id of one exchange: the conversation, both answers and both models."""
    key = json.dumps([prompt, left, right, left_model, right_model], ensure_ascii=False)
    return hashlib.sha1(key.encode()).hexdigest()[:12]


def read_votes(path: str | Path) -> list[dict]:
    """Every vote in the file, oldest first; unreadable lines are skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    return json_objects(path.read_text(encoding="utf-8").splitlines())


def _write(path: Path, votes: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(
        "".join(json.dumps(v, ensure_ascii=False) + "\n" for v in votes), encoding="utf-8"
    )
    os.replace(tmp, path)


def record_vote(
    path: str | Path,
    prompt: Sequence[dict],
    left: str,
    right: str,
    winner: str,
    left_model: str = "",
    right_model: str = "",
    blind: bool = False,
) -> dict:
    """Record one judgement of two answers; a vote on the same exchange replaces the earlier one.

    `prompt` is the conversation up to the last user message. "left"/"right" make that answer
    `chosen`; a "tie" is kept for the record without chosen/rejected, so no loader takes it for a
    preference. `blind`: the models' names were hidden while the vote was cast.
    """
    if winner not in ("left", "right", "tie"):
        raise ValueError(f"winner must be 'left', 'right' or 'tie'; got {winner!r}")
    messages = normalize_messages(prompt)
    if not messages or messages[-1]["role"] != "user" or not left.strip() or not right.strip():
        raise ValueError("Nothing to vote on yet: ask something and let both columns answer.")
    shown_prompt = messages[0]["content"] if len(messages) == 1 else messages
    vote = {
        "id": "",
        "exchange": exchange_id(shown_prompt, left, right, left_model, right_model),
        "prompt": shown_prompt,
        "left": left,
        "right": right,
        "left_model": left_model,
        "right_model": right_model,
        "winner": winner,
        "blind": blind,
        "time": time.time(),
    }
    if winner != "tie":
        won_left = winner == "left"
        vote.update(
            chosen=left if won_left else right,
            rejected=right if won_left else left,
            chosen_model=left_model if won_left else right_model,
            rejected_model=right_model if won_left else left_model,
        )
    vote["id"] = f"{vote['exchange']}-{int(vote['time'] * 1000)}"
    path = Path(path)
    with _LOCK:
        votes = [v for v in read_votes(path) if v.get("exchange") != vote["exchange"]]
        _write(path, [*votes, vote])
    return vote


def undo_vote(path: str | Path, vote_id: str | None = None) -> dict | None:
    """Remove one vote (the newest when `vote_id` is None); returns it, or None if there was none."""
    path = Path(path)
    with _LOCK:
        votes = read_votes(path)
        index = next(
            (
                i
                for i in reversed(range(len(votes)))
                if vote_id is None or votes[i].get("id") == vote_id
            ),
            None,
        )
        if index is None:
            return None
        removed = votes.pop(index)
        _write(path, votes)
    return removed


def clean_votes(votes: list[dict]) -> tuple[list[dict], dict[str, int]]:
    """The votes that make preference pairs, and what was left out and why.

    Ties are skipped; duplicates (same prompt, same chosen and rejected) are kept once; a
    contradiction (the same prompt and two answers, preferred one way and the other way) keeps
    neither side. Report keys: votes, pairs, ties, duplicates, contradictions.
    """
    ties = [v for v in votes if v.get("winner") == "tie" or v.get("tie")]
    decided = [v for v in votes if v not in ties and "chosen" in v]
    key = {
        id(v): json.dumps([v["prompt"], v["chosen"], v["rejected"]], ensure_ascii=False)
        for v in decided
    }
    reverse = {
        id(v): json.dumps([v["prompt"], v["rejected"], v["chosen"]], ensure_ascii=False)
        for v in decided
    }
    seen_keys = set(key.values())
    contradicted = [v for v in decided if reverse[id(v)] in seen_keys]
    pairs, kept = [], set()
    for v in decided:
        if v in contradicted or key[id(v)] in kept:
            continue
        kept.add(key[id(v)])
        pairs.append(v)
    report = {
        "votes": len(votes),
        "pairs": len(pairs),
        "ties": len(ties),
        "duplicates": len(decided) - len(contradicted) - len(pairs),
        "contradictions": len(contradicted),
    }
    return pairs, report


def describe(report: dict[str, int]) -> str:
    """The report of `clean_votes` in one sentence."""
    parts = [f"{report['pairs']} preference pair(s) from {report['votes']} vote(s)"]
    if report["ties"]:
        parts.append(f"{report['ties']} tie(s) skipped")
    if report["duplicates"]:
        parts.append(f"{report['duplicates']} duplicate(s) merged")
    if report["contradictions"]:
        parts.append(
            f"{report['contradictions']} contradicting vote(s) dropped (the same answers "
            "preferred both ways)"
        )
    return "; ".join(parts) + "."


def blind_tally(votes: list[dict]) -> list[list]:
    """Blind votes per pair of models: [model, other model, its wins, the other's wins, ties].

    Counted by model, never by side: which pane showed which model was random. Pairs sorted by name.
    """
    table: dict[tuple[str, str], list[int]] = {}
    for v in votes:
        if not v.get("blind"):
            continue
        pair = tuple(sorted((v.get("left_model", ""), v.get("right_model", ""))))
        counts = table.setdefault(pair, [0, 0, 0])
        if v.get("winner") == "tie":
            counts[2] += 1
        else:
            counts[pair.index(v["chosen_model"])] += 1
    return [[a, b, *counts] for (a, b), counts in sorted(table.items())]


def votes_to_dataset(votes, skip_bad_rows: bool = False) -> datasets.Dataset:
    """Arena votes -> a preference dataset (normalised as by `load_preferences`).

    `votes` is a JSONL path or a list of dicts. One vote record (the app appends one JSON line each):
      {"prompt": str or [messages], "chosen": str, "rejected": str,   # the preferred and the other reply
       "left": str, "right": str, "winner": "left" | "right" | "tie", "time": float (unix seconds)}
    "chosen"/"rejected" win when present; otherwise they are taken from left/right by "winner".
    Ties (winner "tie" or "both", or "tie": true) are skipped. left/right/winner/tie are dropped;
    other fields (e.g. "time", "model") are kept.
    """
    if isinstance(votes, (str, Path)):
        name, located = str(votes), read_jsonl(Path(votes))
    else:
        name, located = "votes", [(f"votes: row {i}", v) for i, v in enumerate(votes)]
    pairs = []
    for where, vote in located:
        if isinstance(vote, RowError):
            pairs.append((where, vote))
            continue
        winner = vote.get("winner")
        if vote.get("tie") or winner in ("tie", "both"):
            continue
        if "chosen" not in vote and winner in ("left", "right"):
            loser = "right" if winner == "left" else "left"
            vote = {**vote, "chosen": vote.get(winner), "rejected": vote.get(loser)}
        pairs.append(
            (where, {k: v for k, v in vote.items() if k not in ("left", "right", "winner", "tie")})
        )
    raw = json_rows(name, pairs)
    return with_extras(name, good_rows(name, check_rows(raw), skip_bad_rows))
