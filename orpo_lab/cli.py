"""`orpo-lab`: train, resume, evaluate, export or push to the hub from the command line.

Arguments are parsed before torch is imported (`--help` answers at once); `launch.check_launch`
refuses a bad model, checkpoint or `--dataset` before a run folder is written or a model loads.
Ctrl-C or SIGTERM saves the last completed step and exits cleanly; a second Ctrl-C exits at once.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from orpo_lab.config_flags import build_parser, config_from_args
from orpo_lab.rundir import RunDir

# The final record keeps TRL's metric names, so that runs compare with TRL's logs.
KEYS_NOTE = (
    "(above: log_odds_chosen is the log-odds ratio the step lines show; log_odds_ratio is TRL's "
    "name for its log sigmoid, -L_OR)"
)


def say(text: str) -> None:
    """A line of what the command is doing, before the run's own progress lines: said once, not by
    each process of a multi-process run (torchrun and accelerate set RANK)."""
    if os.environ.get("RANK", "0") == "0":
        print(f"orpo-lab: {text} ...", file=sys.stderr, flush=True)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def install_stop_signals(stop: threading.Event) -> None:
    """First SIGINT/SIGTERM: set `stop` (save, then exit). Second: exit at once (no save).

    A process forked from this one (a worker of datasets' parallel `map`) inherits the handler: there
    SIGTERM (its pool ending it after a stop) ends it, and Ctrl-C (sent to the whole process group)
    is left to this process. Handled as a stop there, SIGTERM left the worker running and the stop
    waiting for it for ever."""
    owner = os.getpid()

    def handle(signum, frame):
        if os.getpid() != owner:
            if signum == signal.SIGTERM:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        if stop.is_set():
            print("\nsecond stop signal: exiting now, without saving", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        stop.set()
        then = "saving the last completed step, then exiting (Ctrl-C again to quit at once)"
        print(f"\nstop requested: {then}", file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def progress_line(record: dict) -> str | None:
    """One terminal line for a record of `train`'s callback: each setup stage, the start, each
    step, each evaluation."""
    if record["kind"] == "train":
        return (
            f"step {record['step']}/{record['total_steps']}  loss {record['loss']:.4f}  "
            f"log-odds ratio {record.get('log_odds_chosen', float('nan')):.3f}  "  # TRL's key for it
            f"accuracy {record.get('rewards/accuracies', float('nan')):.2f}  "
            f"{record['step_s']:.2f} s/step  left {_duration(record['eta_s'])}"
        )
    if record["kind"] == "eval":
        return (
            f"held-out at step {record['step']}: accuracy {record['eval/accuracy']:.3f} "
            f"({record['eval/pairs']} pairs), log-probs chosen {record['eval/logps_chosen']:.3f} "
            f"rejected {record['eval/logps_rejected']:.3f}"
        )
    if record.get("event") == "preparing":  # the setup before the started event
        return f"{record['stage']} ..."
    if record.get("event") in ("started", "resumed"):
        cut = record.get("truncation", {}).get("train", {})
        return (
            f"{record['event']}: {record['train_pairs']} training pairs "
            f"({cut.get('truncated_pairs', 0)} cut to fit max_length), {record['eval_pairs']} "
            f"held out; {record['total_steps']} steps on {record['device']} in "
            f"{record['precision']} ({record['precision_reason']}); data "
            + (
                "read from the cache"
                if record.get("data_cache") == "hit"
                else "prepared and cached"
            )
        )
    return None


def print_progress(record: dict) -> None:
    line = progress_line(record)
    if line:
        print(line, file=sys.stderr, flush=True)


def progress_bar(desc: str) -> Callable[[dict], None]:
    """A `train` callback that shows a run's progress where it runs: a notebook cell or a terminal.

    The setup's stages, the start and each held-out evaluation are printed as `progress_line` words
    them, after `desc`;
    the steps move a bar (tqdm: a widget in Jupyter, a line of text elsewhere) with the latest loss.
    """
    from tqdm.auto import tqdm  # imported here: `orpo-lab --help` answers without it

    bar = None

    def show(record: dict) -> None:
        nonlocal bar
        if record["kind"] == "train":
            if bar is None:  # a callback handed over after the start event
                bar = tqdm(total=record["total_steps"], desc=desc, unit="step")
            bar.set_postfix_str(f"loss {record['loss']:.3f}", refresh=False)
            bar.update(record["step"] - bar.n)
            if record["step"] == record["total_steps"]:
                bar.close()
            return
        line = progress_line(record)
        if line:
            tqdm.write(f"{desc}: {line}")
        if record.get("event") in ("started", "resumed"):
            bar = tqdm(total=record["total_steps"], initial=record["step"], desc=desc, unit="step")

    return show


def parser_with_hub() -> argparse.ArgumentParser:
    """`build_parser`'s flags plus --evaluate's sampling options, --push-to-hub and its options."""
    parser = build_parser()
    sampled = parser.add_argument_group("sampled evaluation (with --evaluate)")
    sampled.add_argument(
        "--samples",
        type=int,
        default=0,
        metavar="K",
        help="also judge K sampled answers per prompt, pass rates with 95%% "
        "intervals (0 = greedy only)",
    )
    sampled.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        metavar="T",
        help="with --samples: the sampling temperature (> 0; default 1)",
    )
    sampled.add_argument(
        "--top-p",
        type=float,
        default=1.0,
        metavar="P",
        help="with --samples: nucleus sampling's top-p, in (0, 1] (default 1)",
    )
    sampled.add_argument(
        "--sample-seed",
        type=int,
        default=0,
        metavar="S",
        help="with --samples: the seed; the same seed draws the same samples",
    )
    hub = parser.add_argument_group("share a run's adapter on the Hugging Face hub")
    hub.add_argument(
        "--push-to-hub",
        metavar="RUN_DIR",
        help="upload the run's adapter, tokenizer and model card (needs a hub login)",
    )
    hub.add_argument("--repo-id", help="with --push-to-hub: the model repository, owner/name")
    hub.add_argument(
        "--checkpoint", help="with --push-to-hub: e.g. step-000060 (default: the last)"
    )
    hub.add_argument(
        "--public",
        action="store_true",
        help="with --push-to-hub: a public repository (default: private)",
    )
    parser.add_argument(
        "--sft-then-dpo",
        type=int,
        metavar="N",
        help="two runs, NAME-sft then NAME-dpo: N steps of SFT, then DPO from its "
        "checkpoint for the rest of max_steps (orpo_lab.pipeline)",
    )
    return parser


def _sft_then_dpo(cfg, sft_steps: int, stop: threading.Event) -> int:
    from orpo_lab.pipeline import sft_then_dpo

    last = sft_then_dpo(cfg, sft_steps, callback=print_progress, stop_event=stop)
    records = {stage: {k: v for k, v in r.items() if k != "kind"} for stage, r in last.items()}
    print(json.dumps(records, indent=1))
    return 0


def _export(args) -> int:
    from orpo_lab.checkpoint import Checkpointer

    if not args.out:
        return _error("--export needs --out DIR, the folder for the merged model.")
    print(f"merged model written to {Checkpointer.export_merged(args.export, args.out)}")
    return 0


def _push(args) -> int:
    from orpo_lab.hub import push_to_hub

    if not args.repo_id:
        return _error("--push-to-hub needs --repo-id OWNER/NAME, the model repository.")
    url = push_to_hub(args.push_to_hub, args.repo_id, args.checkpoint, private=not args.public)
    print(f"adapter pushed to {url}")
    return 0


def _evaluate(args) -> int:
    from orpo_lab.evaluate import evaluate_run
    from orpo_lab.rate_tables import evaluation_text

    report = evaluate_run(
        args.evaluate,
        max_prompts=args.eval_prompts,
        samples=args.samples,
        temperature=args.temperature,
        top_p=args.top_p,
        sample_seed=args.sample_seed,
    )
    print(evaluation_text(report, RunDir(args.evaluate).generations_path))
    return 0


def _train(args) -> int:
    """Check, then train: a broken model, checkpoint or too small dataset fails before the run
    folder is written and the model loads; the run starts from the rows the check read."""
    if args.sft_then_dpo is not None and args.method is None:
        args.method = "dpo"  # the pipeline ends in DPO: its settings (dpo_beta) are the config's
    cfg = config_from_args(args)
    stop = threading.Event()
    install_stop_signals(stop)
    from orpo_lab.launch import check_launch

    if cfg.precision == "bf16":  # devices imports torch: seconds before the first line otherwise
        from orpo_lab.devices import slow_bf16_note

        if note := slow_bf16_note(cfg.device, cfg.precision):  # before anything loads
            print(f"orpo-lab: precision=bf16: {note}", file=sys.stderr, flush=True)
    checked = check_launch(cfg, say).checked  # it says what it reads, once the model's name passed
    if args.sft_then_dpo is not None:
        return _sft_then_dpo(cfg, args.sft_then_dpo, stop)
    from orpo_lab.train import train

    last = train(cfg, callback=print_progress, stop_event=stop, checked=checked)
    if os.environ.get("RANK", "0") != "0":  # the main process says what is on disk
        return 0
    if last:  # the last step's record; none for a run stopped before its first step
        print(json.dumps({k: v for k, v in last.items() if k != "kind"}, indent=1))
        print(KEYS_NOTE, file=sys.stderr)
    status = RunDir(cfg.run_dir).read_status()  # what is on disk, in the run's own words
    print(f"{status['message']} (run folder {cfg.run_dir})")  # e.g. "finished 60 steps; ..."
    if stop.is_set():  # the command as typed (.venv/bin/orpo-lab), else its installed name
        command = sys.argv[0] if Path(sys.argv[0]).name == "orpo-lab" else "orpo-lab"
        again = f"{command} --config {cfg.run_dir / 'config.yaml'}"  # no checkpoint: from scratch
        saved = RunDir(cfg.run_dir).latest_checkpoint()
        print(f"resume with `{again} --resume`" if saved else f"start it again with `{again}`")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser_with_hub().parse_args(argv)
    asked = {_export: args.export, _push: args.push_to_hub, _evaluate: args.evaluate}
    command = next((run for run, given in asked.items() if given), _train)
    try:
        return command(args)
    except ValueError as err:  # config, data, checkpoint and run errors all say what to do
        return _error(str(err))
    except RuntimeError as err:
        from orpo_lab.step import TrainingError

        if isinstance(err, TrainingError):
            return _error(str(err))
        raise


if __name__ == "__main__":
    if Path(sys.argv[0]).parts[-2:] == ("orpo_lab", "train.py"):  # earlier versions' entry point
        print("note: the command is now `orpo-lab` (python -m orpo_lab.cli).", file=sys.stderr)
    sys.exit(main())
