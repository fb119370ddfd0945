"""Tokenised pairs -> batches: three collators ("padded", "packed", "prefix"), one batch contract.

The batch contract (identical for the "padded", "packed" and "prefix" layouts):
  input_ids        (R, T) long
  position_ids     (R, T) long   positions restart at 0 for every sequence
  attention_mask   "padded": (R, T) long 0/1 padding mask;
                   "packed"/"prefix": (R, 1, T, T) float32 additive mask (0 = may attend, a large
                   negative number = may not). transformers passes any 4D mask through untouched
                   (`masking_utils._preprocess_mask_arguments`); Llama's eager attention *adds* the
                   mask to the scores, so a boolean mask would be silently wrong there, while the
                   additive float mask is right for eager and sdpa alike.
  targets          (R, T) long   the token that the logits at p score (already shifted), -100 elsewhere
  target_seq       (R, T) long   pair i's chosen = i, pair i's rejected = B + i, -1 where not scored
  target_in_prompt (R, T) bool   the scored token is a prompt token (only ever in chosen sequences)
  num_pairs        int B
Masks are built from positions, never from token values: pad == eos for SmolLM2, and the final
end-of-turn token of every response must be scored.
"""

from __future__ import annotations

import torch

IGNORE = -100  # targets value of positions that score nothing


def _sequence_rows(pair: dict, seq: int, chosen: bool) -> dict:
    """One full sequence (prompt + response) with its shifted targets, as plain lists."""
    prompt = pair["prompt_ids"]
    response = pair["chosen_ids"] if chosen else pair["rejected_ids"]
    ids = prompt + response
    n = len(ids)
    targets, seqs, in_prompt = [IGNORE] * n, [-1] * n, [False] * n
    for p in range(n - 1):  # position p scores token p + 1
        is_prompt = p + 1 < len(prompt)
        if is_prompt and not chosen:
            continue  # rejected prompts feed no loss term
        targets[p], seqs[p], in_prompt[p] = ids[p + 1], seq, is_prompt
    return {
        "ids": ids,
        "pos": list(range(n)),
        "targets": targets,
        "seq": seqs,
        "in_prompt": in_prompt,
    }


def _tensors(rows: list[dict], pad_id: int) -> dict:
    width = max(len(r["ids"]) for r in rows)

    def stack(key, fill, dtype):
        return torch.tensor([r[key] + [fill] * (width - len(r[key])) for r in rows], dtype=dtype)

    return {
        "input_ids": stack("ids", pad_id, torch.long),
        "position_ids": torch.tensor(
            [r["pos"] + list(range(len(r["pos"]), width)) for r in rows], dtype=torch.long
        ),
        "targets": stack("targets", IGNORE, torch.long),
        "target_seq": stack("seq", -1, torch.long),
        "target_in_prompt": stack("in_prompt", False, torch.bool),
    }


def collate_padded(pairs: list[dict], pad_id: int) -> dict:
    """R = 2B rows (chosen rows, then rejected rows), right-padded; 2D padding mask."""
    b = len(pairs)
    rows = [_sequence_rows(p, i, True) for i, p in enumerate(pairs)]
    rows += [_sequence_rows(p, b + i, False) for i, p in enumerate(pairs)]
    batch = _tensors(rows, pad_id)
    lengths = torch.tensor([len(r["ids"]) for r in rows])
    batch["attention_mask"] = (torch.arange(batch["input_ids"].shape[1]) < lengths[:, None]).long()
    batch["num_pairs"] = b
    return batch


def _block_mask(segment: list[int], branch: list[int], width: int) -> torch.Tensor:
    """(1, 1, W, W) additive mask: causal, within a segment, and a branch sees only itself and branch 0.

    Positions past len(segment) are padding: each attends to itself only, so no softmax row is empty.
    """
    seg, br = torch.tensor(segment), torch.tensor(branch)
    t = len(segment)
    allowed = torch.eye(width, dtype=torch.bool)
    real = torch.ones(t, t, dtype=torch.bool).tril()
    real &= seg[:, None] == seg[None, :]
    real &= (br[None, :] == 0) | (br[None, :] == br[:, None])
    allowed[:t, :t] = real
    return torch.zeros(width, width).masked_fill(~allowed, torch.finfo(torch.float32).min)[
        None, None
    ]


def _block_rows(rows: list[list[tuple[dict, int, int]]], pad_id: int) -> dict:
    """Each row: (part, segment, branch) pieces concatenated; rows right-padded, one block mask each."""
    flat, masks_of = [], []
    for parts in rows:
        row = {k: [] for k in ("ids", "pos", "targets", "seq", "in_prompt")}
        segment, branch = [], []
        for part, seg, br in parts:
            for k in row:
                row[k] += part[k]
            segment += [seg] * len(part["ids"])
            branch += [br] * len(part["ids"])
        flat.append(row)
        masks_of.append((segment, branch))
    batch = _tensors(flat, pad_id)
    width = batch["input_ids"].shape[1]
    batch["attention_mask"] = torch.cat([_block_mask(s, b, width) for s, b in masks_of])
    return batch


def collate_packed(pairs: list[dict]) -> dict:
    """Padding-free: all 2B sequences in one row (R = 1), block-diagonal causal attention."""
    b = len(pairs)
    seqs = [_sequence_rows(p, i, True) for i, p in enumerate(pairs)]
    seqs += [_sequence_rows(p, b + i, False) for i, p in enumerate(pairs)]
    batch = _block_rows([[(s, k, 0) for k, s in enumerate(seqs)]], pad_id=0)  # nothing padded
    batch["num_pairs"] = b
    return batch


def collate_prefix(pairs: list[dict], pad_id: int = 0) -> dict:
    """Prefix sharing: one row per pair, [prompt[:-1], p_last, chosen..., p_last, rejected...].

    The last prompt token is repeated at the head of each branch with the same position id: its
    output scores the first response token, and it must see only its own branch. Each branch
    attends to prompt[:-1] and to itself, never to the other branch, so the prompt is computed once.
    One row per pair (R = B, right-padded) keeps attention cost per pair, not per batch.
    """
    b = len(pairs)
    rows = []
    for i, pair in enumerate(pairs):
        full_c, full_r = _sequence_rows(pair, i, True), _sequence_rows(pair, b + i, False)
        k = len(pair["prompt_ids"]) - 1  # shared head: prompt[:-1]
        head = {key: value[:k] for key, value in full_c.items()}  # chosen row scores the prompt
        rows.append(
            [
                (head, i, 0),
                ({key: value[k:] for key, value in full_c.items()}, i, 1),
                ({key: value[k:] for key, value in full_r.items()}, i, 2),
            ]
        )
    batch = _block_rows(rows, pad_id)
    batch["num_pairs"] = b
    return batch


def collate(pairs: list[dict], layout: str = "padded", pad_id: int = 0) -> dict:
    """Dispatch to collate_padded / collate_packed / collate_prefix by `layout`."""
    if layout == "padded":
        return collate_padded(pairs, pad_id)
    if layout == "packed":
        return collate_packed(pairs)
    if layout == "prefix":
        return collate_prefix(pairs, pad_id)
    raise ValueError(f"layout must be 'padded', 'packed' or 'prefix'; got {layout!r}.")
