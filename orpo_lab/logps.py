"""A causal LM seen through the ORPO objective: one forward returns the mean log-probs of every pair.

`PairLogps` wraps the model (plain or peft) so that the batch contract of `orpo_lab.data` goes in and
(chosen means, rejected means, NLL sum, NLL token count) come out: the one module that DDP wraps, so
that a whole step is one forward.

The fast path computes log-probs from the decoder's hidden states and the lm_head weight, chunk by
chunk, never building the (R, T, V) logits. That equals the model's own logits only when its head is
a plain linear layer: Gemma-2 soft-caps its logits, Granite divides them, Cohere scales them, and the
next architecture may do something else. So nothing is assumed: `check_fast_logps` compares both on
a real batch, and `PairLogps.verify` switches to the model's own logits when they differ, saying why.
A PairLogps that was never verified verifies itself on its first forward.

Mixed precision on CPU: a bf16 frozen base with float32 LoRA weights runs its decoder under bf16
autocast (`decoder_autocast`), with peft's cast of every LoRA input to float32 switched off, so the
adapters compute in bf16 from float32 master weights, as on a GPU. The head stays outside it and
multiplies in bf16, as the model's own head would; the log-softmax, log-probs and loss are float32.
On CUDA, accelerate's autocast wraps the whole forward.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from orpo_lab.token_logps import sequence_logps, token_logps, token_logps_from_hidden


def base_model(model):
    """The transformers model under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _inputs(model, input_ids, attention_mask, position_ids) -> dict:
    if attention_mask.dim() == 4:
        # Additive block masks must match the attention dtype (bf16 on GPU), with a finite minimum.
        dtype = base_model(model).get_input_embeddings().weight.dtype
        blocked = torch.finfo(dtype).min
        attention_mask = torch.where(attention_mask < 0, blocked, 0.0).to(dtype)
    return dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)


def decoder_autocast(model) -> torch.dtype | None:
    """bf16 when `model` is a bf16 frozen base on CPU with float32 trainable (LoRA) weights, else None.

    Measured on an AMX CPU (BENCHMARKS.md): the LoRA step under bf16 autocast, adapters in bf16
    from float32 master weights, is faster than peft's default of casting every adapter input to
    float32. On CUDA accelerate autocasts the whole forward; a float32 model needs nothing.
    """
    base = base_model(model)
    frozen = base.get_input_embeddings().weight
    trained = {p.dtype for p in model.parameters() if p.requires_grad}
    if frozen.device.type == "cpu" and frozen.dtype == torch.bfloat16 and torch.float32 in trained:
        return torch.bfloat16
    return None


def _autocast(model, dtype: torch.dtype | None):
    if dtype is None:
        return nullcontext()
    return torch.autocast(base_model(model).get_input_embeddings().weight.device.type, dtype=dtype)


def _fast_token_logps(model, inputs: dict, targets, chunk_size: int, autocast=None) -> torch.Tensor:
    """(R, T) log-probs from the decoder's (R, T, H) hidden states; the (R, T, V) logits never exist."""
    base = base_model(model)
    with _autocast(model, autocast):
        hidden = base.get_decoder()(**inputs, use_cache=False).last_hidden_state
    head = base.get_output_embeddings()
    return token_logps_from_hidden(hidden, head.weight, targets, chunk_size, head.bias)


def _report(ok, diff, tolerance, tokens: int, reason: str) -> dict:
    return {
        "fast_path_ok": ok,
        "max_abs_diff": diff,
        "tolerance": tolerance,
        "tokens": tokens,
        "reason": reason,
    }


@torch.no_grad()
def check_fast_logps(model, batch: dict, chunk_size: int, autocast=None) -> dict:
    """Compare the fast path's token log-probs with the model's own forward on one batch.

    Returns {"fast_path_ok", "max_abs_diff", "tolerance", "tokens", "reason"}. The tolerance is
    what rounding alone explains: 1e-3 plus eps * max |logit| (eps of the logits' dtype). Rounding
    moves each logit by at most eps/2 * max |logit|, so the target logit and the log-sum-exp each
    by that much (both paths multiply in the model's dtype, summing in different orders). A head
    that transforms its logits (soft-capping, scaling) differs by far more on real weights. Runs
    in eval mode (no dropout: no random numbers are drawn) and restores the mode. `autocast`: see
    `decoder_autocast`; the model's own forward then runs under it too (its logits are bf16,
    which the tolerance covers).
    """
    scored = batch["targets"] != -100  # (R, T)
    tokens = int(scored.sum())
    if not tokens:
        return _report(None, None, None, 0, "the batch scores no token: nothing to compare")
    training = model.training
    model.eval()
    try:
        inputs = _inputs(model, batch["input_ids"], batch["attention_mask"], batch["position_ids"])
        with _autocast(model, autocast):
            logits = model(**inputs, use_cache=False).logits  # (R, T, V) from the model's own head
        reference = token_logps(logits, batch["targets"])
        tolerance = 1e-3 + torch.finfo(logits.dtype).eps * logits[scored].abs().max().item()
        del logits
        try:
            fast = _fast_token_logps(model, inputs, batch["targets"], chunk_size, autocast)
        except Exception as err:  # noqa: BLE001 - any failure means: use the model's own logits
            reason = (
                f"the decoder and lm_head could not be used alone ({type(err).__name__}: {err})"
            )
            return _report(False, None, tolerance, tokens, reason)
    finally:
        model.train(training)
    diff = (fast - reference)[scored].abs().max().item()
    if diff <= tolerance:
        reason = f"hidden @ lm_head.T matches the model's logits (max |diff| {diff:.2e} <= {tolerance:.2e})"
        return _report(True, diff, tolerance, tokens, reason)
    reason = (
        f"hidden @ lm_head.T differs from the model's logits by up to {diff:.3g} (tolerance "
        f"{tolerance:.2e}): its head transforms the logits (e.g. soft-capping or scaling)"
    )
    return _report(False, diff, tolerance, tokens, reason)


