"""Preference pairs -> token ids -> batches: prompt rendering, tokenisation, and three collators.

Loading and validating files lives in `orpo_lab/preferences.py` (the layout rules), `sources.py` and
`splits.py` (held-out pairs); this module imports nothing from them (preferences uses
`encode_prompt` from here to check prompt budgets), so there is no import cycle.

Prompts are rendered in one place, `render_prompt`, for training and for chat alike: through the
tokenizer's chat template when it has one; without one (a plain base model such as GPT-2) a prompt
that is a single user turn is plain text and the pair is trained as TRL trains standard data:
prompt, then response, then EOS. Anything else (a system message, several turns) needs a template:
`set_chat_template` ('chatml' or a .jinja file; TrainConfig.chat_template).

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

import itertools
from collections.abc import Iterable
from pathlib import Path

import torch

IGNORE = -100
MIN_RESPONSE_TOKENS = 4  # truncation keeps at least this many response tokens, then the end-of-turn
_SENTINEL = "ORPO_LAB_SENTINEL_REPLY"
# Named templates for models without one (`set_chat_template`); any other template: a .jinja file.
CHAT_TEMPLATES = {
    "chatml": (
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
        " + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
}


class ChatTemplateError(ValueError):
    """A conversation that a tokenizer without a chat template cannot render; says what to do."""


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def set_chat_template(tokenizer, template: str) -> None:
    """Give the tokenizer a chat template: "" keeps its own, a name of CHAT_TEMPLATES, or a .jinja file."""
    if not template:
        return
    if template in CHAT_TEMPLATES:
        text = CHAT_TEMPLATES[template]
    elif Path(template).expanduser().is_file():
        text = Path(template).expanduser().read_text(encoding="utf-8")
    else:
        raise ValueError(
            f"chat_template {template!r} is neither a known name ({', '.join(CHAT_TEMPLATES)}) nor "
            "an existing template file (Jinja, as in a tokenizer's chat_template.jinja)."
        )
    if tokenizer.chat_template != text:
        tokenizer.chat_template = text
        tokenizer._orpo_lab_eot = None  # the end-of-turn token follows the template


def end_of_turn_id(tokenizer) -> int:
    """The token the chat template writes right after an assistant message (ChatML: <|im_end|>).

    Derived by rendering a conversation with a sentinel reply, not hard-coded; falls back to EOS
    when the template writes no special token after the reply, or when there is no template.
    """
    cached = getattr(tokenizer, "_orpo_lab_eot", None)
    if cached is not None:
        return cached
    if not has_chat_template(tokenizer):
        if tokenizer.eos_token_id is None:
            raise ChatTemplateError(
                "The tokenizer has neither a chat template nor an EOS token, so a response has no "
                "end: set chat_template, or use a tokenizer with an EOS token."
            )
        return tokenizer.eos_token_id
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _SENTINEL}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    suffix = text[text.index(_SENTINEL) + len(_SENTINEL) :]
    special = set(tokenizer.all_special_ids)
    eot = next(
        (i for i in tokenizer(suffix, add_special_tokens=False).input_ids if i in special),
        tokenizer.eos_token_id,
    )
    tokenizer._orpo_lab_eot = eot
    return eot


def render_prompt(messages: list[dict], tokenizer) -> str:
    """The text a reply follows: the chat template with the assistant header, or plain text.

    Without a chat template only a single user turn has a plain-text form (standard-format data).
    """
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    roles = [m["role"] for m in messages]
    raise ChatTemplateError(
        f"This model's tokenizer has no chat template, so a prompt can only be plain text (one user "
        f"turn); this one has the roles {roles}. Either give it a template (TrainConfig "
        f"chat_template / --chat-template: a .jinja file or {', '.join(map(repr, CHAT_TEMPLATES))}), "
        "or use standard-format data (prompt/chosen/rejected strings, no system column)."
    )


def encode_prompt(messages: list[dict], tokenizer) -> list[int]:
    """`render_prompt` as token ids: the one prompt encoding of training and chat."""
    text = render_prompt(messages, tokenizer)
    # A rendered template already holds any BOS it wants: add no second one. Plain text gets the
    # special tokens the tokenizer adds to any text (a Llama base model's BOS; GPT-2: none).
    return tokenizer(text, add_special_tokens=not has_chat_template(tokenizer)).input_ids


def encode_response(text: str, tokenizer) -> list[int]:
    """A reply's ids followed by exactly one end-of-turn token."""
    ids = tokenizer(_response_text(text, tokenizer), add_special_tokens=False).input_ids
    return _with_end(ids, end_of_turn_id(tokenizer))


def _response_text(text: str, tokenizer) -> str:
    """A reply without the end-of-turn text it may already carry."""
    eot_text = tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer))
    while eot_text and text.endswith(eot_text):
        text = text[: -len(eot_text)]
    return text


def _with_end(ids: list[int], eot: int) -> list[int]:
    ids = list(ids)
    while ids and ids[-1] == eot:
        ids.pop()
    return ids + [eot]


