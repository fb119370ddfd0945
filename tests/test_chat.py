"""chat.py with the tiny model: batched base + adapter columns, streaming, history normalisation."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model

from orpo_lab.chat import content_text, generate, generate_stream, normalize_messages
from orpo_lab.model import ModelLoadError, load_model
from orpo_lab.model_pool import ModelPool

PROMPT = [{"role": "user", "content": "Say something."}]


def make_adapter(model_dir, out_dir, seed: int):
    """A LoRA checkpoint with random (non-zero) weights, so it visibly changes the answers."""
    model, _ = load_model(str(model_dir), device="cpu")
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(out_dir)
    # What makes a folder a checkpoint of a run (orpo_lab.checkpoint writes it last).
    state = {"step": 10, "config": {"model": str(model_dir), "beta": 0.5}, "metrics": {}}
    (Path(out_dir) / "trainer_state.json").write_text(json.dumps(state))
    return out_dir


@pytest.fixture(scope="module")
def checkpoints(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return [
        make_adapter(tiny_model_dir, root / f"run{i}" / "checkpoints" / "step-000010", seed=i)
        for i in (1, 2)
    ]


@pytest.fixture(scope="module")
def pool(tiny_model_dir):
    pool = ModelPool(str(tiny_model_dir), device="cpu")
    pool.load()
    return pool


def test_content_as_parts_is_normalised_in_one_place():
    parts = [{"type": "text", "text": "Hello "}, {"type": "text", "text": "world"}]
    assert content_text(parts) == "Hello world"
    assert content_text("plain") == "plain"
    assert content_text(None) == ""
    history = [
        {"role": "user", "content": parts},
        {"role": "assistant", "content": [{"type": "text", "text": "Hi"}], "metadata": {}},
        {"role": "tool", "content": "dropped"},
    ]
    assert normalize_messages(history) == [
        {"role": "user", "content": "Hello world"},
        {"role": "assistant", "content": "Hi"},
    ]


def test_stream_yields_growing_text_and_matches_generate(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir), device="cpu")
    snapshots = list(generate_stream(model, tokenizer, [PROMPT, PROMPT], max_new_tokens=8))
    assert len(snapshots) > 1
    for earlier, later in zip(snapshots, snapshots[1:], strict=False):
        assert all(later[i].startswith(earlier[i]) for i in range(2))
    assert snapshots[-1][0] and snapshots[-1][0] == snapshots[-1][1]  # same prompt, greedy
    assert generate(model, tokenizer, [PROMPT], max_new_tokens=8) == [snapshots[-1][0]]


def test_closing_the_stream_stops_generation(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir), device="cpu")
    before = set(threading.enumerate())  # other tests' app servers may be generating too
    stream = generate_stream(model, tokenizer, [PROMPT], max_new_tokens=500)
    next(stream)
    (worker,) = [
        t for t in threading.enumerate() if t.name == "orpo-lab-generate" and t not in before
    ]
    stream.close()  # must return promptly: the worker stops at the next token
    assert not worker.is_alive()


def test_base_and_adapters_answer_side_by_side_from_one_base_model(pool, checkpoints):
    alone = [pool.generate([PROMPT], [c], max_new_tokens=12)[0] for c in [None, *checkpoints]]
    together = pool.generate([PROMPT] * 3, [None, *checkpoints], max_new_tokens=12)
    assert together == alone  # routing by adapter name: no column leaks into another
    assert len(set(together)) == 3  # the adapters really change the answers
    # One copy of the base weights, however many adapters: only lora_ tensors were added.
    base_params = sum(p.numel() for n, p in pool.model.named_parameters() if "lora_" not in n)
    assert base_params == sum(p.numel() for p in load_model(pool.model_name, "cpu")[0].parameters())
    assert set(pool.model.peft_config) == set(pool.adapters)


def test_switching_back_to_base_only_is_clean(pool, checkpoints):
    before = pool.generate([PROMPT], [None], max_new_tokens=12)
    pool.generate([PROMPT], [checkpoints[0]], max_new_tokens=12)
    for name in list(pool.adapters):
        pool.remove_adapter(name)
    assert not hasattr(pool.model, "peft_config")  # the plain base model again
    assert pool.generate([PROMPT], [None], max_new_tokens=12) == before


def test_pool_keeps_at_most_max_adapters(tiny_model_dir, checkpoints):
    pool = ModelPool(str(tiny_model_dir), device="cpu", max_adapters=1)
    first = pool.add_adapter(checkpoints[0])
    second = pool.add_adapter(checkpoints[1])
    assert list(pool.adapters) == [second] and first != second
    with pytest.raises(ValueError, match="At most 1"):
        pool.generate([PROMPT, PROMPT], list(checkpoints))


def test_pool_is_safe_from_several_threads(pool, checkpoints):
    expected = pool.generate([PROMPT, PROMPT], [None, checkpoints[1]], max_new_tokens=6)
    results, errors = [], []

    def ask():
        try:
            results.append(
                pool.generate([PROMPT, PROMPT], [None, checkpoints[1]], max_new_tokens=6)
            )
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and results == [expected] * 3


def test_sampling_is_seeded_and_really_samples(pool):
    """Same seed, same text; other seeds give other texts (a sampler that ignored temperature and
    decoded greedily would give one text for every seed), and greedy decoding ignores the seed."""
    settings = dict(max_new_tokens=12, temperature=1.0, top_p=1.0)
    a = pool.generate([PROMPT], [None], seed=3, **settings)
    assert a == pool.generate([PROMPT], [None], seed=3, **settings)
    others = {pool.generate([PROMPT], [None], seed=s, **settings)[0] for s in range(4, 9)}
    assert len(others | {a[0]}) >= 3
    greedy = dict(max_new_tokens=12, temperature=0.0)
    assert pool.generate([PROMPT], [None], seed=1, **greedy) == pool.generate(
        [PROMPT], [None], seed=2, **greedy
    )


def test_bad_checkpoint_is_a_readable_error(pool, tmp_path):
    with pytest.raises(ModelLoadError, match="adapter_config.json"):
        pool.add_adapter(tmp_path)
