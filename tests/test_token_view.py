"""orpo_lab.token_view: one pair scored token by token equals what the trainer computes for it."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model

from orpo_lab.collate import collate
from orpo_lab.data import encode_response, tokenize_pair
from orpo_lab.logps import PairLogps
from orpo_lab.loss import odds_weight, or_penalty, orpo_loss
from orpo_lab.token_view import score_pair, token_change, tokens_html
from tests.conftest import build_tiny_model

PROMPT = "What is 7 + 5?"
CHOSEN = "7 + 5 = 12."
REJECTED = "Great question! Let me work it out for you: 7 + 5 = 13. I hope this helps!"


class UniformLM(torch.nn.Module):
    """Logits 0 everywhere: every token has probability 1/V."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.unused = torch.nn.Parameter(torch.zeros(1))  # gives the model a device

    def forward(self, input_ids, **kwargs):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab_size))


@pytest.fixture(scope="module")
def tiny(default_tokenizer):
    model = build_tiny_model(len(default_tokenizer), seed=1)
    model.eval()
    return model


def test_uniform_model_hand_derived(default_tokenizer):
    """Every token at log(1/V): both means are -ln V, so log OR = 0, L_OR = ln 2, delta = 1/2,
    the preference sigmoid(0) = 1/2 and each weight 1 / (1 - 1/V) = V / (V - 1); sums are
    -m ln V for m tokens."""
    v = len(default_tokenizer)
    score = score_pair(UniformLM(v), default_tokenizer, PROMPT, CHOSEN, REJECTED)
    for side, text in ((score.chosen, CHOSEN), (score.rejected, REJECTED)):
        m = len(encode_response(text, default_tokenizer))
        assert len(side.token_logps) == len(side.tokens) == m
        assert side.token_logps == pytest.approx([-math.log(v)] * m, rel=1e-6)
        assert side.mean_logp == pytest.approx(-math.log(v), rel=1e-6)
        assert side.sum_logp == pytest.approx(-m * math.log(v), rel=1e-6)
        assert side.weight == pytest.approx(v / (v - 1), rel=1e-6)
    assert score.log_odds_ratio == pytest.approx(0.0, abs=1e-6)
    assert score.or_loss == pytest.approx(math.log(2), rel=1e-6)
    assert score.delta == pytest.approx(0.5, rel=1e-6)
    assert score.preference == pytest.approx(0.5, rel=1e-6)
    assert not score.truncated


def test_tokens_are_the_trainers_response_tokens(tiny, default_tokenizer):
    score = score_pair(tiny, default_tokenizer, PROMPT, CHOSEN, REJECTED)
    ids = tokenize_pair(
        {"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED}, default_tokenizer
    )
    assert score.chosen.token_ids == ids["chosen_ids"]
    assert score.rejected.token_ids == ids["rejected_ids"]
    # The end-of-turn token is scored (pad == eos here: masks go by position, not value).
    assert score.chosen.tokens[-1] == score.rejected.tokens[-1] == "<|im_end|>"
    assert "".join(score.chosen.tokens[:-1]) == CHOSEN
    assert "".join(score.rejected.tokens[:-1]) == REJECTED
    for side in (score.chosen, score.rejected):
        assert sum(side.token_logps) == pytest.approx(side.sum_logp, abs=1e-4)
        assert side.mean_logp == pytest.approx(side.sum_logp / len(side.tokens), rel=1e-6)
        assert all(lp <= 0 for lp in side.token_logps)


@pytest.mark.parametrize(("layout", "chunk_size"), [("padded", 0), ("prefix", 64), ("packed", 0)])
def test_equals_pair_logps_and_the_loss(tiny, default_tokenizer, layout, chunk_size):
    """The numbers are the library's: PairLogps's means, orpo_loss's metrics, or_penalty, odds_weight."""
    score = score_pair(tiny, default_tokenizer, PROMPT, CHOSEN, REJECTED)
    ids = tokenize_pair(
        {"prompt": PROMPT, "chosen": CHOSEN, "rejected": REJECTED}, default_tokenizer
    )
    batch = collate([ids], layout=layout, pad_id=default_tokenizer.pad_token_id)
    with torch.no_grad():
        chosen, rejected, _, _ = PairLogps(tiny, "response", chunk_size)(**batch)
    assert score.chosen.mean_logp == pytest.approx(chosen.item(), abs=1e-5)
    assert score.rejected.mean_logp == pytest.approx(rejected.item(), abs=1e-5)
    _, m = orpo_loss(chosen, rejected, torch.zeros(()), beta=1.0)
    assert score.log_odds_ratio == pytest.approx(m["log_odds_chosen"], abs=1e-5)
    assert score.or_loss == pytest.approx(m["or_loss"], abs=1e-5)
    assert score.delta == pytest.approx(or_penalty(chosen, rejected).item(), abs=1e-5)
    assert score.chosen.weight == pytest.approx(odds_weight(chosen).item(), rel=1e-5)
    assert score.rejected.weight == pytest.approx(odds_weight(rejected).item(), rel=1e-5)
    assert score.preference == pytest.approx(
        torch.sigmoid(torch.tensor(m["log_odds_chosen"])).item()
    )


def test_chat_prompt_and_budgets(tiny, default_tokenizer):
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": PROMPT},
    ]
    score = score_pair(tiny, default_tokenizer, messages, CHOSEN, REJECTED)
    assert score.chosen.token_ids == encode_response(CHOSEN, default_tokenizer)
    cut = score_pair(tiny, default_tokenizer, PROMPT, CHOSEN, REJECTED, max_length=40)
    assert cut.truncated and cut.rejected.tokens[-1] == "<|im_end|>"


