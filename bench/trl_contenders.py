"""The two contenders of `bench/bench_trl.py`, each run in its own process: orpo_lab's `train()` and
TRL's `ORPOTrainer`, configured the same; plus the step-0 loss check, the layout x chunk ablation,
and the data / model preparation they share. Every worker returns a plain dict (written as JSON).

Step time = wall time between the ends of two consecutive optimiser steps, read from each
trainer's own per-step hook (orpo_lab: the `callback` of `train()`; TRL: `TrainerCallback.on_step_end`),
so it holds the whole step as a user sees it: collate, forward, loss, backward, clip, optimiser, logging.
"""

from __future__ import annotations

import json
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from orpo_lab.collate import collate
from orpo_lab.config import TrainConfig
from orpo_lab.data import tokenize_pair
from orpo_lab.logps import PairLogps, base_model
from orpo_lab.loss import orpo_loss
from orpo_lab.model import load_model
from orpo_lab.preferences import load_preferences
from orpo_lab.sources import PreferenceDataError
from orpo_lab.step import forward_backward, micro_batch_indices
from orpo_lab.train import train

# Qwen2-style shapes (random init, no hub): the 0.5B and 1.5B classes with the 151936 vocabulary.
GPU_MODELS = {
    "0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
    ),
    "1.5b": dict(
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
    ),
    # Not a benchmark: the same vocabulary on 2 small layers, to dry-run the GPU path on a CPU.
    "smoke": dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
}
GPU_VOCAB = 151936


# ---------------------------------------------------------------- shared inputs


def default_rows() -> tuple[list[dict], str]:
    """The default dataset's train pairs, normalised: prompt = messages, chosen/rejected = str."""
    try:
        ds, source = load_preferences("default", split="train"), "orpo_lab/data/default/train.jsonl"
    except (PreferenceDataError, NotImplementedError, FileNotFoundError):
        # The shipped files are not written yet: build the same records in memory.
        import datasets

        from orpo_lab.default_dataset import SEED, build

        ds = load_preferences(datasets.Dataset.from_list(build(SEED)["train"]))
        source = f"orpo_lab.default_dataset.build({SEED})['train'] (files not written yet)"
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in ds], source


def long_rows(rows: list[dict], tokenizer, max_length: int, n: int) -> list[dict]:
    """`n` pairs that fill ~90% of `max_length` (GPU mode): prompt and replies cut from the data's text."""
    text = " ".join(f"{r['prompt'][-1]['content']} {r['chosen']} {r['rejected']}" for r in rows)
    pool = tokenizer(text, add_special_tokens=False).input_ids  # ~70k tokens of plain text
    prompt_len, reply_len = int(0.45 * max_length) - 40, int(0.45 * max_length)  # 40: chat template

    def piece(start: int, length: int) -> str:
        start %= len(pool) - length
        return tokenizer.decode(pool[start : start + length])

    return [
        {
            "prompt": [{"role": "user", "content": piece(i * 7919, prompt_len)}],
            "chosen": piece(i * 7919 + 3 * reply_len, reply_len),
            "rejected": piece(i * 7919 + 5 * reply_len, reply_len),
        }
        for i in range(n)
    ]


def write_rows(rows: list[dict], folder: Path) -> Path:
    """rows as folder/train.jsonl in TRL's conversational format (prompt messages, assistant replies)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(conversational(r)) + "\n")
    return folder


def conversational(row: dict) -> dict:
    return {
        "prompt": row["prompt"],
        "chosen": [{"role": "assistant", "content": row["chosen"]}],
        "rejected": [{"role": "assistant", "content": row["rejected"]}],
    }


def read_rows(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (Path(folder) / "train.jsonl").read_text().splitlines()]
    return [
        {**r, "chosen": r["chosen"][-1]["content"], "rejected": r["rejected"][-1]["content"]}
        for r in rows
    ]


def prepare_gpu_model(size: str, folder: Path, tokenizer_source: str = "default") -> Path:
    """A randomly initialised Qwen2-style model (bf16) saved with the default model's tokenizer."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from orpo_lab.model import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_source)  # ids < 49152, all valid in the 151936 vocabulary
    config = Qwen2Config(
        vocab_size=GPU_VOCAB,
        max_position_embeddings=32768,
        rope_theta=1e6,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **GPU_MODELS[size],
    )
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the workers, not this process, should hold the GPU memory
    return folder


