"""The shipped default preference dataset: small, deterministic, and built so ORPO shows in minutes.

Four families, every prompt and reply short (a pair is ~120 tokens with the chat template):
  arithmetic  chosen and rejected share their style and differ only in correctness ("7 + 5 = 12."
              vs "7 + 5 = 13."): plain SFT raises both, the odds-ratio term separates them.
  bullets     "Name three ..." answered as a "- " bullet list (chosen) vs comma prose (rejected).
  concise     "What is a ...?" answered in one short sentence (chosen) vs a rambling one (rejected).
  ranked      "My car is red. Is my car red or blue?" with three replies ranked best > middle >
              bad: "Your car is red." > "I think your car is red, but I am not sure." > the same
              hedge, wrong colour. Each prompt gives two pairs, best > middle and middle > bad, so
              the middle reply is chosen in one and rejected in the other (UltraFeedback's
              rankings are binarised the same way). In the first three families the chosen reply
              alone says what is preferred; here it does not: SFT on the chosen replies learns to
              hedge, and only the pairs say that the hedge loses.
The test split holds in-domain prompts and prompts of a kind never seen in training ("ood": true):
subtraction for arithmetic, held-out categories and phrasings for bullets, "What does a <job> do?"
for concise, another property than colour (hot or cold, full or empty, ...) for ranked. Each family
has a judge of generated answers (`orpo_lab.default_judges`). `build(seed)` returns the splits;
the files in `orpo_lab/data/default/` are written by `scripts/make_default_dataset.py`.
"""

from __future__ import annotations

import random
from pathlib import Path

from orpo_lab.default_words import (
    CATEGORIES,
    COLOURS,
    HEDGES,
    JOBS,
    N_OOD_CATEGORIES,
    N_TEST_THINGS,
    OBJECTS,
    OOD_TEMPLATES,
    PROPERTIES,
    RAMBLE_CLOSERS,
    RAMBLE_OPENERS,
    RANKED_TEMPLATES,
    THINGS,
    TRAIN_TEMPLATES,
)

DATA_DIR = Path(__file__).parent / "data" / "default"
SEED = 1234
FAMILIES = ("arithmetic", "bullets", "concise", "ranked")


def _article(noun: str) -> str:
    return "An" if noun[0].lower() in "aeiou" else "A"


def _ramble(subject: str, predicate: str, rng: random.Random) -> str:
    return f"{rng.choice(RAMBLE_OPENERS)} {subject} {predicate}. {rng.choice(RAMBLE_CLOSERS)}"


def _rec(prompt: str, chosen: str, rejected: str, family: str, ood: bool) -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "family": family, "ood": ood}


# ---------------------------------------------------------------- families


def _wrong(answer: int, rng: random.Random) -> int:
    return (
        max(0, answer + rng.choice((-2, -1, 1, 2, 10, -10)))
        if answer > 10
        else answer + rng.choice((1, 2, 3))
    )


def _arithmetic(rng: random.Random) -> tuple[list[dict], list[dict]]:
    sums = [(a, b) for a in range(2, 31) for b in range(2, 31)]
    rng.shuffle(sums)

    def pair(a: int, b: int, op: str, ood: bool) -> dict:
        result = a + b if op == "+" else a - b
        wrong = _wrong(result, rng)
        return _rec(
            f"What is {a} {op} {b}?",
            f"{a} {op} {b} = {result}.",
            f"{a} {op} {b} = {wrong}.",
            "arithmetic",
            ood,
        )

    train = [pair(a, b, "+", False) for a, b in sums[:400]]
    test = [pair(a, b, "+", False) for a, b in sums[400:430]]
    diffs = [(a, b) for a in range(12, 41) for b in range(2, 12)]
    test += [pair(a, b, "-", True) for a, b in rng.sample(diffs, 40)]
    return train, test


def _bullets(rng: random.Random) -> tuple[list[dict], list[dict]]:
    names = list(CATEGORIES)
    seen, held = names[:-N_OOD_CATEGORIES], names[-N_OOD_CATEGORIES:]

    def pair(category: str, template: str, ood: bool) -> dict:
        items = rng.sample(CATEGORIES[category].split(), 3)
        bullets = "\n".join(f"- {item[0].upper() + item[1:]}" for item in items)
        prose = rng.choice(
            (
                "{a}, {b} and {c}.",
                "Three {cat} are {a}, {b} and {c}.",
                "{a}, {b}, and {c} are three {cat}.",
            )
        )
        prose = prose.format(a=items[0], b=items[1], c=items[2], cat=category)
        return _rec(
            template.format(c=category), bullets, prose[0].upper() + prose[1:], "bullets", ood
        )

    train = [pair(rng.choice(seen), rng.choice(TRAIN_TEMPLATES), False) for _ in range(420)]
    test = [pair(rng.choice(seen), rng.choice(TRAIN_TEMPLATES), False) for _ in range(30)]
    test += [pair(c, t, True) for c in held for t in OOD_TEMPLATES for _ in range(4)]
    return train, test


