"""The ORPO objective, and those the paper compares it with, as pure functions of tensors:
log-probs in, `(loss, metrics)` out. `orpo_loss`, `sft_loss`, `probability_ratio_loss` (section
7.1) take MEAN log-probs; `dpo_loss` takes SUMMED ones and a reference model's (as TRL's DPO does).

Paper: Hong, Lee, Thorne, "ORPO: Monolithic Preference Optimization without Reference Model"
(arXiv 2403.07691). With P(y|x) = exp(mean per-token log-prob of the response):

    odds(y|x) = P / (1 - P)
    L_OR      = -log sigmoid( log odds(y_w|x) - log odds(y_l|x) )
    L_ORPO    = L_SFT + beta * L_OR          (beta is the paper's lambda, TRL's name)

Pipeline: `orpo_lab.token_logps` (per-token log-probs from logits or, chunked, from hidden states;
their per-sequence sums and counts) -> mean log-probs -> `orpo_loss`.

The NLL (L_SFT) is reduced by the caller: a token mean over the chosen sequences of the whole
optimiser step (sum of -log p over their scored tokens / number of those tokens), where the scored
tokens are response-only or prompt + response according to the trainer's `nll_scope`; that choice
only changes the mask given to `sequence_logps`. The odds-ratio term is summed over pairs and
divided by `pairs_in_step`, so gradient accumulation gives the same gradient as one big batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LN_HALF = -math.log(2.0)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate everywhere, with finite gradients everywhere.

    Inputs are clamped to at most -tiny (1e-12, or the dtype's smallest normal if larger): a mean
    log-prob that rounds to 0 then gives a large finite log-odds instead of inf.
    """
    tiny = max(1e-12, torch.finfo(x.dtype).tiny)
    x = x.clamp(max=-tiny)
    # Maechler (2012): log(-expm1(x)) is accurate near 0, log1p(-exp(x)) for x < -ln 2.
    near_zero = x > _LN_HALF
    # Double where (pytorch #52248): each branch only ever sees inputs where it is finite, so the
    # branch torch.where discards cannot send 0 * inf = NaN into the gradient.
    x_hi = torch.where(near_zero, x, torch.full_like(x, -1.0))
    x_lo = torch.where(near_zero, torch.full_like(x, -1.0), x)
    return torch.where(near_zero, torch.log(-torch.expm1(x_hi)), torch.log1p(-torch.exp(x_lo)))


def log_odds(logp: torch.Tensor) -> torch.Tensor:
    """log(P / (1 - P)) given log P (any shape)."""
    return logp - log1mexp(logp)


def orpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    nll: torch.Tensor,
    beta: float,
    pairs_in_step: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """ORPO loss `nll + beta * sum(L_OR) / pairs_in_step` and detached metrics.

    chosen_logps, rejected_logps (B,) MEAN per-token log-probs of the responses; nll a scalar
    already reduced by the caller; pairs_in_step the pairs of the whole optimiser step (default
    B), so that summing the losses of its micro-batches equals the loss of the step. Computes in
    float32 at least (bf16/fp16 inputs are upcast). Metrics are means over this micro-batch, under
    TRL's keys, plus "logps/margins", "or_loss" (L_OR without beta) and "loss".
    """
    pairs = chosen_logps.shape[0] if pairs_in_step is None else pairs_in_step
    chosen_logps, rejected_logps, nll = _upcast(chosen_logps, rejected_logps, nll)
    log_odds_ratio = log_odds(chosen_logps) - log_odds(rejected_logps)  # (B,)
    log_sig = F.logsigmoid(log_odds_ratio)  # (B,) stable, unlike log(sigmoid(x))
    loss = nll + beta * (-log_sig.sum() / pairs)
    return loss, _floats(
        _weighted_rewards(chosen_logps, rejected_logps, beta)
        | _shared(chosen_logps, rejected_logps, nll)
        | {"loss": loss}
    )


def sft_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    nll: torch.Tensor,
    pairs_in_step: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """SFT on the chosen responses: the loss is `nll` alone; the metrics are `orpo_loss`'s at
    beta = 0 (the preference ones still measured from the log-probs, TRL's rewards all 0)."""
    return orpo_loss(chosen_logps, rejected_logps, nll, 0.0, pairs_in_step)