def matmul_params(model) -> int:
    """Weights of every nn.Linear of the base model, lm_head included (tied or not), LoRA excluded."""
    base = base_model(model)
    return sum(
        m.weight.numel()
        for name, m in base.named_modules()
        if isinstance(m, torch.nn.Linear) and "lora_" not in name
    )


# ---------------------------------------------------------------- measurements


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _memory(device: str, before: int) -> dict:
    """CPU: peak RSS of the whole process (ru_maxrss) and the RSS just before step 1; CUDA: allocator peaks."""
    if device == "cuda":
        return {"peak_bytes": torch.cuda.max_memory_allocated(), "before_train_bytes": before}
    return {
        "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "before_train_bytes": before,
    }


def _now(device: str) -> tuple[float, float]:
    """(wall, CPU) seconds. CPU time (all threads of this process) barely moves when other jobs
    share the cores, so it is the steadier measure on a shared CPU; wall time is what a user waits."""
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter(), time.process_time()


def _summary(ends: list[tuple], tokens: list[int], batch: int, warmup: int) -> dict:
    """Drop the first `warmup` steps; medians of the rest. ends[k] = end of step k+1, (wall, CPU)."""
    # Step k+2 takes ends[k+1] - ends[k].
    times = [b[0] - a[0] for a, b in zip(ends, ends[1:], strict=False)][warmup:]
    cpu = [b[1] - a[1] for a, b in zip(ends, ends[1:], strict=False)][warmup:]
    toks = tokens[1 : len(ends)][warmup:]
    return {
        "step_s": times,
        "cpu_step_s": cpu,
        "median_step_s": statistics.median(times),
        "median_cpu_step_s": statistics.median(cpu),
        "pairs_per_s": batch / statistics.median(times),
        "tokens_per_s": statistics.median(t / s for t, s in zip(toks, times, strict=True)),
        "tokens_per_step": statistics.median(toks),
    }


class _Profile:
    """torch.profiler over exactly one step, started and stopped from a per-step hook."""

    def __init__(self, out: Path | None, device: str):
        self.out, self.prof = out, None
        self.activities = [torch.profiler.ProfilerActivity.CPU]
        if device == "cuda":
            self.activities.append(torch.profiler.ProfilerActivity.CUDA)

    def at_step_end(self, step: int, start_after: int) -> None:
        if self.out is None:
            return
        if step == start_after:
            self.prof = torch.profiler.profile(activities=self.activities)
            self.prof.start()
        elif step == start_after + 1 and self.prof is not None:
            self.prof.stop()
            sort = "self_cuda_time_total" if len(self.activities) > 1 else "self_cpu_time_total"
            self.out.write_text(self.prof.key_averages().table(sort_by=sort, row_limit=30))
            self.prof = None


