"""Shared fixtures: the real default tokenizer and a tiny random-initialised causal LM built from a config."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# The suite never needs the network (tiny models from configs, the embedded default model): say so
# before huggingface_hub and gradio are imported, so that nothing waits on a hub or analytics call
# that cannot succeed here. Subprocesses (training runs, notebook kernels) inherit it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# precision="auto" and torch_compile="auto" follow measurements of the machine (orpo_lab.autotune),
# kept in a measurement cache: the suite (and its subprocesses) starts one of its own, empty, so that
# nothing earlier runs measured changes what a test sees. Tests that compare arithmetic ask for a
# precision and torch_compile="off" themselves (test_train.make_config).
if not os.environ.get("ORPO_LAB_AUTOTUNE_CACHE"):
    _folder = Path(tempfile.mkdtemp(prefix="orpo-lab-tests-"))
    os.environ["ORPO_LAB_AUTOTUNE_CACHE"] = str(_folder / "autotune.json")
# `make test` runs the suite in parallel processes (pytest-xdist's `-n`): each worker's torch, and the
# training runs and notebook kernels it starts (they inherit the environment), take an equal share of
# the cores, so that threads never outnumber cores (OpenMP threads waiting for a busy core spin).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    _share = len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ["OMP_NUM_THREADS"] = str(max(1, _share))

import sys
import traceback

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from orpo_lab.model import default_model_dir, load_tokenizer

# Prepared data too (ORPO_LAB_CACHE/data): a cache of the suite's own, removed when it ends, as on a
# fresh CI machine; otherwise each run left ~150 entries of its temporary datasets in the user's
# cache. The default model that `make model` prepared is linked in, not converted again.
_folder = globals().get("_folder")  # set above only in the process that made it; workers inherit
if _folder is not None:
    atexit.register(shutil.rmtree, _folder, ignore_errors=True)  # a link is removed, not followed
if _folder is not None and not os.environ.get("ORPO_LAB_CACHE"):
    _prepared = default_model_dir()
    os.environ["ORPO_LAB_CACHE"] = str(_folder / "cache")
    if (_prepared / "config.json").is_file():
        default_model_dir().parent.mkdir()
        default_model_dir().symlink_to(_prepared, target_is_directory=True)

# The tests that take longest, in seconds (one thread per worker, two workers on a 2-core AMD EPYC
# Zen 3, the suite of 2026-12-07; the notebook 4 fixture counted with the first test that uses it).
# They only order the work (pytest_collection_modifyitems); a test missing here counts as short.
LONG_TESTS = {
    "tests/test_notebooks.py::test_04_training": 200,
    "tests/test_notebooks.py::test_06_objectives": 168,
    "tests/test_browser.py::test_train_stop_resume_overlay_chat_votes": 85,
    "tests/test_notebooks.py::test_05_compare_outputs": 84,
    "tests/test_notebooks.py::test_00_why_orpo": 74,
    "tests/test_browser.py::test_default_model_inside_orpo_and_blind_vote": 47,
    "tests/test_compile.py::test_compiled_layers_train_like_eager_and_a_real_probe_times_them": 46,
    "tests/test_browser.py::test_zerogpu_slices_reload_stop_chat_blind_and_tokens": 30,
    "tests/test_notebooks.py::test_03_text_to_logps": 28,
    "tests/test_app.py::test_train_stop_download_export_delete": 28,
    "tests/test_zerogpu.py::test_a_slice_killed_at_its_deadline_loses_only_the_steps_after_its_save": 23,
    "tests/test_train.py::test_two_process_torchrun_equals_one_process": 22,
    "tests/test_evaluate.py::test_cli_evaluate_samples_flags": 21,
}


def pytest_collection_modifyitems(config, items):
    """Order the tests so that `pytest -n N` (pytest-xdist's worksteal) finishes early.

    worksteal hands worker i the i-th of N consecutive shares of this list, and an idle worker
    later takes tests from the tail of the longest queue: a long test left at a share's tail starts
    last and keeps one worker busy after the others are done. So the long tests go to the heads
    of the shares, the longest first to the least loaded share (LPT), and the short ones fill the
    shares to the lengths worksteal cuts. The tests that use notebook 4's runs (`notebook_04`)
    stay together at the head of one share, so that no worker waits for the notebook while
    another runs it. Without xdist: those tests first, the rest in the order collected."""
    uses_04 = [item for item in items if "notebook_04" in getattr(item, "fixturenames", ())]
    rest = [item for item in items if item not in uses_04]
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2:
        items[:] = uses_04 + rest
        return

    def cost(item) -> int:
        return LONG_TESTS.get(item.nodeid, 0)

    blocks = [uses_04, *([item] for item in rest if cost(item))]
    short = [item for item in rest if not cost(item)]
    heads: list[list] = [[] for _ in range(workers)]
    for block in sorted(blocks, key=lambda b: -sum(map(cost, b))):  # a group by its total
        min(heads, key=lambda head: sum(map(cost, head))).extend(block)
    # worksteal's cut: each worker in turn gets len(pending) // (workers left) of the rest.
    ordered, left = [], len(items)
    for i, head in enumerate(heads):
        size = left // (workers - i)
        take = max(0, size - len(head))
        ordered += head + short[:take]
        short, left = short[take:], left - len(head) - take
    items[:] = ordered + short


@pytest.fixture(autouse=True)
def environment_kept():
    """`datasets.Dataset.map(num_proc=...)` (datasets 5.2, the parallel preparation of large data)
    puts a deep copy of `os.environ` in its place. A `monkeypatch.setenv` made before then is undone
    on the original object only: the copy would keep it for every later test (ORPO_LAB_CACHE left
    pointing at a test's empty folder made the next default-model test convert the GGUF again,
    ~20 s). Put the original object back after each test, which monkeypatch has restored by then."""
    original = os.environ
    yield
    if os.environ is not original:
        os.environ = original  # noqa: B003 (the object itself back, not a new environment)


@pytest.fixture(autouse=True)
def no_unhandled_app_errors(request, monkeypatch):
    """A browser test fails when a handler of the app raised anything but a `gr.Error` (the page
    shows a bare red "Error" for those): Gradio prints each with `traceback.print_exc`."""
    if request.node.get_closest_marker("browser") is None:
        yield
        return
    from gradio.exceptions import Error

    unhandled, original = [], traceback.print_exc

    def noted(*args, **kwargs):
        err = sys.exc_info()[1]
        if err is not None and not isinstance(err, Error):
            unhandled.append(f"{type(err).__name__}: {err}")
        original(*args, **kwargs)

    monkeypatch.setattr(traceback, "print_exc", noted)
    yield
    assert not unhandled, f"unhandled exception(s) in the app during this test: {unhandled}"


@pytest.fixture(scope="session")
def default_tokenizer():
    """SmolLM2's real tokenizer and ChatML template (pad == eos == <|im_end|>). A machine without the
    default model (a GPU box running a few tests) can point ORPO_LAB_TEST_TOKENIZER at a folder with
    its tokenizer files."""
    return load_tokenizer(os.environ.get("ORPO_LAB_TEST_TOKENIZER", "default"))


def build_tiny_model(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama with SmolLM2's vocabulary: same tokenizer, a few MB, milliseconds per step."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_tokenizer):
    """A local model directory (config, safetensors, tokenizer) that `load_model` accepts."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_model(len(default_tokenizer)).save_pretrained(path)
    default_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def learnable_model_dir(tmp_path_factory, default_tokenizer):
    """The tiny model with 10x wider embeddings. At the usual 0.02 init its tied logits stay near
    uniform (|logit| <= |h| |e| ~ 1.3), which caps what a LoRA can learn at about ln(V) - 1.3 nats."""
    model = build_tiny_model(len(default_tokenizer))
    model.model.embed_tokens.weight.data.mul_(10)
    folder = tmp_path_factory.mktemp("learnable")
    model.save_pretrained(folder)
    default_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def notebook_env(tmp_path_factory) -> dict[str, str]:
    """Environment of the notebook kernels (tests/test_notebooks.py): quick mode, a shared temporary
    runs folder, this interpreter."""
    import json

    from test_notebooks import KERNEL

    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec.joinpath("kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "ORPO Lab tests", "language": "python"})
    )
    runs = session_folder(tmp_path_factory) / "notebook-runs"  # shared by every worker
    runs.mkdir(exist_ok=True)
    return {"JUPYTER_PATH": str(root), "ORPO_LAB_QUICK": "1", "ORPO_LAB_RUNS": str(runs)}


def session_folder(tmp_path_factory) -> Path:
    """A folder shared by the whole test session: with `pytest -n` (pytest-xdist) every worker has a
    base folder of its own and they share its parent; in one process, the base folder itself."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def notebook_04(notebook_env, tmp_path_factory) -> dict:
    """Notebook 4 executed once per session, in quick mode: the values test_04_training checks, and
    its two runs of the default model with the preset notebook-quick, `orpo-quick` (lambda 1) and
    `sft-quick` (lambda 0), in notebook_env's runs folder. Notebook 5 and test_browser's
    default-model test use those runs instead of training the same two again (~70 s each time).
    With `pytest -n`, the first worker that needs it runs it (holding a file lock) and leaves its
    values in the session folder; any other worker waits for the lock and reads them."""
    import json

    from filelock import FileLock
    from test_notebooks import NOTEBOOK_04_VALUES, run_notebook

    folder = session_folder(tmp_path_factory)
    done = folder / "notebook_04.json"
    with FileLock(folder / "notebook_04.lock"):
        if done.is_file():
            return json.loads(done.read_text())
        with pytest.MonkeyPatch.context() as patch:
            values = run_notebook("04_training.ipynb", NOTEBOOK_04_VALUES, notebook_env, patch)
        done.write_text(json.dumps(values))
        return values
