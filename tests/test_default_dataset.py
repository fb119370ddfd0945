"""The shipped default dataset: deterministic, short, held-out kinds in test, and judges that judge."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest

from orpo_lab.default_dataset import FAMILIES, build
from orpo_lab.default_judges import (
    JUDGES,
    RANKED_QUESTIONS,
    grade,
    judge,
    ranked_options,
    rejected_like,
)
from orpo_lab.default_words import COLOURS
from orpo_lab.preferences import load_preferences

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def splits():
    return build()


def test_build_is_deterministic_and_files_are_current(splits):
    assert build() == splits
    assert build(seed=1) != splits
    spec = importlib.util.spec_from_file_location(
        "make_default", ROOT / "scripts" / "make_default_dataset.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--check"]) == 0, (
        "run scripts/make_default_dataset.py to regenerate the files"
    )


def test_counts_are_pinned(splits):
    train = Counter(r["family"] for r in splits["train"])
    test = Counter((r["family"], r["ood"]) for r in splits["test"])
    assert train == {"arithmetic": 400, "bullets": 420, "concise": 195, "ranked": 240}
    assert test == {
        (family, ood): 40 if ood else 30 for family in FAMILIES for ood in (False, True)
    }
    assert len(splits["train"]) + len(splits["test"]) >= 1000
    assert not any(r["ood"] for r in splits["train"])


def test_load_preferences_default_test_split():
    ds = load_preferences("default", split="test")
    assert len(ds) == 280
    assert set(ds.column_names) == {"prompt", "chosen", "rejected", "family", "ood"}
    assert ds[0]["prompt"] == [{"role": "user", "content": build()["test"][0]["prompt"]}]


def test_everything_is_short(splits, default_tokenizer):
    """Sized for ~200 tokens/s CPU training: prompts <= 25 tokens, replies <= 40."""

    def n(text: str) -> int:
        return len(default_tokenizer(text, add_special_tokens=False).input_ids)

    records = splits["train"] + splits["test"]
    assert max(n(r["prompt"]) for r in records) <= 25
    assert max(max(n(r["chosen"]), n(r["rejected"])) for r in records) <= 40


def test_ood_prompts_are_of_unseen_kinds(splits):
    train = splits["train"]
    train_prompts = {r["prompt"] for r in train}
    ood = [r for r in splits["test"] if r["ood"]]
    by_family = {f: [r for r in ood if r["family"] == f] for f in FAMILIES}
    assert all(" - " in r["prompt"] for r in by_family["arithmetic"])
    assert not any(" - " in r["prompt"] for r in train)
    assert all(r["prompt"].startswith("What does") for r in by_family["concise"])
    assert not any(r["prompt"].startswith("What does") for r in train)
    held = {r["prompt"].split("three ")[1].rstrip("?") for r in by_family["bullets"]}
    bullets_prompts = {r["prompt"] for r in train if r["family"] == "bullets"}
    assert len(held) == 5 and not any(c in p for c in held for p in bullets_prompts)
    assert not any(r["prompt"] in train_prompts for r in ood)
    concise_in_domain = [r for r in splits["test"] if r["family"] == "concise" and not r["ood"]]
    assert not any(r["prompt"] in train_prompts for r in concise_in_domain)
    # ranked: in-domain asks about the colour of objects never asked about in training, ood about
    # another property than colour.
    ranked_train = {ranked_options(r["prompt"])[0] for r in train if r["family"] == "ranked"}
    assert ranked_train <= set(COLOURS)
    assert {ranked_options(r["prompt"])[0] for r in by_family["ranked"]}.isdisjoint(COLOURS)

    def thing(record: dict) -> str:
        return next(m["t"] for m in (q.fullmatch(record["prompt"]) for q in RANKED_QUESTIONS) if m)

    held = [thing(r) for r in splits["test"] if r["family"] == "ranked" and not r["ood"]]
    assert len(set(held)) == 10
    assert set(held).isdisjoint(thing(r) for r in train if r["family"] == "ranked")


RANK = {"bad": 0, "middle": 1, "best": 2}


def test_chosen_passes_and_rejected_fails_every_judge(splits):
    """arithmetic, bullets, concise: every chosen reply passes, every rejected one fails and has the
    rejected property. ranked: the chosen reply grades above the rejected one, and the hedge (the
    rejected property) is in every rejected reply and in the chosen one only when it is the middle."""
    for record in splits["train"] + splits["test"]:
        family, chosen, rejected = record["family"], record["chosen"], record["rejected"]
        assert rejected_like(family, record, rejected), record
        if family == "ranked":
            assert RANK[grade(record, chosen)] > RANK[grade(record, rejected)], record
            assert rejected_like(family, record, chosen) is (grade(record, chosen) == "middle")
            continue
        assert judge(family, record, chosen), record
        assert not judge(family, record, rejected), record
        assert not rejected_like(family, record, chosen), record


def test_ranked_pairs_make_the_middle_reply_chosen_once_and_rejected_once(splits):
    """Each ranked training question gives best > middle and middle > bad: SFT on the chosen
    replies sees the hedged reply as often as the plain one; the test keeps best > middle."""
    by_prompt: dict[str, list[dict]] = {}
    for record in splits["train"]:
        if record["family"] == "ranked":
            by_prompt.setdefault(record["prompt"], []).append(record)
    assert len(by_prompt) == 120
    for prompt, (first, second) in by_prompt.items():
        grades = sorted((grade(r, r["chosen"]), grade(r, r["rejected"])) for r in (first, second))
        assert grades == [("best", "middle"), ("middle", "bad")], prompt
        middle = {
            r["rejected"] if grade(r, r["chosen"]) == "best" else r["chosen"]
            for r in (first, second)
        }
        assert len(middle) == 1  # the same hedged reply on both sides
    chosen = Counter(grade(r, r["chosen"]) for r in splits["train"] if r["family"] == "ranked")
    assert chosen == {"best": 120, "middle": 120}
    test = [r for r in splits["test"] if r["family"] == "ranked"]
    assert {(grade(r, r["chosen"]), grade(r, r["rejected"])) for r in test} == {("best", "middle")}


@pytest.mark.parametrize(
    ("family", "prompt", "answer", "expected"),
    [
        ("arithmetic", "What is 7 + 5?", "7 + 5 = 12.", True),
        ("arithmetic", "What is 7 + 5?", "The answer is 12.", True),
        ("arithmetic", "What is 7 + 5?", "7 + 5 = 13. Or 12.", False),
        ("arithmetic", "What is 7 + 5?", "I cannot add 7 and 5.", False),
        ("arithmetic", "What is 30 - 8?", "30 - 8 = 22", True),
        ("arithmetic", "What is 30 - 8?", "To calculate 30 - 8, subtract: 38.", False),
        ("bullets", "Name three fruits.", "- Apple\n- Pear\n- Plum", True),
        ("bullets", "Name three fruits.", "Sure!\n- Apple\n- Pear\n- Plum\n", True),
        ("bullets", "Name three fruits.", "1. Apple\n2. Pear\n3. Plum", False),
        ("bullets", "Name three fruits.", "Apple, pear and plum.", False),
        ("bullets", "Name three fruits.", "- Apple\n- Pear", False),
        ("concise", "What is a clock?", "A clock is a device that shows the time.", True),
        ("concise", "What is a clock?", "A clock shows the time", True),
        ("concise", "What is a clock?", "A clock shows the time. It ticks.", False),
        ("concise", "What is a clock?", " ".join(["word"] * 17) + ".", False),
        ("concise", "What is a clock?", "", False),
        ("concise", "What is a clock?", "Clock:\n- shows time", False),
        ("ranked", "My car is red. Is my car red or blue?", "Your car is red.", True),
        (
            "ranked",
            "I have a blue hat. What colour is my hat, red or blue?",
            "Blue, not red.",
            True,
        ),
        ("ranked", "My car is red. Is my car red or blue?", "Maybe red, I am not sure.", False),
        ("ranked", "My car is red. Is my car blue or red?", "Your car is blue.", False),
        ("ranked", "My tea is hot. Is my tea cold or hot?", "Your tea is hot.", True),
    ],
)
def test_judges_on_hand_written_answers(family, prompt, answer, expected):
    assert JUDGES[family]({"prompt": prompt}, answer) is expected


CAR = "My car is red. Is my car red or blue?"


@pytest.mark.parametrize(
    ("prompt", "answer", "rank", "hedges"),
    [
        (CAR, "Your car is red.", "best", False),
        ("I painted my gate green. Is it blue or green now?", "It is green now!", "best", False),
        ("My soup is cold. Is my soup hot or cold?", "Your soup is COLD.", "best", False),
        (CAR, "I think your car is red, but I am not sure.", "middle", True),
        (CAR, "Your car is probably red, I guess.", "middle", True),
        (
            "I have a pink mug. What colour is my mug, pink or grey?",
            "Maybe pink? I'm not sure.",
            "middle",
            True,
        ),
        (CAR, "I think your car is blue, but I am not sure.", "bad", True),
        (CAR, "Your car is blue, not red.", "bad", False),
        (CAR, "Cars have four wheels.", "bad", False),
        (CAR, "", "bad", False),
    ],
)
def test_ranked_grades_and_hedges_on_hand_written_answers(prompt, answer, rank, hedges):
    record = {"prompt": prompt, "family": "ranked"}
    assert grade(record, answer) == rank
    assert rejected_like("ranked", record, answer) is hedges


@pytest.mark.parametrize(
    ("family", "prompt", "answer", "expected"),
    [
        ("arithmetic", "What is 7 + 5?", "7 + 5 = 13.", True),
        ("arithmetic", "What is 7 + 5?", "The answer is 12.", False),
        ("arithmetic", "What is 7 + 5?", "I cannot add 7 and 5.", False),  # no result: not wrong
        ("bullets", "Name three fruits.", "Apple, pear, and plum.", True),
        ("bullets", "Name three fruits.", "1. Apple\n2. Pear\n3. Plum", False),
        ("bullets", "Name three fruits.", "- Apple, pear and plum\n- Fig", False),
        ("concise", "What is a clock?", "Sure! A clock shows the time.", True),
        ("concise", "What is a clock?", "A clock shows the time", False),
    ],
)
def test_rejected_like_on_hand_written_answers(family, prompt, answer, expected):
    assert rejected_like(family, {"prompt": prompt}, answer) is expected


def test_every_pair_tokenises_like_the_template_renders_it(splits, default_tokenizer):
    """No boundary merge between prompt and reply: ids == the template's rendering of the finished chat."""
    from orpo_lab.data import tokenize_pair

    for record in splits["test"] + splits["train"][:150]:
        pair = tokenize_pair(record, default_tokenizer)
        for reply in ("chosen", "rejected"):
            chat = [
                {"role": "user", "content": record["prompt"]},
                {"role": "assistant", "content": record[reply]},
            ]
            text = default_tokenizer.apply_chat_template(chat, tokenize=False)
            ids = default_tokenizer(text, add_special_tokens=False).input_ids
            assert ids == pair["prompt_ids"] + pair[f"{reply}_ids"] + [
                198
            ]  # the template's final "\n"
