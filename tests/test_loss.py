"""orpo_lab.loss: pinned hand-derived values, float64 parity, stability and chunked/plain parity."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from orpo_lab.cli import progress_line
from orpo_lab.loss import (
    dpo_loss,
    log1mexp,
    log_odds,
    log_prob_ratio,
    odds_weight,
    or_grad,
    or_penalty,
    orpo_loss,
    preference_metrics,
    prob_ratio_loss,
    probability_ratio_loss,
    sft_loss,
)
from orpo_lab.token_logps import sequence_logps, token_logps, token_logps_from_hidden

LN = math.log


def test_hand_derived_pair():
    """P_w = 1/2, P_l = 1/4.

    odds_w = (1/2)/(1/2) = 1, odds_l = (1/4)/(3/4) = 1/3, so log OR = ln 3 and
    L_OR = -log sigmoid(ln 3) = log(1 + e^-ln 3) = ln(4/3) = 0.2876820724517809.
    delta = 1 / (1 + odds_w/odds_l) = 1/4; 1/(1-P_w) = 2, 1/(1-P_l) = 4/3, so
    dL/dlp_w = -1/4 * 2 = -1/2 and dL/dlp_l = +1/4 * 4/3 = +1/3.
    With nll = 1.2, beta = 0.1: loss = 1.2 + 0.1 * ln(4/3) = 1.2287682072451781.
    """
    chosen = torch.tensor([LN(0.5)], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([LN(0.25)], dtype=torch.float64, requires_grad=True)
    loss, m = orpo_loss(chosen, rejected, torch.tensor(1.2, dtype=torch.float64), beta=0.1)
    assert loss.item() == pytest.approx(1.2287682072451781, rel=1e-12)
    assert m["or_loss"] == pytest.approx(0.2876820724517809, rel=1e-12)
    assert m["log_odds_ratio"] == pytest.approx(-0.2876820724517809, rel=1e-12)
    assert m["log_odds_chosen"] == pytest.approx(1.0986122886681098, rel=1e-12)  # ln 3
    # The command line's step line shows the log-odds ratio itself (TRL's "log_odds_chosen"),
    # not TRL's "log_odds_ratio", which holds log sigmoid of it.
    record = {"kind": "train", "step": 1, "total_steps": 2, "step_s": 1.0, "eta_s": 1.0}
    assert "log-odds ratio 1.099  accuracy 1.00" in progress_line({**record, **m, "loss": loss})
    assert m["rewards/chosen"] == pytest.approx(-0.06931471805599453, rel=1e-12)  # 0.1 ln 1/2
    assert m["rewards/rejected"] == pytest.approx(-0.13862943611198905, rel=1e-12)
    assert m["rewards/margins"] == pytest.approx(0.06931471805599453, rel=1e-12)
    assert m["rewards/accuracies"] == 1.0
    assert m["logps/chosen"] == pytest.approx(-0.6931471805599453, rel=1e-12)
    assert m["logps/rejected"] == pytest.approx(-1.3862943611198906, rel=1e-12)
    assert m["nll_loss"] == pytest.approx(1.2)
    assert m["loss"] == pytest.approx(1.2287682072451781, rel=1e-12)
    assert all(isinstance(v, float) for v in m.values())

    loss.backward()  # beta = 0.1 scales the per-pair gradients
    assert chosen.grad.item() == pytest.approx(-0.05, rel=1e-12)
    assert rejected.grad.item() == pytest.approx(0.1 / 3, rel=1e-12)
    d_chosen, d_rejected = or_grad(chosen.detach(), rejected.detach())
    assert d_chosen.item() == pytest.approx(-0.5, rel=1e-12)
    assert d_rejected.item() == pytest.approx(1 / 3, rel=1e-12)
    assert or_penalty(chosen, rejected).item() == pytest.approx(0.25, rel=1e-12)
    assert odds_weight(chosen).item() == pytest.approx(2.0, rel=1e-12)
    assert odds_weight(rejected).item() == pytest.approx(4 / 3, rel=1e-12)


def test_hand_derived_batch_of_two():
    """Pair 1 as above (L_OR = ln 4/3); pair 2 swapped, P_w = 1/4, P_l = 1/2: log OR = -ln 3,
    L_OR = log(1 + 3) = ln 4. Mean L_OR = ln(16/3) / 2 = 0.8369882167858358; accuracy 1/2;
    mean log-odds ratio (ln 3 - ln 3) / 2 = 0.
    """
    chosen = torch.tensor([LN(0.5), LN(0.25)], dtype=torch.float64)
    rejected = torch.tensor([LN(0.25), LN(0.5)], dtype=torch.float64)
    loss, m = orpo_loss(chosen, rejected, torch.tensor(0.0, dtype=torch.float64), beta=1.0)
    assert loss.item() == pytest.approx(0.8369882167858358, rel=1e-12)
    assert m["rewards/accuracies"] == 0.5
    assert m["log_odds_chosen"] == pytest.approx(0.0, abs=1e-12)


def test_prob_ratio_hand_derived():
    """P_w = 1/2, P_l = 1/4: log PR = ln 2, loss = log(1 + 1/2) = ln 1.5 = 0.4054651081081644."""
    chosen = torch.tensor([LN(0.5)], dtype=torch.float64)
    rejected = torch.tensor([LN(0.25)], dtype=torch.float64)
    assert log_prob_ratio(chosen, rejected).item() == pytest.approx(LN(2.0), rel=1e-12)
    assert prob_ratio_loss(chosen, rejected).item() == pytest.approx(0.4054651081081644, rel=1e-12)


def _reference_loss(chosen: list[float], rejected: list[float], nll: float, beta: float) -> float:
    """Plain-math float64 ORPO loss: nll + beta * mean log(1 + odds_l / odds_w)."""

    def odds(lp: float) -> float:
        return math.exp(lp) / (1.0 - math.exp(lp))

    terms = [math.log1p(odds(lr) / odds(lc)) for lc, lr in zip(chosen, rejected, strict=True)]
    return nll + beta * sum(terms) / len(terms)


def _trl_formula(chosen: torch.Tensor, rejected: torch.Tensor, nll: torch.Tensor, beta: float):
    """TRL's published ORPO formula (odds_ratio_loss), valid at benign log-probs."""
    lor = (chosen - rejected) - (
        torch.log1p(-torch.exp(chosen)) - torch.log1p(-torch.exp(rejected))
    )
    return nll - beta * F.logsigmoid(lor).mean()