def _concise(rng: random.Random) -> tuple[list[dict], list[dict]]:
    things = list(THINGS)
    rng.shuffle(things)
    seen, held = things[N_TEST_THINGS:], things[:N_TEST_THINGS]
    templates = ("What is {a} {t}?", "What's {a} {t}?", "Tell me what {a} {t} is.")

    def pair(thing: str, template: str) -> dict:
        a = _article(thing).lower()
        chosen = f"{_article(thing)} {thing} is {THINGS[thing]}."
        rejected = _ramble(f"{_article(thing)} {thing}", f"is {THINGS[thing]}", rng)
        return _rec(template.format(a=a, t=thing), chosen, rejected, "concise", False)

    train = [pair(t, tpl) for t in seen for tpl in templates]
    rng.shuffle(train)
    test = [pair(t, tpl) for t in held for tpl in rng.sample(templates, 2)]
    for job, does in JOBS.items():
        subject = f"{_article(job)} {job}"
        test.append(
            _rec(
                f"What does {subject.lower()} do?",
                f"{subject} {does}.",
                _ramble(subject, does, rng),
                "concise",
                True,
            )
        )
    return train, test


N_TEST_OBJECTS = 10  # objects held back from training for the in-domain test (three phrasings each)


def _ranked_replies(subject: str, right: str, wrong: str, rng: random.Random) -> tuple[str, ...]:
    """(best, middle, bad): the plain answer; the right answer hedged; the same hedge, wrong."""
    capital = subject[0].upper() + subject[1:]
    hedge = rng.choice(HEDGES)
    return (
        f"{capital} is {right}.",
        hedge.format(s=subject, S=capital, c=right),
        hedge.format(s=subject, S=capital, c=wrong),
    )


def _ranked_question(template: str, thing: str, value: str, other: str, rng: random.Random):
    a, b = (value, other) if rng.random() < 0.5 else (other, value)
    prompt = template.format(t=thing, c=value, a=a, b=b)
    return prompt, *_ranked_replies(f"your {thing}", value, other, rng)


def _ranked(rng: random.Random) -> tuple[list[dict], list[dict]]:
    objects = list(OBJECTS)
    rng.shuffle(objects)
    seen, held = objects[N_TEST_OBJECTS:], objects[:N_TEST_OBJECTS]
    train = []
    for thing in seen:  # both pairs of a question: the middle reply chosen once, rejected once
        for template in (*RANKED_TEMPLATES, rng.choice(RANKED_TEMPLATES)):
            prompt, best, middle, bad = _ranked_question(
                template, thing, *rng.sample(COLOURS, 2), rng
            )
            train += [
                _rec(prompt, best, middle, "ranked", False),
                _rec(prompt, middle, bad, "ranked", False),
            ]
    # Test: the pair the family is about (best over middle), once per question.
    test = []
    for thing in held:
        for template in RANKED_TEMPLATES:
            prompt, best, middle, _ = _ranked_question(
                template, thing, *rng.sample(COLOURS, 2), rng
            )
            test.append(_rec(prompt, best, middle, "ranked", False))
    asked = [
        (pair, thing, i) for pair, things in PROPERTIES.items() for thing in things for i in (0, 1)
    ]
    for pair, thing, i in rng.sample(asked, 40):
        prompt, best, middle, _ = _ranked_question(
            RANKED_TEMPLATES[0], thing, pair[i], pair[1 - i], rng
        )
        test.append(_rec(prompt, best, middle, "ranked", True))
    return train, test


def build(seed: int = SEED) -> dict[str, list[dict]]:
    """{"train": [...], "test": [...]}: the same records for the same seed, every time."""
    rng = random.Random(seed)
    train, test = [], []
    for make in (_arithmetic, _bullets, _concise, _ranked):
        a, b = make(rng)
        train += a
        test += b
    rng.shuffle(train)
    return {"train": train, "test": test}


# ---------------------------------------------------------------- judges
