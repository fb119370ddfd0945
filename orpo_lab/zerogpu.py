"""ZeroGPU, Hugging Face's free shared GPU: which hardware the app runs on, and GPU calls.

On ZeroGPU a GPU is attached only while a function decorated with `@spaces.GPU(duration=...)` runs,
in a worker forked from the app's process, for at most `duration` seconds per call and out of each
user's daily quota. A training process of its own (the app's way on CPU and dedicated GPUs) never
gets the GPU: training runs in slices (`orpo_lab.slices`), and chat, the token view and the
evaluation run here as GPU calls sized to the request (`GpuPool`, `gpu_evaluate`).

Tests and `scripts/space_check.py --zerogpu` set ORPO_LAB_ZEROGPU=standin: `orpo_lab.zerogpu_standin`
then takes the place of the Space's GPU server behind the real `spaces.GPU` (fork per call, pickled
arguments and yields, a kill at the duration, a quota), installed where `spaces` dispatches a
decoration. `on_gpu` installs it when the decorated functions are made (by `build_app` and
`SliceRunner`), not at import, so a test can switch it on after `orpo_lab` was imported.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import threading
from collections.abc import Callable, Iterator

SLICE_S = 60  # the default slice: spaces's default duration, within every tier's limit
MAX_CALL_S = 120  # chat, token view and evaluation calls are sized to the request, capped here


def mode() -> str:
    """Where training runs in this app: "zerogpu", "gpu" (a dedicated CUDA device) or "cpu"."""
    from spaces.config import Config

    if Config.zero_gpu or os.environ.get("ORPO_LAB_ZEROGPU") == "standin":
        return "zerogpu"
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def slice_seconds() -> int:
    """The slice length: ORPO_LAB_SLICE_S, else 60 s."""
    value = os.environ.get("ORPO_LAB_SLICE_S", str(SLICE_S))
    try:
        seconds = int(value)
    except ValueError:
        seconds = 0
    if seconds < 10:
        raise ValueError(
            f"ORPO_LAB_SLICE_S={value!r} is not a slice length: give whole seconds, at least 10 "
            f"(default {SLICE_S}; ZeroGPU allows a few minutes at most)."
        )
    return seconds


def hardware_line(kind: str | None = None, seconds: int | None = None) -> str:
    """The app header's line: which hardware trains, and what that means for a run."""
    kind = kind or mode()
    if kind == "zerogpu":
        seconds = seconds or slice_seconds()
        return (
            f"**Hardware: ZeroGPU** (shared GPU): training runs in slices of {seconds} s; each "
            "uses your GPU quota. A run continues slice after slice; when the quota is used up "
            "it stops resumable."
        )
    if kind == "gpu":
        import torch

        name = torch.cuda.get_device_name(0)
        return f"**Hardware: dedicated GPU** ({name}): runs train in their own process."
    return "**Hardware: CPU**: runs train in their own process (small models, short runs)."


def on_gpu(fn: Callable, duration) -> Callable:
    """`fn` decorated with the real `spaces.GPU(duration=...)`: a GPU call on ZeroGPU (or through
    the stand-in), `fn` itself anywhere else. `duration` may be a callable of fn's arguments."""
    import spaces

    if mode() != "zerogpu":
        return spaces.GPU(duration=duration)(fn)  # fn itself, unchanged
    if os.environ.get("ORPO_LAB_ZEROGPU") == "standin":
        from orpo_lab import zerogpu_standin

        zerogpu_standin.install()
    return spaces.GPU(duration=duration)(in_worker(fn))


def in_worker(fn: Callable) -> Callable:
    """`fn` made safe to run in a worker forked from the app: one CPU thread there.

    GNU OpenMP (torch's CPU threads) does not survive a fork: once the app's process has run a
    parallel region, the worker's first one waits forever for threads it does not have (a 256x256
    matmul in a forked child hangs with 2 threads, runs with 1). The work of a GPU call is on the
    GPU, so the worker's CPU side runs on one thread."""

    def prepare() -> None:
        import torch

        torch.set_num_threads(1)

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream(*args, **kwargs):
            prepare()
            yield from fn(*args, **kwargs)

        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        prepare()
        return fn(*args, **kwargs)

    return call


# ---------------------------------------------------------------- chat, token view, evaluation


def _stream_seconds(conversations, checkpoints, settings) -> float:
    tokens = int(settings.get("max_new_tokens", 128))
    return min(MAX_CALL_S, 20 + 2 * len(checkpoints) + 0.15 * tokens)


def _score_seconds(pair, checkpoints, budgets) -> float:
    return min(MAX_CALL_S, 20 + 5 * len(checkpoints))


def _evaluate_seconds(run_dir, checkpoint, max_prompts, *args, samples=0, **kwargs) -> float:
    # Sampled answers come k to a prompt in one batch: about half a greedy answer's time each.
    return min(MAX_CALL_S, 30 + 1.5 * (int(max_prompts) or 60) * (1 + 0.5 * int(samples)))


class GpuPool:
    """The chat's `ModelPool` with generation and scoring inside GPU calls (ZeroGPU).

    The base model is loaded in the app's process (the forked call inherits it); adapters are
    added inside the call. Everything else is the pool's own.
    """

    def __init__(self, pool):
        self.pool = pool
        self._stream = on_gpu(self._stream_in_call, duration=_stream_seconds)
        self._score = on_gpu(self._score_in_call, duration=_score_seconds)

    def __getattr__(self, name):
        return getattr(self.pool, name)

    def _fresh_lock(self) -> None:
        # A forked worker inherits the lock as it was at the fork; no thread there holds it.
        self.pool.lock = threading.RLock()

    def _stream_in_call(self, conversations, checkpoints, settings) -> Iterator[list[str]]:
        self._fresh_lock()
        with _readable_errors():
            yield from self.pool.stream(conversations, checkpoints, **settings)

    def _score_in_call(self, pair, checkpoints, budgets) -> list:
        self._fresh_lock()
        with _readable_errors():
            return self.pool.score(pair, checkpoints, **budgets)

    def stream(self, conversations, checkpoints, **settings) -> Iterator[list[str]]:
        self.pool.load()
        paths = [None if c is None else str(c) for c in checkpoints]
        yield from self._stream([list(c) for c in conversations], paths, settings)

    def score(self, pair: dict, checkpoints, **budgets) -> list:
        self.pool.load()
        return self._score(
            dict(pair), [None if c is None else str(c) for c in checkpoints], budgets
        )

    def generate(self, conversations, checkpoints, **settings) -> list[str]:
        from orpo_lab.chat import last_batch

        return last_batch(
            self.stream(conversations, checkpoints, **settings), [""] * len(conversations)
        )


@contextlib.contextmanager
def _readable_errors():
    """A wrong request (a missing checkpoint, another base model) as a gr.Error: spaces passes only
    the class name of any other exception out of the GPU call, and the message says what to do."""
    import gradio as gr

    try:
        yield
    except (ValueError, OSError) as err:
        raise gr.Error(str(err)) from err


def _evaluate_in_call(run_dir, checkpoint, max_prompts, max_new_tokens=64, **sampling) -> dict:
    from orpo_lab.evaluate import evaluate_run

    with _readable_errors():
        return evaluate_run(run_dir, checkpoint, max_prompts, max_new_tokens, **sampling)


def gpu_evaluate() -> Callable:
    """`orpo_lab.evaluate.evaluate_run` as a GPU call sized to its prompts."""
    return on_gpu(_evaluate_in_call, duration=_evaluate_seconds)
