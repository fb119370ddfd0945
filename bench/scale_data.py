"""Large preference files in public datasets' exact layouts, written from a seed (no hub here).

`write_ultrafeedback(path, rows)`: HuggingFaceH4/ultrafeedback_binarized's train_prefs layout, one JSON
object per line: prompt (str), prompt_id (sha256 hex), chosen and rejected (message lists that start
with the user turn and end with the assistant's reply), messages (= chosen), score_chosen and
score_rejected (floats). Prompts have 20-300 words, replies 50-600, and a pair's prompt plus its
longer reply stays under about 900 words (under 1,024 SmolLM2 tokens for this vocabulary).

`write_capybara(path, rows)`: argilla/distilabel-capybara-dpo-7k-binarized's layout: multi-turn
chosen/rejected conversations (2-6 turns: every turn shared but the last reply), plus its
metadata columns (source, rating_chosen, rating_rejected, chosen_model, rejected_model).

Used by bench/data_scale.py and, small, by the tests.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

WORDS = (
    "the of and to in is that for it as with was on be by this are or at from have an which not "
    "they you were but all one has had their there can more what been when we will would who so "
    "if about its into them only some could other than then also these time two may first after "
    "model answer question people because water system example during before between under while "
    "number should through very well where most each much use work make like just over such years "
    "explain function training language reply history account simple helpful consider different "
    "important information problem result method value sentence paragraph describe summary code "
    "python list string return variable compute average recipe garden weather travel planet music"
).split()


def _text(rng: random.Random, words: int) -> str:
    out, sentence = [], []
    for _ in range(words):
        sentence.append(rng.choice(WORDS))
        if len(sentence) >= rng.randint(6, 18):
            out.append(" ".join(sentence).capitalize() + ".")
            sentence = []
    if sentence:
        out.append(" ".join(sentence).capitalize() + ".")
    return " ".join(out)


def ultrafeedback_row(rng: random.Random) -> dict:
    prompt_words = rng.randint(20, 300)
    longest = min(600, 900 - prompt_words)
    prompt = _text(rng, prompt_words)
    chosen = _text(rng, rng.randint(50, longest))
    rejected = _text(rng, rng.randint(50, longest))
    user = {"content": prompt, "role": "user"}
    chosen_msgs = [user, {"content": chosen, "role": "assistant"}]
    return {
        "prompt": prompt,
        "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(),
        "chosen": chosen_msgs,
        "rejected": [user, {"content": rejected, "role": "assistant"}],
        "messages": chosen_msgs,
        "score_chosen": float(rng.randint(6, 10)),
        "score_rejected": float(rng.randint(1, 5)),
    }


def capybara_row(rng: random.Random) -> dict:
    turns = rng.randint(1, 3)  # user/assistant exchanges: 2-6 messages
    history = []
    for t in range(turns):
        history.append({"role": "user", "content": _text(rng, rng.randint(10, 60))})
        if t < turns - 1:
            history.append({"role": "assistant", "content": _text(rng, rng.randint(20, 120))})
    chosen = _text(rng, rng.randint(30, 200))
    rejected = _text(rng, rng.randint(30, 200))
    return {
        "source": rng.choice(["Airoboros", "GPT4LLM", "Know-Logic", "EverythingLM"]),
        "chosen": history + [{"role": "assistant", "content": chosen}],
        "chosen_rating": rng.randint(4, 5),
        "chosen_model": "gpt-4-1106-preview",
        "rejected": history + [{"role": "assistant", "content": rejected}],
        "rejected_rating": rng.randint(1, 3),
        "rejected_model": "teknium/OpenHermes-2.5-Mistral-7B",
    }


def write_rows(path: Path, rows: int, make, seed: int = 0, bad_line: int | None = None) -> Path:
    """`rows` JSON lines made by `make(rng)`; `bad_line` (1-based) gets a row without `rejected`."""
    rng = random.Random(seed)
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for line in range(1, rows + 1):
            row = make(rng)
            if line == bad_line:
                row.pop("rejected")
            f.write(json.dumps(row) + "\n")
    return path


def write_ultrafeedback(path, rows: int = 60_000, seed: int = 0, bad_line: int | None = None):
    return write_rows(path, rows, ultrafeedback_row, seed, bad_line)


def write_capybara(path, rows: int = 10_000, seed: int = 0, bad_line: int | None = None):
    return write_rows(path, rows, capybara_row, seed, bad_line)
