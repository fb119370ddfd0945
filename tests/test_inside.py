"""Inside ORPO: the gradient weighting logged at every evaluation and the token view's numbers are
the library's own, on the same log-probs; the token colours say which way each token moved."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from test_app import free_port
from test_train import make_config, write_pairs

from orpo_lab.build import load_pairs
from orpo_lab.collate import collate
from orpo_lab.data import tokenize_pair
from orpo_lab.logps import PairLogps
from orpo_lab.loss import odds_weight, or_penalty
from orpo_lab.model import load_model
from orpo_lab.rundir import RunDir
from orpo_lab.step import WEIGHT_QUANTILES
from orpo_lab.token_view import tokens_html
from orpo_lab.train import train
from orpo_lab.ui import build_app


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """A 4-step ORPO run of the tiny model with held-out evaluations at steps 0, 2 and 4."""
    tmp = tmp_path_factory.mktemp("inside")
    data = (write_pairs(tmp / "train.jsonl", 16), write_pairs(tmp / "test.jsonl", 8, offset=100))
    cfg = make_config(
        tmp,
        data,
        tiny_model_dir,
        max_steps=4,
        eval_every=2,
        save_every=None,
        learning_rate=5e-3,
        layout="prefix",
    )
    train(cfg)
    return cfg


def test_logged_gradient_weights_equal_the_library_on_the_same_logps(trained):
    """Recompute the held-out mean log-probs with the saved checkpoint; the step-4 record's
    quantiles of delta(d) and 1/(1-P) must be `or_penalty` / `odds_weight` of exactly those."""
    folder = RunDir(trained.run_dir)
    evals = [r for r in folder.metrics() if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2, 4]
    base, tokenizer = load_model(trained.model, device="cpu")
    model = PeftModel.from_pretrained(base, folder.latest_checkpoint()).eval()
    _, held_out, _ = load_pairs(trained, tokenizer)
    batch = collate(held_out, "padded", tokenizer.pad_token_id)
    with torch.no_grad():
        chosen, rejected, _, _ = PairLogps(model, trained.nll_scope, 0)(**batch)
    q = torch.tensor(WEIGHT_QUANTILES, dtype=torch.float32) / 100
    expected = {
        "delta": torch.quantile(or_penalty(chosen, rejected), q),
        "weight_chosen": torch.quantile(odds_weight(chosen), q),
        "weight_rejected": torch.quantile(odds_weight(rejected), q),
    }
    for stem, values in expected.items():
        logged = [evals[-1][f"eval/{stem}_q{p}"] for p in WEIGHT_QUANTILES]
        assert logged == pytest.approx(values.tolist(), rel=1e-4, abs=1e-6), stem
    # Training separated the pairs: the median pair pulls less than before any update.
    assert evals[-1]["eval/delta_q50"] < evals[0]["eval/delta_q50"]


def test_token_view_numbers_are_the_library_log_probs(trained, tiny_model_dir):
    """The app's token view for (base model -> checkpoint) on a held-out pair: per-token log-probs
    equal the checkpoint's own logits, and the means equal PairLogps on the same tokens."""
    from gradio_client import Client

    run = RunDir(trained.run_dir)
    checkpoint = run.latest_checkpoint()
    demo = build_app(str(tiny_model_dir), trained.run_dir.parent, device="cpu")
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
    try:
        client = Client(url, verbose=False)
        choice = f"{run.name}/{checkpoint.name}"
        pairs = client.predict(choice, api_name="/view_pairs")["choices"]
        assert pairs[0][0].startswith("1: ") and pairs[-1][0] == "type my own pair"
        prompt, chosen, rejected = client.predict(choice, pairs[0][0], api_name="/view_pair")
        html, numbers = client.predict(
            choice, "(none)", "base model", prompt, chosen, rejected, api_name="/token_view"
        )
    finally:
        demo.close()
    base, tokenizer = load_model(str(tiny_model_dir), device="cpu")
    model = PeftModel.from_pretrained(base, checkpoint).eval()
    ids = tokenize_pair(
        {"prompt": prompt, "chosen": chosen, "rejected": rejected}, tokenizer, 1024, 512
    )
    with torch.no_grad():
        c, r, _, _ = PairLogps(model, "response", 0)(
            **collate([ids], "padded", tokenizer.pad_token_id)
        )
        # Each chosen token's log-prob from the model's own logits, one position at a time.
        full = ids["prompt_ids"] + ids["chosen_ids"]
        logits = model(torch.tensor([full])).logits[0].log_softmax(-1)
        start = len(ids["prompt_ids"])
        own = [logits[start - 1 + k, t].item() for k, t in enumerate(ids["chosen_ids"])]
    after = numbers[choice]["after"]
    assert after["chosen"]["token_logps"] == pytest.approx(own, abs=1e-4)
    assert after["chosen"]["mean_logp"] == pytest.approx(c.item(), abs=1e-5)
    assert after["rejected"]["mean_logp"] == pytest.approx(r.item(), abs=1e-5)
    before = numbers["before"]
    change = numbers[choice]["change"]
    assert change["chosen_mean_logp"] == pytest.approx(
        after["chosen"]["mean_logp"] - before["chosen"]["mean_logp"], abs=1e-6
    )
    assert html.count("<span title=") == len(ids["chosen_ids"]) + len(ids["rejected_ids"])
    assert json.dumps(numbers)  # plain JSON for the page


def test_token_colours_follow_the_change_and_escape_the_text():
    shown = tokens_html(["<b>", "\n", "x"], [1.0, -2.0, 0.0])  # log-prob changes in nats
    assert "&lt;b&gt;" in shown and "<b>" not in shown  # tokens are text, never markup
    assert "rgba(44,160,44,0.50)" in shown  # +1 nat: green, half strength at the 2-nat scale
    assert "rgba(214,39,40,1.00)" in shown  # -2 nats: full red
    assert "rgba(214,39,40,0.00)" in shown or "rgba(44,160,44,0.00)" in shown  # unchanged: clear
    assert "\u21b5" in shown  # a newline token stays visible
