"""TrainConfig's optional fields (None, or a word on the command line, instead of 0 / -1), the
old sentinels still read with one deprecation line each, and the combinations whose second field
the run would ignore, refused naming both."""

from __future__ import annotations

import json
import shutil
import types
import warnings

import pytest
import yaml
from test_train import make_config, write_pairs

from orpo_lab.config import TrainConfig
from orpo_lab.config_flags import build_parser, config_from_args
from orpo_lab.pipeline import stage_configs
from orpo_lab.rundir import RunDir
from orpo_lab.train import train

# Each optional field: (an earlier version's sentinel, its word on the command line).
OLD = {
    "max_train_pairs": (0, "all"),
    "max_eval_pairs": (0, "all"),
    "eval_subset_pairs": (0, "all"),
    "eval_batch_size": (0, "auto"),
    "logps_chunk_size": (0, "full"),
    "max_grad_norm": (0, "off"),
    "max_steps": (-1, "epochs"),
    "eval_every": (0, "end"),
    "save_every": (0, "end"),
}


def test_old_sentinels_load_as_none_with_one_line_per_field(tmp_path):
    """A YAML of an earlier version (every sentinel, plus max_steps 0, its other spelling) reads
    as the YAML with null: one FutureWarning per field, naming it and what to write instead."""
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({k: v for k, (v, _) in OLD.items()}))
    (tmp_path / "new.yaml").write_text(yaml.safe_dump(dict.fromkeys(OLD)))
    with pytest.warns(FutureWarning) as caught:
        old = TrainConfig.from_yaml(tmp_path / "old.yaml")
    lines = [str(w.message) for w in caught]
    assert sorted(line.split(":")[0] for line in lines) == sorted(OLD)
    assert all("\n" not in line and "null in YAML" in line for line in lines)
    assert "eval_every: 0 for 'only at the end' is deprecated" in "".join(lines)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new form: no warning at all
        new = TrainConfig.from_yaml(tmp_path / "new.yaml")
    assert old == new and all(getattr(new, name) is None for name in OLD)
    assert new.eval_batch == 16  # None: 4 x batch_size 4, at most 16
    with pytest.warns(FutureWarning, match="max_steps: 0 for 'as many steps as epochs make'"):
        assert TrainConfig(max_steps=0).max_steps is None


def test_none_and_the_words_round_trip_through_yaml_and_from_dict(tmp_path):
    cfg = TrainConfig(eval_every=None, max_train_pairs=None, max_steps=None)
    cfg.to_yaml(tmp_path / "c.yaml")
    assert "eval_every: null" in (tmp_path / "c.yaml").read_text()
    assert TrainConfig.from_yaml(tmp_path / "c.yaml") == cfg
    words = {name: word for name, (_, word) in OLD.items()}
    assert TrainConfig.from_dict(words) == TrainConfig.from_dict(dict.fromkeys(OLD))
    # YAML reads a bare `off` as false: for max_grad_norm that is its word.
    (tmp_path / "off.yaml").write_text("max_grad_norm: off\nsave_every: NONE\n")
    off = TrainConfig.from_yaml(tmp_path / "off.yaml")
    assert (off.max_grad_norm, off.save_every) == (None, None)
    with pytest.raises(ValueError, match="eval_every: expected a whole number, or end / none"):
        TrainConfig.from_dict({"eval_every": "often"})


