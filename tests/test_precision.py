"""Precision choice (CPU LoRA "auto" is measured: tests/test_autotune.py; else float32 on CPU) and what a bf16 run keeps in float32;
the held-out subset scored during training vs every held-out pair at the end."""

from __future__ import annotations

import json

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file

from orpo_lab import autotune, devices
from orpo_lab.build import build_model, load_pairs
from orpo_lab.collate import collate
from orpo_lab.config import TrainConfig
from orpo_lab.devices import bf16_flag, cpu_flags, pick_precision
from orpo_lab.logps import PairLogps
from orpo_lab.loss import orpo_loss
from orpo_lab.plan import plan_run
from orpo_lab.rundir import RunDir
from orpo_lab.step import fused_adamw
from orpo_lab.train import train

CPU = torch.device("cpu")
SAPPHIRE_RAPIDS = {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}
COOPER_LAKE = {"avx512f", "avx512_bf16"}  # also AMD Zen 4
SKYLAKE = {"avx2", "fma", "avx512f"}  # AVX-512, but no bf16 instructions
GRAVITON_3 = {"fp", "asimd", "sve", "bf16", "i8mm"}  # /proc/cpuinfo "Features" on Arm


def test_bf16_support_is_read_from_the_cpu_flags():
    assert bf16_flag(SAPPHIRE_RAPIDS) == "amx_bf16"
    assert bf16_flag(COOPER_LAKE) == "avx512_bf16"
    assert bf16_flag(GRAVITON_3) == "bf16"
    assert bf16_flag(SKYLAKE) is None
    assert bf16_flag(set()) is None  # not Linux: nothing known, nothing claimed
    cpuinfo = "processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\nbogomips\t: 4000\n"
    assert cpu_flags(cpuinfo) == {"fpu", "sse", "avx512f", "amx_bf16", "amx_tile"}
    assert cpu_flags("processor\t: 0\n") == set()


def test_auto_outside_cpu_lora_training_is_float32_and_an_explicit_choice_wins(monkeypatch):
    # Loading for generation keeps float32 (a merged adapter would be rounded to bf16); CPU LoRA
    # training measures instead (tests/test_autotune.py).
    dtype, why = pick_precision(CPU, "auto")
    assert dtype == torch.float32 and "outside LoRA training" in why
    assert pick_precision(CPU, "fp32") == (torch.float32, "precision=fp32 was asked for")
    monkeypatch.setattr(devices, "bf16_flag", lambda flags=None: "avx512_bf16")
    assert pick_precision(CPU, "bf16") == (torch.bfloat16, "precision=bf16 was asked for")
    # Asked for where the CPU has no bf16 instructions (an AVX2 Zen 3: x140 slower matmuls): the
    # choice stands, and the reason says what it costs.
    monkeypatch.setattr(devices, "bf16_flag", lambda flags=None: None)
    dtype, why = pick_precision(CPU, "bf16")
    assert dtype == torch.bfloat16 and why.startswith("precision=bf16 was asked for; this CPU has")
    assert "no bf16 instructions" in why and "about 100x slower than float32" in why
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16"):
        pick_precision(CPU, "int8")


def test_the_cli_says_what_bf16_costs_before_anything_loads(monkeypatch, tmp_path, capsys):
    """`--precision bf16` on a CPU without bf16 instructions: the first line says what it costs,
    before the data is read (here it is missing, so nothing loads at all)."""
    from orpo_lab.cli import main

    monkeypatch.setattr(devices, "bf16_flag", lambda flags=None: None)
    missing = str(tmp_path / "none.jsonl")
    args = [
        "--device",
        "cpu",
        "--precision",
        "bf16",
        "--dataset",
        missing,
        "--output-dir",
        str(tmp_path),
    ]
    assert main(args) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("orpo-lab: precision=bf16: this CPU has no bf16 instructions")
    assert lines[1] == f"orpo-lab: reading and checking the dataset {missing} ..."
    monkeypatch.setattr(devices, "bf16_flag", lambda flags=None: "amx_bf16")  # a CPU with them
    assert main(args) == 2
    assert capsys.readouterr().err.startswith(
        f"orpo-lab: reading and checking the dataset {missing} ..."
    )


def measured(monkeypatch, precision: str | None) -> None:
    """Make "auto" act as if this machine had measured `precision` the faster (None: as it is; the
    measuring itself: tests/test_autotune.py)."""
    if precision:
        reason = f"measured here: {precision} (a stand-in)"
        monkeypatch.setattr(autotune, "precision_from_cache", lambda cfg: (precision, reason, None))


