"""Sampled evaluation: the Wilson interval against hand-computed values, seeded samples, the rates."""

from __future__ import annotations

import math

import pytest
import torch

from orpo_lab.model import load_model
from orpo_lab.sampling import judge_samples, sample_answers, sampled_rates, wilson_interval


@pytest.mark.parametrize(
    ("successes", "n", "expected"),
    [
        # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table II,
        # method 3 (score interval without continuity correction), to the 4 decimals printed there.
        (81, 263, (0.2553, 0.3662)),
        (15, 148, (0.0624, 0.1605)),
        (0, 20, (0.0, 0.1611)),
        (1, 29, (0.0061, 0.1718)),
        # By hand, 0 of 10: the low end is 0 and the high end z^2 / (n + z^2) = 3.8415 / 13.8415.
        (0, 10, (0.0, 0.2775)),
        (10, 10, (0.7225, 1.0)),
    ],
)
def test_wilson_interval_matches_hand_computed_values(successes, n, expected):
    low, high = wilson_interval(successes, n)
    assert (low, high) == pytest.approx(expected, abs=5e-5)


def test_wilson_interval_brackets_the_rate_and_narrows_with_n():
    for n in (1, 7, 30, 400):
        for successes in range(0, n + 1, max(1, n // 5)):
            low, high = wilson_interval(successes, n)
            assert 0 <= low <= successes / n <= high <= 1
    assert wilson_interval(0, 0) == (0.0, 1.0)
    widths = [math.fsum((-a, b)) for a, b in (wilson_interval(n // 2, n) for n in (10, 100, 1000))]
    assert widths[0] > widths[1] > widths[2]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir), device="cpu", precision="fp32")


def test_samples_are_reproducible_per_seed_and_leave_the_rng_alone(tiny):
    model, tokenizer = tiny
    prompts = [[{"role": "user", "content": q}] for q in ("Is snow white or black?", "Hi", "2+2?")]
    state = torch.random.get_rng_state()
    first = sample_answers(model, tokenizer, prompts, k=3, seed=7, max_new_tokens=6, batch_rows=6)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG did not move
    again = sample_answers(model, tokenizer, prompts, k=3, seed=7, max_new_tokens=6, batch_rows=6)
    other = sample_answers(model, tokenizer, prompts, k=3, seed=8, max_new_tokens=6, batch_rows=6)
    assert first == again
    assert first != other
    assert [len(s) for s in first] == [3, 3, 3]
    # A random tiny model at temperature 1: the k samples of one prompt differ from each other.
    assert all(len(set(s)) > 1 for s in first)
    with pytest.raises(ValueError, match="temperature > 0"):
        sample_answers(model, tokenizer, prompts, k=2, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        sample_answers(model, tokenizer, prompts, k=2, top_p=1.5)


def test_sampled_rates_pool_samples_per_family_and_domain():
    records = [
        {"family": "ranked", "ood": False, "prompt": "My car is red. Is my car red or blue?"},
        {"family": "ranked", "ood": True, "prompt": "My tea is hot. Is my tea cold or hot?"},
    ]
    samples = [
        ["Your car is red.", "I think your car is red, but I am not sure.", "Your car is blue."],
        ["Your tea is hot.", "It is hot.", "Maybe your tea is cold?"],
    ]
    judged = judge_samples(records, samples)
    assert [[s["pass"] for s in row] for row in judged] == [
        [True, False, False],
        [True, True, False],
    ]
    rates = sampled_rates(records, judged)
    assert rates["ranked"]["in_domain"]["pass"]["rate"] == pytest.approx(1 / 3)
    assert rates["ranked"]["ood"]["rejected_like"]["rate"] == pytest.approx(1 / 3)
    cell = rates["all"]["all"]["pass"]
    assert cell["n"] == 6 and cell["rate"] == pytest.approx(0.5)
    assert (cell["low"], cell["high"]) == pytest.approx(wilson_interval(3, 6))