def _as_messages(prompt) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def tokenize_pair(
    example: dict, tokenizer, max_length: int = 512, max_prompt_length: int = 256
) -> dict:
    """Token ids of one pair: {"prompt_ids", "chosen_ids", "rejected_ids", "truncated", "cut"}.

    "cut": the tokens cut from each part ({"prompt": n, "chosen": n, "rejected": n}).

    Budgets: prompt <= max_prompt_length and prompt + longer response <= max_length.
    The prompt keeps its END (the last user turn and the assistant header, which the reply is
    conditioned on; the system prompt at the start matters least). Responses keep their START, and
    at least MIN_RESPONSE_TOKENS tokens plus the end-of-turn: never empty.
    """
    prompt = encode_prompt(_as_messages(example["prompt"]), tokenizer)
    chosen = encode_response(example["chosen"], tokenizer)
    rejected = encode_response(example["rejected"], tokenizer)
    return fit_pair(
        prompt, chosen, rejected, end_of_turn_id(tokenizer), max_length, max_prompt_length
    )


def tokenize_pairs(
    batch: dict, tokenizer, max_length: int = 512, max_prompt_length: int = 256
) -> list[dict]:
    """`tokenize_pair` of every pair of a column batch ({"prompt": [...], "chosen": [...], ...}).

    The same ids, encoded in three calls of the tokenizer's backend (its threads share the work)
    rather than three per pair; a tokenizer without a backend goes pair by pair.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    rows = list(zip(batch["prompt"], batch["chosen"], batch["rejected"], strict=True))
    if backend is None:
        pairs = ({"prompt": p, "chosen": c, "rejected": r} for p, c, r in rows)
        return [tokenize_pair(pair, tokenizer, max_length, max_prompt_length) for pair in pairs]
    eot = end_of_turn_id(tokenizer)
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    texts = [render_prompt(_as_messages(p), tokenizer) for p, _, _ in rows]
    prompts = encode(texts, add_special_tokens=not has_chat_template(tokenizer))
    replies = [_response_text(text, tokenizer) for _, c, r in rows for text in (c, r)]
    replies = [_with_end(e.ids, eot) for e in encode(replies, add_special_tokens=False)]
    return [
        fit_pair(p.ids, replies[2 * i], replies[2 * i + 1], eot, max_length, max_prompt_length)
        for i, p in enumerate(prompts)
    ]


def fit_pair(
    prompt: list[int],
    chosen: list[int],
    rejected: list[int],
    eot: int,
    max_length: int,
    max_prompt_length: int,
) -> dict:
    """A pair's encoded parts cut to the budgets (see `tokenize_pair`)."""
    floor = MIN_RESPONSE_TOKENS + 1
    if max_length < floor + 1:
        raise ValueError(f"max_length={max_length} is too small: it must be at least {floor + 1}.")
    prompt_budget = min(max_prompt_length, max_length - min(floor, max(len(chosen), len(rejected))))
    prompt_budget = max(prompt_budget, 1)
    truncated = len(prompt) > prompt_budget
    full_prompt, prompt = prompt, prompt[-prompt_budget:]
    budget = max_length - len(prompt)

    def cut(ids: list[int]) -> list[int]:
        return ids if len(ids) <= budget else ids[: budget - 1] + [eot]

    kept = {"prompt": prompt, "chosen": cut(chosen), "rejected": cut(rejected)}
    full = {"prompt": full_prompt, "chosen": chosen, "rejected": rejected}
    truncated = truncated or max(len(chosen), len(rejected)) > budget
    return {
        "prompt_ids": kept["prompt"],
        "chosen_ids": kept["chosen"],
        "rejected_ids": kept["rejected"],
        "truncated": truncated,
        "cut": {part: len(full[part]) - len(kept[part]) for part in kept},  # tokens cut from each
    }


def tokenize_dataset(
    ds: Iterable[dict], tokenizer, max_length: int = 512, max_prompt_length: int = 256
):
    """Tokenise every pair; returns (list of tokenized pairs, {"pairs", "truncated"})."""
    pairs = []
    for i, ex in enumerate(ds):
        try:
            pairs.append(tokenize_pair(ex, tokenizer, max_length, max_prompt_length))
        except ChatTemplateError as err:
            raise ChatTemplateError(f"pair {i}: {err}") from None
    return pairs, {"pairs": len(pairs), "truncated": sum(p["truncated"] for p in pairs)}


def preview_pairs(
    pairs: Iterable[dict],
    tokenizer,
    n: int = 3,
    max_length: int = 512,
    max_prompt_length: int = 256,
) -> list[dict]:
    """The first `n` pairs exactly as trained: which tokens are prompt and which are response.

    Per pair: {"prompt", "chosen", "rejected"} the decoded text of each part (the response ones end
    with the end-of-turn token that is scored), {"prompt_tokens", ...} one string per token, and
    "truncated". For the app's dataset preview: a wrong split shows before any training.
    """
    out = []
    for pair in itertools.islice(pairs, n):
        ids = tokenize_pair(pair, tokenizer, max_length, max_prompt_length)
        row = {"truncated": ids["truncated"]}
        for part in ("prompt", "chosen", "rejected"):
            row[part] = tokenizer.decode(ids[f"{part}_ids"])
            row[f"{part}_tokens"] = [tokenizer.decode([i]) for i in ids[f"{part}_ids"]]
        out.append(row)
    return out


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
