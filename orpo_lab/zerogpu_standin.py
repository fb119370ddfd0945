"""A ZeroGPU stand-in for machines without one: the mechanism of `spaces.GPU`, without its server.

On a ZeroGPU Space, `spaces.GPU` runs each call of the decorated function in a worker forked from
the app's process; the arguments, the return value and every value a generator yields are pickled
between the two processes; a call still running after its `duration` (seconds, a timedelta, or a
callable given the call's own arguments) is aborted; a user past their quota gets a `gr.Error`
before anything runs. Off a Space `spaces.GPU` returns the function unchanged, so none of that
would ever be exercised here.

`install()` puts `decorate` where `spaces` dispatches every decoration
(`spaces.zero.decorator._GPU`, which `spaces.GPU(...)` looks up when it is applied): the app's code
stays decorated by the real `spaces.GPU`, and each call of it then goes through

- a freshly forked process (spaces reuses an idle worker; a fresh one is the stricter case, since
  nothing an earlier call left in the worker's memory survives);
- pickling of the arguments and of every yield or return value (an unpicklable one fails, as on a
  Space);
- a SIGKILL at the call's duration, reported as spaces reports it: gr.Error "GPU task aborted";
- an exception reported as spaces reports it: a gr.Error naming only the exception's class (a
  gr.Error raised inside keeps its message);
- early close: a caller that stops iterating closes the generator in the worker at its next yield;
- a quota: `ORPO_LAB_ZEROGPU_QUOTA_S` seconds of calls in all (unset: no limit); a call that asks
  for more than is left gets spaces's "ZeroGPU quota exceeded" gr.Error and never runs.

Why not SPACES_ZERO_GPU=true: that switch makes `spaces` patch torch and talk to the Space's GPU
server (SPACES_ZERO_DEVICE_API_URL), which does not exist off a Space. `orpo_lab.zerogpu` installs
this when ORPO_LAB_ZEROGPU=standin (tests, `scripts/space_check.py --zerogpu`).
"""

from __future__ import annotations

import functools
import inspect
import multiprocessing
import os
import pickle
import time
import traceback
from datetime import timedelta

import gradio as gr

FORK = multiprocessing.get_context("fork")
DEFAULT_DURATION_S = 60  # spaces's default when `duration` is None
_in_worker = False  # True inside a forked call: a nested decorated call runs in place, as in spaces
_used_s = [0.0]  # seconds of GPU calls made from this process (the quota)
_original: dict = {}  # spaces's own dispatch, while the stand-in replaces it


def install() -> None:
    """Route every later `spaces.GPU` decoration through `decorate` (idempotent)."""
    import spaces.zero.decorator as dispatch

    _original.setdefault("_GPU", dispatch._GPU)
    dispatch._GPU = decorate


def uninstall() -> None:
    """Give `spaces` its own dispatch back (functions decorated meanwhile keep the stand-in)."""
    import spaces.zero.decorator as dispatch

    dispatch._GPU = _original.get("_GPU", dispatch._GPU)


def call_seconds(duration, args: tuple, kwargs: dict) -> float:
    """The duration of one call, as spaces computes it (a callable gets the call's arguments)."""
    value = duration(*args, **kwargs) if callable(duration) else duration
    if value is None:
        return float(DEFAULT_DURATION_S)
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _check_quota(seconds: float) -> None:
    quota = os.environ.get("ORPO_LAB_ZEROGPU_QUOTA_S")
    if quota is None:
        return
    left = float(quota) - _used_s[0]
    if seconds > left:  # spaces's wording (spaces/zero/client.py, schedule)
        raise gr.Error(
            f"You have exceeded your free ZeroGPU quota ({round(seconds)}s requested vs. "
            f"{max(0, round(left))}s left). Try again in 23:59:00.",
            title="ZeroGPU quota exceeded",
        )


def _aborted() -> gr.Error:
    return gr.Error("GPU task aborted", title="ZeroGPU worker error")


def _worker(task, generator: bool, args_in, results_out, stop) -> None:
    """The forked side: read the pickled arguments, run, send every result pickled."""
    global _in_worker
    _in_worker = True

    def send(message) -> None:
        results_out.send_bytes(pickle.dumps(message))

    try:
        args, kwargs = pickle.loads(args_in.recv_bytes())
        if generator:
            values = task(*args, **kwargs)
            for value in values:
                if stop.is_set():  # the caller closed its end: end here, as spaces does
                    values.close()
                    break
                send(("yield", value))
        else:
            send(("return", task(*args, **kwargs)))
    except Exception as err:  # noqa: BLE001 - reported to the caller, as spaces does
        message = err.message if isinstance(err, gr.Error) else None
        title = getattr(err, "title", None) if isinstance(err, gr.Error) else None
        send(("error", type(err).__name__, message, title, traceback.format_exc()))
    send(("end",))


def _calls(task, duration, generator: bool, args: tuple, kwargs: dict):
    """Run one call in a fresh fork; yield ("yield"|"return", value) as the worker sends them."""
    seconds = call_seconds(duration, args, kwargs)
    _check_quota(seconds)
    args_in, args_out = FORK.Pipe(duplex=False)
    results_in, results_out = FORK.Pipe(duplex=False)
    stop = FORK.Event()
    worker = FORK.Process(
        target=_worker, args=(task, generator, args_in, results_out, stop), daemon=True
    )
    began = time.monotonic()
    worker.start()
    args_in.close()
    results_out.close()
    deadline = began + seconds
    try:
        args_out.send_bytes(pickle.dumps((args, kwargs)))  # PicklingError here, as in spaces
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not results_in.poll(left):
                raise _aborted()  # killed in `finally`
            try:
                message = pickle.loads(results_in.recv_bytes())
            except EOFError:  # the worker died (out of memory, a signal)
                raise _aborted() from None
            if message[0] == "end":
                return
            if message[0] == "error":
                _, name, text, title, trace = message
                print(trace, flush=True)
                raise gr.Error(
                    text if text is not None else name, title=title or "ZeroGPU worker error"
                )
            try:
                yield message
            except GeneratorExit:
                stop.set()
                raise
    finally:
        if worker.is_alive() and stop.is_set():
            worker.join(max(0.0, deadline - time.monotonic()))  # let it close at its next yield
        if worker.is_alive():
            worker.kill()
        worker.join()
        _used_s[0] += time.monotonic() - began
        results_in.close()
        args_out.close()


def decorate(task, duration=None, size=None):
    """What `spaces.GPU` returns on a Space, reproduced: see the module docstring."""
    if inspect.isgeneratorfunction(task):

        @functools.wraps(task)
        def stream(*args, **kwargs):
            if _in_worker:
                yield from task(*args, **kwargs)
                return
            for _, value in _calls(task, duration, True, args, kwargs):
                yield value

        stream.zerogpu = None  # spaces marks its wrappers so
        return stream

    @functools.wraps(task)
    def call(*args, **kwargs):
        if _in_worker:
            return task(*args, **kwargs)
        for _, value in _calls(task, duration, False, args, kwargs):
            return value
        raise _aborted()  # ended without a result

    call.zerogpu = None
    return call