@pytest.mark.parametrize(
    ("faster", "precision", "full", "expected"),
    [
        ("bf16", "auto", False, ("bf16", "bf16", "no", "eager")),  # decoder autocast
        ("fp32", "auto", False, ("fp32", "fp32", "no", None)),
        ("fp32", "bf16", False, ("bf16", "bf16", "no", "eager")),
        ("bf16", "auto", True, ("fp32", "fp32", "no", None)),  # full fine-tuning: not measured
        ("fp32", "bf16", True, ("bf16", "fp32", "bf16", None)),  # fp32 master + autocast
        ("bf16", "fp32", True, ("fp32", "fp32", "no", None)),
    ],
)
def test_precision_plan_of_a_cpu_run(monkeypatch, tmp_path, faster, precision, full, expected):
    measured(monkeypatch, faster)
    plan = plan_run(TrainConfig(device="cpu", full_finetune=full, precision=precision))
    assert (plan.precision, plan.base, plan.autocast, plan.attention) == expected
    assert not plan.precision_probe


def _pairs(path, n, offset=0):
    rows = [
        {
            "prompt": f"Name animal number {i}.",
            "chosen": "Cat.",
            "rejected": f"Well, animal {i} could be many things.",
        }
        for i in range(offset, offset + n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _config(tmp_path, model_dir, **changes) -> TrainConfig:
    values = dict(
        model=str(model_dir),
        dataset=_pairs(tmp_path / "train.jsonl", 16),
        eval_dataset=_pairs(tmp_path / "test.jsonl", 12, offset=100),
        output_dir=str(tmp_path / "runs"),
        run_name="t",
        max_steps=4,
        batch_size=4,
        learning_rate=1e-2,
        warmup_steps=0,
        eval_every=2,
        eval_at_start=True,
        save_every=4,
        max_length=64,
        max_prompt_length=48,
        device="cpu",
    )
    return TrainConfig(**(values | changes))


def _records(cfg: TrainConfig, kind: str) -> list[dict]:
    rows = [json.loads(ln) for ln in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def test_a_bf16_run_keeps_adapter_optimizer_logps_and_loss_in_float32(tmp_path, tiny_model_dir):
    """The frozen base is bf16; what is trained and what the loss sees is float32, and the step-0
    loss is the float32 one up to bf16 rounding of the base (measured 2e-4 relative here)."""
    cfg = _config(tmp_path, tiny_model_dir, precision="bf16")
    model, tokenizer = build_model(cfg, None, plan_run(cfg))
    trained = [p for p in model.parameters() if p.requires_grad]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert trained and all(p.dtype == torch.float32 for p in trained)
    assert {p.dtype for p in frozen} == {torch.bfloat16}
    assert model.config._attn_implementation == "eager"
    pairs, _, _ = load_pairs(cfg, tokenizer)
    batch = collate(pairs[:4], cfg.layout, tokenizer.pad_token_id)
    wrapped = PairLogps(model, cfg.nll_scope, 16)
    # The decoder runs under bf16 autocast, the adapters in bf16 from their float32 weights.
    assert wrapped.autocast == torch.bfloat16
    lora = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    assert lora and not any(m.cast_input_dtype_enabled for m in lora)
    seen = []
    hook = lora[0].lora_A["default"].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    chosen, rejected, nll_sum, nll_count = wrapped(**batch)
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16}  # the check of the fast path, then the forward
    assert chosen.dtype == rejected.dtype == nll_sum.dtype == torch.float32
    loss_bf16, _ = orpo_loss(chosen, rejected, nll_sum / nll_count, cfg.beta)

    cfg32 = _config(tmp_path, tiny_model_dir, precision="fp32")
    model32, _ = build_model(cfg32, None, plan_run(cfg32))
    c, r, s, n = PairLogps(model32, cfg.nll_scope, 16)(**batch)
    loss_fp32, _ = orpo_loss(c, r, s / n, cfg.beta)
    assert loss_bf16.dtype == torch.float32
    assert loss_bf16.item() == pytest.approx(loss_fp32.item(), rel=1e-2)

    train(cfg)
    started = _records(cfg, "event")[0]
    assert started["precision"] == "bf16"
    assert started["precision_reason"].startswith("precision=bf16 was asked for")
    checkpoint = RunDir(cfg.run_dir).latest_checkpoint()
    adapter = load_file(checkpoint / "adapter_model.safetensors")
    assert {t.dtype for t in adapter.values()} == {torch.float32}
    state = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    moments = [t for s in state["state"].values() for k, t in s.items() if k != "step"]
    assert moments and {t.dtype for t in moments} == {torch.float32}


@pytest.mark.parametrize(
    ("faster", "flag", "precision", "reason"),
    [
        ("bf16", "amx_bf16", "bf16", "measured here: bf16"),
        ("fp32", "amx_bf16", "fp32", "measured here: fp32"),
        (None, None, "fp32", "no bf16 support on this CPU (no flag of amx_bf16, avx512_bf16"),
    ],
)
def test_the_start_event_says_which_precision_and_why(
    monkeypatch, tmp_path, tiny_model_dir, faster, flag, precision, reason
):
    measured(monkeypatch, faster)
    monkeypatch.setattr(autotune, "bf16_flag", lambda flags=None: flag)
    cfg = _config(
        tmp_path, tiny_model_dir, max_steps=1, eval_every=None, save_every=None, torch_compile="off"
    )
    train(cfg)
    started = _records(cfg, "event")[0]
    assert started["event"] == "started" and started["precision"] == precision
    # bf16 runs their decoder under bf16 autocast (accelerate's mixed_precision stays "no" on CPU).
    assert started["decoder_autocast"] == ("bf16" if precision == "bf16" else None)
    assert started["precision_reason"].startswith(reason)


def test_training_scores_a_fixed_subset_and_the_last_step_every_held_out_pair(
    tmp_path, tiny_model_dir
):
    cfg = _config(tmp_path, tiny_model_dir, precision="fp32", eval_subset_pairs=5)
    train(cfg)
    evals = _records(cfg, "eval")
    assert [(r["step"], r["eval/pairs"]) for r in evals] == [(0, 5), (2, 5), (4, 12)]
    assert _records(cfg, "event")[0]["eval_subset_pairs"] == 5

    # None = every held-out pair every time (what the curves were before).
    again = _config(
        tmp_path, tiny_model_dir, precision="fp32", eval_subset_pairs=None, run_name="all"
    )
    train(again)
    assert [r["eval/pairs"] for r in _records(again, "eval")] == [12, 12, 12]


def test_evaluation_runs_in_eval_batch_size_batches_with_the_same_metrics(
    monkeypatch, tmp_path, tiny_model_dir
):
    """Evaluation keeps no gradients, so its batches may be larger than training's; in float32
    the batch size changes nothing but the number of forwards."""
    # None = four training batches, at most 16, never below batch_size.
    assert [TrainConfig(batch_size=b).eval_batch for b in (1, 2, 4, 8, 32)] == [4, 8, 16, 16, 32]
    assert TrainConfig(batch_size=4, eval_batch_size=5).eval_batch == 5
    with pytest.raises(ValueError, match="eval_batch_size must be above 0, or None"):
        TrainConfig(eval_batch_size=-1)

    import orpo_lab.step as step_module

    sizes: list[int] = []

    def counting_collate(pairs, *args, **kwargs):
        sizes.append(len(pairs))
        return collate(pairs, *args, **kwargs)

    monkeypatch.setattr(step_module, "collate", counting_collate)
    evals = {}
    for eval_batch in (1, 5, None):
        sizes.clear()
        cfg = _config(
            tmp_path,
            tiny_model_dir,
            precision="fp32",
            max_steps=2,
            eval_every=None,
            eval_batch_size=eval_batch,
            run_name=f"e{eval_batch}",
        )
        train(cfg)
        # eval_every=None: evaluations at step 0 and at the end, of all 12 held-out pairs each.
        assert [r["step"] for r in _records(cfg, "eval")] == [0, 2]
        assert sizes == {1: [1] * 12, 5: [5, 5, 2], None: [12]}[eval_batch] * 2
        evals[eval_batch] = _records(cfg, "eval")[-1]
    for key in ("eval/accuracy", "eval/logps_chosen", "eval/logps_rejected"):
        for eval_batch in (5, None):
            assert evals[eval_batch][key] == pytest.approx(evals[1][key], abs=1e-5), key


def test_fused_adamw_where_torch_has_it_and_the_same_update():
    weights = [torch.randn(16, 8), torch.randn(8)]
    assert fused_adamw([w.requires_grad_() for w in weights])
    assert not fused_adamw([torch.zeros(2, dtype=torch.bfloat16)]) and not fused_adamw([])
    updated = []
    for fused in (True, False):
        params = [w.detach().clone().requires_grad_() for w in weights]
        optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, fused=fused)
        for step in range(3):
            for i, p in enumerate(params):
                p.grad = torch.sin(torch.arange(p.numel(), dtype=torch.float32) + step + i).view_as(
                    p
                )
            optimizer.step()
        updated.append(params)
    for a, b in zip(*updated, strict=True):
        assert not torch.equal(a, weights[0] if a.dim() == 2 else weights[1])
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