def check_sample(pair: dict, tokens: int = 48) -> dict:
    """A real pair cut to `tokens` tokens per part: what `check_fast_logps` runs on before training.

    Whether a head transforms its logits does not depend on the length, while the model's full
    logits of a whole batch at max_length 1,024 cost seconds and hundreds of MB (vocab x tokens).
    """
    return {
        "prompt_ids": pair["prompt_ids"][-tokens:],
        "chosen_ids": pair["chosen_ids"][:tokens],
        "rejected_ids": pair["rejected_ids"][:tokens],
    }


class PairLogps(torch.nn.Module):
    """Wraps a causal LM so one forward returns what the ORPO loss needs (and DDP sees the whole step)."""

    def __init__(self, model: torch.nn.Module, nll_scope: str, chunk_size: int | None):
        super().__init__()
        self.model, self.nll_scope, self.chunk_size = model, nll_scope, chunk_size
        self.check: dict | None = None  # the last `verify` report
        self.autocast = decoder_autocast(model)
        if self.autocast is not None:
            from peft.tuners.tuners_utils import BaseTunerLayer

            # Under autocast peft's cast of each LoRA input to float32 only adds copies: off
            # (the switch that peft.helpers.disable_input_dtype_casting sets).
            for module in model.modules():
                if isinstance(module, BaseTunerLayer):
                    module.cast_input_dtype_enabled = False

    def verify(self, batch: dict) -> dict:
        """Check the fast path on `batch` (see `check_fast_logps`); on a mismatch use full logits.

        Returns the report plus "logps_path": "chunked" or "full_logits", for the run log.
        """
        if not self.chunk_size:
            self.check = {
                "logps_path": "full_logits",
                "reason": "logps_chunk_size=None asks for it",
            }
            return self.check
        device = next(self.model.parameters()).device
        on_device = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        report = check_fast_logps(self.model, on_device, self.chunk_size, self.autocast)
        if report["fast_path_ok"] is None:  # nothing scored: check again on the next batch
            return {**report, "logps_path": "chunked"}
        if not report["fast_path_ok"]:
            self.chunk_size = None
        self.check = {**report, "logps_path": "chunked" if self.chunk_size else "full_logits"}
        return self.check

    def forward(
        self,
        input_ids,
        attention_mask,
        position_ids,
        targets,
        target_seq,
        target_in_prompt,
        num_pairs,
    ):
        if self.chunk_size and self.check is None:
            self.verify(
                dict(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    targets=targets,
                )
            )
        if self.nll_scope == "response":
            # Prompt tokens are never needed: skip their lm_head work entirely.
            targets = targets.masked_fill(target_in_prompt, -100)
        inputs = _inputs(self.model, input_ids, attention_mask, position_ids)
        if self.chunk_size:
            tok = _fast_token_logps(self.model, inputs, targets, self.chunk_size, self.autocast)
        else:
            with _autocast(self.model, self.autocast):
                logits = self.model(**inputs, use_cache=False).logits
            tok = token_logps(logits, targets)
        scored = targets != -100
        response = scored & ~target_in_prompt
        sums, counts = sequence_logps(tok, target_seq, response, 2 * num_pairs)
        means = sums / counts.clamp(min=1)  # (2B,) mean log-prob per response: the paper's P(y|x)
        nll_mask = scored & (target_seq < num_pairs) & (target_seq >= 0)  # chosen sequences only
        nll_sums, nll_counts = sequence_logps(tok, target_seq, nll_mask, 2 * num_pairs)
        return means[:num_pairs], means[num_pairs:], -nll_sums.sum(), nll_counts.sum()
