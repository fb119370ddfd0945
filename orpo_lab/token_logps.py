"""Per-token log-probs of the targets, and their per-sequence sums: the step from a causal LM's output
to the numbers `orpo_lab.loss` takes.

`token_logps` reads them off full logits; `token_logps_from_hidden` computes them from the decoder's
hidden states and the head's weight, chunk by chunk, never building the (R, T, V) logits (its own
backward recomputes each chunk); `sequence_logps` sums them per sequence for padded, packed or
prefix-shared rows alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

IGNORE_INDEX = -100  # targets value of positions that score nothing (the Hugging Face convention)


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Log-prob of each target token from full logits: (R, T, V), (R, T) -> (R, T) float32.

    No shifting: the collator already aligned targets so that position t's logits score
    targets[r, t]. Positions with target -100 get 0.
    """
    scored = targets != IGNORE_INDEX
    # float32 log-softmax: bf16 loses ~3 significant digits in the log-partition function.
    logps = torch.log_softmax(logits.float(), dim=-1)  # (R, T, V)
    picked = logps.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (R, T)
    return torch.where(scored, picked, torch.zeros_like(picked))


def _head_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype of the head matmul: the model's own (bf16 hidden and bf16 weight stay bf16, the
    matmul accumulating in float32, as the model's own lm_head), float32 when they differ."""
    return hidden.dtype if hidden.dtype == weight.dtype else torch.float32


