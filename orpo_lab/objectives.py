"""The objective a run trains (`TrainConfig.method`), one loop for all: from the step's log-probs
to `(loss, metrics)` through one pure function of `orpo_lab.loss` each.

    orpo        orpo_loss               L_SFT + beta * L_OR        mean log-probs
    sft         sft_loss                L_SFT                      mean log-probs (for the metrics)
    prob_ratio  probability_ratio_loss  L_SFT + beta * L_PR        mean log-probs (paper, sec. 7.1)
    dpo         dpo_loss                -log sigmoid(dpo_beta * margin)   SUMMED log-probs

Which log-prob: ORPO defines P(y|x) as the exponent of the MEAN token log-prob (the paper, its
code, TRL's ORPOTrainer all do), and the probability ratio of section 7.1 is taken on that same
P(y|x), so the two differ only by odds against probability. DPO is used as its users run it:
TRL's DPOTrainer sums the token log-probs (its default), which is log pi(y|x), the quantity of
DPO's derivation (the policy-to-reference ratio of whole responses). `PairLogps` returns means;
a sum is mean x response tokens (`response_counts`), the same value and the same gradient.

Every method logs the same preference metrics under the same names (`loss.preference_metrics`:
logps/chosen, logps/rejected, rewards/accuracies from the log-probs, log_odds_chosen, or_loss,
nll_loss, ...) so runs of any method overlay on one axis; its own term under its own name
(or_loss, pr_loss, dpo_loss and dpo_rewards/*). DPO's reference: `orpo_lab.reference`.
"""

from __future__ import annotations

import torch

from orpo_lab.config import TrainConfig
from orpo_lab.loss import dpo_loss, orpo_loss, preference_metrics, probability_ratio_loss, sft_loss
from orpo_lab.token_logps import IGNORE_INDEX, sequence_logps

NOT_MODEL_INPUTS = ("ref_logps",)  # what a micro-batch carries besides `PairLogps`'s inputs


def model_inputs(batch: dict) -> dict:
    """The batch without what only the objective reads (DPO's reference log-probs)."""
    return {k: v for k, v in batch.items() if k not in NOT_MODEL_INPUTS}


def response_counts(batch: dict) -> torch.Tensor:
    """(2B,) response tokens of each sequence of a collated batch (chosen ones, then rejected)."""
    response = (batch["targets"] != IGNORE_INDEX) & ~batch["target_in_prompt"]  # (R, T)
    ones = torch.ones(response.shape, device=response.device)
    _, counts = sequence_logps(ones, batch["target_seq"], response, 2 * batch["num_pairs"])
    return counts


def objective_loss(
    cfg: TrainConfig,
    batch: dict,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    nll: torch.Tensor,
    pairs_in_step: float,
) -> tuple[torch.Tensor, dict[str, float]]:
    """`(loss, metrics)` of `cfg.method` on one micro-batch.

    chosen, rejected (B,) MEAN response log-probs (`PairLogps`); nll the chosen responses' NLL
    as a share of the step's tokens; pairs_in_step the pairs of the whole optimiser step.
    """
    return OBJECTIVES[cfg.method](cfg, batch, chosen, rejected, nll, pairs_in_step)


def _orpo(cfg, batch, chosen, rejected, nll, pairs):
    return orpo_loss(chosen, rejected, nll, cfg.beta, pairs_in_step=pairs)


def _sft(cfg, batch, chosen, rejected, nll, pairs):
    return sft_loss(chosen, rejected, nll, pairs_in_step=pairs)


def _prob_ratio(cfg, batch, chosen, rejected, nll, pairs):
    return probability_ratio_loss(chosen, rejected, nll, cfg.beta, pairs_in_step=pairs)


def _dpo(cfg, batch, chosen, rejected, nll, pairs):
    counts = response_counts(batch).to(chosen.dtype)  # (2B,)
    b = chosen.shape[0]
    ref = batch["ref_logps"].to(chosen.device)  # (B, 2) the reference's summed log-probs
    loss, own = dpo_loss(
        chosen * counts[:b],
        rejected * counts[b:],
        ref[:, 0],
        ref[:, 1],
        cfg.dpo_beta,
        pairs_in_step=pairs,
    )
    return loss, preference_metrics(chosen, rejected, nll) | own


OBJECTIVES = {"orpo": _orpo, "sft": _sft, "prob_ratio": _prob_ratio, "dpo": _dpo}
