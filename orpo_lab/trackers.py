"""Experiment trackers: a run's metrics and config in TensorBoard, Trackio or Weights & Biases too.

`TrainConfig.report_to` names them ("none", or any of TRACKERS, comma-separated). The training loop
hands every metrics record to `Trackers.log` (through its callback); the trackers get the scalars
under the names TRL's ORPO trainer logs them with where the meaning is the same, as transformers'
tracker callbacks write them ("train/rewards/chosen", "train/nll_loss", "train/learning_rate",
"eval/rewards/accuracies", ...), and ours for the rest ("train/tokens_per_s", "eval/delta_q50").
The run's config is the tracker run's hyperparameters.

What continues a tracker's run (W&B's run id, Trackio's project, name and id) is kept in the run
folder (`RunDir.write_trackers`), so a resumed ORPO Lab run continues the same tracker run. A
tracker that is not installed, cannot start (no network, a bad key) or fails while logging is
dropped with one warning, on stderr and in the run log: a tracker never costs a run.

Projects: W&B's WANDB_PROJECT and TRACKIO_PROJECT from the environment, else "orpo-lab". The
trackers' own environment variables apply as usual (WANDB_MODE=offline, WANDB_API_KEY,
TRACKIO_DIR, TRACKIO_SPACE_ID, ...).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

from orpo_lab.rundir import RunDir, checkpoint_step

TRACKERS = ("tensorboard", "trackio", "wandb")
INSTALL = "pip install 'orpo-lab[trackers]'"
PROJECT = "orpo-lab"
# wandb's own default waits 90 s for an unreachable server; WANDB_INIT_TIMEOUT overrides ours
WANDB_INIT_TIMEOUT_S = 30

# Our record keys -> TRL's (before the "train/" prefix that transformers' callbacks add).
TRAIN_NAMES = {"lr": "learning_rate"}
# Our held-out keys -> TRL's eval names where they hold the same thing.
EVAL_NAMES = {
    "eval/accuracy": "eval/rewards/accuracies",
    "eval/logps_chosen": "eval/logps/chosen",
    "eval/logps_rejected": "eval/logps/rejected",
}
NOT_SCALARS = {"kind", "step", "total_steps"}


def parse_report_to(value) -> list[str]:
    """The trackers a report_to value names: "none" or "" -> [], "tensorboard, wandb" (or a
    list) -> ["tensorboard", "wandb"]. ValueError naming what is wrong and what is allowed."""
    items = value if isinstance(value, (list, tuple)) else str(value or "").split(",")
    names = [str(item).strip().lower() for item in items if str(item).strip()]
    if names == ["none"] or not names:
        return []
    unknown = [n for n in names if n not in (*TRACKERS, "none")]
    if unknown or "none" in names:
        problem = f"unknown {', '.join(map(repr, unknown))}" if unknown else "none with trackers"
        raise ValueError(
            f"report_to {value!r}: {problem}; use none, or any of {', '.join(TRACKERS)}, "
            "comma-separated (e.g. tensorboard,wandb)"
        )
    return list(dict.fromkeys(names))  # each once, in the order given


def report_to_checked(value) -> tuple[str, list[str]]:
    """(report_to in one form, "none" or "tensorboard,wandb", from text in any case and spacing or
    a list; what is wrong with it): TrainConfig's check. A wrong value is kept as given."""
    try:
        return ",".join(parse_report_to(value)) or "none", []
    except ValueError as err:
        return (value if isinstance(value, str) else ",".join(map(str, value))), [str(err)]


def tracker_metrics(record: dict) -> dict[str, float]:
    """A metrics record's scalars under the trackers' names; {} for records without any (events)."""
    kind = record.get("kind")
    if kind not in ("train", "eval"):
        return {}
    out = {}
    for key, value in record.items():
        if key in NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue  # grad_norm is None without clipping
        name = f"train/{TRAIN_NAMES.get(key, key)}" if kind == "train" else EVAL_NAMES.get(key, key)
        out[name] = float(value)
    return out


def hyperparameters(config: dict) -> dict:
    """The run's config as hyperparameters: every TrainConfig field but `resume` (run control)."""
    return {k: v for k, v in config.items() if k != "resume"}


# ---------------------------------------------------------------- the three trackers
# Each: started with (folder, config, start step, what the last start saved), then
# log(metrics, step) and finish(failed); `saved` is what trackers.json keeps to continue it.


class _TensorBoard:
    def __init__(self, folder: RunDir, config: dict, start: int, saved: dict | None):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
        from torch.utils.tensorboard.summary import hparams

        # A resumed run purges what a killed process logged after the checkpoint (steps > start).
        self.writer = SummaryWriter(
            str(folder.tensorboard_dir), flush_secs=10, purge_step=start + 1 if start else None
        )
        if not start:
            experiment, session_start, _ = hparams(
                hyperparameters(config), {"eval/rewards/accuracies": None, "train/loss": None}
            )
            self.writer.file_writer.add_summary(experiment)
            self.writer.file_writer.add_summary(session_start)
            self.writer.add_text("config", _yaml(config))
        self.saved = {"log_dir": str(folder.tensorboard_dir)}

    def log(self, metrics: dict, step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def finish(self, failed: bool) -> None:
        self.writer.close()


class _Trackio:
    def __init__(self, folder: RunDir, config: dict, start: int, saved: dict | None):
        import trackio

        continuing = bool(start and saved)
        project = saved["project"] if continuing else os.environ.get("TRACKIO_PROJECT", PROJECT)
        name = saved["name"] if continuing else folder.name
        self.run = trackio.init(
            project=project,
            name=name,
            config=hyperparameters(config),
            resume="allow" if continuing else "never",
        )
        self.saved = {"project": project, "name": self.run.name, "id": self.run.id}

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, failed: bool) -> None:
        self.run.finish()


