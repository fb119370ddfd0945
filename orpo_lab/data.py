"""Preference pairs -> token ids: prompt rendering (chat template or plain text) and tokenisation.

Loading and validating files lives in `orpo_lab/preferences.py` (the layout rules), `sources.py` and
`splits.py` (held-out pairs); this module imports nothing from them (preferences uses
`encode_prompt` from here to check prompt budgets), so there is no import cycle.

Prompts are rendered in one place, `render_prompt`, for training and for chat alike: through the
tokenizer's chat template when it has one; without one (a plain base model such as GPT-2) a prompt
that is a single user turn is plain text and the pair is trained as TRL trains standard data:
prompt, then response, then EOS. Anything else (a system message, several turns) needs a template:
`set_chat_template` ('chatml' or a .jinja file; TrainConfig.chat_template).

The collators that turn tokenised pairs into batches: `orpo_lab/collate.py`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

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
