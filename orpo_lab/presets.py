"""Starting points for TrainConfig: the app shows them as buttons, the CLI takes `--preset`."""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # About 1.5 minutes on a 2-core CPU with AMX (bf16), 2.5 in float32, with the default model and
    # dataset (bench/alignment.py measures it). 480 pairs as 60 steps of 8: in bf16 a step of 8 is
    # x1.3 faster per pair than one of 4, with the same held-out accuracy over seeds (BENCHMARKS.md).
    # lambda = 1: at 120 steps of 4 pairs, 0.5 left held-out preference accuracy at ~94%.
    "cpu-quick": dict(
        max_steps=60,
        batch_size=8,
        grad_accum=1,
        learning_rate=5e-4,
        beta=1.0,
        lora_r=16,
        lora_alpha=32,
        max_length=192,
        max_prompt_length=96,
        eval_every=20,
        eval_at_start=True,
        save_every=20,
    ),
    # The notebooks' runs: notebook 4 trains ORPO with these and SFT with beta=0; notebook 5 reuses both.
    # Quick: 20 steps each, about 2 minutes for the two on a 2-core CPU; the higher learning rate makes
    # SFT raise and ORPO lower the held-out rejected log-prob within those steps.
    "notebook-quick": dict(
        max_steps=20,
        batch_size=4,
        grad_accum=1,
        learning_rate=1.5e-3,
        warmup_steps=3,
        beta=1.0,
        lora_r=16,
        lora_alpha=32,
        max_length=128,
        max_prompt_length=64,
        eval_every=10,
        eval_at_start=True,
        max_eval_pairs=16,
        save_every=None,  # only at the end
        seed=0,
    ),
    "gpu": dict(
        epochs=1.0,
        max_steps=None,  # epochs decide
        batch_size=16,
        grad_accum=1,
        learning_rate=2e-4,
        beta=0.1,
        lora_r=32,
        lora_alpha=64,
        max_length=1024,
        max_prompt_length=512,
        eval_every=100,
        eval_at_start=True,
        save_every=200,
    ),
}
# Full mode of the notebooks: three times the steps, four times the held-out pairs.
PRESETS["notebook"] = PRESETS["notebook-quick"] | dict(
    max_steps=60, learning_rate=1e-3, max_eval_pairs=64
)
