"""Write the default dataset (orpo_lab/data/default/{train,test}.jsonl and its README.md card).

    .venv/bin/python scripts/make_default_dataset.py                  # write the files
    .venv/bin/python scripts/make_default_dataset.py --check          # fail if the files are stale
    .venv/bin/python scripts/make_default_dataset.py --measure-base 30  # base model pass rates

--measure-base N generates greedily (max_new_tokens 48) with the base default model for the first N
in-domain and the first N ood test prompts of each family and prints the judges' pass rates.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import torch

from orpo_lab.default_dataset import DATA_DIR, FAMILIES, SEED, build
from orpo_lab.default_judges import JUDGES

CARD = """\
# ORPO Lab default preference dataset

Small synthetic preference pairs written for ORPO Lab, sized so that a 135M model (SmolLM2-135M-Instruct)
trained with LoRA for a few minutes on a 2-core CPU shows ORPO working. Every prompt is at most 25
tokens and every reply at most 40; a tokenized pair (prompt with the chat template's system prompt,
chosen, rejected) is 62 tokens on average, 89 at most.

Generated deterministically (seed 1234) by `orpo_lab/default_dataset.py`:

    .venv/bin/python scripts/make_default_dataset.py          # writes train.jsonl, test.jsonl, README.md
    .venv/bin/python scripts/make_default_dataset.py --check  # fails if these files are stale

Each line: `{"prompt": str, "chosen": str, "rejected": str, "family": str, "ood": bool}`.
Load it with `orpo_lab.preferences.load_preferences("default", split="train" | "test")`.

## Families

