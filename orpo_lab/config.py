"""TrainConfig: every knob of a run in one flat dataclass and its YAML form (the CLI's flags built
from it: `orpo_lab.config_flags`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from orpo_lab.config_checks import config_problems, ignored_settings
from orpo_lab.config_values import coerce, is_old_sentinel, read_yaml, upgrade_sentinel
from orpo_lab.trackers import report_to_checked

METHODS = ("orpo", "sft", "dpo", "prob_ratio")


def upgraded(values: dict[str, Any]) -> dict[str, Any]:
    """A past run's config (maybe of an earlier version) as this version reads it, quietly: each
    old sentinel as its None, each setting that run ignored (`ignored_settings`) at its default.
    For what reads a run back (the form, the judge); a new config is checked, never upgraded."""
    old = {f.name: f.metadata["old"] for f in fields(TrainConfig) if f.metadata["old"]}
    values = {k: None if is_old_sentinel(v, old.get(k, ())) else v for k, v in values.items()}
    default = {f.name: f.default for f in fields(TrainConfig)}
    for name, _ in ignored_settings(default | values, default):
        values[name] = default[name]
    return values


def _f(default: Any, help: str, choices: tuple | None = None, none: tuple = (), old: tuple = ()):
    """A field: its default, help and choices; an optional one's `none` = (its word for None,
    what None means) and `old`, the numbers that meant None before (still read, with a warning)."""
    meta = {"help": help, "choices": choices, "none": none, "old": old}
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    # what to train
    model: str = _f(
        "default", "'default' (SmolLM2-135M-Instruct), a local model directory, or a hub id"
    )
    dataset: str = _f(
        "default",
        "'default', a .jsonl/.json/.csv/.parquet file, a folder of <split> files, or a hub id",
    )
    eval_dataset: str = _f(
        "",
        "held-out pairs (a file, or the test_split of a folder/hub id); empty: the test_split of "
        "`dataset` when it has one, else held_out_size pairs carved out of its training pairs",
    )
    column_map: str = _f(
        "",
        "rename columns, 'old=new' comma-separated (new: prompt, chosen, rejected, system; "
        "'old=' drops a column), e.g. question=prompt",
    )
    train_split: str = _f("train", "split of `dataset` to train on (e.g. train_prefs)")
    test_split: str = _f(
        "test", "split of `dataset` (or eval_dataset) to evaluate on (e.g. test_prefs)"
    )
    held_out_size: float = _f(
        0.1,
        "pairs carved out of the training data for evaluation when there is no test split: a "
        "fraction (< 1) or a count (>= 1), at most max_eval_pairs; 0 (a count like the others): "
        "no held-out evaluation",
    )
    skip_bad_rows: bool = _f(
        False, "drop rows that break the data rules (the run log counts them) instead of stopping"
    )
    chat_template: str = _f(
        "",
        "empty: the model's own; 'chatml', or a .jinja file: the template for a model without one",
    )
    output_dir: str = _f("runs", "folder that holds one sub-folder per run")
    run_name: str = _f("", "sub-folder name; empty: a timestamp")
    # the objective
    method: str = _f(
        "orpo",
        "the objective (orpo_lab.objectives): orpo = NLL + beta x odds ratio; sft = NLL on the "
        "chosen replies; dpo = DPO's sigmoid loss against a reference model; prob_ratio = NLL + "
        "beta x probability ratio (the paper's section 7.1)",
        METHODS,
    )
    beta: float = _f(
        0.5,
        "weight of the odds-ratio term (the paper's lambda; with prob_ratio, of its ratio term); "
        "0 = plain SFT baseline",
    )
    dpo_beta: float = _f(
        0.1, "method=dpo: DPO's beta, the scale of its implicit reward (TRL's 0.1)"
    )
    ref_checkpoint: str = _f(
        "",
        "method=dpo: the reference model; empty = the run's starting point (init_checkpoint, else "
        "the base model), 'base', or a checkpoint (or run folder) of the same base model",
    )
    init_checkpoint: str = _f(
        "",
        "start a new run from a checkpoint's weights (or a run folder's last checkpoint) of the "
        "same base model, e.g. SFT then DPO; its adapter keeps its own LoRA r and alpha",
    )
    nll_scope: str = _f(
        "response",
        "tokens the NLL covers: the response (paper) or prompt+response (TRL)",
        ("response", "prompt_response"),
    )
    # optimisation
    learning_rate: float = _f(
        5e-4, "peak learning rate (LoRA wants ~1e-4..1e-3, full fine-tuning ~5e-6)"
    )
    lr_scheduler: str = _f(
        "cosine",
        "learning-rate schedule after warmup",
        ("cosine", "linear", "constant", "inverse_sqrt"),
    )
    warmup_steps: int = _f(5, "optimiser steps of linear warmup")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    max_grad_norm: float | None = _f(
        1.0,
        "gradient clipping norm; None (off): no clipping",
        none=("off", "no clipping"),
        old=(0,),
    )
    epochs: float = _f(1.0, "passes over the training pairs (max_steps None: they decide)")
    max_steps: int | None = _f(
        None,
        "optimiser steps; None (epochs): as many as `epochs` make",
        none=("epochs", "as many steps as epochs make"),
        old=(-1, 0),
    )
    batch_size: int = _f(4, "preference pairs per micro-batch (per process)")
    grad_accum: int = _f(1, "micro-batches per optimiser step")
    max_length: int = _f(256, "longest prompt+response in tokens")
    max_prompt_length: int = _f(128, "longest prompt in tokens")
    max_train_pairs: int | None = _f(
        None,
        "use only N training pairs (a seeded sample); None (all): every one",
        none=("all", "all pairs"),
        old=(0,),
    )
    # model and adapter
    lora_r: int = _f(16, "LoRA rank")
    lora_alpha: int = _f(32, "LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = _f(0.0, "dropout on the LoRA input")
    lora_target_modules: str = _f("all-linear", "'all-linear' or comma-separated module names")
    full_finetune: bool = _f(False, "train every weight instead of a LoRA adapter")
    load_in_4bit: bool = _f(
        False, "QLoRA: NF4 4-bit frozen base (bitsandbytes; saves memory on CUDA, slower on CPU)"
    )
    gradient_checkpointing: bool = _f(
        False, "recompute activations in backward (saves GPU memory, slower)"
    )
    layout: str = _f(
        "prefix",
        "batch layout: padded rows, padding-free packing, or shared prompt prefix",
        ("padded", "packed", "prefix"),
    )
    logps_chunk_size: int | None = _f(
        1024,
        "positions per lm_head chunk for log-probs; None (full): the full logits at once",
        none=("full", "full logits"),
        old=(0,),
    )
    # run control
    seed: int = _f(0, "seed for data order, LoRA init and dropout")
    precision: str = _f(
        "auto",
        "auto: bf16 on CUDA; CPU LoRA: fp32 or bf16, whichever a few timed steps measure faster "
        "here (cached; orpo_lab.autotune); else fp32. CPU bf16: bf16 frozen base, fp32 adapter",
        ("auto", "fp32", "bf16", "fp16"),
    )
    torch_compile: str = _f(
        "auto",
        "torch.compile the decoder layers; auto (CPU LoRA): when the measured saving over the "
        "run exceeds the measured compile (first tried in a 10+ minute run; orpo_lab.autotune)",
        ("auto", "on", "off"),
    )
    device: str = _f("auto", "auto, cpu, cuda, cuda:1, ...")
    eval_every: int | None = _f(
        25,
        "optimiser steps between held-out evaluations; None (end): only at the end",
        none=("end", "only at the end"),
        old=(0,),
    )
    eval_at_start: bool = _f(False, "evaluate before step 1 too (the baseline; presets: on)")
    max_eval_pairs: int | None = _f(
        64,
        "held-out pairs kept (a seeded sample of a larger split); the last step scores all of "
        "them; None (all): every held-out pair",
        none=("all", "all pairs"),
        old=(0,),
    )
    eval_subset_pairs: int | None = _f(
        64,
        "held-out pairs scored by the evaluations before the last step: a fixed seeded subset "
        "of the held-out pairs (cheaper curves); None (all): all of them every time",
        none=("all", "all pairs"),
        old=(0,),
    )
    eval_batch_size: int | None = _f(
        None,
        "held-out pairs per evaluation batch (no activations kept: larger is cheap); None "
        "(auto): 4 x batch_size, at most 16, never below batch_size",
        none=("auto", "automatic"),
        old=(0,),
    )
    save_every: int | None = _f(
        50,
        "optimiser steps between checkpoints; None (end): only at the end",
        none=("end", "only at the end"),
        old=(0,),
    )
    save_total_limit: int = _f(3, "checkpoints kept (oldest deleted first)")
    resume: bool = _f(False, "continue the run in output_dir/run_name from its last checkpoint")
    trust_remote_code: bool = _f(False, "allow model code from the hub (only for models you trust)")
    report_to: str = _f("none", "experiment trackers: none, or any of tensorboard,trackio,wandb")

    def __post_init__(self) -> None:
        if isinstance(self.column_map, dict):  # YAML may give a mapping: keep the one string form
            self.column_map = ",".join(f"{old}={new or ''}" for old, new in self.column_map.items())
        if isinstance(self.torch_compile, bool):  # YAML reads a bare on / off as true / false
            self.torch_compile = "on" if self.torch_compile else "off"
        for f in fields(self):
            if f.metadata["old"]:
                old, (word, meaning) = f.metadata["old"], f.metadata["none"]
                value = upgrade_sentinel(f.name, getattr(self, f.name), old, word, meaning)
                setattr(self, f.name, value)
        self.report_to, wrong = report_to_checked(self.report_to)
        if self.method == "sft":  # no preference term: beta 0 says so, as beta 0 always meant SFT
            self.beta = 0.0
        problems = config_problems(self) + wrong
        if problems:
            raise ValueError("Invalid training config:\n- " + "\n- ".join(problems))

    @property
    def eval_batch(self) -> int:
        """Held-out pairs per evaluation batch: `eval_batch_size`, or for None four training batches,
        at most 16 (a model that fits one pair per step on a GPU evaluates four, not sixteen)."""
        return self.eval_batch_size or max(self.batch_size, min(16, 4 * self.batch_size))

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.run_name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """A config from plain values (YAML, a form, JSON): each checked against its field's type.

        Whole numbers may arrive as floats (2.0, from a number box) and numbers as strings ("5");
        anything else that does not fit says which field, what it got and what it expected.
        """
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(
                f"Unknown config keys: {', '.join(unknown)}. Known keys: {', '.join(sorted(known))}"
            )
        converted, problems = {}, []
        for name, value in values.items():
            if (name, type(value)) in (("column_map", dict), ("torch_compile", bool)):
                converted[name] = value  # YAML's forms of these: __post_init__ takes them
                continue
            try:
                word = (known[name].metadata["none"] or ("",))[0]
                converted[name] = coerce(str(known[name].type), value, word)
            except ValueError as err:
                problems.append(f"{name}: {err}, got {value!r}")
        if problems:
            raise ValueError("Invalid training config:\n- " + "\n- ".join(problems))
        return cls(**converted)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        return cls.from_dict(read_yaml(path))
