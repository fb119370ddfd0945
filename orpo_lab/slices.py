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

Before the first call the app tokenises the run's data into the data cache on its own CPU
(`SliceRunner.prepare`), so that no slice spends GPU seconds on it. A slice ends through the
trainer's own stop path (`train(..., fits=...)`), so it saves exactly what a stop saves. A slice
killed at its deadline loses only the steps after its last save: the next one resumes from the
checkpoint on disk, and the run's status says so. The worker's side is `orpo_lab.slice_worker`;
this module is the app's.
"""

from __future__ import annotations

import contextvars
import os
import threading
import time

from orpo_lab.slice_worker import slice_duration, train_slice
from orpo_lab.zerogpu import on_gpu, slice_seconds


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
        self.gpu_slice = on_gpu(train_slice, duration=slice_duration)
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
        """The run's data prepared here, then slices until the run is finished, stopped, failed or
        out of quota."""
        save_s, cut = None, 0
        try:
            if not self.prepare(run, stop):
                return
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

    @staticmethod
    def prepare(run, stop: threading.Event) -> bool:
        """Tokenise the run's pairs here, on the app's CPU, into the data cache that a slice's
        `train` then reads (`orpo_lab.prepared`): preparing inside a slice spent its seconds and the
        user's GPU quota on it, and data that takes longer than a slice never reached a first step
        (60,000 UltraFeedback pairs: 77 s on 2 cores against 60 s slices, then "two slices in a row
        were cut off"). False when a stop arrived meanwhile: the run is stopped, nothing trained."""
        from orpo_lab.build import run_tokenizer
        from orpo_lab.config import TrainConfig
        from orpo_lab.prepared import prepare_data
        from orpo_lab.setup import data_stages, setup_progress
        from orpo_lab.step import StopRequested

        cfg = TrainConfig.from_yaml(run.config_path)
        stages = data_stages(setup_progress(run, stop))  # "preparing data: tokenising ..."
        try:
            prepare_data(cfg, run_tokenizer(cfg, run.latest_checkpoint()), stages)
        except StopRequested:
            SliceRunner._end_stopped(run)
            return False
        return True

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
        run.write_status("stopped", run.stop_message(step), step=step)
