"""A run's data prepared once (`orpo_lab.prepared`): the same pairs and token ids as the per-pair
reference, cached by everything that decides them, never a half-written cache, bad rows found at
scale, progress and stops during preparation, truncation reported per split. (What a CLI run
prints, from the data check to the last evaluation: test_train.py's CLI round trip.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_formats import CASES, user
from test_train import make_config

from orpo_lab import data_cache, prepared
from orpo_lab.collate import collate
from orpo_lab.config import TrainConfig
from orpo_lab.data import tokenize_pair
from orpo_lab.sources import PreferenceDataError
from orpo_lab.splits import load_config_splits

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ORPO_LAB_CACHE", str(tmp_path / "cache"))


def uf_rows(n: int, bad_line: int | None = None, start: int = 1) -> list[dict]:
    """UltraFeedback-binarized's layout (message lists that start with the user turn), short texts."""
    rows = []
    for i in range(start, start + n):
        q = f"What is {i} plus {i % 7}?"
        row = {
            "prompt": q,
            "prompt_id": f"{i:08x}",
            "chosen": [user(q), {"role": "assistant", "content": f"{i} + {i % 7} = {i + i % 7}."}],
            "rejected": [user(q), {"role": "assistant", "content": f"It is {i * 3}."}],
            "messages": [user(q)],
            "score_chosen": 9.0,
            "score_rejected": 2.0,
        }
        if i == bad_line:
            del row["rejected"]
        rows.append(row)
    return rows


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def reference(cfg: TrainConfig, tokenizer):
    """Today's per-pair path: the splits of `load_config_splits`, each pair through tokenize_pair."""
    train, held_out, _ = load_config_splits(cfg)

    def ids(ds):
        return [tokenize_pair(r, tokenizer, cfg.max_length, cfg.max_prompt_length) for r in ds]

    return ids(train), ids(held_out) if held_out is not None else None


def same_pairs(table, pairs, pad_id: int) -> None:
    assert len(table) == len(pairs)
    keys = prepared.PAIR_COLUMNS
    for got, want in zip(table, pairs, strict=True):
        assert {k: got[k] for k in keys} == {k: want[k] for k in keys}
    # and so the batches (ids, targets, masks) the loop trains on
    for layout in ("padded", "prefix"):
        a, b = collate(list(table[:4]), layout, pad_id), collate(pairs[:4], layout, pad_id)
        assert all(a[k].equal(b[k]) for k in a if k != "num_pairs")


@pytest.mark.parametrize("name", list(CASES))
def test_public_layouts_give_the_reference_ids(tmp_path, default_tokenizer, name):
    make, kwargs, prompt, _, _ = CASES[name]
    source = make(tmp_path)
    cfg = TrainConfig(
        dataset=source,
        train_split=kwargs.get("split", "train"),
        column_map=kwargs.get("column_map", ""),
        max_length=256,
        max_prompt_length=128,
    )
    data = prepared.prepare_data(cfg, default_tokenizer)
    train, _ = reference(cfg, default_tokenizer)
    same_pairs(data.train, train, default_tokenizer.pad_token_id)
    assert default_tokenizer.decode(data.train[0]["prompt_ids"]) == prompt


def test_default_dataset_ids_split_and_truncation_as_the_reference(default_tokenizer):
    cfg = TrainConfig(max_length=48, max_prompt_length=24)  # tight: some pairs are cut
    data = prepared.prepare_data(cfg, default_tokenizer)
    train, held_out = reference(cfg, default_tokenizer)
    same_pairs(data.train, train, default_tokenizer.pad_token_id)
    same_pairs(data.held_out, held_out, default_tokenizer.pad_token_id)
    report = data.stats["truncation"]
    for split, pairs in (("train", train), ("held_out", held_out)):
        cut = [p["cut"] for p in pairs]
        assert report[split]["truncated_pairs"] == sum(p["truncated"] for p in pairs) > 0
        assert report[split]["prompt_cut_pairs"] == sum(c["prompt"] > 0 for c in cut)
        assert report[split]["prompt_tokens_cut"] == sum(c["prompt"] for c in cut)
        assert report[split]["response_tokens_cut"] == sum(c["chosen"] + c["rejected"] for c in cut)
    assert data.stats["data"]["held_out_from"] == "test_split"


def test_a_second_preparation_reads_the_cache_and_any_change_rebuilds(tmp_path, default_tokenizer):
    path = write(tmp_path / "uf.jsonl", uf_rows(40))
    cfg = TrainConfig(dataset=str(path), max_length=64, max_prompt_length=32)
    first = prepared.prepare_data(cfg, default_tokenizer)
    again = prepared.prepare_data(cfg, default_tokenizer)
    assert (first.stats["cache"], again.stats["cache"]) == ("built", "hit")
    assert list(again.train) == list(first.train) and list(again.held_out) == list(first.held_out)
    changed = {
        "budget": TrainConfig(dataset=str(path), max_length=48, max_prompt_length=32),
        "seed": TrainConfig(dataset=str(path), max_length=64, max_prompt_length=32, seed=1),
        "carve": TrainConfig(
            dataset=str(path), max_length=64, max_prompt_length=32, held_out_size=8
        ),
    }
    for name, other in changed.items():
        assert prepared.prepare_data(other, default_tokenizer).stats["cache"] == "built", name
    write(path, uf_rows(41))  # the file itself changes: its size and mtime are in the key
    grown = prepared.prepare_data(cfg, default_tokenizer)
    assert grown.stats["cache"] == "built" and len(grown.train) + len(grown.held_out) == 41
    entries = [p for p in data_cache.data_cache_dir().iterdir() if ".partial-" not in p.name]
    assert not [p for p in data_cache.data_cache_dir().iterdir() if ".partial-" in p.name]
    # two entries (checked, tokenised) each, but the budget change shares the checked one: 9
    assert len(entries) == 2 + 1 + 2 + 2 + 2


