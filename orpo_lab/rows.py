"""The rule set: one preference row in any common layout -> prompt messages, chosen reply, rejected reply.

Where rows come from (files, folders of splits, DatasetDicts, hub ids) is `orpo_lab.sources`; which
pairs are held out is `orpo_lab.splits`. Every row becomes prompt = list of {"role", "content"},
chosen = str, rejected = str (the final assistant replies); extra columns are kept. The rules,
applied in this order to every row:
  1. column_map renames columns first ({"question": "prompt"}; "old=" drops a column). A mapped
     column replaces a column that already has the target name.
  2. chosen/rejected are each a string (the reply) or a message list (a whole conversation ending
     with the assistant's reply). Everything before the two final replies must be identical: those
     shared leading turns H are the conversation so far.
  3. The prompt:
     - no prompt column: H when there is one (TRL's implicit prompt: UltraFeedback, Capybara);
       for two strings, their longest common beginning (HH-RLHF, TRL's implicit data), cut back
       to a boundary: right after the last "\n\nAssistant:" when the shared text has one (an
       HH-RLHF transcript stays plain text, and replies that start alike stay whole), else back to
       the whitespace before the word where they differ (a word is never split). The rest of each
       string is its response, leading whitespace included (as TRL does).
     - a prompt column and no H: the prompt (a string is one user message).
     - a prompt column and H (UltraFeedback-binarized, orpo-dpo-mix-40k, Capybara): H is the
       prompt; the given prompt must agree with it, or the row is refused (never duplicated): a
       string must equal H's last user turn (the one answered) or its first (the opening question,
       as Capybara stores it); a message list must be H's start or end, or end with H (it adds a
       system message): the longer one is used.
  4. A `system` column (a string; empty = none) becomes the first message, a system message; a
     conversation that already has a different system message is refused.
  5. chosen and rejected must differ. Extra columns whose values change type between rows become
     JSON text (a warning names them) instead of failing in Arrow.
Bad rows raise `PreferenceDataError` naming the file, the row (the line for JSONL), the field, what
was expected and what to do; with skip_bad_rows=True they are dropped and a `SkippedRowsWarning`
(attributes: skipped, total, problems) says how many.
"""

from __future__ import annotations

import hashlib
import json
import os

from orpo_lab.sources import RowError

FIELDS = ("prompt", "chosen", "rejected", "system")
TRANSCRIPT_REPLY = "\n\nAssistant:"  # HH-RLHF's marker before each assistant turn


# ---------------------------------------------------------------- one row, the rule set


def _text(value, field: str) -> str:
    if value is None:
        raise RowError(field, "missing; expected a non-empty string")
    if not isinstance(value, str):
        raise RowError(
            field, f"expected a string, got {type(value).__name__} ({str(value)[:40]!r})"
        )
    if not value.strip():
        raise RowError(field, "empty; expected a non-empty reply")
    return value


