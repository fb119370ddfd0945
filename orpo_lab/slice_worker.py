"""One ZeroGPU training slice, the body of a GPU call: resume the run from its folder, train while
the next step fits the slice (`SliceBudget`), save, and yield every record as it is logged.
`orpo_lab.slices.SliceRunner` chains the slices from the app.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

DEFAULT_SAVE_S = 3.0  # a save's time until the first slice measured one


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
    eval_every: int | None = None  # the run's; None: only at the end
    save_every: int | None = None
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


def slice_duration(run_dir: str, seconds: float, *args, **kwargs) -> float:
    return seconds  # the GPU call's duration is the slice's length
