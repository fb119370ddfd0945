"""The shipped default dataset: deterministic, short, held-out kinds in test, and judges that judge."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest

from orpo_lab.default_dataset import FAMILIES, JUDGES, build, judge
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
    assert train == {"arithmetic": 400, "bullets": 420, "concise": 195}
    assert test == {
        ("arithmetic", False): 30,
        ("arithmetic", True): 40,
        ("bullets", False): 30,
        ("bullets", True): 40,
        ("concise", False): 30,
        ("concise", True): 40,
    }
    assert len(splits["train"]) + len(splits["test"]) >= 1000
    assert not any(r["ood"] for r in splits["train"])


def test_load_preferences_default_test_split():
    ds = load_preferences("default", split="test")
    assert len(ds) == 210
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
    assert len(held) == 5 and not any(c in p for c in held for p in train_prompts)
    assert not any(r["prompt"] in train_prompts for r in ood)
    concise_in_domain = [r for r in splits["test"] if r["family"] == "concise" and not r["ood"]]
    assert not any(r["prompt"] in train_prompts for r in concise_in_domain)


def test_chosen_passes_and_rejected_fails_every_judge(splits):
    for record in splits["train"] + splits["test"]:
        assert judge(record["family"], record, record["chosen"]), record
        assert not judge(record["family"], record, record["rejected"]), record


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
    ],
)
def test_judges_on_hand_written_answers(family, prompt, answer, expected):
    assert JUDGES[family]({"prompt": prompt}, answer) is expected


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