def _messages(value, field: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise RowError(
            field,
            f"expected a non-empty list of {{'role', 'content'}} messages, got {type(value).__name__}",
        )
    out = []
    for k, msg in enumerate(value):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise RowError(f"{field}[{k}]", "expected a message {'role': str, 'content': str}")
        out.append(
            {"role": msg["role"], "content": _text(msg.get("content"), f"{field}[{k}].content")}
        )
    return out


def _reply(value, field: str) -> tuple[list[dict], str]:
    """(messages before the final reply, final reply text) of a chosen/rejected value."""
    if not isinstance(value, list):
        return [], _text(value, field)
    msgs = _messages(value, field)
    if msgs[-1]["role"] != "assistant":
        raise RowError(
            field, f"the last message must be the assistant's reply, got role {msgs[-1]['role']!r}"
        )
    return msgs[:-1], msgs[-1]["content"]


def _same(a: list[dict], b: list[dict]) -> bool:
    """Messages equal up to surrounding whitespace (exports often add or drop a final newline)."""
    return len(a) == len(b) and all(
        x["role"] == y["role"] and x["content"].strip() == y["content"].strip()
        for x, y in zip(a, b, strict=True)
    )


def split_shared_text(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen response, rejected response) of two strings that share their beginning.

    Rule 3 of the module docstring: the longest common prefix, cut back to right after the last
    HH-RLHF "\\n\\nAssistant:" in it, else to the whitespace before the word where they differ.
    """
    shared = os.path.commonprefix([chosen, rejected])
    if TRANSCRIPT_REPLY in shared:
        cut = shared.rindex(TRANSCRIPT_REPLY) + len(TRANSCRIPT_REPLY)
    else:
        cut = len(shared)
        while cut and not shared[cut - 1].isspace():  # back to the start of the differing word
            cut -= 1
        while cut and shared[cut - 1].isspace():  # and over the whitespace before it
            cut -= 1
        if not cut:  # one word with no space before it: split where they differ
            cut = len(shared)
    if not shared[:cut].strip():
        raise RowError(
            "prompt",
            "missing; chosen and rejected share no beginning to take as the prompt: give a prompt "
            "column (or column_map a column to prompt)",
        )
    return shared[:cut], chosen[cut:], rejected[cut:]


def _explicit_prompt(given, head: list[dict]) -> list[dict]:
    """Rule 3 when a prompt column is given: it must agree with the conversation in chosen/rejected."""
    string = isinstance(given, str)
    prompt = (
        [{"role": "user", "content": _text(given, "prompt")}]
        if string
        else _messages(given, "prompt")
    )
    if not head:
        return prompt
    if string:
        users = [m for m in head if m["role"] == "user"]
        if users and (_same(prompt, users[-1:]) or _same(prompt, users[:1])):
            return head
        raise RowError(
            "prompt",
            f"{given[:60]!r} is not the last (or first) user turn of the conversation in "
            f"chosen/rejected ({(users[-1]['content'] if users else '(no user turn)')[:60]!r}); "
            "fix the row, or drop the prompt column (column_map prompt=) to use the conversation",
        )
    n = len(prompt)
    if _same(prompt, head[:n]) or _same(prompt, head[-n:]):
        return head
    if _same(prompt[-len(head) :], head):
        return prompt
    raise RowError(
        "prompt",
        f"the messages (roles {[m['role'] for m in prompt]}) disagree with the conversation in "
        f"chosen/rejected (roles {[m['role'] for m in head]}); give one of them, or make them agree",
    )


def normalise_row(row: dict) -> dict:
    """One row in any accepted layout -> {"prompt": [messages], "chosen": str, "rejected": str, ...}.

    Applies rules 2-5 of the module docstring (column_map, rule 1, is applied before).
    """
    for field in ("chosen", "rejected"):
        if field not in row or row[field] is None:
            raise RowError(
                field,
                "missing; every row needs 'chosen' and 'rejected' (use column_map for other names)",
            )
    head, chosen = _reply(row["chosen"], "chosen")
    head_r, rejected = _reply(row["rejected"], "rejected")
    if not _same(head, head_r):
        raise RowError(
            "rejected",
            "chosen and rejected conversations must share everything before the final reply",
        )
    if row.get("prompt") is not None:
        prompt = _explicit_prompt(row["prompt"], head)
    elif head:
        prompt = head
    elif isinstance(row["chosen"], str) and isinstance(row["rejected"], str):
        text, chosen, rejected = split_shared_text(chosen, rejected)
        prompt = [{"role": "user", "content": text}]
        chosen, rejected = _text(chosen, "chosen"), _text(rejected, "rejected")  # never empty
    else:
        raise RowError(
            "prompt",
            "missing; give a prompt, or chosen/rejected as whole conversations (implicit prompt)",
        )
    prompt = _with_system(prompt, row.get("system"))
    if chosen.strip() == rejected.strip():
        raise RowError(
            "rejected", "identical to chosen; a preference pair needs two different replies"
        )
    extra = {k: v for k, v in row.items() if k not in FIELDS}
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


def _with_system(prompt: list[dict], system) -> list[dict]:
    """The prompt with a `system` column's message first, unless the conversation has that one."""
    if system is None:
        return prompt
    if not isinstance(system, str):
        raise RowError("system", f"expected a string, got {type(system).__name__}")
    if system.strip() and prompt[0]["role"] == "system":
        if prompt[0]["content"].strip() != system.strip():
            raise RowError(
                "system",
                "differs from the system message already in the conversation; keep one "
                "(column_map system= drops the column)",
            )
    elif system.strip():
        prompt = [{"role": "system", "content": system}] + prompt
    return prompt


def _rename(row, column_map: dict[str, str]):
    if isinstance(row, RowError):
        return row
    missing = [old for old in column_map if old not in row]
    if missing:
        target = column_map[missing[0]]
        return RowError(
            missing[0],
            f"missing (column_map maps it to {target or 'nothing'!r}); the columns here are "
            f"{', '.join(row)}: check the names",
        )
    targets = set(column_map.values())
    renamed = {k: v for k, v in row.items() if k not in column_map and k not in targets}
    renamed.update({new: row[old] for old, new in column_map.items() if new})
    return renamed


def pair_key(row: dict) -> str:
    """What makes two pairs the same pair: prompt, chosen and rejected (extra columns aside)."""
    return json.dumps([row["prompt"], row["chosen"].strip(), row["rejected"].strip()])


def pair_hash(row: dict) -> str:
    return hashlib.sha1(pair_key(row).encode()).hexdigest()
