"""The default dataset's judges: whether a generated answer has the property a family prefers.

`JUDGES[family](record, answer) -> bool` says whether an answer has the preferred property (for
ranked: `grade` says "best", "middle" or "bad"); `rejected_like(family, record, answer)` says
whether it has the property the family's rejected replies have. The families and how their pairs
are made: `orpo_lab.default_dataset`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from orpo_lab.default_words import (
    HEDGE_WORDS,
    RANKED_TEMPLATES,
)


def prompt_text(prompt: str | list[dict]) -> str:
    """The user's question: the prompt string, or the last user message of a conversation."""
    if isinstance(prompt, str):
        return prompt
    return next(m["content"] for m in reversed(prompt) if m["role"] == "user")


def _expected_result(prompt: str | list[dict]) -> int:
    a, op, b = re.fullmatch(r"What is (\d+) ([+-]) (\d+)\?", prompt_text(prompt)).groups()
    return int(a) + int(b) if op == "+" else int(a) - int(b)


def _stated_result(record: dict, answer: str) -> int | None:
    # The number after the first "=", else the first number that is not an operand; None: none.
    after = re.search(r"=\s*(-?\d+)", answer)
    if after:
        return int(after.group(1))
    operands = [int(x) for x in re.findall(r"\d+", prompt_text(record["prompt"]))]
    rest = [n for n in (int(x) for x in re.findall(r"-?\d+", answer)) if n not in operands]
    return rest[0] if rest else None


def judge_arithmetic(record: dict, answer: str) -> bool:
    """The number after the first "=" (else the first number that is not an operand) is right."""
    return _stated_result(record, answer) == _expected_result(record["prompt"])


def judge_bullets(record: dict, answer: str) -> bool:
    """At least three lines that start with "- ", and nothing numbered."""
    lines = [line.strip() for line in answer.strip().splitlines() if line.strip()]
    return sum(line.startswith("- ") for line in lines) >= 3 and not any(
        re.match(r"\d+[.)]", line) for line in lines
    )


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def judge_concise(record: dict, answer: str) -> bool:
    """One sentence of at most 16 words."""
    text = answer.strip()
    return 0 < len(text.split()) <= 16 and len(_sentences(text)) == 1 and "\n" not in text


def _pattern(template: str) -> re.Pattern:
    escaped = re.escape(template)
    for name, group in (
        ("t", r"(?P<t>.+)"),
        ("c", r"(?P<c>\w+)"),
        ("a", r"(?P<a>\w+)"),
        ("b", r"(?P<b>\w+)"),
    ):
        escaped = escaped.replace(re.escape("{" + name + "}"), group, 1)
    return re.compile(escaped.replace(re.escape("{t}"), "(?P=t)"))


RANKED_QUESTIONS = [_pattern(t) for t in RANKED_TEMPLATES]


def ranked_options(prompt: str | list[dict]) -> tuple[str, str]:
    """(right, wrong): the two answers a ranked question offers; the right one is what the user
    said in the question ("My car is red. Is my car red or blue?": red, blue)."""
    text = prompt_text(prompt)
    found = next((m for m in (q.fullmatch(text) for q in RANKED_QUESTIONS) if m), None)
    if found is None:
        raise ValueError(
            f"{text!r} is not a ranked question: the ranked judge reads questions shaped like "
            f"{' / '.join(RANKED_TEMPLATES)}"
        )
    right, a, b = found.group("c", "a", "b")
    return right, (b if a == right else a)


def _hedged(answer: str) -> bool:
    return re.search(HEDGE_WORDS, answer, re.IGNORECASE) is not None


def grade(record: dict, answer: str) -> str:
    """A ranked answer's rank: "bad" when the first of the two offered answers it names is the
    wrong one (or it names neither), else "middle" when it hedges (`HEDGE_WORDS`), else "best"."""
    right, wrong = ranked_options(record["prompt"])
    named = re.search(rf"\b({right}|{wrong})\b", answer, re.IGNORECASE)
    if named is None or named.group(1).lower() != right:
        return "bad"
    return "middle" if _hedged(answer) else "best"


def judge_ranked(record: dict, answer: str) -> bool:
    """The right one of the two offered answers, said without a hedge (`grade` is "best")."""
    return grade(record, answer) == "best"


JUDGES: dict[str, Callable[[dict, str], bool]] = {
    "arithmetic": judge_arithmetic,
    "bullets": judge_bullets,
    "concise": judge_concise,
    "ranked": judge_ranked,
}


def judge(family: str, record: dict, answer: str) -> bool:
    """Whether a generated `answer` to `record["prompt"]` has the family's preferred property."""
    return JUDGES[family](record, answer)


def _wrong_result(record: dict, answer: str) -> bool:
    """States a result, and a wrong one."""
    stated = _stated_result(record, answer)
    return stated is not None and stated != _expected_result(record["prompt"])


def _comma_prose(record: dict, answer: str) -> bool:
    """Lists items as "a, b and c" (or "a, b, and c") with no "- " line."""
    listed = re.search(r"\w+, \w+,? and \w+", answer)
    return listed is not None and not any(
        line.strip().startswith("- ") for line in answer.splitlines()
    )


def _rambles(record: dict, answer: str) -> bool:
    """Says it in more than one sentence."""
    return len(_sentences(answer)) > 1


def _hedges(record: dict, answer: str) -> bool:
    """Hedges: I think, not sure, maybe, probably, ... (`HEDGE_WORDS`)."""
    return _hedged(answer)


# What the rejected replies of each family do, read off an answer. Not the judge's negation: an
# answer can fail the judge in other ways (a numbered list, no number at all, one long sentence)
# without doing what the rejected replies do.
REJECTED_LIKE: dict[str, Callable[[dict, str], bool]] = {
    "arithmetic": _wrong_result,
    "bullets": _comma_prose,
    "concise": _rambles,
    "ranked": _hedges,
}


def rejected_like(family: str, record: dict, answer: str) -> bool:
    """Whether `answer` has the property of the family's rejected replies (`REJECTED_LIKE`; each
    function's docstring names the property)."""
    return REJECTED_LIKE[family](record, answer)