def test_a_bad_row_deep_in_a_large_file_is_named_in_several_processes(tmp_path, default_tokenizer):
    rows = uf_rows(6000, bad_line=4500)
    path = write(tmp_path / "uf6k.jsonl", rows)
    cfg = TrainConfig(dataset=str(path))
    assert len(rows) >= prepared.check_rows.__globals__["PARALLEL_ROWS"]  # the parallel path
    with pytest.raises(PreferenceDataError) as err:
        prepared.check_data(cfg)
    assert f"{path}: line 4500: field 'rejected': missing" in str(err.value)
    assert "1 bad row(s)" in str(err.value)
    root = data_cache.data_cache_dir()
    assert not root.exists() or not list(root.iterdir())  # nothing cached for a failed preparation
    cfg.skip_bad_rows = True
    with pytest.warns(UserWarning, match="skipped 1 bad row"):
        info = prepared.check_data(cfg)
    assert info["bad_rows_skipped"] == 1 and info["train_pairs"] + info["held_out_pairs"] == 5999


def test_a_killed_preparation_leaves_nothing_that_is_read(tmp_path, default_tokenizer):
    path = write(tmp_path / "uf.jsonl", uf_rows(12000))
    cache = tmp_path / "cache"
    code = (
        "from orpo_lab.config import TrainConfig; from orpo_lab.prepared import check_data; "
        f"check_data(TrainConfig(dataset={str(path)!r}))"
    )
    env = {**os.environ, "ORPO_LAB_CACHE": str(cache)}
    child = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True)
    root = cache / "data"
    deadline = time.monotonic() + 120
    while not any(root.glob("*.partial-*/work/*")) and time.monotonic() < deadline:
        assert child.poll() is None, "the preparation ended before it could be killed"
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)  # kill -9, workers included
    child.wait()
    left = list(root.iterdir())
    assert left and all(".partial-" in p.name for p in left)  # half-written, never renamed
    info = prepared.check_data(TrainConfig(dataset=str(path)))  # rebuilt, not read
    assert info["train_pairs"] + info["held_out_pairs"] == 12000
    assert not any(".partial-" in p.name for p in root.iterdir())  # the leftovers are gone


def test_progress_reports_each_stage_and_a_stop_leaves_no_cache(tmp_path, default_tokenizer):
    path = write(tmp_path / "uf.jsonl", uf_rows(300))
    cfg = TrainConfig(dataset=str(path), max_length=64, max_prompt_length=32)
    seen = []
    prepared.prepare_data(cfg, default_tokenizer, lambda *a: seen.append(a))
    stages = {stage for stage, _, _ in seen}
    assert stages == {
        f"reading and checking the dataset {path}",
        "tokenising train pairs",
        "tokenising held-out pairs",
    }
    last = {stage: (done, total) for stage, done, total in seen}
    assert last["tokenising train pairs"] == (270, 270) and last["tokenising held-out pairs"] == (
        30,
        30,
    )

    class Stop(Exception):
        pass

    def stop(stage, done, total):
        if stage.startswith("tokenising"):
            raise Stop

    other = TrainConfig(dataset=str(path), max_length=48, max_prompt_length=32)
    with pytest.raises(Stop):
        prepared.prepare_data(other, default_tokenizer, stop)
    assert prepared.prepare_data(other, default_tokenizer).stats["cache"] == "built"


def test_a_response_with_no_token_left_is_dropped_and_counted(tmp_path, default_tokenizer):
    rows = uf_rows(12)
    rows[3]["chosen"][-1]["content"] = "<|im_end|>"  # text, but nothing before the end-of-turn
    cfg = TrainConfig(dataset=str(write(tmp_path / "uf.jsonl", rows)), held_out_size=0)
    data = prepared.prepare_data(cfg, default_tokenizer)
    assert data.stats["truncation"]["train"]["empty_response_dropped"] == 1
    assert len(data.train) == 11 and all(len(p["chosen_ids"]) > 1 for p in data.train)


def test_eval_every_0_evaluates_only_at_the_end_and_a_stop_while_preparing_ends_clean(
    tmp_path, tiny_model_dir
):
    from orpo_lab.train import train

    data = (
        write(tmp_path / "train.jsonl", uf_rows(16)),
        write(tmp_path / "test.jsonl", uf_rows(4, start=100)),
    )
    cfg = make_config(
        tmp_path, data, tiny_model_dir, max_steps=3, eval_every=None, eval_at_start=False
    )
    train(cfg)
    records = [json.loads(x) for x in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [3]
    started = next(r for r in records if r.get("event") == "started")
    assert started["truncation"]["train"]["pairs"] == 16 and started["data_cache"] == "built"

    stopped = make_config(tmp_path, data, tiny_model_dir, run_name="s", max_length=56)
    stopped.run_dir.mkdir(parents=True)
    stopped.run_dir.joinpath("STOP").write_text(str(os.getpid()))  # meant for this process
    assert train(stopped) == {}
    status = json.loads((stopped.run_dir / "status.json").read_text())
    assert status["status"] == "stopped" and "before the first step" in status["message"]
    assert not (stopped.run_dir / "checkpoints").exists() or not any(
        (stopped.run_dir / "checkpoints").iterdir()
    )