class _ChunkedTokenLogps(torch.autograd.Function):
    """log softmax(h W^T + b)[target] over the scored positions, chunk by chunk.

    Forward keeps the log-partition per position (N,); when all positions fit in one chunk it also
    keeps their softmax (N, V) (at most the one chunk the forward held anyway), else backward
    recomputes each chunk's logits: peak memory is O(chunk_size * V), never O(R * T * V).
    The logits come from a matmul in `_head_dtype` (under an enclosing autocast, in its dtype);
    the log-softmax and everything after it are float32.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size):
        R, T, H = hidden.shape
        flat_targets = targets.reshape(-1)  # (R*T,)
        positions = (flat_targets != IGNORE_INDEX).nonzero().squeeze(1)  # (N,) scored ones
        h = hidden.reshape(-1, H).index_select(0, positions)  # (N, H), input dtype
        tgt = flat_targets.index_select(0, positions)  # (N,)
        dtype = _head_dtype(hidden, weight)
        w = weight.to(dtype)  # (V, H); no copy when already in it
        b = None if bias is None else bias.to(dtype)
        lse = torch.empty(positions.numel(), device=hidden.device, dtype=torch.float32)  # (N,)
        picked = torch.empty_like(lse)  # (N,)
        probs = None
        for start in range(0, positions.numel(), chunk_size):
            sl = slice(start, start + chunk_size)
            logits = F.linear(h[sl].to(dtype), w, b).float()  # (chunk, V) float32
            picked[sl] = logits.gather(1, tgt[sl].unsqueeze(1)).squeeze(1)
            # logsumexp in place: torch.logsumexp would allocate a second (chunk, V) buffer.
            top = logits.amax(dim=1, keepdim=True)  # (chunk, 1)
            total = logits.sub_(top).exp_().sum(dim=1)  # (chunk,); logits now holds exp(l - top)
            lse[sl] = total.log() + top.squeeze(1)
            if positions.numel() <= chunk_size:  # one chunk: keep its softmax for backward
                probs = logits.div_(total.unsqueeze(1))
            del logits  # free this chunk before the next one is allocated: one (chunk, V) at a time
        out = torch.zeros(R * T, device=hidden.device, dtype=torch.float32)
        out.index_copy_(0, positions, picked - lse)
        ctx.save_for_backward(h, weight, bias, tgt, positions, lse, probs)
        ctx.chunk_size = chunk_size
        ctx.hidden_shape = hidden.shape
        ctx.hidden_dtype = hidden.dtype
        return out.view(R, T)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        h, weight, bias, tgt, positions, lse, probs = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        g = (
            grad_out.reshape(-1).index_select(0, positions).float()
        )  # (N,) upstream grad per position
        dtype = _head_dtype(h, weight)
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        grad_h = torch.zeros(h.shape, device=h.device, dtype=dtype) if need_h else None
        grad_w = torch.zeros(w.shape, device=w.device, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros(w.shape[0], device=w.device, dtype=torch.float32) if need_b else None
        for start in range(0, positions.numel(), ctx.chunk_size):
            sl = slice(start, start + ctx.chunk_size)
            hc = h[sl].to(dtype)  # (chunk, H)
            gc = g[sl].unsqueeze(1)  # (chunk, 1)
            # d logp[target] / d logits = onehot(target) - softmax; scaled by the upstream grad.
            if probs is None:
                softmax = F.linear(hc, w, b).float().sub_(lse[sl].unsqueeze(1)).exp_()
                grad_logits = softmax.mul_(-gc)  # (chunk, V)
            else:
                grad_logits = probs.mul(-gc)  # the forward's softmax is left as it is
            grad_logits.scatter_add_(1, tgt[sl].unsqueeze(1), gc)
            if need_h:
                grad_h[sl] = grad_logits.to(dtype) @ w  # (chunk, H)
            if need_w:
                grad_w.addmm_(grad_logits.T, hc.float())  # (V, H)
            if need_b:
                grad_b += grad_logits.sum(0)
            del grad_logits
        grad_hidden = None
        if need_h:
            R, T, H = ctx.hidden_shape
            grad_hidden = torch.zeros(R * T, H, device=h.device, dtype=ctx.hidden_dtype)
            grad_hidden.index_copy_(0, positions, grad_h.to(ctx.hidden_dtype))
            grad_hidden = grad_hidden.view(R, T, H)
        grad_weight = grad_w.to(weight.dtype) if need_w else None
        grad_bias = grad_b.to(bias.dtype) if need_b else None
        return grad_hidden, grad_weight, grad_bias, None, None


def token_logps_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 1024,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """`token_logps(hidden @ weight.T + bias, targets)` without building the (R, T, V) logits.

    hidden (R, T, H) final hidden states (after the final norm), weight (V, H) the lm_head weight,
    targets (R, T) with -100 where nothing is scored -> (R, T) float32, 0 at unscored positions.
    Only scored positions are computed, `chunk_size` at a time. The logits are what the model's
    own lm_head computes (bf16 for a bf16 model, float32 for a float32 one; float32 when hidden
    and weight differ); the log-softmax is float32 whatever the input dtype (see
    `_ChunkedTokenLogps`). Gradients reach hidden, weight and bias when they require them (a
    frozen lm_head costs no weight-gradient work).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return _ChunkedTokenLogps.apply(hidden, weight, bias, targets, chunk_size)


def sequence_logps(
    tok_logps: torch.Tensor, target_seq: torch.Tensor, mask: torch.Tensor, num_seqs: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sums of token log-probs and token counts: -> (num_seqs,), (num_seqs,) long.

    tok_logps (R, T); target_seq (R, T) long, the sequence each position scores (-1 = none);
    mask (R, T) bool, the positions to include. Padded, packed and prefix-shared rows all reduce
    here; pair i's chosen is sequence i and its rejected is sequence B + i. The mean log-prob is
    `sums / counts.clamp(min=1)`.
    """
    keep = mask & (target_seq >= 0)  # (R, T)
    # Excluded positions go to an extra slot num_seqs, dropped below: no boolean indexing, so
    # no host sync on GPU.
    slot = torch.where(keep, target_seq, torch.full_like(target_seq, num_seqs)).reshape(-1)
    values = torch.where(keep, tok_logps, torch.zeros_like(tok_logps)).reshape(-1)
    sums = tok_logps.new_zeros(num_seqs + 1).index_add(0, slot, values)
    counts = torch.zeros(num_seqs + 1, dtype=torch.long, device=tok_logps.device)
    counts.index_add_(0, slot, keep.reshape(-1).long())
    return sums[:num_seqs], counts[:num_seqs]
