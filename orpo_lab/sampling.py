"""Sampled evaluation: k answers per held-out prompt at a temperature, judged, with 95% intervals.

Greedy decoding shows one answer per prompt, the single most likely one; a user who chats at a
temperature sees the model's whole distribution. Two models can share every greedy answer and still
differ in how often a sample strays (SFT and ORPO on the default data do). `sample_answers` draws
`k` answers per prompt in one `generate` call per batch (`num_return_sequences`, left padding),
seeded: the same seed, prompts and settings give the same samples. `sampled_rates` counts, per
family and in-domain / out-of-domain, how many samples pass their judge and how many have the
rejected replies' property, each with a Wilson score interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from orpo_lab.default_judges import JUDGES, rejected_like

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: a two-sided 95% interval


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (Wilson, 1927): 95% by default.

    Unlike the normal approximation p +- z sqrt(p(1-p)/n) it stays inside [0, 1] and does not
    collapse to a point at 0 or n successes. It treats the n trials as independent; k samples of
    one prompt are not (a prompt the model finds hard fails in most of them), so over prompts the
    true uncertainty is somewhat larger than the interval says. (0, 1) when n is 0.
    """
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At 0 (or n) successes the end is 0 (or 1) exactly; the formula gives it up to rounding.
    return (0.0 if successes == 0 else centre - half), (1.0 if successes == n else centre + half)


def sample_answers(
    model,
    tokenizer,
    prompts: Sequence[Sequence[dict]],
    k: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    max_new_tokens: int = 64,
    batch_rows: int = 64,
    desc: str | None = None,
) -> list[list[str]]:
    """`k` sampled answers to each chat prompt: one list of k strings per prompt.

    Prompts go `batch_rows // k` at a time (at least one) into one `generate` call that returns k
    sequences per prompt. The global RNG is seeded with `seed` for the call and restored after, so
    the caller's random state does not move. `desc`: show a progress bar under that name.
    """
    from orpo_lab.chat import encode_chats, generate_kwargs

    if k < 1 or temperature <= 0:
        raise ValueError(
            f"Sampling needs k >= 1 samples and a temperature > 0 (got k={k}, temperature="
            f"{temperature}); temperature 0 is greedy decoding: use generate_answers for that."
        )
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}: 1 keeps the whole distribution.")
    step = max(1, batch_rows // k)
    kwargs = generate_kwargs(model, tokenizer, temperature, top_p, max_new_tokens)
    devices = [model.device.index or 0] if model.device.type == "cuda" else []
    answers: list[list[str]] = []
    with (
        torch.random.fork_rng(devices=devices),
        torch.inference_mode(),
        tqdm(total=len(prompts), desc=desc, disable=desc is None, unit="prompt") as bar,
    ):
        torch.manual_seed(seed)
        for i in range(0, len(prompts), step):
            input_ids, attention_mask = encode_chats(
                tokenizer, prompts[i : i + step]
            )  # (B, T) each
            out = model.generate(
                input_ids=input_ids.to(model.device),
                attention_mask=attention_mask.to(model.device),
                num_return_sequences=k,  # rows i*k .. i*k+k-1 answer prompt i
                **kwargs,
            )
            texts = tokenizer.batch_decode(out[:, input_ids.shape[1] :], skip_special_tokens=True)
            answers += [[t.strip() for t in texts[j : j + k]] for j in range(0, len(texts), k)]
            bar.update(len(input_ids))
    return answers


def judge_samples(records: list[dict], samples: list[list[str]]) -> list[list[dict]]:
    """Each sample of each record as {"text", "pass", "rejected_like"}, by the family's judges."""
    return [
        [
            {
                "text": s,
                "pass": bool(JUDGES[r["family"]](r, s)),
                "rejected_like": bool(rejected_like(r["family"], r, s)),
            }
            for s in texts
        ]
        for r, texts in zip(records, samples, strict=True)
    ]


def _rate(flags: list[bool]) -> dict:
    low, high = wilson_interval(sum(flags), len(flags))
    return {
        "rate": sum(flags) / len(flags) if flags else float("nan"),
        "low": low,
        "high": high,
        "n": len(flags),
    }


def sampled_rates(records: list[dict], judged: list[list[dict]]) -> dict[str, dict]:
    """Per family (and "all"), per domain ("in_domain", "ood", "all"): the share of samples that
    pass ("pass") and that have the rejected replies' property ("rejected_like"), each as
    {"rate", "low", "high", "n"} with the 95% Wilson interval over the n samples."""
    groups: dict[str, dict[str, list[dict]]] = {}
    for record, samples in zip(records, judged, strict=True):
        for family in (record["family"], "all"):
            group = groups.setdefault(family, {"in_domain": [], "ood": [], "all": []})
            group["ood" if record.get("ood") else "in_domain"] += samples
            group["all"] += samples
    return {
        family: {
            domain: {key: _rate([s[key] for s in samples]) for key in ("pass", "rejected_like")}
            for domain, samples in group.items()
        }
        for family, group in groups.items()
    }
