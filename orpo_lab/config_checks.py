"""What a TrainConfig must not be: every impossible setting or combination, as a message that says
what to change (`TrainConfig.__post_init__` raises them all at once), and the column map's syntax."""

from __future__ import annotations

from dataclasses import fields

from orpo_lab.rundir import RUN_NAME


def config_problems(cfg) -> list[str]:
    """Every problem of `cfg` (a TrainConfig), in the order of its fields' sections."""
    return (
        _value_problems(cfg)
        + _combination_problems(cfg)
        + _ignored_problems(cfg)
        + _method_problems(cfg)
        + _data_problems(cfg)
    )


def _value_problems(cfg) -> list[str]:
    """Settings outside what they can be: a choice not offered, a bad run name, a value too small."""
    problems = []
    for f in fields(cfg):
        choices = f.metadata.get("choices")
        if choices and getattr(cfg, f.name) not in choices:
            problems.append(
                f"{f.name} must be one of {', '.join(choices)}; got {getattr(cfg, f.name)!r}"
            )
    if cfg.run_name and not RUN_NAME.match(cfg.run_name):
        problems.append(
            f"run_name {cfg.run_name!r} may hold only letters, digits, '.', '_' and '-', "
            "and must not start with '.' or '-'"
        )
    if cfg.beta < 0:
        problems.append(f"beta must be >= 0 (0 = SFT baseline); got {cfg.beta}")
    if cfg.learning_rate <= 0:
        problems.append(f"learning_rate must be > 0; got {cfg.learning_rate}")
    for name in (
        "batch_size",
        "grad_accum",
        "max_length",
        "max_prompt_length",
        "lora_r",
        "lora_alpha",
    ):
        if getattr(cfg, name) < 1:
            problems.append(f"{name} must be >= 1; got {getattr(cfg, name)}")
    return problems


def _combination_problems(cfg) -> list[str]:
    """What is impossible about the length of the run and how the settings go together."""
    problems = []
    if cfg.max_steps is None and cfg.epochs <= 0:
        problems.append("set max_steps or epochs > 0: otherwise there is nothing to train")
    if cfg.max_prompt_length >= cfg.max_length:
        problems.append(
            f"max_prompt_length ({cfg.max_prompt_length}) must be below max_length "
            f"({cfg.max_length}) to leave room for the response"
        )
    if cfg.load_in_4bit and cfg.full_finetune:
        problems.append(
            "load_in_4bit (QLoRA) trains a LoRA adapter: drop full_finetune or load_in_4bit"
        )
    for f in fields(cfg):  # the optional counts: None (or its word) says "all", "end", ...
        value = getattr(cfg, f.name)
        if f.metadata.get("none") and value is not None and value <= 0:
            word, meaning = f.metadata["none"]
            problems.append(f"{f.name} must be above 0, or None ({word}: {meaning}); got {value:g}")
    return problems


def _ignored_problems(cfg) -> list[str]:
    default = {f.name: f.default for f in fields(cfg)}
    return [message for _, message in ignored_settings(vars(cfg), default)]


def ignored_settings(v: dict, default: dict) -> list[tuple[str, str]]:
    """(field, message) for each setting that the rest of the config `v` makes the run ignore,
    where it differs from its `default` (a default is never "set"); the message names both."""
    ignored = []
    if v["max_steps"] is not None and v["epochs"] != default["epochs"]:
        ignored.append(
            (
                "epochs",
                f"epochs ({v['epochs']:g}) is ignored when max_steps is set ({v['max_steps']}): "
                "leave max_steps empty (None) to train for epochs, or drop epochs",
            )
        )
    for name in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules"):
        if v["full_finetune"] and v[name] != default[name]:
            ignored.append(
                (
                    name,
                    f"{name} ({v[name]}) sets up a LoRA adapter, but full_finetune trains every "
                    f"weight: drop full_finetune or {name}",
                )
            )
    if v["method"] != "dpo" and v["dpo_beta"] != default["dpo_beta"]:
        ignored.append(
            (
                "dpo_beta",
                f"dpo_beta ({v['dpo_beta']:g}) is DPO's, but method is {v['method']!r}: set "
                "method=dpo, or drop dpo_beta",
            )
        )
    return ignored


def _method_problems(cfg) -> list[str]:
    """What is impossible about the method and its reference (files: `reference.check_start`)."""
    problems = []
    if cfg.method == "dpo" and cfg.dpo_beta <= 0:
        problems.append(f"dpo_beta must be > 0 (TRL's default is 0.1); got {cfg.dpo_beta}")
    if cfg.ref_checkpoint and cfg.method != "dpo":
        problems.append(
            f"ref_checkpoint is DPO's reference model, but method is {cfg.method!r}: set "
            "method=dpo, or leave ref_checkpoint empty"
        )
    return problems


def _data_problems(cfg) -> list[str]:
    """What is impossible about the columns, splits and held-out pairs."""
    problems = []
    try:
        parse_column_map(cfg.column_map)
    except ValueError as err:
        problems.append(str(err))
    for name in ("train_split", "test_split"):
        if not str(getattr(cfg, name)).strip():
            problems.append(f"{name} must name a split (e.g. train, test_prefs); got nothing")
    if cfg.held_out_size < 0 or (
        cfg.held_out_size >= 1 and cfg.held_out_size != int(cfg.held_out_size)
    ):
        problems.append(
            "held_out_size must be 0 (none), a fraction below 1, or a whole number of pairs; "
            f"got {cfg.held_out_size}"
        )
    return problems


COLUMN_TARGETS = ("prompt", "chosen", "rejected", "system")


def parse_column_map(value: str | dict | None) -> dict[str, str]:
    """'question=prompt,good=chosen' (or a mapping) -> {"question": "prompt", "good": "chosen"}.

    Targets are the fields the loader reads (COLUMN_TARGETS); an empty target ('old=') drops the
    column. Raises ValueError saying which item is wrong and what is expected.
    """
    if not value:
        return {}
    if isinstance(value, dict):
        items = [(old, "" if new is None else new) for old, new in value.items()]  # None: drop
    else:  # "old=new" items; an item without "=" is kept whole, to be refused below
        items = [
            tuple(i.split("=", 1)) if "=" in i else (i, None) for i in value.split(",") if i.strip()
        ]
    mapping: dict[str, str] = {}
    for old, new in items:
        old, new = str(old).strip(), None if new is None else str(new).strip()
        if not old or new is None:
            raise ValueError(
                f"column_map item {old or '(empty)'!r} is not 'old=new': write e.g. question=prompt"
            )
        if new and new not in COLUMN_TARGETS:
            raise ValueError(
                f"column_map maps {old!r} to {new!r}: the target must be one of "
                f"{', '.join(COLUMN_TARGETS)} (or nothing, 'old=', to drop the column)"
            )
        if new and new in mapping.values():
            raise ValueError(f"column_map maps two columns to {new!r}: keep one")
        mapping[old] = new
    return mapping
