"""ZeroGPU training in slices: each slice is one GPU call (`orpo_lab.zerogpu.on_gpu`) in the app.

    the app (SliceRunner, a thread per run)          the GPU worker (train_slice)
    ---------------------------------------          ----------------------------------------------
    call the decorated train_slice ------------->    restore the run from its folder: the exact
                                                     resume (adapter, optimiser, scheduler, RNG,
                                                     data position), via `train(cfg)` with resume
    read each record as it is yielded  <---------    train while the next step fits the budget
                                                     (SliceBudget: measured load, step, evaluation
                                                     and save times), save that step, yield every
                                                     record as it is logged
    write the slice's outcome (RunDir):              metrics and checkpoints go to the run folder
    slices.jsonl and status.json; call again         as on CPU (the worker shares the disk), so the
    until finished, stopped, failed or out of quota  live plots follow the slice
A slice ends through the trainer's own stop path (`train(..., fits=...)`), so it saves exactly what
a stop saves. A slice killed at its deadline loses only the steps after its last save: the next one
resumes from the checkpoint on disk, and the run's status says so.
"""

from __future__ import annotations

import contextvars
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from orpo_lab.zerogpu import on_gpu, slice_seconds

DEFAULT_SAVE_S = 3.0  # a save's time until the first slice measured one


# ---------------------------------------------------------------- one slice, in the GPU worker


@dataclass
class SliceBudget:
    """Whether the next step still fits the slice: elapsed + step + its evaluation + save + margin.

    Step and evaluation times are measured in this slice; the save time comes from the previous
    slice (measured from its budget's "no" to the end of its save). At least one step always runs,
    or a slice shorter than one step would never move the run.
    """

    seconds: float
    began: float  # time.monotonic() at the start of the slice
    save_s: float = DEFAULT_SAVE_S
    step_cap: int | None = None  # at most this many steps (tests, benchmarks); None: time alone
    eval_every: int = 0
    save_every: int = 0
    total_steps: int = 0
    load_s: float | None = None  # start of the slice -> the trainer's started/resumed event
    steps: int = 0
    step_times: list = field(default_factory=list)
    eval_s: float = 0.0
    refused_at: float | None = None
    _last_train: float = 0.0

    @property
    def margin(self) -> float:
        return max(2.0, 0.05 * self.seconds)

    def observe(self, record: dict) -> None:
        now = time.monotonic()
        if record.get("event") in ("started", "resumed"):
            self.load_s, self.total_steps = now - self.began, record["total_steps"]
        elif record.get("kind") == "train":
            self.steps += 1
            self.step_times.append(record["step_s"])
            self._last_train = now
        elif record.get("kind") == "eval" and self.steps:
            self.eval_s = max(self.eval_s, now - self._last_train)

    def fits(self, step: int) -> bool:
        if self.steps == 0:
            return True
        cost = max(self.step_times[-5:]) + self.save_s + self.margin
        if step == self.total_steps or (self.eval_every and step % self.eval_every == 0):
            cost += self.eval_s
        if self.save_every and step % self.save_every == 0:
            cost += self.save_s
        capped = self.step_cap is not None and self.steps >= self.step_cap
        if capped or time.monotonic() - self.began + cost > self.seconds:
            self.refused_at = time.monotonic()
            return False
        return True


def train_slice(
    run_dir: str, seconds: float, save_s: float | None = None, step_cap: int | None = None
) -> Iterator[dict]:
    """One slice of a run (the body of the GPU call): resume from the folder, train while steps fit
    in `seconds`, save; yield every metrics record as it is logged, then one {"kind": "slice"}
    record with the outcome ("running": more slices to go, "finished", "stopped", "failed")."""
    from orpo_lab.config import TrainConfig
    from orpo_lab.rundir import RunDir
    from orpo_lab.train import TrainingError, train

    began = time.monotonic()
    folder = RunDir(run_dir)
    cfg = TrainConfig.from_yaml(folder.config_path)
    cfg.resume = folder.latest_checkpoint() is not None
    budget = SliceBudget(
        seconds, began, save_s or DEFAULT_SAVE_S, step_cap, cfg.eval_every, cfg.save_every
    )
    if folder.stop_requested():  # asked between slices: nothing to train
        yield {"kind": "slice", "outcome": "stopped", "step": folder.saved_step(), "error": None}
        return
    if not cfg.resume:  # a first slice cut off before its first save left records: start over
        folder.truncate_metrics(after_step=-1)
    records: queue.Queue = queue.Queue()
    stop, error = threading.Event(), []

    def log(record: dict) -> None:
        budget.observe(record)
        records.put(record)

    def work() -> None:
        try:
            train(cfg, callback=log, stop_event=stop, fits=budget.fits)
        except Exception as err:  # train wrote the status; the caller gets the message
            error.append(
                str(err) if isinstance(err, TrainingError) else f"{type(err).__name__}: {err}"
            )
        finally:
            records.put(None)

    worker = threading.Thread(target=work, daemon=True, name="orpo-lab-slice")
    worker.start()
    try:
        while (record := records.get()) is not None:
            yield record
    finally:  # also when the caller stops listening: the trainer saves its last step and ends
        stop.set()
        worker.join()
    ended = time.monotonic()
    status = folder.read_status()
    yield {
        "kind": "slice",
        "outcome": status["status"],
        "step": status.get("step"),
        "message": status.get("message"),
        "error": error[0] if error else None,
        "load_s": budget.load_s,
        "steps": budget.steps,
        "wall_s": ended - began,
        "save_s": None if budget.refused_at is None else ended - budget.refused_at,
    }


