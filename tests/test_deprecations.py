"""No API that is about to break: no DeprecationWarning or FutureWarning from the project's own calls
into transformers, peft, datasets, accelerate and gradio (pyproject's filterwarnings hides
DeprecationWarning from the rest of the suite: this test records every warning itself); the
package metadata as setuptools wants it; the entry point of earlier versions."""

from __future__ import annotations

import runpy
import sys
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_train import make_config, write_pairs

import orpo_lab

ROOT = Path(__file__).resolve().parents[1]
PROJECT = Path(orpo_lab.__file__).resolve().parent
LIBRARIES = ("transformers", "peft", "datasets", "accelerate", "gradio")


def _library(filename: str) -> str | None:
    parts = Path(filename).parts
    if "site-packages" in parts[:-1]:
        top = parts[parts.index("site-packages") + 1]
        return top if top in LIBRARIES else None
    return None


def _ours(filename: str) -> bool:
    return Path(filename).resolve().is_relative_to(PROJECT)


def from_project_call(stack: list, filename: str) -> str | None:
    """Where the project called a library that warned: the warning points at our code (a library
    warning with stacklevel > 1), or below our innermost frame on the stack there is a frame of
    one of LIBRARIES. None for warnings that our calls did not cause."""
    if _ours(filename):
        return filename
    ours = [i for i, frame in enumerate(stack) if _ours(frame.filename)]
    if ours and any(_library(frame.filename) for frame in stack[ours[-1] + 1 :]):
        frame = stack[ours[-1]]
        return f"{frame.filename}:{frame.lineno} ({frame.name})"
    return None


@contextmanager
def project_deprecations():
    """Collect every DeprecationWarning / FutureWarning raised by the project's calls into
    LIBRARIES while the block runs: 'always' shows each one, even those seen before."""
    found: list[str] = []

    def record(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, (DeprecationWarning, FutureWarning)):
            where = from_project_call(traceback.extract_stack()[:-1], filename)
            if where:
                found.append(f"{category.__name__}: {message} [{filename}:{lineno}, via {where}]")

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        yield found


def test_the_recorder_catches_a_deprecated_call_made_from_project_code(tiny_model_dir):
    """The check below can fail: a deprecated transformers call made from a file of orpo_lab/ is
    recorded (code compiled with that file name stands in for a line of ours)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    if not hasattr(model, "activation_checkpointing_enable"):
        pytest.skip("this transformers has no deprecated gradient-checkpointing name")
    code = compile("model.gradient_checkpointing_enable()", str(PROJECT / "model.py"), "exec")
    with project_deprecations() as found:
        exec(code, {"model": model})
    assert len(found) == 1 and "gradient_checkpointing_enable` is deprecated" in found[0]


def test_train_resume_chat_export_and_app_raise_no_deprecation(tmp_path, tiny_model_dir):
    """A short LoRA run with activation checkpointing, its resume, chat with the checkpoint, the
    adapter and merged exports, and the app built and served: nothing deprecated on the way."""
    from orpo_lab.adapter import export_adapter
    from orpo_lab.checkpoint import Checkpointer
    from orpo_lab.model_pool import ModelPool
    from orpo_lab.train import train
    from orpo_lab.ui import build_app

    data = write_pairs(tmp_path / "train.jsonl", 8), write_pairs(tmp_path / "test.jsonl", 4, 50)
    cfg = make_config(
        tmp_path, data, tiny_model_dir, max_steps=2, save_every=1, gradient_checkpointing=True
    )
    with project_deprecations() as found:
        train(cfg)
        cfg.resume, cfg.max_steps = True, 3
        train(cfg)
        checkpoint = cfg.run_dir / "checkpoints" / "step-000003"
        pool = ModelPool(str(tiny_model_dir), device="cpu")
        answers = pool.generate(
            [[{"role": "user", "content": "Hi"}]] * 2,
            [None, str(checkpoint)],
            max_new_tokens=4,
            temperature=1.0,
            seed=0,
        )
        export_adapter(checkpoint, tmp_path / "adapter.zip")
        Checkpointer.export_merged(checkpoint, tmp_path / "merged")
        demo = build_app(str(tiny_model_dir), cfg.output_dir, device="cpu")
        demo.launch(prevent_thread_lock=True, quiet=True)
        demo.close()
    assert len(answers) == 2 and (tmp_path / "merged" / "config.json").is_file()
    assert found == [], "\n".join(found)


def test_package_metadata_has_an_spdx_licence_setuptools_accepts():
    """PEP 639: `license` is an SPDX expression and `license-files` names the text; setuptools
    reads the project table without its deprecation warning (raised here as an error)."""
    pytest.importorskip("setuptools", minversion="77")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert dist.metadata.license_expression == "Apache-2.0"
    assert dist.metadata.license_files == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text()


@pytest.mark.filterwarnings("ignore:'orpo_lab.(train|cli)' found in sys.modules")  # in-process
def test_python_m_orpo_lab_train_runs_the_cli(monkeypatch, capsys):
    """`python -m orpo_lab.train`, the entry point of earlier versions, runs `orpo-lab` and says
    so, instead of doing nothing (run here as `-m` runs it, in this process)."""
    monkeypatch.setattr(sys, "argv", ["orpo_lab/train.py", "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_module("orpo_lab.train", run_name="__main__")
    out = capsys.readouterr()
    assert done.value.code == 0 and "usage: orpo-lab" in out.out
    assert "the command is now `orpo-lab`" in out.err