class _Wandb:
    def __init__(self, folder: RunDir, config: dict, start: int, saved: dict | None):
        import wandb

        continuing = bool(start and saved)
        project = saved["project"] if continuing else os.environ.get("WANDB_PROJECT", PROJECT)
        run_id = saved["id"] if continuing else uuid.uuid4().hex[:12]  # unique in the project
        timeout = float(os.environ.get("WANDB_INIT_TIMEOUT", WANDB_INIT_TIMEOUT_S))
        self.run = wandb.init(
            project=project,
            name=folder.name,
            id=run_id,
            resume="allow",
            config=hyperparameters(config),
            dir=str(folder.path),
            reinit="create_new",
            settings=wandb.Settings(init_timeout=timeout),
        )
        self.saved = {"project": project, "id": run_id}

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(metrics, step=step)

    def finish(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


BACKENDS = {"tensorboard": _TensorBoard, "trackio": _Trackio, "wandb": _Wandb}
PACKAGES = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb"}


def _yaml(config: dict) -> str:
    import yaml

    # TensorBoard's text plugin renders markdown: indent four spaces to show the YAML as code.
    return "\n".join("    " + line for line in yaml.safe_dump(config, sort_keys=False).splitlines())


def _advice(name: str, err: Exception) -> str:
    if isinstance(err, ImportError):
        return f"{PACKAGES[name]} is not installed: {INSTALL} (or pip install {PACKAGES[name]})"
    if name == "wandb":
        return (
            "log in with `wandb login` (or set WANDB_API_KEY), or set WANDB_MODE=offline to "
            "keep the run's files on disk and `wandb sync` them later"
        )
    if name == "trackio":
        return "check TRACKIO_DIR / TRACKIO_SPACE_ID and the hub login if logging to a Space"
    return "check that the run folder is writable"


class Trackers:
    """The experiment trackers of one run (main process only): started together, fed every
    metrics record, finished once. Empty (every call a no-op) when report_to is none."""

    def __init__(
        self,
        names: list[str],
        folder: RunDir,
        config: dict,
        resume_from: Path | None = None,
        warn: Callable[[str], None] | None = None,
    ):
        self.folder, self.active = folder, {}
        self.warn = warn or _stderr
        self.start = checkpoint_step(resume_from.name) if resume_from else 0
        saved = folder.read_trackers() if self.start else {}
        for name in names:
            try:
                self.active[name] = BACKENDS[name](folder, config, self.start, saved.get(name))
            except Exception as err:  # not installed, no network, a bad key: say so, train on
                self._drop(name, "could not start", err)
        if self.active:
            folder.write_trackers({**saved, **{n: t.saved for n, t in self.active.items()}})

    def log(self, record: dict) -> None:
        metrics = tracker_metrics(record)
        for name, tracker in list(self.active.items()) if metrics else []:
            try:
                tracker.log(metrics, int(record["step"]))
            except Exception as err:
                self._drop(name, "failed while logging", err, int(record["step"]))

    def forward_to(self, callback: Callable[[dict], None] | None) -> Callable[[dict], None] | None:
        """`callback`, also feeding every record to the trackers (itself when there are none)."""
        if not self.active:
            return callback

        def both(record: dict) -> None:
            self.log(record)
            if callback is not None:
                callback(record)

        return both

    def finish(self) -> None:
        """Close every tracker run; W&B marks it failed when the ORPO Lab run failed."""
        failed = self.folder.read_status().get("status") == "failed"
        for name, tracker in list(self.active.items()):
            try:
                tracker.finish(failed)
            except Exception as err:
                self._drop(name, "failed while finishing", err)
        self.active = {}

    def _drop(self, name: str, what: str, err: Exception, step: int | None = None) -> None:
        self.active.pop(name, None)
        message = (
            f"tracker {name} {what} ({type(err).__name__}: {str(err).strip()[:300]}); "
            f"training goes on without it. {_advice(name, err)}."
        )
        self.warn(message)
        if self.folder.path.is_dir():
            self.folder.append_metrics(
                {
                    "kind": "event",
                    "event": "tracker_warning",
                    "tracker": name,
                    "step": self.start if step is None else step,
                    "message": message,
                }
            )


def _stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def start(cfg, folder: RunDir, resume_from: Path | None, accelerator, callback=None):
    """(the run's Trackers, `callback` also feeding them): those cfg.report_to names on the main
    process, none on the others."""
    names = parse_report_to(cfg.report_to) if accelerator.is_main_process else []
    tracked = Trackers(names, folder, cfg.to_dict(), resume_from)
    return tracked, tracked.forward_to(callback)