def _slice_duration(run_dir: str, seconds: float, *args, **kwargs) -> float:
    return seconds  # the GPU call's duration is the slice's length


# ---------------------------------------------------------------- chaining slices, in the app


def _gpu_error(err: Exception) -> tuple[str, str]:
    """(kind, text) of an error from a GPU call: "quota", "aborted", "duration" or "other"."""
    title = str(getattr(err, "title", "") or "")
    text = str(getattr(err, "message", "") or err)
    if "quota" in title.lower() or "quota" in text.lower() or "credits" in title.lower():
        return "quota", text
    if "aborted" in text.lower():
        return "aborted", text
    if "duration" in title.lower():
        return "duration", text
    return "other", f"{title}: {text}" if title else text


class SliceRunner:
    """Chains the GPU slices of each started run in a thread of the app; all state on disk.

    `RunManager` hands it the runs to start and stop on ZeroGPU. The thread starts in the request
    that started the run, with a copy of its context: `spaces` reads the user (whose quota pays)
    from it.
    """

    def __init__(self, seconds: int | None = None, step_cap: int | None = None):
        self.seconds = seconds or slice_seconds()
        cap = os.environ.get("ORPO_LAB_SLICE_STEPS")
        # At most this many steps per slice: tests and benchmarks that need many slices.
        self.step_cap = step_cap or (int(cap) if cap else None)
        self.gpu_slice = on_gpu(train_slice, duration=_slice_duration)
        self.lock = threading.Lock()
        self.threads: dict[str, threading.Thread] = {}
        self.stops: dict[str, threading.Event] = {}

    def owns(self, name: str) -> bool:
        """Whether a chain of slices is under way for run `name` in this app."""
        with self.lock:
            thread = self.threads.get(name)
            return thread is not None and thread.is_alive()

    def start(self, run) -> None:
        """Start (or resume) the run `run` (a RunDir) slice after slice."""
        with self.lock:
            stop = self.stops[run.name] = threading.Event()
            run.clear_stop()
            run.write_status(
                "running",
                f"waiting for a GPU slice ({run.describe_checkpoints()})",
                pid=os.getpid(),
                slice_s=self.seconds,
            )
            chain = contextvars.copy_context().run
            thread = threading.Thread(
                target=chain,
                args=(self.chain, run, stop),
                daemon=True,
                name=f"orpo-lab-slices-{run.name}",
            )
            self.threads[run.name] = thread
            thread.start()

    def stop(self, run, grace_s: float) -> str:
        """Stop after the step in progress (the slice saves it); "stopped" once the chain ended."""
        with self.lock:
            stop, thread = self.stops.get(run.name), self.threads.get(run.name)
        if stop is None or thread is None or not thread.is_alive():
            return "not running"
        stop.set()
        run.request_stop()  # the slice under way reads the STOP file between micro-batches
        thread.join(max(grace_s, self.seconds + 10))  # a slice ends by its deadline at the latest
        return "stopped" if not thread.is_alive() else "stopping"

    def chain(self, run, stop: threading.Event) -> None:
        """Slices until the run is finished, stopped, failed or out of quota."""
        save_s, cut = None, 0
        try:
            while not stop.is_set():
                outcome, save_s, cut = self.one_slice(run, len(run.slices()) + 1, save_s, cut)
                if outcome != "running":
                    return
            self._end_stopped(run)
        except Exception as err:  # never leave a run "running" that nothing trains
            run.write_status(
                "failed",
                f"the slice runner failed: {type(err).__name__}: {err}; "
                f"{run.describe_checkpoints()}",
            )
        finally:
            run.clear_stop()

    def one_slice(self, run, index: int, save_s, cut: int) -> tuple[str, float | None, int]:
        """Run slice `index`; write its outcome; returns (run's state, save time, cut-offs in a row)."""
        before, began, last, final = run.saved_step(), time.time(), 0, None
        run.write_status(message=f"slice {index}: waiting for the GPU (from step {before})")
        try:
            for record in self.gpu_slice(str(run.path), self.seconds, save_s, self.step_cap):
                if record.get("kind") == "train":
                    last = record["step"]
                elif record.get("kind") == "slice":
                    final = record
        except Exception as err:  # raised by spaces (or the stand-in) in this process
            kind, text = _gpu_error(err)
        else:
            if final is not None:
                outcome = self._ended(run, index, final, before, began)
                return outcome, final.get("save_s") or save_s, 0
            kind, text = "aborted", "the slice ended without an outcome"
        cut = 0 if run.saved_step() > before else cut + 1  # cut-offs in a row without a save
        return self._gpu_failed(run, index, kind, text, before, last, began, cut), save_s, cut

    def _record(self, run, index: int, outcome: str, before: int, began: float, **extra) -> None:
        run.append_slice(
            {
                "slice": index,
                "outcome": outcome,
                "steps": [before, run.saved_step()],
                "on_disk": run.saved_step(),
                "seconds": self.seconds,
                "wall_s": time.time() - began,
                **extra,
            }
        )

    def _ended(self, run, index: int, final: dict, before: int, began: float) -> str:
        outcome, step = final["outcome"], final.get("step") or 0
        on_disk = run.describe_checkpoints()
        self._record(
            run,
            index,
            outcome,
            before,
            began,
            load_s=final.get("load_s"),
            save_s=final.get("save_s"),
            message=final.get("message"),
        )
        if outcome == "running":
            run.write_status(
                "running",
                f"slice {index} trained steps {before + 1}-{step} and saved "
                f"them ({on_disk}); next slice starting",
                pid=os.getpid(),
            )
        elif outcome == "failed":
            error = final.get("error") or final.get("message") or "unknown error"
            tail = "" if "checkpoint on disk" in error else f"; {on_disk}"
            run.write_status(
                "failed",
                f"slice {index} failed at step {step + 1} (the last completed "
                f"step is {step}): {error}{tail}",
            )
        elif outcome == "stopped" and final.get("message") is None:
            self._end_stopped(run)
        return outcome

    def _gpu_failed(self, run, index, kind, text, before, last, began, cut) -> str:
        on_disk, step = run.describe_checkpoints(), run.saved_step()
        self._record(
            run,
            index,
            "cut off" if kind == "aborted" else kind,
            before,
            began,
            message=text,
            last_logged=last,
        )
        if kind == "quota":
            then = (
                "Resume continues from it"
                if step
                else "nothing was saved yet, so start the run again then"
            )
            run.write_status(
                "stopped", f"GPU quota used up; resume later ({text}). {on_disk}: {then}."
            )
            return "stopped"
        if kind == "aborted":  # the records after the checkpoint are gone with the worker
            run.truncate_metrics(after_step=step if step else -1)
        if kind == "aborted" and cut < 2:
            lost = f"steps {step + 1}-{last} are lost and retrained; " if last > step else ""
            run.write_status(
                "running",
                f"slice {index} was cut off at its {self.seconds} s "
                f"deadline after step {max(last, step)}; {on_disk}; {lost}the next "
                f"slice resumes from step {step}",
                pid=os.getpid(),
                step=step,
            )
            return "running"
        if kind == "aborted":
            message = (
                f"two slices in a row were cut off at their {self.seconds} s deadline; "
                f"{on_disk}. Loading, one step and a save do not fit: use longer slices "
                "(ORPO_LAB_SLICE_S) or a smaller batch, then Resume."
            )
        elif kind == "duration":
            message = (
                f"ZeroGPU refused a {self.seconds} s slice ({text}): set ORPO_LAB_SLICE_S "
                f"lower, then Resume; {on_disk}"
            )
        else:
            message = f"slice {index} failed on the GPU ({text}); {on_disk}"
        run.write_status("failed", message)
        return "failed"

    @staticmethod
    def _end_stopped(run) -> None:
        step = run.saved_step()
        run.write_status(
            "stopped",
            f"stopped on request after step {step}; {run.describe_checkpoints()}",
            step=step,
        )
