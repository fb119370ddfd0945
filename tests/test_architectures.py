"""The architectures users bring, as tiny random models built offline from their configs.

Each one trains 2 LoRA steps through `orpo_lab.train.train` with a finite loss, its fast-path
log-probs are checked against its own forward (a head that transforms logits falls back to full
logits and the run log says why), base and checkpoint answer side by side in the chat pool, and
the checkpoint exports to a merged model whose logits equal base + adapter. GPT-2 has Conv1D
layers and no chat template: its standard-format data trains as plain text.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers as tf

from orpo_lab.checkpoint import Checkpointer
from orpo_lab.collate import collate
from orpo_lab.config import TrainConfig
from orpo_lab.data import tokenize_pair
from orpo_lab.logps import PairLogps
from orpo_lab.model_pool import ModelPool
from orpo_lab.rundir import RunDir
from orpo_lab.token_logps import sequence_logps, token_logps
from orpo_lab.train import train

SMALL = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=True,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)
ARCHITECTURES = {
    "llama": lambda: tf.LlamaConfig(**SMALL),
    "qwen2": lambda: tf.Qwen2Config(**SMALL),
    "qwen3": lambda: tf.Qwen3Config(**SMALL, head_dim=8),
    "gemma2": lambda: tf.Gemma2Config(**SMALL, head_dim=8, final_logit_softcapping=30.0),
    "gemma3": lambda: tf.Gemma3TextConfig(**SMALL, head_dim=8),
    "phi3": lambda: tf.Phi3Config(**SMALL),
    "mistral": lambda: tf.MistralConfig(**SMALL),
    "granite": lambda: tf.GraniteConfig(**SMALL, logits_scaling=8.0),
    "gpt2": lambda: tf.GPT2Config(
        n_embd=32,
        n_layer=1,
        n_head=4,
        n_positions=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    ),
}
# Heads that transform their logits: the check must catch them and fall back to full logits.
TRANSFORMING_HEADS = {"gemma2", "granite"}


def model_dir(tmp_path, arch: str, tokenizer):
    """(folder, tokenizer): the tiny random model and the default tokenizer (same vocabulary)."""
    config = ARCHITECTURES[arch]()
    config.vocab_size = len(tokenizer)
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config)
    if arch == "gemma2":
        # Real Gemma-2 logits reach tens, where soft-capping at 30 matters; random ones stay near 0.
        model.get_output_embeddings().weight.data.mul_(30)
    folder = tmp_path / arch
    model.save_pretrained(folder)
    tok = tokenizer
    if arch == "gpt2":  # a plain base model: its tokenizer has no chat template
        import copy

        tok = copy.deepcopy(tokenizer)
        tok.chat_template = None
    tok.save_pretrained(folder)
    return folder, tok


PAIRS = [
    {"prompt": f"Name animal number {i}.", "chosen": " Cat.", "rejected": " A long answer."}
    for i in range(6)
]


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_architecture_trains_checks_chats_and_exports(tmp_path, default_tokenizer, arch):
    folder, tokenizer = model_dir(tmp_path, arch, default_tokenizer)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    cfg = TrainConfig(
        model=str(folder),
        dataset=str(data),
        output_dir=str(tmp_path / "runs"),
        run_name=arch,
        max_steps=2,
        batch_size=2,
        learning_rate=1e-3,
        warmup_steps=0,
        lora_r=4,
        lora_alpha=8,
        max_length=32,
        max_prompt_length=24,
        held_out_size=2,
        eval_every=None,
        save_every=None,
        device="cpu",
        logps_chunk_size=16,
        precision="fp32",
    )
    train(cfg)
    records = [json.loads(ln) for ln in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in steps] == [1, 2] and all(math.isfinite(r["loss"]) for r in steps)
    started = next(r for r in records if r.get("event") == "started")
    assert started["data"]["held_out_from"] == "carved" and started["eval_pairs"] == 2
    check = next(r for r in records if r.get("event") == "logps_check")
    if arch in TRANSFORMING_HEADS:
        assert (
            check["logps_path"] == "full_logits"
            and "differs from the model's logits" in check["reason"]
        )
    else:
        assert check["logps_path"] == "chunked" and check["max_abs_diff"] <= 1e-4

    # Whichever path the check picked, PairLogps gives the model's own mean log-probs.
    model = tf.AutoModelForCausalLM.from_pretrained(folder)
    pairs = [tokenize_pair(p, tokenizer, 32, 24) for p in PAIRS[:2]]
    batch = collate(pairs, "prefix", tokenizer.pad_token_id)
    wrapped = PairLogps(model, "response", 16)
    with torch.no_grad():
        chosen, rejected, _, _ = wrapped(**batch)
        plain = collate(pairs, "padded", tokenizer.pad_token_id)
        tok = token_logps(
            model(input_ids=plain["input_ids"], attention_mask=plain["attention_mask"]).logits,
            plain["targets"],
        )
    response = (plain["targets"] != -100) & ~plain["target_in_prompt"]
    sums, counts = sequence_logps(tok, plain["target_seq"], response, 4)
    torch.testing.assert_close(torch.cat([chosen, rejected]), sums / counts, atol=1e-4, rtol=0)
    assert wrapped.check["logps_path"] == check["logps_path"]  # verified itself on first use

    # Chat: the base model and the checkpoint answer side by side (GPT-2: the prompt as plain text).
    final = RunDir(cfg.run_dir).latest_checkpoint()
    pool = ModelPool(str(folder), device="cpu")
    answers = pool.generate(
        [[{"role": "user", "content": "Hi"}]] * 2, [None, final], max_new_tokens=3
    )
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)

    merged_dir = Checkpointer.export_merged(final, tmp_path / "merged")
    merged = tf.AutoModelForCausalLM.from_pretrained(merged_dir)
    from peft import PeftModel

    with_adapter = PeftModel.from_pretrained(model, final)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(
            merged(ids).logits, with_adapter(ids).logits, atol=1e-4, rtol=1e-4
        )


def test_the_check_draws_no_random_numbers_and_restores_the_mode(default_tokenizer):
    from conftest import build_tiny_model

    model = build_tiny_model(len(default_tokenizer)).train()
    pairs = [tokenize_pair(p, default_tokenizer, 32, 24) for p in PAIRS[:2]]
    batch = collate(pairs, "packed")
    rng = torch.get_rng_state()
    report = PairLogps(model, "response", 16).verify(batch)
    assert report["logps_path"] == "chunked" and report["fast_path_ok"] and report["tokens"] > 0
    assert model.training and torch.equal(torch.get_rng_state(), rng)
    assert PairLogps(model, "response", None).verify(batch)["logps_path"] == "full_logits"
