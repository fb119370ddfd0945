"""The model pool: one base model in memory, LoRA checkpoints loaded on top of it as adapters, for
the chat tab, the token view and the notebooks; it answers through `orpo_lab.chat`'s generation.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

from orpo_lab.chat import BASE, BatchStreamer, last_batch, run_generate, stream_worker
from orpo_lab.model import ModelLoadError, attach_adapter, load_model


def _stamp(path: Path) -> tuple[str, float]:
    weights = path / "adapter_model.safetensors"
    return str(path.resolve()), weights.stat().st_mtime if weights.exists() else 0.0


def adapter_label(path: str | Path) -> str:
    """A readable, unique-per-checkpoint adapter name: "run/step-000050" (peft names avoid dots)."""
    path = Path(path).resolve()
    run = path.parent.parent.name if path.parent.name == "checkpoints" else path.parent.name
    return f"{run}/{path.name}".replace(".", "_")


class ModelPool:
    """One base model in memory plus LoRA checkpoints loaded on top of it; thread-safe.

    Every public method takes the pool's lock, so a generation never sees an adapter half-loaded and
    two generations never interleave (peft's per-batch adapter routing uses hooks on shared modules).
    At most `max_adapters` adapters stay loaded; the least recently used one is dropped first.
    """

    def __init__(
        self,
        model_name: str = "default",
        device: str = "auto",
        trust_remote_code: bool = False,
        max_adapters: int = 8,
    ):
        self.model_name, self.device, self.trust_remote_code = model_name, device, trust_remote_code
        self.max_adapters = max_adapters
        self.lock = threading.RLock()
        self.model = None
        self.tokenizer = None
        self.adapters: OrderedDict[str, tuple] = OrderedDict()  # name -> (path, mtime)

    def load(self, model_name: str | None = None, trust_remote_code: bool | None = None) -> None:
        """(Re)load the base model; drops every adapter when the base changes."""
        with self.lock:
            name = model_name or self.model_name
            if trust_remote_code is not None:
                self.trust_remote_code = trust_remote_code
            if self.model is not None and name == self.model_name:
                return
            model, tokenizer = load_model(
                name, self.device, trust_remote_code=self.trust_remote_code
            )
            model.eval()
            self.model, self.tokenizer, self.model_name = model, tokenizer, name
            self.adapters.clear()

    def add_adapter(self, checkpoint: str | Path) -> str:
        """Load a checkpoint's LoRA adapter (once) and return its name in the pool."""
        from peft import PeftModel

        path = Path(checkpoint)
        if not (path / "adapter_config.json").is_file():
            raise ModelLoadError(
                f"{path} is not a LoRA checkpoint: adapter_config.json is missing."
            )
        name = adapter_label(path)
        with self.lock:
            self.load()
            if name in self.adapters and self.adapters[name] == _stamp(path):
                self.adapters.move_to_end(name)
                return name
            self.remove_adapter(name)  # absent, or rewritten on disk since it was loaded
            while len(self.adapters) >= self.max_adapters:
                self.remove_adapter(next(iter(self.adapters)))
            try:
                if isinstance(self.model, PeftModel):
                    self.model.load_adapter(str(path), adapter_name=name)
                else:
                    self.model = attach_adapter(self.model, path, adapter_name=name)
            except Exception as err:
                raise ModelLoadError(
                    f"Could not load the adapter {path} on top of {self.model_name!r} (was it trained "
                    f"on another base model?): {err}"
                ) from err
            self.model.eval()
            self.adapters[name] = _stamp(path)
            return name

    def remove_adapter(self, name: str) -> None:
        """Unload an adapter; the last one gone leaves the plain base model."""
        with self.lock:
            if name not in self.adapters:
                return
            del self.adapters[name]
            if self.adapters:
                self.model.delete_adapter(name)
            else:  # peft keeps no model without an adapter: take the base back out
                self.model = self.model.unload()
                self.model.eval()

    def stream(
        self,
        conversations: Sequence[Sequence[dict]],
        checkpoints: Sequence[str | Path | None],
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = 0,
    ) -> Iterator[list[str]]:
        """Answer every conversation at once; `checkpoints[i]` is None for the base model.

        The lock is taken by the worker thread for the whole generation, never across a yield:
        Gradio may resume a generator from a different thread each time.
        """
        if len(conversations) != len(checkpoints):
            raise ValueError("one checkpoint (or None for the base model) per conversation")
        if not conversations:
            return
        if len({str(c) for c in checkpoints if c is not None}) > self.max_adapters:
            raise ValueError(f"At most {self.max_adapters} checkpoints can answer at once.")
        self.load()
        streamer = BatchStreamer(self.tokenizer, len(conversations))
        settings = dict(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
        )

        def run(stopping):
            with self.lock:
                names = [BASE if c is None else self.add_adapter(c) for c in checkpoints]
                # A plain model (no adapter loaded yet) takes no adapter_names.
                routed = names if hasattr(self.model, "peft_config") else None
                run_generate(
                    self.model, self.tokenizer, conversations, routed, streamer, stopping, settings
                )

        yield from stream_worker(run, streamer)

    def score(self, pair: dict, checkpoints: Sequence[str | Path | None], **budgets) -> list:
        """`orpo_lab.token_view.score_pair` of one pair {"prompt", "chosen", "rejected"} under each
        checkpoint (None: the base model alone), on the one base model in memory."""
        from peft import PeftModel

        from orpo_lab.token_view import score_pair

        self.load()
        scores = []
        with self.lock:
            for checkpoint in checkpoints:
                if checkpoint is not None:
                    # Added first: the first adapter wraps self.model in a PeftModel.
                    name = self.add_adapter(checkpoint)
                    self.model.set_adapter(name)
                plain = checkpoint is None and isinstance(self.model, PeftModel)
                with self.model.disable_adapter() if plain else contextlib.nullcontext():
                    scores.append(
                        score_pair(
                            self.model,
                            self.tokenizer,
                            pair["prompt"],
                            pair["chosen"],
                            pair["rejected"],
                            **budgets,
                        )
                    )
        return scores

    def generate(self, conversations, checkpoints, **settings) -> list[str]:
        """The final answers of `stream`."""
        return last_batch(
            self.stream(conversations, checkpoints, **settings), [""] * len(conversations)
        )
