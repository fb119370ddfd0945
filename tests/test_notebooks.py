"""Execute every notebook in quick mode (ORPO_LAB_QUICK=1) and check the numbers each one produces.

Each notebook runs top to bottom in a kernel of this test's own interpreter (a temporary kernel spec,
so a `python3` kernel of another environment can never be picked up). One extra cell is appended that
prints a JSON object of chosen values from the notebook's namespace; the asserts read real values.
Notebooks 4 and 5 share one temporary runs folder, so notebook 5 reuses notebook 4's runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "orpo-lab-tests"
MARKER = "ORPO_LAB_NOTEBOOK_VALUES="
FAMILIES = ("arithmetic", "bullets", "concise")


@pytest.fixture(scope="session")
def notebook_env(tmp_path_factory) -> dict[str, str]:
    """Environment of the kernels: quick mode, a shared temporary runs folder, this interpreter."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "ORPO Lab tests", "language": "python"})
    )
    runs = tmp_path_factory.mktemp("runs")
    return {"JUPYTER_PATH": str(root), "ORPO_LAB_QUICK": "1", "ORPO_LAB_RUNS": str(runs)}


def run_notebook(name: str, values: dict[str, str], env: dict, monkeypatch) -> dict:
    """Execute notebooks/<name> and return {key: value of the expression values[key]} from its kernel."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    fields = ", ".join(
        f"{key!r}: {expr}" for key, expr in {**values, "executable": "sys.executable"}.items()
    )
    nb.cells.append(
        nbformat.v4.new_code_cell(f"import json, sys\nprint({MARKER!r} + json.dumps({{{fields}}}))")
    )
    client = NotebookClient(
        nb, kernel_name=KERNEL, timeout=600, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    line = next(ln for ln in text.splitlines() if ln.startswith(MARKER))
    result = json.loads(line[len(MARKER) :])
    assert result.pop("executable") == sys.executable  # the notebook ran in this environment
    return result


def test_notebooks_are_stored_without_outputs():
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == [
        "01_odds.ipynb",
        "02_loss_gradient.ipynb",
        "03_text_to_logps.ipynb",
        "04_training.ipynb",
        "05_compare_outputs.ipynb",
    ]
    for name in names:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), name
        intro = " ".join(nb.cells[0].source.split()).lower()
        assert nb.cells[0].cell_type == "markdown" and "you will learn" in intro, name
        assert "What to try next" in nb.cells[-1].source
        assert "ORPO_LAB_QUICK" in code[0].source


def test_01_odds(notebook_env, monkeypatch):
    v = run_notebook(
        "01_odds.ipynb",
        {
            "pr_spread": "log_pr_spread",
            "or_spread": "log_or_spread",
            "pr_std": "log_pr_std",
            "or_std": "log_or_std",
            "sum_prefers_chosen": "sum_prefers_chosen",
            "mean_prefers_chosen": "mean_prefers_chosen",
        },
        notebook_env,
        monkeypatch,
    )
    # The paper's histogram: log OR spreads wider than log PR for P ~ U(0, 1).
    assert v["or_spread"] > 1.3 * v["pr_spread"] > 0
    assert v["or_std"] > v["pr_std"] > 0
    # 10 tokens at -0.5 vs 40 at -0.3: the sum prefers the short reply, the mean the better-fitting one.
    assert v["sum_prefers_chosen"] and not v["mean_prefers_chosen"]


def test_02_loss_gradient(notebook_env, monkeypatch):
    v = run_notebook(
        "02_loss_gradient.ipynb",
        {
            "grad_error": "max_grad_error",
            "naive_finite": "naive_finite",
            "stable_finite": "stable_finite",
            "stable_rel_error": "stable_max_rel_error",
            "loss": "loss.item()",
            "hand": "hand.item()",
        },
        notebook_env,
        monkeypatch,
    )
    assert v["grad_error"] < 1e-6
    assert (
        v["stable_finite"] and not v["naive_finite"]
    )  # naive log(1 - exp(x)) is -inf at x = -1e-9
    assert v["stable_rel_error"] < 1e-5
    assert v["loss"] == pytest.approx(v["hand"], abs=1e-6)


@pytest.mark.slow
def test_03_text_to_logps(notebook_env, monkeypatch):
    v = run_notebook(
        "03_text_to_logps.ipynb",
        {
            "last_chosen": "last_scored_chosen",
            "last_rejected": "rejected_scored[-1]",
            "eot": "eot",
            "pad": "tokenizer.pad_token_id",
            "chosen_logp": "chosen_logp",
            "rejected_logp": "rejected_logp",
            "by_value": "int(by_value.sum())",
            "scored": "int(scored[0].sum())",
        },
        notebook_env,
        monkeypatch,
    )
    # pad == eos == <|im_end|>, and the end-of-turn token is still scored (masks by position).
    assert v["last_chosen"] == v["last_rejected"] == "<|im_end|>"
    assert v["eot"] == v["pad"]
    assert v["by_value"] == v["scored"] - 1
    assert -10 < v["chosen_logp"] < 0 and -10 < v["rejected_logp"] < 0


@pytest.mark.slow
def test_04_training(notebook_env, monkeypatch):
    v = run_notebook(
        "04_training.ipynb",
        {
            "sft_rejected": "sft_rejected",
            "orpo_rejected": "orpo_rejected",
            "sft_train_rejected": "sft_train_rejected",
            "orpo_train_rejected": "orpo_train_rejected",
            "margins": "{str(k): m for k, m in sweep_margins.items()}",
        },
        notebook_env,
        monkeypatch,
    )
    sft, orpo = v["sft_rejected"], v["orpo_rejected"]
    assert sft[0] == pytest.approx(orpo[0])  # the same held-out pairs and start
    assert sft[-1] > sft[0]  # SFT on the chosen replies raises the rejected ones too (the paper)
    assert orpo[-1] < sft[-1]  # the odds-ratio term holds them down
    assert v["orpo_train_rejected"] < v["sft_train_rejected"]  # same last batch in both runs
    assert set(v["margins"]) == {"0.0", "0.5", "1.0"}


@pytest.mark.slow
def test_05_compare_outputs(notebook_env, monkeypatch):
    v = run_notebook(
        "05_compare_outputs.ipynb",
        {"table": "pass_table", "answers": "answers", "n": "len(records)"},
        notebook_env,
        monkeypatch,
    )
    assert set(v["table"]) == {"base", "SFT", "ORPO"}
    for rates in v["table"].values():
        assert set(FAMILIES) <= set(rates) and "all" in rates
        for family in FAMILIES:
            assert rates[family]["n"] == 2  # one in-domain and one ood prompt in quick mode
            assert 0.0 <= rates[family]["all"] <= 1.0
    assert all(len(a) == v["n"] for a in v["answers"].values())
