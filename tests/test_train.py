"""The training engine on a tiny model: invariants that catch silent training bugs, control, checkpoints, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from orpo_lab.config import TrainConfig
from orpo_lab.rundir import RunDir
from orpo_lab.train import NonFiniteLoss, TrainingError, train


def checkpoints(run_dir: Path) -> list[Path]:
    return RunDir(run_dir).checkpoints()


ANIMALS = ["cat", "dog", "owl", "fox", "bee", "cow", "elk", "yak", "ant", "bat", "eel", "hen"]


def write_pairs(path: Path, n: int, offset: int = 0) -> Path:
    """Short pairs in the standard format: the chosen answer is one word, the rejected one rambles."""
    rows = []
    for i in range(offset, offset + n):
        word = ANIMALS[i % len(ANIMALS)]
        rows.append(
            {
                "prompt": f"Name animal number {i}.",
                "chosen": f"{word.capitalize()}.",
                "rejected": f"Well, let me think about animal {i}, it could be many things.",
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def data(tmp_path):
    return write_pairs(tmp_path / "train.jsonl", 16), write_pairs(
        tmp_path / "test.jsonl", 8, offset=100
    )


def make_config(tmp_path, data, tiny_model_dir, **changes) -> TrainConfig:
    values = dict(
        model=str(tiny_model_dir),
        dataset=str(data[0]),
        eval_dataset=str(data[1]),
        output_dir=str(tmp_path / "runs"),
        run_name="t",
        max_steps=4,
        batch_size=4,
        learning_rate=1e-2,
        warmup_steps=0,
        lr_scheduler="constant",
        eval_every=2,
        eval_at_start=True,  # the baseline evaluation at step 0 (the presets' choice)
        save_every=2,
        max_length=64,
        max_prompt_length=48,
        device="cpu",
        layout="padded",
        # These tests check float32 eager arithmetic (accumulation, resume, DDP equal one big
        # batch); "auto" would follow the machine's timings. bf16 runs: tests/test_precision.py,
        # compiled ones: tests/test_compile.py, "auto": tests/test_autotune.py.
        precision="fp32",
        torch_compile="off",
    )
    return TrainConfig(**(values | changes))


def adapter(run_dir: Path, step: int | None = None) -> dict[str, torch.Tensor]:
    ckpt = (
        checkpoints(run_dir)[-1] if step is None else run_dir / "checkpoints" / f"step-{step:06d}"
    )
    return load_file(ckpt / "adapter_model.safetensors")


def lines(run_dir: Path, kind: str = "train") -> list[dict]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Equal adapters after training. Adam divides each gradient by its own running size, so a
    float-rounding difference in a near-zero gradient element can move that one element by a visible
    part of a step: compare each tensor as a whole (0.1% of its norm), not element by element."""
    assert a.keys() == b.keys()
    for k in a:
        assert (a[k] - b[k]).norm() <= 1e-3 * a[k].norm(), k


def same_trajectory(
    a: list[dict], b: list[dict], keys=("loss", "nll_loss", "or_loss", "logps/chosen")
):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for k in keys:
            assert ra[k] == pytest.approx(rb[k], rel=1e-4, abs=1e-5), (ra["step"], k)


def test_loss_goes_down_and_only_lora_weights_change(tmp_path, data, learnable_model_dir):
    tiny_model_dir = learnable_model_dir
    cfg = make_config(
        tmp_path, data, tiny_model_dir, max_steps=12, save_every=None, eval_every=None
    )
    train(cfg)
    rows = lines(cfg.run_dir)
    # Measured 13.7 -> 8.1 (torch 2.13, CPU): 16 pairs seen three times by a LoRA at lr 1e-2.
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"]
    assert rows[-1]["logps/chosen"] > rows[0]["logps/chosen"]
    status = json.loads((cfg.run_dir / "status.json").read_text())
    assert status["status"] == "finished" and status["step"] == 12
    # The checkpoint is an adapter: LoRA tensors only, and they moved away from their init (B starts at 0).
    weights = adapter(cfg.run_dir)
    assert weights and all("lora_" in k for k in weights)
    assert max(w.abs().max().item() for k, w in weights.items() if "lora_B" in k) > 0
    # And the base model on disk is untouched: a fresh load equals the original file.
    base = load_file(next(Path(tiny_model_dir).glob("*.safetensors")))
    from orpo_lab.model import load_model

    fresh, _ = load_model(str(tiny_model_dir), device="cpu")
    assert all(
        torch.equal(fresh.state_dict()[k], v) for k, v in base.items() if k in fresh.state_dict()
    )


