"""One optimiser step's gradients and one held-out evaluation: functions of the wrapped model.

`forward_backward` is the step: forward every micro-batch through `PairLogps`, the run's objective,
backward, with the normalisation that makes gradient accumulation and DDP equal one big batch.
`held_out_metrics` is the evaluation. `orpo_lab.train` calls them in its loop; benchmarks and
tests call them directly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext

import torch
from tqdm.auto import tqdm

from orpo_lab.collate import collate
from orpo_lab.config import TrainConfig
from orpo_lab.loss import odds_weight, or_penalty, orpo_loss
from orpo_lab.objectives import model_inputs, objective_loss

OOM_ADVICE = (
    "Out of memory. Try, one at a time: a smaller batch_size with a larger grad_accum (same effective "
    "batch), a smaller eval_batch_size, a shorter max_length / max_prompt_length, layout=prefix or "
    "packed, gradient_checkpointing, LoRA instead of full_finetune, a smaller lora_r, or "
    "load_in_4bit (QLoRA, needs bitsandbytes)."
)
NON_FINITE_ADVICE = (
    "Lower learning_rate, check the data for empty or huge responses, or use fp32 precision."
)


class TrainingError(RuntimeError):
    """Training stopped on a problem the user must fix; the message says what to do."""


class NonFiniteLoss(TrainingError):
    """The loss or the weights became NaN or inf; the last good checkpoint is kept."""


class StopRequested(Exception):
    """Raised between micro-batches when a stop was requested: the step in progress is dropped."""


class ProgressFailed(Exception):
    """What a run's `progress` (its status file, its callback) raised inside a probe's `try`; the
    probe passes it on as it was, never as its own failure (which would train on in float32)."""


def passing(progress: Callable) -> Callable:
    """`progress`, with what it raises (other than a stop) wrapped in `ProgressFailed`."""

    def tell(*args) -> None:
        try:
            progress(*args)
        except StopRequested:
            raise
        except Exception as err:
            raise ProgressFailed from err

    return tell


def passed_on(err: Exception) -> BaseException:
    """What a probe raises for a stop (itself) or a `ProgressFailed` (the error it wraps)."""
    return err.__cause__ if isinstance(err, ProgressFailed) else err


def micro_batch_indices(k: int, n: int, global_batch: int, seed: int) -> list[int]:
    """Pair indices of global micro-batch k: a fresh seeded permutation each epoch, so resume is exact."""
    per_epoch = n // global_batch
    epoch, j = divmod(k, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
    return perm[j * global_batch : (j + 1) * global_batch].tolist()


def pair_tokens(pairs) -> int:
    """Tokens of the pairs as plain rows (prompt+chosen, prompt+rejected), the same for every layout."""
    return sum(
        2 * len(p["prompt_ids"]) + len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in pairs
    )


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def forward_backward(
    accelerator,
    wrapped,
    micro: list[dict],
    cfg: TrainConfig,
    stop: Callable[[], bool] | None = None,
) -> dict:
    """Forward, loss (`cfg.method`'s) and backward of every micro-batch of one optimiser step; its
    metrics.

    The NLL is normalised by the NLL tokens of the whole step and the pair terms by its pairs,
    over all processes, so batch 4 x accumulation 1 and batch 1 x accumulation 4 give the same
    gradients. `stop()` is asked before every micro-batch after the first: StopRequested if true.
    """
    world, device = accelerator.num_processes, accelerator.device

    def total(value: float) -> float:
        return accelerator.reduce(torch.tensor(float(value), device=device), "sum").item()

    nll_tokens = total(sum(_nll_count(b, cfg.nll_scope) for b in micro))
    pairs_in_step = total(sum(b["num_pairs"] for b in micro))
    sums: dict[str, float] = {}
    for i, batch in enumerate(micro):
        if i and stop is not None and stop():
            raise StopRequested
        sync = nullcontext() if i == len(micro) - 1 else accelerator.no_sync(wrapped)
        with sync:
            batch = to_device(batch, device)
            chosen, rejected, nll_sum, _ = wrapped(**model_inputs(batch))
            nll = nll_sum / max(nll_tokens, 1.0)
            loss, m = objective_loss(cfg, batch, chosen, rejected, nll, pairs_in_step)
            if total(not torch.isfinite(loss)):
                raise NonFiniteLoss(f"The loss became {loss.item()}")
            # DDP averages gradients over processes; the loss is a share of the global step: undo it.
            accelerator.backward(loss * world)
        share = batch["num_pairs"] / sum(b["num_pairs"] for b in micro)  # of this process's step
        for key, value in m.items():
            sums[key] = sums.get(key, 0.0) + value * (1.0 if key in ("loss", "nll_loss") else share)
    return _mean_over_processes(accelerator, sums)


def _nll_count(batch: dict, scope: str) -> int:
    """Tokens the NLL covers in this micro-batch: the chosen responses (and their prompts)."""
    chosen = (batch["target_seq"] >= 0) & (batch["target_seq"] < batch["num_pairs"])
    if scope == "response":
        chosen &= ~batch["target_in_prompt"]
    return int(chosen.sum())


def _mean_over_processes(accelerator, sums: dict[str, float]) -> dict[str, float]:
    """Loss terms add up over processes (each is a share of the step); the other metrics average."""
    if accelerator.num_processes == 1:
        return sums
    keys = sorted(sums)
    total = accelerator.reduce(
        torch.tensor([sums[k] for k in keys], device=accelerator.device), "sum"
    )
    n = accelerator.num_processes
    return {
        k: v.item() / (1 if k in ("loss", "nll_loss") else n)
        for k, v in zip(keys, total, strict=True)
    }


@torch.no_grad()
def held_out_logps(
    wrapped, pairs: list, cfg: TrainConfig, pad_id: int, device, stop=None, desc: str = ""
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(chosen, rejected) (N,) float32 mean log-probs of `pairs`, `cfg.eval_batch` pairs at a time.

    Returns None when `stop()` becomes true between batches: a stop never waits for an evaluation.
    `desc`: the progress bar's words (default: evaluating held-out pairs).
    """
    wrapped.eval()
    chosen, rejected = [], []
    starts = range(0, len(pairs), cfg.eval_batch)
    # A bar on stderr (the terminal, or a run's train.log): an evaluation of long pairs can take
    # minutes on a CPU. TQDM_DISABLE=1 hides it.
    desc = desc or f"Evaluating {len(pairs)} held-out pairs"
    bar = tqdm(starts, desc=desc, unit="batch", leave=False)
    try:
        for i in bar:
            if stop is not None and stop():
                return None
            batch = to_device(collate(pairs[i : i + cfg.eval_batch], cfg.layout, pad_id), device)
            c, r, _, _ = wrapped(**batch)
            chosen.append(c.float())
            rejected.append(r.float())
    finally:
        bar.close()
        wrapped.train()
    return torch.cat(chosen), torch.cat(rejected)


def held_out_metrics(
    wrapped, pairs: list, cfg: TrainConfig, pad_id: int, device, stop=None
) -> dict | None:
    """Held-out preference accuracy (chosen mean log-prob above rejected) and mean log-probs.

    Returns None when `stop()` becomes true between batches: a stop never waits for an evaluation.
    """
    logps = held_out_logps(wrapped, pairs, cfg, pad_id, device, stop)
    if logps is None:
        return None
    c, r = logps  # (N,) mean log-probs of the held-out pairs
    _, m = orpo_loss(c, r, torch.zeros(()), cfg.beta)
    return {
        "eval/accuracy": m["rewards/accuracies"],
        "eval/logps_chosen": m["logps/chosen"],
        "eval/logps_rejected": m["logps/rejected"],
        "eval/log_odds_chosen": m["log_odds_chosen"],
        "eval/log_odds_ratio": m["log_odds_ratio"],
        "eval/pairs": len(pairs),
        **weighting_quantiles(c, r),
    }


WEIGHT_QUANTILES = (10, 25, 50, 75, 90)


def weighting_quantiles(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """How hard the pairs pull (paper section 4.3, notebook 02), spread over the pairs.

    Per pair: delta(d) = `or_penalty` (near 1 while the model prefers the rejected response) and the
    1/(1-P) factors (`odds_weight`) on the chosen and the rejected gradient. Logged as quantiles:
    eval/delta_q50 is the median pair's delta. (N,) mean log-probs in; float32 maths.
    """
    c, r = chosen.float(), rejected.float()
    q = torch.tensor(WEIGHT_QUANTILES, dtype=torch.float32) / 100
    out = {}
    for stem, values in (
        ("delta", or_penalty(c, r)),
        ("weight_chosen", odds_weight(c)),
        ("weight_rejected", odds_weight(r)),
    ):
        for pct, value in zip(
            WEIGHT_QUANTILES, torch.quantile(values.cpu(), q).tolist(), strict=True
        ):
            out[f"eval/{stem}_q{pct}"] = value
    return out


def fused_adamw(params: list) -> bool:
    """torch's fused AdamW (one kernel for every tensor) where it exists: float32 weights on CPU or
    CUDA. torch defaults to a Python loop over the tensors on CPU (about 50 ms a step for the
    default LoRA's 420 tensors on 2 cores, 6 ms fused)."""
    return bool(params) and all(
        p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for p in params
    )


def clip_gradients(run) -> float | None:
    """Clip the gradients of `run.params` to cfg.max_grad_norm; their norm (None when off)."""
    if not run.cfg.max_grad_norm:
        return None
    accelerator = run.accelerator
    if accelerator.device.type == "cpu" and accelerator.num_processes == 1:
        # torch uses its foreach kernels unasked only on GPUs; on a CPU they save a Python loop
        # over every LoRA tensor. (accelerate's clip adds nothing here: no scaler, no shards.)
        norm = torch.nn.utils.clip_grad_norm_(run.params, run.cfg.max_grad_norm, foreach=True)
        return float(norm)
    return float(accelerator.clip_grad_norm_(run.params, run.cfg.max_grad_norm))


def time_steps(
    pair_logps,
    batch: dict,
    beta: float,
    n: int = 2,
    warmup: int = 1,
    on_pass: Callable[[], object] | None = None,
) -> list[float]:
    """Seconds of `n` forward+backward passes of `batch` through a `logps.PairLogps` (after `warmup`
    untimed ones), what `orpo_lab.autotune` compares; `on_pass()` is called after each pass (a
    bar). Nothing of the run changes: gradients are dropped, the random number state is restored,
    the mode too."""
    model, training = pair_logps.model, pair_logps.training
    device = next(model.parameters()).device
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    times = []
    with torch.random.fork_rng(devices=[]):
        pair_logps.train()
        try:
            for i in range(n + warmup):
                began = time.perf_counter()
                chosen, rejected, nll_sum, nll_count = pair_logps(**batch)
                loss, _ = orpo_loss(chosen, rejected, nll_sum / nll_count.clamp(min=1), beta)
                loss.backward()
                model.zero_grad(set_to_none=True)
                if i >= warmup:
                    times.append(time.perf_counter() - began)
                if on_pass is not None:
                    on_pass()
        finally:
            pair_logps.train(training)
            model.zero_grad(set_to_none=True)
    return times
