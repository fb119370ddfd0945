"""A model's answers to held-out prompts: greedy, in batches (`generate_answers`), and the base
model's answers kept in the runs folder (`base_answers`), so that evaluating a second run against
the same base generates nothing twice. `orpo_lab.evaluate` judges them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm

from orpo_lab.chat import generate
from orpo_lab.rundir import write_json_atomic
from orpo_lab.sampling import sample_answers


def generate_answers(
    model,
    tokenizer,
    prompts: list[list[dict]],
    max_new_tokens: int = 64,
    batch_size: int = 16,
    desc: str | None = None,
) -> list[str]:
    """Greedy answers to chat prompts, `batch_size` at a time (the chat tab's batched generation).

    `desc`: show a progress bar (prompts answered) under that name.
    """
    answers = []
    with tqdm(total=len(prompts), desc=desc, disable=desc is None, unit="prompt") as bar:
        for i in range(0, len(prompts), batch_size):
            batch = generate(model, tokenizer, prompts[i : i + batch_size], max_new_tokens)
            answers += [a.strip() for a in batch]
            bar.update(len(batch))
    return answers


BASE_ANSWERS_DIR = ".base-answers"  # in the runs folder; not a run name (those cannot start with .)


def base_answers_file(
    runs_dir: Path,
    model,
    tokenizer,
    source: str,
    prompts,
    max_new_tokens,
    sampling: dict | None = None,
):
    """Where the base model's answers to `prompts` are kept for every run of `runs_dir`.

    Evaluating a second run against the same base (SFT next to ORPO) needs no second generation.
    Greedy answers depend only on what is in the key: the model's files (name, size, time), the
    prompts, the token budget, the chat template, dtype, device and library versions; change any
    and a new file is written instead of an old one reused. Seeded samples depend on the same and
    on `sampling` (k, temperature, top_p, seed), which joins the key.
    """
    path = Path(source)
    files = (
        [
            (f.name, f.stat().st_size, f.stat().st_mtime_ns)
            for f in sorted(path.iterdir())
            if f.is_file()
        ]
        if path.is_dir()
        else []
    )
    key = json.dumps(
        [
            source,
            files,
            prompts,
            max_new_tokens,
            tokenizer.chat_template,
            str(model.dtype),
            str(model.device),
            torch.__version__,
            transformers.__version__,
        ]
        + ([sampling] if sampling else []),
        default=str,
    )
    return runs_dir / BASE_ANSWERS_DIR / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def base_answers(
    runs_dir: Path,
    model,
    tokenizer,
    source: str,
    prompts,
    max_new_tokens,
    sampling: dict | None = None,
):
    """(answers, reused): the base model's greedy answers (with `sampling`: its lists of samples,
    `sample_answers(**sampling)`), from `base_answers_file` when there."""
    cache = base_answers_file(runs_dir, model, tokenizer, source, prompts, max_new_tokens, sampling)
    if cache.is_file():
        try:
            answers = json.loads(cache.read_text())["answers"]
            if isinstance(answers, list) and len(answers) == len(prompts):
                return answers, True
        except (ValueError, KeyError, TypeError):
            pass  # unreadable: generate again and overwrite it
    if sampling:
        answers = sample_answers(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            desc="base model, sampled",
            **sampling,
        )
    else:
        answers = generate_answers(model, tokenizer, prompts, max_new_tokens, desc="base model")
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        cache, {"model": source, "max_new_tokens": max_new_tokens, "answers": answers}
    )
    return answers, False