# The QLoRA tests run on bitsandbytes' CPU backend here; on a GPU machine
# `ORPO_LAB_TEST_DEVICE=cuda pytest tests/test_train.py -k qlora` runs them on CUDA (fp32 compute, so
# that the same tolerances hold).
QLORA_DEVICE = os.environ.get("ORPO_LAB_TEST_DEVICE", "cpu")


def qlora_config(tmp_path, data, model_dir, **changes) -> TrainConfig:
    return make_config(
        tmp_path,
        data,
        model_dir,
        load_in_4bit=True,
        device=QLORA_DEVICE,
        precision="fp32",
        **changes,
    )


def test_qlora_gradients_equal_lora_on_the_dequantized_base(tmp_path, data, learnable_model_dir):
    """QLoRA through bitsandbytes (its CPU backend here; CUDA runs the same modules): the LoRA
    gradients equal those of the same LoRA on an fp32 copy of the 4-bit weights, also after an
    eval-mode forward (bitsandbytes repacks CPU weights there into a layout with no backward)."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    from orpo_lab.build import build_model
    from orpo_lab.model import add_lora, load_model
    from orpo_lab.plan import plan_run

    cfg = qlora_config(tmp_path, data, learnable_model_dir)
    qlora, tok = build_model(cfg, None, plan_run(cfg))
    quantized = {
        n.removeprefix("base_model.model.").removesuffix(".base_layer"): m
        for n, m in qlora.named_modules()
        if isinstance(m, bnb.nn.Linear4bit)
    }
    assert len(quantized) == 14 and all(m.weight.quant_type == "nf4" for m in quantized.values())
    assert all(m.weight.device.type == QLORA_DEVICE for m in quantized.values())
    with torch.no_grad():  # a trained-looking adapter, so that gradients reach every lora_A
        for n, p in qlora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)

    base, _ = load_model(str(learnable_model_dir), device=QLORA_DEVICE, precision="fp32")
    with torch.no_grad():
        for name, module in quantized.items():
            w = module.weight
            base.get_submodule(name).weight.copy_(dequantize_4bit(w.data, w.quant_state))
    reference = add_lora(base, cfg.lora_r, cfg.lora_alpha, 0.0, "all-linear")
    reference.load_state_dict(
        {k: v for k, v in qlora.state_dict().items() if "lora_" in k}, strict=False
    )

    ids = tok(["Name animal number 3. Cat.", "Well, let me think about it."], padding=True)
    batch = {k: torch.tensor(v, device=QLORA_DEVICE) for k, v in ids.items()}

    def lora_grads(model):
        model.train()
        model.zero_grad()
        model(**batch, labels=batch["input_ids"]).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    want = lora_grads(reference)
    assert len(want) == 28
    for when in ("before", "after"):
        got = lora_grads(qlora)
        assert got.keys() == want.keys()
        for k in want:
            assert (got[k] - want[k]).norm() <= 1e-4 * want[k].norm(), (when, k)
        qlora.eval()
        with torch.no_grad():
            qlora(**batch)


def test_qlora_without_bitsandbytes_says_how_to_get_it(tmp_path, data, tiny_model_dir, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "bitsandbytes" else real(name, *a),
    )
    cfg = qlora_config(tmp_path, data, tiny_model_dir)
    with pytest.raises(TrainingError, match=r"needs bitsandbytes.*pip install 'orpo-lab\[qlora\]'"):
        train(cfg)
    assert json.loads((cfg.run_dir / "status.json").read_text())["status"] == "failed"
    assert not checkpoints(cfg.run_dir)


def test_qlora_run_learns_resumes_and_exports_a_full_precision_model(
    tmp_path, data, learnable_model_dir
):
    whole = qlora_config(tmp_path, data, learnable_model_dir, run_name="whole", max_steps=8)
    train(whole)
    rows = lines(whole.run_dir)
    # Measured 13.7 -> 8.4 in 8 steps (NF4 base, bitsandbytes 0.50.2 CPU backend).
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"]
    assert lines(whole.run_dir, "eval")[-1]["eval/accuracy"] == 1.0
    weights = adapter(whole.run_dir)
    assert weights and all("lora_" in k for k in weights)

    stop = threading.Event()
    parts = qlora_config(
        tmp_path, data, learnable_model_dir, run_name="parts", max_steps=8, save_every=None
    )
    train(
        parts,
        callback=lambda r: r.get("step") == 3 and r["kind"] == "train" and stop.set(),
        stop_event=stop,
    )
    parts.resume = True
    train(parts)
    same_trajectory(lines(whole.run_dir), lines(parts.run_dir))
    same_weights(weights, adapter(parts.run_dir))

    # Export merges the adapter into the full-precision base: no quantisation left on disk.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from orpo_lab.checkpoint import Checkpointer

    out = Checkpointer.export_merged(checkpoints(whole.run_dir)[-1], tmp_path / "merged")
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    base = AutoModelForCausalLM.from_pretrained(learnable_model_dir)
    with_adapter = PeftModel.from_pretrained(base, checkpoints(whole.run_dir)[-1])
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    torch.testing.assert_close(merged(ids).logits, with_adapter(ids).logits, rtol=1e-4, atol=1e-4)


def test_accumulation_equals_one_big_batch(tmp_path, data, tiny_model_dir):
    """Batch 4 x accumulation 1 and batch 1 x accumulation 4 give the same gradients, loss and weights."""
    from accelerate import Accelerator

    from orpo_lab.build import build_model, load_pairs
    from orpo_lab.collate import collate
    from orpo_lab.logps import PairLogps
    from orpo_lab.plan import plan_run
    from orpo_lab.step import forward_backward

    grads, metrics = [], []
    for bs, acc in [(4, 1), (1, 4)]:
        cfg = make_config(
            tmp_path,
            data,
            tiny_model_dir,
            batch_size=bs,
            grad_accum=acc,
            nll_scope="prompt_response",
        )
        model, tok = build_model(cfg, None, plan_run(cfg))
        pairs, _, _ = load_pairs(cfg, tok)
        micro = [
            collate(pairs[i * bs : (i + 1) * bs], "padded", tok.pad_token_id) for i in range(acc)
        ]
        wrapped = PairLogps(model, cfg.nll_scope, 16)
        metrics.append(forward_backward(Accelerator(cpu=True), wrapped, micro, cfg))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    for key in ("loss", "nll_loss", "or_loss", "logps/chosen", "logps/rejected"):
        assert metrics[0][key] == pytest.approx(metrics[1][key], rel=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)
    # End to end, through the optimiser: the same weights after three steps.
    runs = []
    for bs, acc in [(4, 1), (1, 4)]:
        cfg = make_config(
            tmp_path,
            data,
            tiny_model_dir,
            batch_size=bs,
            grad_accum=acc,
            run_name=f"a{bs}",
            max_steps=3,
            save_every=None,
        )
        train(cfg)
        runs.append(cfg.run_dir)
    same_trajectory(lines(runs[0]), lines(runs[1]))
    same_weights(adapter(runs[0]), adapter(runs[1]))


# The one test of "resume equals an uninterrupted run" for LoRA (full fine-tuning and QLoRA resume
# their own checkpoint formats: test_options.py, the QLoRA test above): float32 padded, and bf16
# with the default prefix layout (bf16 arithmetic is deterministic too, so resume is exact there).
@pytest.mark.parametrize(("layout", "precision"), [("padded", "fp32"), ("prefix", "bf16")])
def test_stop_mid_step_then_resume_continues_the_same_trajectory(
    tmp_path, data, tiny_model_dir, layout, precision
):
    """grad_accum 2: a stop asked during step 3's first micro-batch drops step 3 and saves step 2;
    the resumed run then equals an uninterrupted one, step for step (schedule with warmup, data
    order, optimizer state, held-out evaluations)."""
    common = dict(
        max_steps=4,
        batch_size=2,
        grad_accum=2,
        layout=layout,
        precision=precision,
        lr_scheduler="cosine",
        warmup_steps=2,
    )
    whole = make_config(tmp_path, data, tiny_model_dir, run_name="whole", **common)
    train(whole)
    parts = make_config(tmp_path, data, tiny_model_dir, run_name="parts", save_every=None, **common)
    stop = threading.Event()
    calls = {"n": 0}
    import orpo_lab.logps as logps

    real_forward = logps.PairLogps.forward

    def counting_forward(self, *args, **kwargs):
        calls["n"] += self.training  # training forwards only, not the held-out evaluation's
        if calls["n"] == 5 and self.training:  # step 3, first micro-batch (2 per step)
            stop.set()
        return real_forward(self, *args, **kwargs)

    logps.PairLogps.forward = counting_forward
    try:
        train(parts, stop_event=stop)
    finally:
        logps.PairLogps.forward = real_forward
    status = json.loads((parts.run_dir / "status.json").read_text())
    assert status["status"] == "stopped" and status["step"] == 2, status
    assert "after step 2" in status["message"] and "step-000002" in status["message"]
    assert [c.name for c in checkpoints(parts.run_dir)] == ["step-000002"]
    assert [r["step"] for r in lines(parts.run_dir)] == [1, 2]
    with pytest.raises(TrainingError, match="already has checkpoints"):
        train(make_config(tmp_path, data, tiny_model_dir, run_name="parts", **common))
    parts.resume = True
    train(parts)
    same_trajectory(
        lines(whole.run_dir),
        lines(parts.run_dir),
        keys=("loss", "nll_loss", "or_loss", "lr", "logps/chosen", "logps/rejected"),
    )
    a, b = adapter(whole.run_dir), adapter(parts.run_dir)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)
    evals = lines(parts.run_dir, "eval")
    assert [e["step"] for e in evals] == [0, 2, 4]
    same_trajectory(
        lines(whole.run_dir, "eval"), evals, keys=("eval/logps_chosen", "eval/logps_rejected")
    )


def test_stop_file_saves_and_stops(tmp_path, data, tiny_model_dir):
    cfg = make_config(tmp_path, data, tiny_model_dir, max_steps=50, save_every=None)

    def request_stop(record):
        if record["kind"] == "train" and record["step"] == 2:
            (cfg.run_dir / "STOP").touch()

    train(cfg, callback=request_stop)
    status = json.loads((cfg.run_dir / "status.json").read_text())
    assert status["status"] == "stopped" and status["step"] == 2
    assert [c.name for c in checkpoints(cfg.run_dir)] == ["step-000002"]
    assert not (cfg.run_dir / "STOP").exists()


def train_poisoned(cfg: TrainConfig, at_step: int) -> None:
    """train(cfg), filling a LoRA weight with NaN right after step `at_step`, as an exploding update would."""
    import orpo_lab.setup as engine

    holder, real_build = {}, engine.build_model

    def spy(*args):
        model, tok = real_build(*args)
        holder["model"] = model
        return model, tok

    def poison(record):
        if record["kind"] == "train" and record["step"] == at_step:
            lora = next(p for n, p in holder["model"].named_parameters() if "lora_A" in n)
            lora.data.fill_(float("nan"))

    engine.build_model = spy
    try:
        train(cfg, callback=poison)
    finally:
        engine.build_model = real_build


def test_nan_weights_stop_before_they_are_saved(tmp_path, data, tiny_model_dir):
    cfg = make_config(tmp_path, data, tiny_model_dir, max_steps=10, save_every=1)
    with pytest.raises(NonFiniteLoss, match="weights became non-finite at step 3.*step-000002"):
        train_poisoned(cfg, at_step=3)
    status = json.loads((cfg.run_dir / "status.json").read_text())
    assert status["status"] == "failed" and "Lower learning_rate" in status["message"]
    assert checkpoints(cfg.run_dir)[-1].name == "step-000002"
    assert all(torch.isfinite(w).all() for w in adapter(cfg.run_dir).values())


def test_nan_loss_is_caught_between_checkpoints(tmp_path, data, tiny_model_dir):
    """With no save due, the NaN shows in the next forward: stop there, naming the last checkpoint."""
    cfg = make_config(tmp_path, data, tiny_model_dir, max_steps=10, save_every=2)
    with pytest.raises(NonFiniteLoss, match="loss became nan at step 4.*step-000002"):
        train_poisoned(cfg, at_step=3)
    assert checkpoints(cfg.run_dir)[-1].name == "step-000002"
    assert all(torch.isfinite(w).all() for w in adapter(cfg.run_dir).values())


KILL_DURING_SAVE = textwrap.dedent(
    """
    import os, signal, sys, torch
    import orpo_lab.train as engine
    from orpo_lab.config import TrainConfig
    real_save, calls = torch.save, []
    def dying_save(obj, path, *a, **k):
        calls.append(path)
        real_save(obj, path, *a, **k)
        if "step-000004" in str(path):  # the second checkpoint: die half-way through writing it
            os.kill(os.getpid(), signal.SIGKILL)
    torch.save = dying_save
    engine.train(TrainConfig.from_yaml(sys.argv[1]))
    """
)


def test_checkpoint_survives_a_kill_during_its_save(tmp_path, data, tiny_model_dir):
    cfg = make_config(tmp_path, data, tiny_model_dir, max_steps=6, save_every=2)
    cfg.run_dir.mkdir(parents=True)
    cfg.to_yaml(tmp_path / "c.yaml")
    proc = subprocess.run(
        [sys.executable, "-c", KILL_DURING_SAVE, str(tmp_path / "c.yaml")], capture_output=True
    )
    assert proc.returncode == -9
    assert [c.name for c in checkpoints(cfg.run_dir)] == ["step-000002"]
    assert (
        cfg.run_dir / "checkpoints" / ".tmp-step-000004"
    ).exists()  # the half-written one, ignored
    cfg.resume = True
    train(cfg)
    assert [c.name for c in checkpoints(cfg.run_dir)][-1] == "step-000006"
    assert [r["step"] for r in lines(cfg.run_dir)] == [1, 2, 3, 4, 5, 6]


def test_out_of_memory_gives_remedies(tmp_path, data, tiny_model_dir, monkeypatch):
    from orpo_lab.logps import PairLogps

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(PairLogps, "forward", oom)
    cfg = make_config(tmp_path, data, tiny_model_dir)
    with pytest.raises(TrainingError, match="batch_size.*grad_accum.*max_length.*load_in_4bit"):
        train(cfg)
    assert json.loads((cfg.run_dir / "status.json").read_text())["status"] == "failed"


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(layout="rows"), "layout must be one of padded, packed, prefix"),
        (
            dict(max_prompt_length=300, max_length=256),
            "max_prompt_length .300. must be below max_length",
        ),
        (dict(run_name="../escape"), "run_name '../escape' may hold only"),
        (dict(load_in_4bit=True, full_finetune=True), "drop full_finetune or load_in_4bit"),
        (dict(beta=-1.0), "beta must be >= 0"),
        (dict(max_steps=None, epochs=0), "nothing to train"),
    ],
)
def test_impossible_configs_are_refused_with_what_to_change(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)


def run_cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orpo_lab.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_cli_round_trip_and_merged_export(tmp_path, data, tiny_model_dir, capsys):
    """The CLI in a process of its own once (a real `python -m orpo_lab.cli` run, which shows its
    progress from the data check to the last evaluation); its refusals and the export through
    `cli.main` in this process (the same code, without a second start of torch). The merged
    model's logits equal base + adapter: test_architectures.py checks that for every architecture
    (the tiny Llama included), the QLoRA test for a 4-bit base."""
    from orpo_lab.cli import KEYS_NOTE, main

    cfg = make_config(tmp_path, data, tiny_model_dir, max_steps=2)
    cfg.to_yaml(tmp_path / "run.yaml")
    env = {**os.environ, "ORPO_LAB_CACHE": str(tmp_path / "cache")}  # the data prepared afresh
    proc = run_cli(
        "--config", str(tmp_path / "run.yaml"), "--max-steps", "3", "--beta", "0.25", env=env
    )
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr
    for text in (
        "orpo-lab: reading and checking",
        "Reading and checking",
        "Tokenising train pairs",
        "started: 16 training pairs",
        "step 1/3  loss",
        "step 3/3  loss",
        "held-out at step 0: accuracy",
        "held-out at step 2: accuracy",
        "held-out at step 3: accuracy",
    ):
        assert text in err, text
    assert (
        err.index("orpo-lab: reading") < err.index("Tokenising train pairs") < err.index("started:")
    )
    # Each setup stage's line comes before its bar (it was printed into the bar's line).
    stage = "preparing data: tokenising train pairs ...\n"
    assert err.index(stage) < err.index("Tokenising train pairs")
    assert KEYS_NOTE in err  # the last record's TRL names, told apart
    assert err.index("started:") < err.index("step 1/3")
    # The last line says what is on disk and where, in the run status's own words.
    status = json.loads((cfg.run_dir / "status.json").read_text())
    assert status["message"] == "finished 3 steps; checkpoint step-000003 saved", status
    assert f"\n{status['message']} (run folder {cfg.run_dir})\n" in proc.stdout
    saved = TrainConfig.from_yaml(cfg.run_dir / "config.yaml")
    assert (saved.max_steps, saved.beta, saved.layout) == (3, 0.25, "padded")
    assert checkpoints(cfg.run_dir)[-1].name == "step-000003"
    capsys.readouterr()
    # Running it again without --resume changes nothing and says what to do.
    assert main(["--config", str(tmp_path / "run.yaml")]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (
        main(["--config", str(tmp_path / "run.yaml"), "--run-name", "x", "--max-length", "8"]) == 2
    )
    assert "max_prompt_length (48) must be below max_length (8)" in capsys.readouterr().err

    out = tmp_path / "merged"
    missing = cfg.run_dir / "checkpoints" / "step-000009"  # a step the run never reached
    assert main(["--export", str(missing), "--out", str(out)]) == 2
    assert (
        f"{missing} does not exist: expected a folder runs/NAME/checkpoints/step-NNNNNN; "
        f"{missing.parent} holds step-000002, step-000003."
    ) in capsys.readouterr().err
    assert not out.exists()
    assert main(["--export", str(checkpoints(cfg.run_dir)[-1]), "--out", str(out)]) == 0
    assert f"merged model written to {out}" in capsys.readouterr().out
    # The folder is a model with the run's tokenizer, and the adapter is in it: the adapted
    # projections moved away from the base, nothing else did. (Its logits equal base + adapter:
    # test_architectures.py.)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    moved = [n for n, p in merged.named_parameters() if not torch.equal(p, base.get_parameter(n))]
    assert moved and all(n.endswith("_proj.weight") for n in moved), moved
    ids = [
        AutoTokenizer.from_pretrained(d)("Name animal 3.").input_ids for d in (out, tiny_model_dir)
    ]
    assert ids[0] == ids[1]


def test_two_process_torchrun_equals_one_process(tmp_path, data, tiny_model_dir):
    """gloo on CPU: 2 processes x batch 2 follow the same trajectory as 1 process x batch 4."""
    common = [
        "--model",
        str(tiny_model_dir),
        "--dataset",
        str(data[0]),
        "--eval-dataset",
        str(data[1]),
        "--output-dir",
        str(tmp_path / "runs"),
        "--max-steps",
        "3",
        "--learning-rate",
        "1e-2",
        "--lr-scheduler",
        "constant",
        "--warmup-steps",
        "0",
        "--device",
        "cpu",
        "--layout",
        "padded",
        "--max-length",
        "64",
        "--max-prompt-length",
        "48",
        "--save-every",
        "end",
        "--eval-every",
        "end",
        "--precision",
        "fp32",  # float32 arithmetic is compared; "auto" is bf16 on a CPU with AMX
    ]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER"))
    }
    # The one-process run in this process, from the same arguments (a CLI run in a process of
    # its own: test_cli_round_trip_and_merged_export), saves a start of torch (~8 s).
    from orpo_lab.cli import parser_with_hub
    from orpo_lab.config_flags import config_from_args

    train(
        config_from_args(
            parser_with_hub().parse_args([*common, "--run-name", "one", "--batch-size", "4"])
        )
    )
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            "-m",
            "orpo_lab.cli",
            *common,
            "--run-name",
            "two",
            "--batch-size",
            "2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    # The command's own lines are said once, not once per process.
    assert two.stderr.count("orpo-lab: reading and checking the dataset") == 1
    assert two.stdout.count("finished 3 steps; checkpoint step-000003 saved") == 1
    runs = tmp_path / "runs"
    first_event = [
        json.loads(ln) for ln in (runs / "two" / "metrics.jsonl").read_text().splitlines()
    ][0]
    assert first_event["processes"] == 2 and first_event["device"].startswith("cpu")
    same_trajectory(lines(runs / "one"), lines(runs / "two"))
    same_weights(adapter(runs / "one"), adapter(runs / "two"))