def probability_ratio_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    nll: torch.Tensor,
    beta: float,
    pairs_in_step: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The paper's section 7.1 alternative: `nll + beta * sum(L_PR) / pairs_in_step`, with
    L_PR = -log sigmoid(log P_w - log P_l), a probability ratio where ORPO has an odds ratio.

    Inputs, reduction and metrics as `orpo_loss` (MEAN log-probs: the same P(y|x) as ORPO's), plus
    "pr_loss" (L_PR without beta). `prob_ratio_loss` is its ratio term alone, for the notebooks.
    """
    pairs = chosen_logps.shape[0] if pairs_in_step is None else pairs_in_step
    chosen_logps, rejected_logps, nll = _upcast(chosen_logps, rejected_logps, nll)
    log_sig = F.logsigmoid(log_prob_ratio(chosen_logps, rejected_logps))  # (B,)
    loss = nll + beta * (-log_sig.sum() / pairs)
    return loss, _floats(
        _weighted_rewards(chosen_logps, rejected_logps, beta)
        | _shared(chosen_logps, rejected_logps, nll)
        | {"pr_loss": -log_sig.detach().mean(), "loss": loss}
    )


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    pairs_in_step: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO's sigmoid loss `sum(-log sigmoid(beta * margin)) / pairs_in_step` and detached metrics.

    All four (B,) are SUMMED log-probs of the responses (log pi(y|x), TRL's default), the policy's
    and the reference model's; margin = (chosen - ref_chosen) - (rejected - ref_rejected). Computes
    in float32 at least. Metrics: TRL's DPO rewards under "dpo_rewards/" (chosen, rejected:
    beta * (logp - ref logp); margins; accuracies: chosen reward above rejected), "dpo_loss" (the
    mean over this micro-batch) and "loss". The preference metrics that every objective logs
    under one name (mean log-probs) are `preference_metrics`'.
    """
    pairs = chosen_logps.shape[0] if pairs_in_step is None else pairs_in_step
    chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps = _upcast(
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    chosen_rewards = beta * (chosen_logps - ref_chosen_logps)  # (B,) DPO's implicit rewards
    rejected_rewards = beta * (rejected_logps - ref_rejected_logps)
    per_pair = -F.logsigmoid(chosen_rewards - rejected_rewards)  # (B,)
    loss = per_pair.sum() / pairs
    with torch.no_grad():
        c, r = chosen_rewards.detach(), rejected_rewards.detach()
        values = {
            "dpo_rewards/chosen": c.mean(),
            "dpo_rewards/rejected": r.mean(),
            "dpo_rewards/margins": (c - r).mean(),
            "dpo_rewards/accuracies": (c > r).to(c.dtype).mean(),
            "dpo_loss": per_pair.detach().mean(),
            "loss": loss.detach(),
        }
    return loss, _floats(values)


def preference_metrics(
    chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, nll: torch.Tensor
) -> dict[str, float]:
    """The metrics every objective logs under the same names, from (B,) MEAN log-probs and the
    NLL of the chosen responses: "logps/*", "rewards/accuracies", the log-odds ratio ("log_odds_chosen",
    "log_odds_ratio", "or_loss") and "nll_loss", so that runs of any method overlay on one axis."""
    return _floats(_shared(*_upcast(chosen_logps, rejected_logps, nll)))


def _upcast(*tensors: torch.Tensor) -> list[torch.Tensor]:
    # At least float32 whatever the caller's dtype (as TRL does): bf16 keeps ~3 significant digits,
    # too few for log1mexp near 0 and for the small differences that the log-odds ratio is made of.
    dtype = torch.promote_types(tensors[0].dtype, torch.float32)  # float64 stays float64
    return [torch.as_tensor(t).to(dtype) for t in tensors]


def _weighted_rewards(chosen: torch.Tensor, rejected: torch.Tensor, beta: float) -> dict:
    # TRL's ORPO "rewards" are beta * mean log-prob: ORPO has no reward model, the name is TRL's.
    chosen, rejected = chosen.detach(), rejected.detach()
    return {
        "rewards/chosen": (beta * chosen).mean(),
        "rewards/rejected": (beta * rejected).mean(),
        "rewards/margins": (beta * (chosen - rejected)).mean(),
    }


def _shared(chosen: torch.Tensor, rejected: torch.Tensor, nll: torch.Tensor) -> dict:
    with torch.no_grad():
        chosen, rejected = chosen.detach(), rejected.detach()
        log_odds_ratio = log_odds(chosen) - log_odds(rejected)  # (B,)
        log_sig = F.logsigmoid(log_odds_ratio)
        return {
            # From the log-probs, not the rewards: equal to TRL's value when beta > 0, and still the
            # preference accuracy when beta = 0 (the SFT baseline), where TRL's is always 0.
            "rewards/accuracies": (chosen > rejected).to(chosen.dtype).mean(),
            "logps/chosen": chosen.mean(),
            "logps/rejected": rejected.mean(),
            "logps/margins": (chosen - rejected).mean(),  # the margin that beta does not scale
            "nll_loss": nll.detach(),
            # TRL's name, misleading: it holds the mean log sigmoid of the log-odds ratio (= -or_loss).
            "log_odds_ratio": log_sig.mean(),
            # TRL's name for the mean log-odds ratio itself, log(odds_w / odds_l).
            "log_odds_chosen": log_odds_ratio.mean(),
            "or_loss": -log_sig.mean(),
        }


def _floats(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Metric tensors -> floats, with one device-to-host copy for all of them instead of one each."""
    dtype = next(iter(values.values())).dtype
    with torch.no_grad():
        floats = torch.stack([v.detach().to(dtype).reshape(()) for v in values.values()])
    return dict(zip(values, floats.cpu().tolist(), strict=True))


# Section 4.3 of the paper: grad L_OR = delta(d) * h(d). For the notebooks' plots and checks.


def or_penalty(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor) -> torch.Tensor:
    """delta(d) = 1 / (1 + odds_w / odds_l): near 1 when the model favours the rejected response."""
    return torch.sigmoid(-(log_odds(chosen_logps) - log_odds(rejected_logps)))


def odds_weight(logp: torch.Tensor) -> torch.Tensor:
    """1 / (1 - P) given log P: the factor by which h(d) scales grad log P."""
    return torch.exp(-log1mexp(logp))


def or_grad(
    chosen_logps: torch.Tensor, rejected_logps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Analytic d L_OR / d chosen_logps and d L_OR / d rejected_logps of each pair's L_OR.

    (-delta / (1 - P_w), +delta / (1 - P_l)); shapes as the inputs (no batch averaging).
    """
    delta = or_penalty(chosen_logps, rejected_logps)
    return -delta * odds_weight(chosen_logps), delta * odds_weight(rejected_logps)


# A probability ratio instead of an odds ratio (reference-free, DPO-like), for comparison.


def log_prob_ratio(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor) -> torch.Tensor:
    """log(P_w / P_l) = chosen_logps - rejected_logps."""
    return chosen_logps - rejected_logps


def prob_ratio_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of -log sigmoid(log(P_w / P_l))."""
    return -F.logsigmoid(log_prob_ratio(chosen_logps, rejected_logps)).mean()