def run_ours(a: dict) -> dict:
    """orpo_lab's own `train()` for warmup + steps + 1 steps; a = the shared settings (see bench_trl.py)."""
    device, tmp = a["device"], Path(tempfile.mkdtemp(prefix="bench-ours-"))
    measured = a["warmup"] + a["steps"] + 1
    # "auto" decides for a run of a["auto_steps"] (the cpu-quick preset's 60 by default: compiling
    # pays only over a run's length); the measured steps end it with a stop request.
    stop = threading.Event()
    cfg = TrainConfig(
        model=a["model"],
        dataset=a["data_dir"],
        output_dir=str(tmp),
        run_name="ours",
        beta=a["beta"],
        nll_scope="prompt_response",
        learning_rate=a["lr"],
        lr_scheduler="linear",
        warmup_steps=0,
        max_steps=max(measured, a.get("auto_steps", 0)),
        batch_size=a["batch"],
        max_length=a["max_length"],
        max_prompt_length=a["max_prompt_length"],
        lora_r=a["lora_r"],
        lora_alpha=a["lora_alpha"],
        lora_dropout=0.0,
        lora_target_modules="all-linear",
        gradient_checkpointing=False,
        layout=a["layout"],
        logps_chunk_size=a["chunk"] or None,  # chunk 0 (the tables' name): full logits
        precision=a["precision"],
        device=device,
        eval_every=None,
        save_every=None,
        seed=a["seed"],
        torch_compile=a.get("torch_compile", "off"),
    )
    ends, tokens, state = [], [], {"before": 0}
    prof = _Profile(Path(a["profile"]) if a.get("profile") else None, device)
    began = time.perf_counter()

    def callback(record: dict) -> None:
        if record.get("event") == "started":  # what auto chose, and what it measured for it
            state["setup_s"] = time.perf_counter() - began
            state["started"] = {
                k: record.get(k)
                for k in (
                    "precision",
                    "precision_reason",
                    "torch_compile",
                    "torch_compile_reason",
                    "autotune",
                )
            }
        if record["kind"] == "event":  # logged after model and data loading, before step 1
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            state["before"] = torch.cuda.memory_allocated() if device == "cuda" else _rss_bytes()
        elif record["kind"] == "train":
            ends.append(_now(device))
            state.setdefault("first_step_s", record["step_s"])  # a compile happens in step 1
            tokens.append(round(record["tokens_per_s"] * a["batch"] / record["pairs_per_s"]))
            prof.at_step_end(record["step"], a["warmup"] + 1)
            if record["step"] >= measured:
                stop.set()

    last = train(cfg, callback=callback, stop_event=stop)
    out = _summary(ends, tokens, a["batch"], a["warmup"]) | _memory(device, state["before"])
    out["loss_last"] = last["loss"]
    out["first_step_s"] = state.get("first_step_s")
    out["setup_s"], out["started"] = state.get("setup_s"), state.get("started")
    return out


def _trl_trainer(a: dict, rows: list[dict], max_steps: int, callbacks=()):
    """TRL's ORPOTrainer with the same model, LoRA, batch, lengths, beta, lr, schedule and optimiser."""
    import datasets
    from peft import LoraConfig
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    cuda = a["device"] == "cuda"
    model, tokenizer = load_model(a["model"], device=a["device"], precision=a["precision"])
    args = ORPOConfig(
        output_dir=tempfile.mkdtemp(prefix="bench-trl-"),
        per_device_train_batch_size=a["batch"],
        max_steps=max_steps,
        learning_rate=a["lr"],
        lr_scheduler_type="linear",
        warmup_steps=0,
        optim="adamw_torch",
        weight_decay=0.0,
        max_grad_norm=1.0,
        beta=a["beta"],
        max_length=a["max_length"],
        bf16=a["precision"] == "bf16",
        use_cpu=not cuda,
        gradient_checkpointing=False,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        disable_tqdm=True,
        remove_unused_columns=False,
        seed=a["seed"],
    )
    lora = LoraConfig(
        r=a["lora_r"],
        lora_alpha=a["lora_alpha"],
        lora_dropout=0.0,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    data = datasets.Dataset.from_list([conversational(r) for r in rows])
    return ORPOTrainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=list(callbacks),
    )


def _ours_order(n: int, a: dict, steps: int) -> list[int]:
    """The pair indices orpo_lab's train() uses for its first `steps` steps, in order."""
    return [i for k in range(steps) for i in micro_batch_indices(k, n, a["batch"], a["seed"])]


def run_trl(a: dict) -> dict:
    """TRL's ORPOTrainer.train() on exactly the batches orpo_lab's train() sees (sequential sampler)."""
    from transformers import TrainerCallback

    device, steps = a["device"], a["warmup"] + a["steps"] + 1
    rows = read_rows(Path(a["data_dir"]))
    rows = [rows[i] for i in _ours_order(len(rows), a, steps)]
    ends, state = [], {"before": 0}
    prof = _Profile(Path(a["profile"]) if a.get("profile") else None, device)

    class Clock(TrainerCallback):
        def on_train_begin(self, args, st, control, **kwargs):
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            state["before"] = torch.cuda.memory_allocated() if device == "cuda" else _rss_bytes()

        def on_step_end(self, args, st, control, **kwargs):
            ends.append(_now(device))
            prof.at_step_end(st.global_step, a["warmup"] + 1)

    trainer = _trl_trainer(a, rows, steps, [Clock()])
    ds = trainer.train_dataset
    lengths = [
        len(c) + len(r)
        for c, r in zip(ds["chosen_input_ids"], ds["rejected_input_ids"], strict=True)
    ]
    tokens = [sum(lengths[k * a["batch"] : (k + 1) * a["batch"]]) for k in range(steps)]
    result = trainer.train()
    out = _summary(ends, tokens, a["batch"], a["warmup"]) | _memory(device, state["before"])
    out["loss_last"] = next(
        (h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h),
        result.training_loss,
    )
    out["matmul_params"] = matmul_params(trainer.model)
    return out


