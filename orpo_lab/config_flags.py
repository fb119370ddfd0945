"""The command line's flags: one per TrainConfig field (an optional field also takes its word,
e.g. `--eval-every end`), plus --config and --preset; `config_from_args` merges them."""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from dataclasses import fields
from typing import Any

from orpo_lab.config import TrainConfig
from orpo_lab.config_values import optional_arg, read_yaml
from orpo_lab.presets import PRESETS


def build_parser() -> argparse.ArgumentParser:
    """One flag per TrainConfig field, plus --config, --preset, --export and --evaluate."""
    parser = argparse.ArgumentParser(
        prog="orpo-lab",
        description="Train a model with ORPO (LoRA by default) on preference pairs.",
    )
    # "--learning-rate -1e-4" is a value, as Python 3.13's argparse reads it: 3.11 took "-1e-4" for
    # a flag ("expected one argument") instead of letting the config's check say what is wrong.
    parser._negative_number_matcher = re.compile(r"^-\.?\d")
    parser.add_argument(
        "--config", help="YAML file of TrainConfig fields; flags given here override it"
    )
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), help="start from a preset; flags override it"
    )
    parser.add_argument(
        "--export", metavar="CHECKPOINT", help="merge a checkpoint's adapter into a model"
    )
    parser.add_argument("--out", help="with --export: the output directory of the merged model")
    parser.add_argument(
        "--evaluate", metavar="RUN_DIR", help="judge base vs the run's last checkpoint"
    )
    parser.add_argument(
        "--eval-prompts",
        type=int,
        default=0,
        metavar="N",
        help="with --evaluate: judge N held-out prompts, drawn from every family (0 = all)",
    )
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": f.name, "default": None, "help": f.metadata["help"]}
        if f.type in ("bool", bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kind = str(f.type)
            if f.metadata["none"]:
                kwargs["type"] = optional_arg(kind.removesuffix(" | None"), f.metadata["none"][0])
            else:
                kwargs["type"] = {"int": int, "float": float, "str": str}[kind]
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag, **kwargs)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset, then the --config file, then the flags, as one checked TrainConfig. An old
    sentinel (e.g. eval_every: 0 in a YAML of an earlier version) is read as its None, with one
    line on stderr saying what to write instead."""
    values: dict[str, Any] = {}
    if args.preset:
        values.update(PRESETS[args.preset])
    if args.config:
        values.update(read_yaml(args.config))
    for f in fields(TrainConfig):
        if getattr(args, f.name) is not None:
            values[f.name] = getattr(args, f.name)
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always", FutureWarning)
        cfg = TrainConfig.from_dict(values)
    for note in notes:
        print(f"orpo-lab: {note.message}", file=sys.stderr)
    return cfg