def test_cli_words_parse_and_wrong_ones_say_what_is_expected(tmp_path, capsys):
    flags = [f"--{name.replace('_', '-')}={word}" for name, (_, word) in OLD.items()]
    cfg = config_from_args(build_parser().parse_args(flags))
    assert all(getattr(cfg, name) is None for name in OLD)
    cfg = config_from_args(build_parser().parse_args(["--eval-every", "7", "--save-every", "none"]))
    assert (cfg.eval_every, cfg.save_every) == (7, None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--eval-every", "often"])
    assert "--eval-every: expected a whole number or end; got 'often'" in capsys.readouterr().err
    # An old YAML through the CLI: one plain line per field on stderr, not Python's two.
    (tmp_path / "old.yaml").write_text("eval_every: 0\nmax_steps: -1\n")
    cfg = config_from_args(build_parser().parse_args(["--config", str(tmp_path / "old.yaml")]))
    err = capsys.readouterr().err.splitlines()
    assert (cfg.eval_every, cfg.max_steps) == (None, None)
    assert [line.split(":")[:2] for line in err] == [
        ["orpo-lab", " max_steps"],
        ["orpo-lab", " eval_every"],
    ]
    assert "--eval-every end on the command line" in err[1]


def test_a_negative_number_is_a_value_that_the_config_check_answers(capsys):
    """Python 3.11's argparse took "-1e-4" for a flag and said "expected one argument"."""
    from orpo_lab.cli import main

    args = build_parser().parse_args(["--learning-rate", "-1e-4", "--warmup-steps", "-2"])
    assert (args.learning_rate, args.warmup_steps) == (-1e-4, -2)
    assert main(["--learning-rate", "-1e-4"]) == 2
    assert "learning_rate must be > 0; got -0.0001" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a flag that is not one stays an error
        build_parser().parse_args(["--learning-rate", "-x"])


@pytest.mark.parametrize(
    "changes, fragments",
    [
        (dict(max_steps=60, epochs=3.0), ["epochs (3)", "max_steps is set (60)"]),
        (dict(full_finetune=True, lora_r=8), ["lora_r (8)", "full_finetune", "drop"]),
        (dict(full_finetune=True, lora_alpha=8), ["lora_alpha (8)", "full_finetune"]),
        (dict(full_finetune=True, lora_dropout=0.1), ["lora_dropout (0.1)", "full_finetune"]),
        (dict(full_finetune=True, lora_target_modules="q_proj"), ["lora_target_modules"]),
        (dict(method="orpo", dpo_beta=0.2), ["dpo_beta (0.2)", "method is 'orpo'", "method=dpo"]),
        (dict(method="sft", dpo_beta=0.3), ["dpo_beta (0.3)", "method is 'sft'"]),
        (dict(max_steps=-5), ["max_steps must be above 0, or None (epochs", "got -5"]),
        (dict(eval_every=-2), ["eval_every must be above 0, or None (end", "got -2"]),
        (dict(max_grad_norm=-1.0), ["max_grad_norm must be above 0, or None (off"]),
    ],
)
def test_ignored_and_impossible_combinations_are_refused_naming_both(changes, fragments):
    with pytest.raises(ValueError) as err:
        TrainConfig(**changes)
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_defaults_are_never_set_and_every_problem_is_listed_at_once():
    """A field at its default is not "set": these go together; all refusals come in one error."""
    TrainConfig(full_finetune=True, max_steps=5, method="dpo")
    TrainConfig(max_steps=None, epochs=2.0, method="dpo", dpo_beta=0.3)
    TrainConfig(full_finetune=True, precision="bf16")  # autocast over fp32 master weights: used
    with pytest.raises(ValueError) as err:
        TrainConfig(max_steps=5, epochs=2.0, full_finetune=True, lora_r=4, dpo_beta=0.5)
    assert str(err.value).count("\n- ") == 3


def test_sft_then_dpo_gives_dpo_beta_to_the_dpo_stage_alone():
    cfg = TrainConfig(method="dpo", dpo_beta=0.25, max_steps=6, run_name="p")
    sft, dpo = stage_configs(cfg, 2)
    assert (sft.method, sft.dpo_beta, dpo.method, dpo.dpo_beta) == ("sft", 0.1, "dpo", 0.25)


def test_the_form_shows_none_as_an_empty_box_and_gives_it_back():
    """The app's form: a config with None fields -> the form's values -> the same config; an
    earlier version's run (max_steps -1, save_every 0) loads as the same empty boxes."""
    from orpo_lab.ui.form_fields import FORM_NAMES, LOADED_NAMES, form_config, loaded_values

    cfg = TrainConfig(max_steps=None, eval_every=None, save_every=None, run_name="r")
    shown = loaded_values(cfg.to_dict(), "r2")
    assert (shown["max_steps"], shown["eval_every"], shown["save_every"]) == (None, None, None)
    form = {**shown, "report_to": [], "trust_remote_code": False, "skip_bad_rows": False}
    form |= {"device": "auto", "model": cfg.model}
    ctx = types.SimpleNamespace(model="default", checkpoint_choices=list)
    again = TrainConfig.from_dict(form_config(ctx, form) | {"run_name": "r"})
    assert again == cfg
    old = loaded_values({**cfg.to_dict(), "max_steps": -1, "save_every": 0}, "r2")
    assert [old[n] for n in FORM_NAMES] == [shown[n] for n in FORM_NAMES]
    assert set(shown) == set(LOADED_NAMES)


def test_a_run_folder_of_an_earlier_version_resumes_as_the_new_form(tmp_path, tiny_model_dir):
    """A run's config.yaml with the old sentinels (written by an earlier version) resumes with
    the deprecation lines and continues exactly as the same run with the new form does."""
    data = write_pairs(tmp_path / "train.jsonl", 16), write_pairs(tmp_path / "test.jsonl", 4, 50)
    new_form = dict(eval_every=None, max_train_pairs=None, eval_batch_size=None)
    cfg = make_config(
        tmp_path, data, tiny_model_dir, max_steps=2, save_every=1, eval_at_start=False, **new_form
    )
    train(cfg)
    shutil.copytree(cfg.run_dir, cfg.run_dir.with_name("old"))
    saved = yaml.safe_load((cfg.run_dir / "config.yaml").read_text())
    assert (saved["eval_every"], saved["max_train_pairs"]) == (None, None)
    old_form = saved | {"eval_every": 0, "max_train_pairs": 0, "eval_batch_size": 0}
    (cfg.run_dir.with_name("old") / "config.yaml").write_text(yaml.safe_dump(old_form))
    records = {}
    for name in ("t", "old"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            again = TrainConfig.from_yaml(cfg.run_dir.with_name(name) / "config.yaml")
        said = sorted(str(w.message).split(":")[0] for w in caught)
        assert said == ([] if name == "t" else ["eval_batch_size", "eval_every", "max_train_pairs"])
        again.run_name, again.resume, again.max_steps = name, True, 3
        train(again)
        rewritten = yaml.safe_load((again.run_dir / "config.yaml").read_text())
        assert rewritten["eval_every"] is None and rewritten["max_train_pairs"] is None
        lines = RunDir(again.run_dir).metrics_path.read_text().splitlines()
        records[name] = [json.loads(line) for line in lines]
    steps = {n: [r for r in rs if r.get("kind") == "train"] for n, rs in records.items()}
    assert [r["step"] for r in steps["old"]] == [1, 2, 3]
    for new, old in zip(steps["t"], steps["old"], strict=True):
        assert new["loss"] == old["loss"] and new["step"] == old["step"]


def test_a_past_runs_config_reads_as_it_ran():
    """What reads a run back (the form, the judge) takes an earlier version's config as the run
    used it: old sentinels as None and the settings it ignored at their defaults, quietly; the
    same values as a new config are refused (a default is never "set")."""
    from orpo_lab.config import upgraded

    past = dict(max_steps=60, epochs=3.0, full_finetune=True, lora_r=8, dpo_beta=0.3, eval_every=0)
    with pytest.raises(ValueError, match="epochs .3. is ignored"), pytest.warns(FutureWarning):
        TrainConfig(**past)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read = TrainConfig.from_dict(upgraded(past))
    assert (read.max_steps, read.epochs, read.lora_r, read.dpo_beta) == (60, 1.0, 16, 0.1)
    assert read.full_finetune and read.eval_every is None
    assert upgraded(dict(method="dpo", dpo_beta=0.3, max_steps=-1, epochs=2.0)) == dict(
        method="dpo", dpo_beta=0.3, max_steps=None, epochs=2.0
    )


def test_the_steps_note_reads_an_empty_max_steps_as_epochs():
    from orpo_lab.ui.data_preview import steps_note

    assert "**60 steps**" in steps_note({"max_steps": 60})
    assert "max steps -5 is refused:** empty lets epochs decide" in steps_note({"max_steps": -5})