| family | preferred property | chosen | rejected |
|---|---|---|---|
| arithmetic | the right sum; same style both sides, so SFT alone raises both (the paper's observation) | `What is 7 + 5?` -> `7 + 5 = 12.` | `7 + 5 = 13.` |
| bullets | a "- " bullet list of three items | `Name three fruits.` -> `- Apple\\n- Pear\\n- Plum` | `Apple, pear and plum.` |
| concise | one short sentence | `What is a clock?` -> `A clock is a device that shows the time.` | the same sentence wrapped in a rambling opener and closer |
| ranked | the answer said plainly | `My car is red. Is my car red or blue?` -> `Your car is red.` | `I think your car is red, but I am not sure.` |

### Why the ranked family: a preference the chosen replies do not hold

In the first three families the chosen reply alone already says everything the pair says: SFT on the
chosen replies learns the same behaviour as ORPO. The ranked family is built as UltraFeedback's
rankings are binarised. The user says what colour something of theirs is, then asks ("My car is red. Is my car
red or blue?"), so the answer needs no knowledge. Each question has three replies ranked best >
middle > bad: the plain answer (`Your car is red.`), the same answer hedged (`I think your car is red,
but I am not sure.`; three hedge forms), and the same hedge with the other colour. Each training question gives two pairs,
best over middle and middle over bad, so the hedged reply is chosen in one pair and rejected in the
other. SFT on the chosen replies learns to hedge about half the time; only the pairs say that the
hedge loses to the plain answer, and ORPO's odds-ratio term is what reads them. The test split keeps
the pair the family is about, best over middle, once per question.

## Judges

`orpo_lab.default_judges.JUDGES[family](record, answer) -> bool` says whether a generated answer has
the preferred property. In arithmetic, bullets and concise every chosen reply passes its judge and
every rejected reply fails it (tested); in ranked the chosen hedged replies fail it too (see below).
- arithmetic: the number after the first "=" (else the first number that is not an operand) is the result.
- bullets: at least three lines starting with "- ", and no numbered lines.
- concise: a single sentence of at most 16 words, on one line.
- ranked: `grade(record, answer)` is "bad" when the first of the two offered answers the answer names is
  the wrong one (or it names neither), "middle" when it hedges (I think, not sure, maybe, probably,
  ...), else "best"; the judge passes "best". Chosen replies grade above their rejected ones (tested).

`orpo_lab.default_judges.rejected_like(family, record, answer) -> bool` says whether an answer does
what the family's rejected replies do: states a wrong result (arithmetic), lists the items as comma
prose (bullets), says it in more than one sentence (concise), hedges (ranked). Every rejected reply
has that property, every chosen reply but the ranked family's hedged middle ones does not (tested).

## Splits

The test split holds in-domain prompts and prompts of a kind never seen in training (`"ood": true`):
subtraction (training has only addition); five held-out categories asked with two held-out phrasings
("What are three ...?", "Can you name three ...?"); "What does a <job> do?" (training asks "What is a
<thing>?"); for ranked, another property than colour ("My tea is hot. Is my tea cold or hot?": hot
or cold, full or empty, open or closed, clean or dirty, wet or dry, old or new). The in-domain
concise and ranked test prompts use things (objects) held out of training.

{{COUNTS}}

## Base model

Pass rates of the base SmolLM2-135M-Instruct (greedy, max_new_tokens 48, CPU float32), measured with
`.venv/bin/python scripts/make_default_dataset.py --measure-base 30` (30 prompts per family and kind):

{{BASE}}

## License

Apache-2.0. Written for ORPO Lab; no third-party text.
"""

# Measured with `--measure-base 30` (see the card); update by hand when the dataset changes.
BASE_RATES = """\
| family | in-domain | ood | a typical base answer |
|---|---|---|---|
| arithmetic | 5/30 (17%) | 3/30 (10%) | `22 + 7 = 10` followed by a paragraph |
| bullets | 0/30 (0%) | 0/30 (0%) | a numbered list "1. ..." with a sentence per item, or comma prose |
| concise | 0/30 (0%) | 0/30 (0%) | two or more long sentences, cut at 48 tokens |"""


def to_jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def counts_table(splits: dict[str, list[dict]]) -> str:
    rows = ["| family | train | test in-domain | test ood |", "|---|---|---|---|"]
    for family in FAMILIES:
        c = {
            s: Counter(r["ood"] for r in recs if r["family"] == family)
            for s, recs in splits.items()
        }
        rows.append(f"| {family} | {c['train'][False]} | {c['test'][False]} | {c['test'][True]} |")
    total = [
        len(splits["train"]),
        sum(not r["ood"] for r in splits["test"]),
        sum(r["ood"] for r in splits["test"]),
    ]
    rows.append(f"| all | {total[0]} | {total[1]} | {total[2]} |")
    return "\n".join(rows)


def measure_base(
    n: int, model_name: str = "default", max_new_tokens: int = 48, families=FAMILIES
) -> dict[str, dict]:
    """Greedy answers of the base model on n in-domain and n ood test prompts per family."""
    from orpo_lab.model import load_model

    torch.manual_seed(0)
    model, tokenizer = load_model(model_name, device="cpu", precision="fp32")
    tokenizer.padding_side = "left"
    test = build()["test"]
    results = {}
    for family in families:
        for ood in (False, True):
            recs = [r for r in test if r["family"] == family and r["ood"] == ood][:n]
            texts = [
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": r["prompt"]}],
                    tokenize=False,
                    add_generation_prompt=True,
                )
                for r in recs
            ]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
            answers = tokenizer.batch_decode(
                out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
            )
            passed = [JUDGES[family](r, a) for r, a in zip(recs, answers, strict=True)]
            key = f"{family} ({'ood' if ood else 'in-domain'})"
            results[key] = {"n": len(recs), "pass": sum(passed), "example": answers[0]}
            print(
                f"{key}: {sum(passed)}/{len(recs)} = {100 * sum(passed) / len(recs):.0f}%  e.g. {answers[0]!r}",
                flush=True,
            )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=SEED, help="the seed the shipped files use")
    parser.add_argument("--out", type=Path, default=DATA_DIR, help="where to write the files")
    parser.add_argument(
        "--check", action="store_true", help="compare with the files instead of writing"
    )
    parser.add_argument(
        "--measure-base",
        type=int,
        default=0,
        metavar="N",
        help="measure base pass rates on N prompts per family and kind",
    )
    parser.add_argument(
        "--families",
        nargs="+",
        default=list(FAMILIES),
        choices=FAMILIES,
        help="with --measure-base: these families only",
    )
    args = parser.parse_args(argv)
    if args.measure_base:
        measure_base(args.measure_base, families=args.families)
        return 0
    splits = build(args.seed)
    files = {f"{s}.jsonl": to_jsonl(recs) for s, recs in splits.items()}
    files["README.md"] = CARD.replace("{{COUNTS}}", counts_table(splits)).replace(
        "{{BASE}}", BASE_RATES
    )
    if args.check:
        stale = [
            name
            for name, text in files.items()
            if not (args.out / name).is_file() or (args.out / name).read_text() != text
        ]
        print("stale: " + ", ".join(stale) if stale else "up to date")
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text)
    print(f"wrote {', '.join(files)} to {args.out}\n{counts_table(splits)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