def test_peft_model_active_adapter_and_base(default_tokenizer):
    """A fresh LoRA adapter (B = 0) scores as its base; a changed one differs; disable_adapter is the base."""
    base = build_tiny_model(len(default_tokenizer), seed=2)
    plain = score_pair(base, default_tokenizer, PROMPT, CHOSEN, REJECTED)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    model.train()
    fresh = score_pair(model, default_tokenizer, PROMPT, CHOSEN, REJECTED)
    assert model.training  # the caller's mode is restored
    assert fresh.chosen.token_logps == pytest.approx(plain.chosen.token_logps, abs=1e-6)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    tuned = score_pair(model, default_tokenizer, PROMPT, CHOSEN, REJECTED)
    assert abs(tuned.chosen.mean_logp - plain.chosen.mean_logp) > 1e-3
    with model.disable_adapter():
        as_base = score_pair(model, default_tokenizer, PROMPT, CHOSEN, REJECTED)
    assert as_base.rejected.token_logps == pytest.approx(plain.rejected.token_logps, abs=1e-6)
    assert as_base.log_odds_ratio == pytest.approx(plain.log_odds_ratio, abs=1e-6)

    change = token_change(plain, tuned)
    assert change["chosen"] == pytest.approx(
        [a - b for a, b in zip(tuned.chosen.token_logps, plain.chosen.token_logps, strict=True)]
    )
    assert len(change["rejected"]) == len(tuned.rejected.tokens)
    assert change["rejected_mean_logp"] == pytest.approx(
        tuned.rejected.mean_logp - plain.rejected.mean_logp
    )
    assert change["log_odds_ratio"] == pytest.approx(tuned.log_odds_ratio - plain.log_odds_ratio)
    assert change["or_loss"] == pytest.approx(tuned.or_loss - plain.or_loss)
    assert change["delta"] == pytest.approx(tuned.delta - plain.delta)
    same = token_change(plain, as_base)
    assert max(abs(x) for x in same["chosen"] + same["rejected"]) < 1e-6


def test_token_change_refuses_different_pairs(tiny, default_tokenizer):
    one = score_pair(tiny, default_tokenizer, PROMPT, CHOSEN, REJECTED)
    other = score_pair(tiny, default_tokenizer, PROMPT, CHOSEN, "7 + 5 = 13.")
    with pytest.raises(ValueError, match="different rejected tokens"):
        token_change(one, other)


def test_tokens_html_shades_token_boundaries_or_colours_values():
    """Without values the spans alternate two shades of one colour (alpha 0.2 and 0.4, the old
    "#rrggbb33" and "#rrggbb66"); with values they are green above 0 and red below, at |value| /
    scale. One span per token, every token and title escaped."""
    plain = tokens_html(["a", "\n", "<i>"], shade="#1f77b4", show_newlines=False)
    assert plain.count("<span title=") == 3
    assert plain.count("rgba(31,119,180,0.20)") == 2 and plain.count("rgba(31,119,180,0.40)") == 1
    assert "\u21b5" not in plain and "&lt;i&gt;" in plain and "<i>" not in plain
    assert 'title="&#x27;\\n&#x27;"' in plain  # the default hover text: the token as repr
    coloured = tokens_html(["x", "y"], [-3.0, 1.5], scale=6.0, titles=["log p = -3.000", "t<"])
    assert 'title="log p = -3.000" style="background: rgba(214,39,40,0.50)' in coloured
    assert 'title="t&lt;" style="background: rgba(44,160,44,0.25)' in coloured
    assert 'title="&#x27;x&#x27;: +0.500"' in tokens_html(["x"], [0.5])  # token and value
    assert tokens_html(["\n"], [9.0]).count("\u21b5\n") == 1  # full green, newline kept visible
    with pytest.raises(ValueError, match="2 tokens but 1 values: give one per token"):
        tokens_html(["x", "y"], [0.0])
