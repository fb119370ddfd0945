"""One preference pair token by token: what the ORPO loss sees in it, for any model.

`score_pair(model, tokenizer, prompt, chosen, rejected)` tokenises the pair as the trainer does
(`orpo_lab.data.tokenize_pair`), scores every response token with the model and returns a
`PairScore`: each response's tokens as text with their log-probs, its sum and mean log-probs (the
mean is the paper's log P(y|x)) and its 1/(1-P) weight, and the pair's log-odds ratio, L_OR and
delta, computed by `orpo_lab.loss` exactly as in training.

The model may be a plain causal LM or a peft model: a PeftModel scores with its active adapter, and
inside `with model.disable_adapter():` as its base model. `token_change(before, after)` subtracts
two scores of the same pair (the base model and a checkpoint, say): the change of every token's
log-prob and of every pair quantity. `tokens_html(tokens, values)` draws tokens as coloured
HTML spans (the app's data preview and token view, the notebooks): one renderer for all of them.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from orpo_lab.collate import collate
from orpo_lab.data import tokenize_pair
from orpo_lab.loss import odds_weight, or_penalty, orpo_loss
from orpo_lab.token_logps import IGNORE_INDEX, token_logps


@dataclass(frozen=True)
class ResponseScore:
    """One response under one model."""

    # Each response token decoded on its own (a character split over two tokens shows as U+FFFD in
    # both); the last is the end-of-turn token.
    tokens: list[str]
    token_ids: list[int]
    token_logps: list[float]  # log p(y_t | x, y_<t) of each token, in order
    sum_logp: float  # log of the product of the token probabilities
    mean_logp: float  # the paper's log P(y|x): the length-normalised log-prob
    weight: float  # 1 / (1 - P(y|x)), the factor on this response's gradient in L_OR


@dataclass(frozen=True)
class PairScore:
    """A preference pair under one model: both responses and the odds-ratio term of the pair."""

    chosen: ResponseScore
    rejected: ResponseScore
    log_odds_ratio: float  # log odds(y_w|x) - log odds(y_l|x) (TRL's log_odds_chosen)
    or_loss: float  # L_OR = -log sigmoid(log_odds_ratio), lambda not applied
    delta: float  # 1 / (1 + OR): near 1 while the model favours the rejected response
    preference: float  # sigmoid(log_odds_ratio) = OR / (1 + OR) = 1 - delta
    truncated: bool  # the length budgets cut the prompt or a response


def score_pair(
    model,
    tokenizer,
    prompt: str | list[dict],
    chosen: str,
    rejected: str,
    max_length: int = 1024,
    max_prompt_length: int = 512,
) -> PairScore:
    """Score one pair with `model`: per-token log-probs, mean log-probs, log-odds ratio, L_OR, delta.

    `prompt` is a user message or a list of chat messages; `chosen`/`rejected` are reply texts. The
    budgets are `tokenize_pair`'s. Runs without gradients and in eval mode (the model's mode is
    restored). Holds the full (2, T, V) float32 logits once: fine for chat-sized pairs.
    """
    example = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    ids = tokenize_pair(example, tokenizer, max_length, max_prompt_length)
    # Row 0 is prompt + chosen, row 1 prompt + rejected; targets already shifted (see orpo_lab.data).
    batch = collate([ids], layout="padded", pad_id=tokenizer.pad_token_id)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                position_ids=batch["position_ids"].to(device),
                use_cache=False,
            ).logits  # (2, T, V)
            tok = token_logps(logits, batch["targets"].to(device)).cpu()  # (2, T) float32
    finally:
        model.train(was_training)
    response = (batch["targets"] != IGNORE_INDEX) & ~batch["target_in_prompt"]  # (2, T)
    per_token = [tok[row][response[row]] for row in (0, 1)]  # (m_w,), (m_l,) in order
    sums = torch.stack([t.sum() for t in per_token])  # (2,)
    means = sums / torch.tensor([len(t) for t in per_token])  # (2,) chosen, rejected
    # The pair's odds-ratio term through the loss the trainer minimises (beta 1, no NLL).
    _, metrics = orpo_loss(means[:1], means[1:], torch.zeros(()), beta=1.0)
    delta = or_penalty(means[:1], means[1:]).item()
    weights = odds_weight(means).tolist()

    def response_score(row: int, key: str) -> ResponseScore:
        token_ids = ids[key]
        return ResponseScore(
            tokens=[tokenizer.decode([i]) for i in token_ids],
            token_ids=list(token_ids),
            token_logps=per_token[row].tolist(),
            sum_logp=sums[row].item(),
            mean_logp=means[row].item(),
            weight=weights[row],
        )

    return PairScore(
        chosen=response_score(0, "chosen_ids"),
        rejected=response_score(1, "rejected_ids"),
        log_odds_ratio=metrics["log_odds_chosen"],
        or_loss=metrics["or_loss"],
        delta=delta,
        preference=1.0 - delta,
        truncated=ids["truncated"],
    )


def token_change(before: PairScore, after: PairScore) -> dict:
    """`after - before` for two scores of the same pair (same tokenizer and texts, two models).

    Returns {"chosen": [change of each token's log-prob], "rejected": [...], and the change of
    "chosen_mean_logp", "rejected_mean_logp", "log_odds_ratio", "or_loss", "delta"}.
    """
    for side in ("chosen", "rejected"):
        if getattr(before, side).token_ids != getattr(after, side).token_ids:
            raise ValueError(
                f"The two scores hold different {side} tokens: score the same pair with the same "
                "tokenizer (and budgets) under both models."
            )

    def per_token(side: str) -> list[float]:
        old, new = getattr(before, side).token_logps, getattr(after, side).token_logps
        return [b - a for a, b in zip(old, new, strict=True)]

    return {
        "chosen": per_token("chosen"),
        "rejected": per_token("rejected"),
        "chosen_mean_logp": after.chosen.mean_logp - before.chosen.mean_logp,
        "rejected_mean_logp": after.rejected.mean_logp - before.rejected.mean_logp,
        "log_odds_ratio": after.log_odds_ratio - before.log_odds_ratio,
        "or_loss": after.or_loss - before.or_loss,
        "delta": after.delta - before.delta,
    }


GREEN, RED = "44,160,44", "214,39,40"  # rgb of "more likely" and "less likely"


def tokens_html(
    tokens: Sequence[str],
    values: Sequence[float] | None = None,
    *,
    scale: float = 2.0,
    titles: Sequence[str] | None = None,
    shade: str = "#888888",
    show_newlines: bool = True,
) -> str:
    """Tokens as HTML: one `<span title=...>` per token, in a block that keeps spaces and lines.

    - `values` (one number per token, e.g. a log-prob change in nats, or a log-prob): each span
      is green where its value is above 0 and red where it is not, stronger with |value| and
      at full strength from `scale` on.
    - `values=None`: the spans alternate between two light shades of `shade` ("#rrggbb"), so
      that every token boundary shows (what a tokenizer made of a text).
    - `titles`: the hover text of each token; by default the token (as repr) and its value.
    - `show_newlines`: a newline is drawn as "\u21b5" before the line break (else only the break).

    Tokens and titles are escaped: a token is always shown as text, never run as markup.
    """
    if values is not None and len(values) != len(tokens):
        raise ValueError(f"{len(tokens)} tokens but {len(values)} values: give one per token.")
    if titles is None:
        titles = (
            [repr(t) for t in tokens]
            if values is None
            else [f"{t!r}: {v:+.3f}" for t, v in zip(tokens, values, strict=True)]
        )
    spans = []
    for i, (token, title) in enumerate(zip(tokens, titles, strict=True)):
        if values is None:
            rgb, alpha = (
                ",".join(str(int(shade[k : k + 2], 16)) for k in (1, 3, 5)),
                0.2 * (1 + i % 2),
            )
        else:
            rgb, alpha = GREEN if values[i] > 0 else RED, min(abs(values[i]) / scale, 1.0)
        text = token.replace("\n", "\u21b5\n") if show_newlines else token
        spans.append(
            f'<span title="{html.escape(title)}" style="background: rgba({rgb},{alpha:.2f}); '
            f'border-radius: 3px; padding: 0 1px">{html.escape(text)}</span>'
        )
    return (
        '<div style="white-space: pre-wrap; font-family: monospace; line-height: 1.7">'
        + "".join(spans)
        + "</div>"
    )