def test_parity_with_float64_reference_and_trl_formula():
    gen = torch.Generator().manual_seed(0)
    chosen = -torch.rand(16, generator=gen, dtype=torch.float64) * 3 - 0.05  # (-3.05, -0.05)
    rejected = -torch.rand(16, generator=gen, dtype=torch.float64) * 3 - 0.05
    nll = torch.tensor(0.7, dtype=torch.float64)
    loss, _ = orpo_loss(chosen, rejected, nll, beta=0.25)
    expected = _reference_loss(chosen.tolist(), rejected.tolist(), 0.7, 0.25)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert loss.item() == pytest.approx(_trl_formula(chosen, rejected, nll, 0.25).item(), rel=1e-12)
    loss32, _ = orpo_loss(chosen.float(), rejected.float(), nll.float(), beta=0.25)
    assert loss32.item() == pytest.approx(expected, rel=1e-6)


def test_log1mexp_matches_float64_reference():
    xs = [-1e-9, -1e-6, -1e-4, -0.1, -0.6931, -0.6932, -1.0, -5.0, -30.0, -100.0]
    ref = [math.log(-math.expm1(x)) if x > -LN(2) else math.log1p(-math.exp(x)) for x in xs]
    for dtype, rel in ((torch.float64, 1e-12), (torch.float32, 1e-6)):
        got = log1mexp(torch.tensor(xs, dtype=dtype)).double()
        assert torch.allclose(got, torch.tensor(ref, dtype=torch.float64), rtol=rel, atol=1e-30)
    # log odds of P = 1/2 is 0, of P = 0.9 is ln 9.
    assert log_odds(
        torch.tensor([LN(0.5), LN(0.9)], dtype=torch.float64)
    ).tolist() == pytest.approx([0.0, LN(9.0)], abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_logps_give_finite_loss_and_gradients(dtype):
    values = [-1e-9, -1e-4, -0.5, -30.0, 0.0]  # 0.0: a mean log-prob that rounded to zero
    grid = torch.tensor([(c, r) for c in values for r in values], dtype=dtype)  # (25, 2)
    chosen = grid[:, 0].clone().requires_grad_(True)
    rejected = grid[:, 1].clone().requires_grad_(True)
    loss, metrics = orpo_loss(chosen, rejected, torch.tensor(1.0, dtype=dtype), beta=0.1)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(math.isfinite(v) for v in metrics.values())
    assert torch.isfinite(chosen.grad).all() and torch.isfinite(rejected.grad).all()
    x = torch.tensor(values, dtype=dtype, requires_grad=True)
    log1mexp(x).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_or_grad_matches_autograd():
    gen = torch.Generator().manual_seed(1)
    chosen = (-torch.rand(32, generator=gen, dtype=torch.float64) * 6 - 1e-3).requires_grad_(True)
    rejected = (-torch.rand(32, generator=gen, dtype=torch.float64) * 6 - 1e-3).requires_grad_(True)
    per_pair = -F.logsigmoid(log_odds(chosen) - log_odds(rejected))  # (32,)
    auto_c, auto_r = torch.autograd.grad(per_pair.sum(), (chosen, rejected))
    d_c, d_r = or_grad(chosen.detach(), rejected.detach())
    torch.testing.assert_close(d_c, auto_c, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d_r, auto_r, rtol=1e-12, atol=1e-12)


def test_token_logps_hand_example():
    """Position 0: uniform logits over 3 tokens -> ln(1/3). Position 1: logits (0, ln 2, 0) ->
    probs (1/4, 1/2, 1/4), target 1 -> ln(1/2). Position 2: target -100 -> 0."""
    logits = torch.tensor([[[0.0, 0.0, 0.0], [0.0, LN(2.0), 0.0], [5.0, 1.0, 2.0]]])
    targets = torch.tensor([[2, 1, -100]])
    out = token_logps(logits.to(torch.bfloat16), targets)
    assert out.dtype == torch.float32 and out.shape == (1, 3)
    assert out.tolist()[0] == pytest.approx([-LN(3.0), -LN(2.0), 0.0], abs=1e-2)
    assert token_logps(logits, targets).tolist()[0] == pytest.approx(
        [-LN(3.0), -LN(2.0), 0.0], abs=1e-6
    )


def _random_problem(seed: int, bias: bool, R: int = 3, T: int = 7, H: int = 16, V: int = 50):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(R, T, H, generator=gen)
    weight = torch.randn(V, H, generator=gen) / 2
    b = torch.randn(V, generator=gen) if bias else None
    targets = torch.randint(0, V, (R * T,), generator=gen)
    targets[torch.randperm(R * T, generator=gen)[:8]] = -100  # 13 of 21 positions scored
    targets = targets.view(R, T)
    upstream = torch.randn(R, T, generator=gen)  # a random cotangent exercises every position
    return hidden, weight, b, targets, upstream


@pytest.mark.parametrize("chunk_size", [1, 4, 5, 1024])
@pytest.mark.parametrize("bias", [False, True])
def test_chunked_matches_plain(chunk_size, bias):
    hidden, weight, b, targets, upstream = _random_problem(chunk_size, bias)
    assert (targets != -100).sum() == 13  # chunks of 4 and 5 leave a remainder, 1024 > 13

    def run(fn):
        leaves = [t.clone().requires_grad_(True) for t in (hidden, weight)]
        leaves += [b.clone().requires_grad_(True)] if bias else []
        out = fn(*leaves)
        (out * upstream).sum().backward()
        return out.detach(), [leaf.grad for leaf in leaves]

    def plain(h, w, *bb):
        return token_logps(F.linear(h, w, bb[0] if bb else None), targets)

    def chunked(h, w, *bb):
        return token_logps_from_hidden(h, w, targets, chunk_size, bias=bb[0] if bb else None)

    out_p, grads_p = run(plain)
    out_c, grads_c = run(chunked)
    assert out_c.dtype == torch.float32
    assert (out_c[targets == -100] == 0).all()
    torch.testing.assert_close(out_c, out_p, rtol=0, atol=1e-5)
    for g_c, g_p in zip(grads_c, grads_p, strict=True):
        torch.testing.assert_close(g_c, g_p, rtol=0, atol=1e-5)


def test_chunked_frozen_weight_and_bf16():
    """A bf16 model's chunked log-probs are its own bf16 logits (upcast, then a float32
    log-softmax): equal to the full-logits path of the same model."""
    hidden, weight, _, targets, upstream = _random_problem(7, bias=False)
    h = hidden.to(torch.bfloat16).requires_grad_(True)
    w = weight.to(torch.bfloat16)  # frozen: no gradient asked for, none computed
    out = token_logps_from_hidden(h, w, targets, chunk_size=3)
    (out * upstream).sum().backward()
    assert out.dtype == torch.float32 and w.grad is None and h.grad.dtype == torch.bfloat16

    h_ref = h.detach().clone().requires_grad_(True)
    ref = token_logps(h_ref @ w.T, targets)  # the model's own bf16 logits, then float32
    (ref * upstream).sum().backward()
    torch.testing.assert_close(out, ref.detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(h.grad.float(), h_ref.grad.float(), rtol=2e-2, atol=2e-2)
    # One chunk for every position: the forward's softmax is reused, with the same result.
    h_one = h.detach().clone().requires_grad_(True)
    one = token_logps_from_hidden(h_one, w, targets, chunk_size=1024)
    (one * upstream).sum().backward()
    torch.testing.assert_close(one, out, rtol=0, atol=1e-6)
    torch.testing.assert_close(h_one.grad.float(), h.grad.float(), rtol=0, atol=1e-2)


def test_chunked_under_autocast_keeps_the_log_softmax_float32():
    """accelerate autocasts the whole forward on CUDA: the head matmul is then bf16, but the
    log-partition must still be summed in float32 (in bf16 it loses ~3 significant digits)."""
    hidden, weight, _, targets, _ = _random_problem(11, bias=False)
    hidden, weight = hidden * 4, weight * 4  # logits of tens, as a real head's
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = token_logps_from_hidden(hidden, weight, targets, chunk_size=1024)
    logits = F.linear(hidden.bfloat16(), weight.bfloat16())  # what autocast's matmul returns
    expected = token_logps(logits, targets)  # upcast, then a float32 log-softmax
    in_bf16 = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    scored = targets != -100
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[scored], expected[scored], rtol=0, atol=1e-4)
    assert (in_bf16.float() - expected)[scored].abs().max() > 1e-2  # what it would cost otherwise


def test_chunked_no_scored_positions():
    hidden = torch.randn(2, 3, 4, requires_grad=True)
    weight = torch.randn(5, 4, requires_grad=True)
    out = token_logps_from_hidden(hidden, weight, torch.full((2, 3), -100))
    out.sum().backward()
    assert (out == 0).all() and (hidden.grad == 0).all() and (weight.grad == 0).all()


def test_sequence_logps_hand_example():
    """Row 0 packs sequence 0 (positions 0-1) and sequence 2 (positions 2-3); row 1 holds
    sequence 1 (positions 0-2) and a pad (-1). Position (1, 0) is masked out (e.g. a prompt token).
    Sums: seq 0 = -1 - 2 = -3; seq 1 = -5 - 6 = -11; seq 2 = -3 - 4 = -7; seq 3 empty = 0.
    Counts: 2, 2, 2, 0.
    """
    tok = torch.tensor([[-1.0, -2.0, -3.0, -4.0], [-100.0, -5.0, -6.0, -9.0]])
    target_seq = torch.tensor([[0, 0, 2, 2], [1, 1, 1, -1]])
    mask = torch.tensor([[True, True, True, True], [False, True, True, True]])
    sums, counts = sequence_logps(tok, target_seq, mask, num_seqs=4)
    assert sums.tolist() == [-3.0, -11.0, -7.0, 0.0]
    assert counts.tolist() == [2, 2, 2, 0]
    assert (sums / counts.clamp(min=1)).tolist() == [-1.5, -5.5, -3.5, 0.0]


def test_pairs_in_step_makes_accumulation_exact():
    """4 pairs in one step == two micro-batches of 2 pairs, summed: loss and gradients.

    The caller normalises the NLL by the chosen tokens of the whole step; orpo_loss normalises
    L_OR by pairs_in_step. Without pairs_in_step the halves' sum would count L_OR twice.
    """
    gen = torch.Generator().manual_seed(2)
    chosen = -torch.rand(4, generator=gen, dtype=torch.float64) * 2 - 0.01
    rejected = -torch.rand(4, generator=gen, dtype=torch.float64) * 2 - 0.01
    nll_sums = torch.tensor([3.0, 5.0, 2.0, 7.0], dtype=torch.float64)  # per chosen response
    tokens = nll_sums.new_tensor([4.0, 6.0, 1.0, 9.0])  # its scored tokens; 20 in the step

    def step(parts: list[slice], pairs_in_step: int | None):
        c, r, n = (t.clone().requires_grad_(True) for t in (chosen, rejected, nll_sums))
        total = sum(
            orpo_loss(c[p], r[p], n[p].sum() / tokens.sum(), 0.5, pairs_in_step)[0] for p in parts
        )
        total.backward()
        return total.detach(), c.grad, r.grad, n.grad

    whole = step([slice(0, 4)], None)
    halves = step([slice(0, 2), slice(2, 4)], 4)
    for a, b in zip(whole, halves, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    wrong = step([slice(0, 2), slice(2, 4)], None)
    assert not torch.allclose(wrong[0], whole[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    """bf16/fp16 log-probs are upcast before the maths: the loss equals the float64 reference on the
    same (rounded) inputs to float32 accuracy, where half-precision arithmetic would be ~1e-2 off."""
    gen = torch.Generator().manual_seed(1)
    chosen = (-torch.rand(32, generator=gen) * 2 - 1e-3).to(
        dtype
    )  # some near 0, where log1mexp is hard
    rejected = (-torch.rand(32, generator=gen) * 2 - 1e-3).to(dtype)
    nll = torch.tensor(0.9, dtype=dtype)
    loss, m = orpo_loss(chosen, rejected, nll, beta=0.5)
    assert loss.dtype == torch.float32
    expected = _reference_loss(
        chosen.double().tolist(), rejected.double().tolist(), float(nll.double()), 0.5
    )
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    half_math = nll - 0.5 * F.logsigmoid(log_odds(chosen) - log_odds(rejected)).mean()
    assert abs(half_math.double().item() - expected) > 10 * abs(loss.item() - expected)


def test_accuracy_comes_from_the_log_probs_so_sft_has_one():
    """beta = 0 (the SFT baseline): TRL's reward-based accuracy would be 0 for every batch, since the
    rewards beta * logp are all 0. Here pair 1 prefers chosen (-0.5 > -1.0), pair 2 does not."""
    chosen = torch.tensor([-0.5, -2.0])
    rejected = torch.tensor([-1.0, -1.5])
    _, m = orpo_loss(chosen, rejected, torch.tensor(0.3), beta=0.0)
    assert m["rewards/accuracies"] == 0.5
    assert m["rewards/margins"] == 0.0  # TRL's margin is scaled by beta
    assert m["logps/margins"] == pytest.approx(0.0)  # (0.5 - 0.5) / 2
    _, m = orpo_loss(chosen, rejected, torch.tensor(0.3), beta=0.2)
    assert m["rewards/accuracies"] == 0.5  # the same as TRL's whenever beta > 0
    assert m["rewards/margins"] == pytest.approx(0.2 * m["logps/margins"], abs=1e-7)


# ---------------------------------------------------------------- the other objectives


def test_probability_ratio_objective_hand_derived():
    """P_w = 1/2, P_l = 1/4 (as above): L_PR = -log sigmoid(ln 2) = ln 1.5; with nll 1.2 and
    beta 0.1 the loss is 1.2 + 0.1 ln 1.5 = 1.2405465108108165. Its gradient has no 1/(1-P)
    factors: sigmoid(-ln 2) = 1/3, so dL/dlp_w = -0.1/3 and dL/dlp_l = +0.1/3, where ORPO's are
    -0.05 and +0.1/3 (the chosen side scaled by 1/(1-P_w) = 2, see test_hand_derived_pair)."""
    chosen = torch.tensor([LN(0.5)], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([LN(0.25)], dtype=torch.float64, requires_grad=True)
    nll = torch.tensor(1.2, dtype=torch.float64)
    loss, m = probability_ratio_loss(chosen, rejected, nll, beta=0.1)
    assert loss.item() == pytest.approx(1.2405465108108165, rel=1e-12)
    assert m["pr_loss"] == pytest.approx(LN(1.5), rel=1e-12)
    assert m["or_loss"] == pytest.approx(0.2876820724517809, rel=1e-12)  # the same pair's L_OR
    assert m["rewards/chosen"] == pytest.approx(0.1 * LN(0.5), rel=1e-12)
    loss.backward()
    assert chosen.grad.item() == pytest.approx(-0.1 / 3, rel=1e-12)
    assert rejected.grad.item() == pytest.approx(0.1 / 3, rel=1e-12)


def test_probability_ratio_objective_matches_float64_reference():
    """nll + beta * mean log(1 + P_l / P_w) in plain math; float32 inputs agree to 1e-6."""
    gen = torch.Generator().manual_seed(1)
    chosen = -torch.rand(16, generator=gen, dtype=torch.float64) * 3 - 0.05
    rejected = -torch.rand(16, generator=gen, dtype=torch.float64) * 3 - 0.05
    terms = [
        math.log1p(math.exp(r - c)) for c, r in zip(chosen.tolist(), rejected.tolist(), strict=True)
    ]
    expected = 0.7 + 0.25 * sum(terms) / 16
    nll = torch.tensor(0.7, dtype=torch.float64)
    loss, _ = probability_ratio_loss(chosen, rejected, nll, beta=0.25)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss32, _ = probability_ratio_loss(chosen.float(), rejected.float(), nll.float(), beta=0.25)
    assert loss32.dtype == torch.float32 and loss32.item() == pytest.approx(expected, rel=1e-6)


def test_sft_loss_is_the_nll_with_orpo_metrics_at_beta_zero():
    chosen = torch.tensor([LN(0.5), LN(0.25)], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([LN(0.25), LN(0.5)], dtype=torch.float64, requires_grad=True)
    nll = torch.tensor(1.3, dtype=torch.float64)
    loss, m = sft_loss(chosen, rejected, nll)
    assert loss.item() == 1.3 and m == orpo_loss(chosen, rejected, nll, beta=0.0)[1]
    loss.backward()  # the NLL reaches the model through `nll`; the pair terms carry no gradient
    assert chosen.grad.abs().sum().item() == 0.0 and rejected.grad.abs().sum().item() == 0.0
    assert m["rewards/accuracies"] == 0.5 and m["rewards/chosen"] == 0.0


def test_dpo_hand_derived():
    """Summed log-probs: policy -10 / -12, reference -11 / -11, beta 0.1. Rewards 0.1 * (+1) = 0.1
    and 0.1 * (-1) = -0.1, margin 0.2, loss log(1 + e^-0.2) = 0.5981388693815918; dL/dchosen =
    -beta sigmoid(-0.2) = -0.04501660026875222, dL/drejected the opposite; nothing reaches the
    reference."""
    chosen = torch.tensor([-10.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([-12.0], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-11.0], dtype=torch.float64)
    loss, m = dpo_loss(chosen, rejected, ref, ref, beta=0.1)
    assert loss.item() == pytest.approx(0.5981388693815918, rel=1e-12)
    assert m["dpo_loss"] == pytest.approx(0.5981388693815918, rel=1e-12)
    assert m["dpo_rewards/chosen"] == pytest.approx(0.1, rel=1e-12)
    assert m["dpo_rewards/rejected"] == pytest.approx(-0.1, rel=1e-12)
    assert m["dpo_rewards/margins"] == pytest.approx(0.2, rel=1e-12)
    assert m["dpo_rewards/accuracies"] == 1.0 and m["loss"] == loss.item()
    loss.backward()
    assert chosen.grad.item() == pytest.approx(-0.04501660026875222, rel=1e-12)
    assert rejected.grad.item() == pytest.approx(0.04501660026875222, rel=1e-12)


def _trl_dpo_formula(chosen, rejected, ref_chosen, ref_rejected, beta: float):
    """TRL 1.16's DPOTrainer._compute_loss with its defaults (loss_type "sigmoid",
    f_divergence_type "reverse_kl", label_smoothing 0, summed log-probs): the mean over pairs of
    -logsigmoid(beta * ((chosen - ref_chosen) - (rejected - ref_rejected))); its metrics
    rewards/chosen = mean beta * (chosen - ref_chosen), rewards/accuracies = mean(chosen reward >
    rejected reward), rewards/margins = mean(chosen reward - rejected reward)."""
    chosen_rewards, rejected_rewards = (
        beta * (chosen - ref_chosen),
        beta * (rejected - ref_rejected),
    )
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards).mean()
    return loss, {
        "dpo_rewards/chosen": chosen_rewards.mean().item(),
        "dpo_rewards/rejected": rejected_rewards.mean().item(),
        "dpo_rewards/accuracies": (chosen_rewards > rejected_rewards).double().mean().item(),
        "dpo_rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
    }


def test_dpo_matches_float64_reference_and_trl_formula():
    gen = torch.Generator().manual_seed(2)
    c, r, rc, rr = (-torch.rand(16, generator=gen, dtype=torch.float64) * 60 for _ in range(4))
    loss, m = dpo_loss(c, r, rc, rr, beta=0.1)
    margins = [
        0.1 * ((a - b) - (d - e))
        for a, b, d, e in zip(*(t.tolist() for t in (c, rc, r, rr)), strict=True)
    ]
    # -log sigmoid(x) = log(1 + e^-x)
    expected = sum(math.log1p(math.exp(-x)) for x in margins) / 16
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    trl_loss, trl_metrics = _trl_dpo_formula(c, r, rc, rr, 0.1)
    assert loss.item() == pytest.approx(trl_loss.item(), rel=1e-12)
    assert {k: m[k] for k in trl_metrics} == pytest.approx(trl_metrics, rel=1e-12)
    # The notebooks' prob_ratio_loss of beta times the log-ratios is the same loss (00_why_orpo).
    assert loss.item() == pytest.approx(prob_ratio_loss(0.1 * (c - rc), 0.1 * (r - rr)).item())
    loss32, _ = dpo_loss(c.float(), r.float(), rc.float(), rr.float(), beta=0.1)
    assert loss32.item() == pytest.approx(expected, rel=1e-5)


def test_dpo_at_its_reference_is_log_two_with_zero_margin():
    """Policy = reference (step 0 of a DPO run): every margin is 0 and the loss ln 2."""
    logps = torch.tensor([-20.0, -3.5, -140.0])
    loss, m = dpo_loss(logps, logps - 1, logps, logps - 1, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2.0), rel=1e-7) and m["dpo_loss"] == loss.item()
    assert m["dpo_rewards/margins"] == 0.0 and m["dpo_rewards/accuracies"] == 0.0


def test_dpo_pairs_in_step_makes_accumulation_exact():
    gen = torch.Generator().manual_seed(3)
    c, r, rc, rr = (-torch.rand(8, generator=gen, dtype=torch.float64) * 30 for _ in range(4))
    whole, _ = dpo_loss(c, r, rc, rr, beta=0.5)
    parts = [
        dpo_loss(c[s], r[s], rc[s], rr[s], 0.5, pairs_in_step=8)[0]
        for s in (slice(0, 3), slice(3, 8))
    ]
    assert sum(parts).item() == pytest.approx(whole.item(), rel=1e-12)


def test_every_objective_logs_the_shared_metrics_as_orpo_does():
    """The names runs overlay on hold the same numbers whatever the objective."""
    gen = torch.Generator().manual_seed(4)
    chosen = -torch.rand(6, generator=gen, dtype=torch.float64) * 2 - 0.1
    rejected = -torch.rand(6, generator=gen, dtype=torch.float64) * 2 - 0.1
    nll = torch.tensor(0.9, dtype=torch.float64)
    shared = preference_metrics(chosen, rejected, nll)
    assert set(shared) == {
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
        "logps/margins",
        "nll_loss",
        "log_odds_ratio",
        "log_odds_chosen",
        "or_loss",
    }
    for _, metrics in (
        orpo_loss(chosen, rejected, nll, 0.3),
        probability_ratio_loss(chosen, rejected, nll, 0.3),
        sft_loss(chosen, rejected, nll),
    ):
        assert {k: metrics[k] for k in shared} == shared