# ---------------------------------------------------------------- step-0 loss check


def _split_trl_row(ids, mask, labels) -> tuple[list[int], list[int]]:
    """One TRL row (input_ids, attention_mask, labels) -> (prompt_ids, response_ids)."""
    n = int(mask.sum())
    prompt_len = int((labels[:n] == -100).sum())  # TRL labels the prompt -100, the response by id
    ids = ids[:n].tolist()
    return ids[:prompt_len], ids[prompt_len:]


def loss_check(a: dict) -> dict:
    """TRL's loss on its first batch vs ours (PairLogps + orpo_loss) on the same token ids, at step 0.

    Also compares TRL's tokenisation of the run's pairs with orpo_lab's `tokenize_pair`.
    """
    rows = read_rows(Path(a["data_dir"]))
    order = _ours_order(len(rows), a, 1)
    trainer = _trl_trainer(a, [rows[i] for i in order], 1)
    model, tokenizer = trainer.model, trainer.processing_class
    batch = next(iter(trainer.get_train_dataloader()))
    model.eval()  # dropout is 0 on both sides; eval() only makes that explicit
    with torch.no_grad():
        trl_loss, trl_metrics = trainer.compute_loss(model, batch, return_outputs=True)
    pairs, prompt_mismatch = [], 0
    for i in range(batch["chosen_input_ids"].shape[0]):
        p_c, chosen = _split_trl_row(
            batch["chosen_input_ids"][i],
            batch["chosen_attention_mask"][i],
            batch["chosen_labels"][i],
        )
        p_r, rejected = _split_trl_row(
            batch["rejected_input_ids"][i],
            batch["rejected_attention_mask"][i],
            batch["rejected_labels"][i],
        )
        prompt_mismatch += p_c != p_r
        pairs.append({"prompt_ids": p_c, "chosen_ids": chosen, "rejected_ids": rejected})
    ours = {}
    device = next(model.parameters()).device
    for layout in ("padded", "packed", "prefix"):
        for chunk in (0, 1024):
            wrapped = PairLogps(model, "prompt_response", chunk)
            coll = collate(pairs, layout, tokenizer.pad_token_id)
            coll = {k: v.to(device) if torch.is_tensor(v) else v for k, v in coll.items()}
            with torch.no_grad():
                c, r, nll_sum, nll_count = wrapped(**coll)
                # TRL's NLL: token mean over every chosen prompt+response token of the batch.
                loss, m = orpo_loss(c.float(), r.float(), nll_sum.float() / nll_count, a["beta"])
            ours[f"{layout}/chunk{chunk}"] = {
                "loss": float(loss),
                "nll_loss": m["nll_loss"],
                "log_odds_ratio": m["log_odds_ratio"],
            }
    trl = {
        "loss": float(trl_loss),
        "nll_loss": trl_metrics["nll_loss"],
        "log_odds_ratio": trl_metrics["log_odds_ratio"],
    }
    worst = max(abs(v["loss"] - trl["loss"]) for v in ours.values())
    return {
        "trl": trl,
        "ours": ours,
        "max_abs_diff": worst,
        "within_1e-4": worst <= 1e-4,
        "prompt_mismatch_rows": prompt_mismatch,
        "tokenisation": compare_tokenisation(
            trainer.train_dataset, [rows[i] for i in order], tokenizer, a
        ),
    }


