"""Generation for the chat tab and for evaluation: one base model, LoRA checkpoints as columns.

Several columns (the base model and one or more checkpoint adapters) answer at once in ONE batch:
peft's mixed-adapter inference routes each row through its own adapter (`adapter_names=[...]`,
"__base__" for the plain model), so memory holds one base model whatever the number of columns.
`generate_stream` yields the growing texts of every column; `generate` returns the final texts.
`orpo_lab.model_pool.ModelPool` keeps the base model and its adapters loaded between calls.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch
Message = dict  # {"role": "user" | "assistant" | "system", "content": str}


def content_text(content) -> str:
    """Plain text of a message content: a string, or Gradio 6's list of parts ({"type": "text", ...})."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        if "text" in content:
            return str(content["text"])
        return str(content.get("value") or content.get("content") or "")
    if isinstance(content, (list, tuple)):
        return "".join(content_text(part) for part in content)
    return str(content)


def normalize_messages(history: Sequence[dict] | None) -> list[Message]:
    """Messages as {"role", "content": str}, whatever shape Gradio (or a caller) handed over."""
    messages = []
    for message in history or []:
        role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
        content = (
            message.get("content") if isinstance(message, dict) else getattr(message, "content", "")
        )
        if role not in ("user", "assistant", "system"):
            continue
        messages.append({"role": role, "content": content_text(content)})
    return messages


def encode_chats(
    tokenizer, conversations: Sequence[Sequence[dict]]
) -> tuple[torch.Tensor, torch.Tensor]:
    # Left padding: every row's last prompt token sits in the last column, where generation starts.
    # The prompt is encoded exactly as in training (chat template, or plain text without one).
    from orpo_lab.data import encode_prompt

    rows = [encode_prompt(normalize_messages(messages), tokenizer) for messages in conversations]
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    return input_ids, attention_mask  # (B, T) each


class BatchStreamer(BaseStreamer):
    """Collects the new tokens of every row of a batch and hands snapshots of the texts to a queue."""

    def __init__(self, tokenizer, batch_size: int):
        self.tokenizer, self.eos_ids = tokenizer, {tokenizer.eos_token_id}
        self.ids: list[list[int]] = [[] for _ in range(batch_size)]
        self.done = [False] * batch_size
        self.queue: queue.Queue = queue.Queue()
        self.seen_prompt = False

    def texts(self) -> list[str]:
        # A multi-byte character split over two tokens decodes to U+FFFD until its second half comes.
        return [
            self.tokenizer.decode(ids, skip_special_tokens=True).rstrip("\ufffd")
            for ids in self.ids
        ]

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:  # the first call hands over the prompt, (B, T)
            self.seen_prompt = True
            return
        for i, token in enumerate(value.reshape(len(self.ids), -1)[:, -1].tolist()):
            if self.done[i]:
                continue  # finished rows keep receiving padding
            if token in self.eos_ids:
                self.done[i] = True
            else:
                self.ids[i].append(token)
        self.queue.put(self.texts())

    def end(self) -> None:
        self.queue.put(None)


class _StopOn(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


def generate_kwargs(model, tokenizer, temperature, top_p, max_new_tokens, seed=None) -> dict:
    """model.generate's settings: greedy at temperature 0, else sampling; every end-of-turn id stops."""
    eos = {tokenizer.eos_token_id} | set(_as_list(model.generation_config.eos_token_id))
    kwargs = dict(
        max_new_tokens=int(max_new_tokens),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=sorted(i for i in eos if i is not None),
    )
    if temperature and temperature > 0:
        kwargs.update(do_sample=True, temperature=float(temperature), top_p=float(top_p), top_k=0)
    else:  # greedy; silence the sampling defaults a generation_config may carry
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kwargs


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def stream_worker(run, streamer: BatchStreamer) -> Iterator[list[str]]:
    # `run(stopping_criteria)` calls model.generate in a worker thread; this generator relays the
    # snapshots. Closing it (a client that went away) stops the generation at the next token.
    stop = threading.Event()
    errors: list[BaseException] = []

    def work():
        try:
            run(StoppingCriteriaList([_StopOn(stop)]))
        except BaseException as err:  # handed to the consumer, raised there
            errors.append(err)
        finally:
            streamer.end()

    thread = threading.Thread(target=work, daemon=True, name="orpo-lab-generate")
    thread.start()
    try:
        while (texts := streamer.queue.get()) is not None:
            yield texts
        thread.join()
        if errors:
            raise errors[0]
    finally:
        stop.set()
        thread.join()


def run_generate(model, tokenizer, conversations, adapter_names, streamer, stopping, settings):
    """One model.generate call over the conversations, streaming into `streamer` (model_pool's
    mixed batches pass each row's adapter in `adapter_names`)."""
    input_ids, attention_mask = encode_chats(tokenizer, conversations)
    kwargs = generate_kwargs(model, tokenizer, **settings)
    streamer.eos_ids = set(kwargs["eos_token_id"])
    if adapter_names is not None:
        kwargs["adapter_names"] = list(adapter_names)
    if settings.get("seed") is not None:
        torch.manual_seed(int(settings["seed"]))
    with torch.inference_mode():
        model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=attention_mask.to(model.device),
            streamer=streamer,
            stopping_criteria=stopping,
            **kwargs,
        )


def generate_stream(
    model,
    tokenizer,
    conversations: Sequence[Sequence[dict]],
    adapter_names: Sequence[str] | None = None,
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = 0,
) -> Iterator[list[str]]:
    """Yield the growing answers (one text per conversation) as tokens arrive, all rows in one batch.

    `adapter_names[i]` picks the LoRA adapter for row i ("__base__": none); it needs a PeftModel.
    Greedy when temperature == 0. Closing the generator stops the generation at its next token.
    """
    if not conversations:
        return
    settings = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    streamer = BatchStreamer(tokenizer, len(conversations))
    yield from stream_worker(
        lambda stopping: run_generate(
            model, tokenizer, conversations, adapter_names, streamer, stopping, settings
        ),
        streamer,
    )


def generate(
    model,
    tokenizer,
    conversations: Sequence[Sequence[dict]],
    max_new_tokens: int = 128,
    adapter_names: Sequence[str] | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = 0,
) -> list[str]:
    """The final answers of `generate_stream`: one string per conversation."""
    stream = generate_stream(
        model, tokenizer, conversations, adapter_names, max_new_tokens, temperature, top_p, seed
    )
    return last_batch(stream, [""] * len(conversations))


def last_batch(iterator: Iterator[list[str]], default: list[str]) -> list[str]:
    """The last snapshot a stream yields (the finished answers), or `default` for an empty one."""
    for default in iterator:  # noqa: B007 - keep the last snapshot
        pass
    return default
