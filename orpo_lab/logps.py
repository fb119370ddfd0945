"""A causal LM seen through the ORPO objective: one forward returns the mean log-probs of every pair.

`PairLogps` wraps the model (plain or peft) so that the batch contract of `orpo_lab.data` goes in and
(chosen means, rejected means, NLL sum, NLL token count) come out: the one module that DDP wraps, so
that a whole step is one forward.
"""

from __future__ import annotations

import torch

from orpo_lab.loss import sequence_logps, token_logps, token_logps_from_hidden


class PairLogps(torch.nn.Module):
    """Wraps a causal LM so one forward returns what the ORPO loss needs (and DDP sees the whole step)."""

    def __init__(self, model: torch.nn.Module, nll_scope: str, chunk_size: int):
        super().__init__()
        self.model, self.nll_scope, self.chunk_size = model, nll_scope, chunk_size

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
        if self.nll_scope == "response":
            # Prompt tokens are never needed: skip their lm_head work entirely.
            targets = targets.masked_fill(target_in_prompt, -100)
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        if attention_mask.dim() == 4:
            # Additive block masks must match the attention dtype (bf16 on GPU), with a finite minimum.
            dtype = base.get_input_embeddings().weight.dtype
            blocked = torch.finfo(dtype).min
            attention_mask = torch.where(attention_mask < 0, blocked, 0.0).to(dtype)
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
        head = base.get_output_embeddings()
        plain_head = getattr(base.config, "final_logit_softcapping", None) is None and not hasattr(
            base.config, "logit_scale"
        )
        if self.chunk_size and plain_head:
            # (R, T, H) hidden states; log-probs only at scored positions, never the (R, T, V) logits.
            hidden = base.get_decoder()(**inputs, use_cache=False).last_hidden_state
            tok = token_logps_from_hidden(hidden, head.weight, targets, self.chunk_size, head.bias)
        else:
            tok = token_logps(self.model(**inputs, use_cache=False).logits, targets)
        scored = targets != -100
        response = scored & ~target_in_prompt
        sums, counts = sequence_logps(tok, target_seq, response, 2 * num_pairs)
        means = sums / counts.clamp(min=1)  # (2B,) mean log-prob per response: the paper's P(y|x)
        nll_mask = scored & (target_seq < num_pairs) & (target_seq >= 0)  # chosen sequences only
        nll_sums, nll_counts = sequence_logps(tok, target_seq, nll_mask, 2 * num_pairs)
        return means[:num_pairs], means[num_pairs:], -nll_sums.sum(), nll_counts.sum()