def compare_tokenisation(trl_ds, rows: list[dict], tokenizer, a: dict) -> dict:
    """How TRL's ids for each pair differ from orpo_lab's `tokenize_pair` ids for the same pair."""
    found, examples = {}, {}
    for row, trl_row in zip(rows, trl_ds, strict=True):
        ours = tokenize_pair(row, tokenizer, a["max_length"], a["max_prompt_length"])
        for side in ("chosen", "rejected"):
            n_prompt = sum(x == -100 for x in trl_row[f"{side}_labels"])
            t_prompt = trl_row[f"{side}_input_ids"][:n_prompt]
            t_resp = trl_row[f"{side}_input_ids"][n_prompt:]
            o_resp = ours[f"{side}_ids"]
            same_start = t_resp[: len(o_resp)] == o_resp
            kind = (
                f"prompt {'same' if t_prompt == ours['prompt_ids'] else 'differs'}; response "
                + (
                    f"= ours + {tokenizer.convert_ids_to_tokens(t_resp[len(o_resp) :])}"
                    if same_start
                    else "differs inside"
                )
            )
            found[kind] = found.get(kind, 0) + 1
            examples.setdefault(
                kind,
                {
                    "trl_tail": tokenizer.convert_ids_to_tokens(t_resp[-4:]),
                    "ours_tail": tokenizer.convert_ids_to_tokens(o_resp[-4:]),
                },
            )
    return {"counts": found, "examples": examples}


# ---------------------------------------------------------------- ablation


def ablation(a: dict) -> dict:
    """orpo_lab's step (collate, forward_backward, clip, AdamW) for every layout x chunk size, round robin.

    One process and one model: each round runs `steps` steps of every configuration on the same
    batches, so load drift on a shared machine hits all of them alike. CUDA: peak memory per config.
    """
    from accelerate import Accelerator

    from orpo_lab.build import build_model, load_pairs
    from orpo_lab.plan import plan_run

    device = a["device"]
    cfg = TrainConfig(
        model=a["model"],
        dataset=a["data_dir"],
        output_dir=tempfile.mkdtemp(),
        beta=a["beta"],
        nll_scope="prompt_response",
        batch_size=a["batch"],
        max_length=a["max_length"],
        max_prompt_length=a["max_prompt_length"],
        lora_r=a["lora_r"],
        lora_alpha=a["lora_alpha"],
        precision=a["precision"],
        device=device,
        seed=a["seed"],
    )
    mixed = "bf16" if a["precision"] == "bf16" else "no"
    accelerator = Accelerator(mixed_precision=mixed, cpu=device == "cpu")
    model, tokenizer = build_model(cfg, None, plan_run(cfg))
    pairs, _, _ = load_pairs(cfg, tokenizer)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=a["lr"])
    configs = [(layout, chunk) for layout in ("padded", "packed", "prefix") for chunk in (0, 1024)]
    wrapped = {c: accelerator.prepare(PairLogps(model, "prompt_response", c[1])) for c in configs}
    times = {c: [] for c in configs}
    cpu_times = {c: [] for c in configs}
    peaks = {c: 0 for c in configs}
    for rnd in range(a["rounds"]):
        for c in configs:
            layout = c[0]
            # Warm up once on CPU (nothing is compiled or tuned per shape), per config on CUDA.
            skip = a["warmup"] if rnd == 0 and (device == "cuda" or c == configs[0]) else 0
            for k in range(skip + a["steps"]):
                # Every config measures the same batches: warmup ones first, then the measured ones.
                batch_no = k if k < skip else a["warmup"] + rnd * a["steps"] + k - skip
                idx = micro_batch_indices(batch_no, len(pairs), a["batch"], a["seed"])
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                start_wall, start_cpu = _now(device)
                micro = [collate([pairs[i] for i in idx], layout, tokenizer.pad_token_id)]
                forward_backward(accelerator, wrapped[c], micro, cfg)
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if k >= skip:
                    wall, cpu = _now(device)
                    times[c].append(wall - start_wall)
                    cpu_times[c].append(cpu - start_cpu)
                if device == "cuda":
                    peaks[c] = max(peaks[c], torch.cuda.max_memory_allocated())
    return {
        f"{layout}/chunk{chunk}": {
            "median_step_s": statistics.median(times[(layout, chunk)]),
            "pairs_per_s": a["batch"] / statistics.median(times[(layout, chunk)]),
            "median_cpu_step_s": statistics.median(cpu_times[(layout, chunk)]),
            "steps_measured": len(times[(layout, chunk)]),
            **({"peak_bytes": peaks[(layout, chunk)]} if device == "cuda" else {}),
        }
        for layout, chunk in configs
    }
