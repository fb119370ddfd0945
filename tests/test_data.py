"""Tokenisation, masks and the three batch layouts, checked token by token on SmolLM2's real template."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_tiny_model

from orpo_lab.collate import IGNORE, collate, collate_padded
from orpo_lab.data import (
    MIN_RESPONSE_TOKENS,
    end_of_turn_id,
    tokenize_dataset,
    tokenize_pair,
    tokenize_pairs,
)
from orpo_lab.preferences import load_preferences
from orpo_lab.sources import PreferenceDataError
from orpo_lab.votes import votes_to_dataset

SINGLE = {"prompt": "What is 7 + 5?", "chosen": "7 + 5 = 12.", "rejected": "7 + 5 = 13, I think."}
MULTI_PROMPT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Name three colours."},
]
MULTI = {
    "prompt": MULTI_PROMPT,
    "chosen": "- red\n- green\n- blue",
    "rejected": "Red, green and blue.",
}
LAYOUTS = ("padded", "packed", "prefix")


def sequence_logps(model, batch) -> torch.Tensor:
    """(2B,) summed log-prob per sequence, the way the loss module consumes the contract."""
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
    ).logits
    scored = batch["targets"] != IGNORE
    logps = torch.log_softmax(logits.float(), dim=-1)[scored]
    tok = logps.gather(-1, batch["targets"][scored][:, None])[:, 0]
    total = torch.zeros(2 * batch["num_pairs"], dtype=tok.dtype)
    return total.index_add(0, batch["target_seq"][scored], tok)


def scored_text(tokenizer, batch, row: int, in_prompt: bool = False) -> str:
    keep = (batch["targets"][row] != IGNORE) & (batch["target_in_prompt"][row] == in_prompt)
    return tokenizer.decode(batch["targets"][row][keep])


# ---------------------------------------------------------------- tokenisation


def test_end_of_turn_is_im_end(default_tokenizer):
    assert end_of_turn_id(default_tokenizer) == 2
    assert default_tokenizer.convert_ids_to_tokens(2) == "<|im_end|>"


def test_single_turn_ids_are_pinned(default_tokenizer):
    pair = tokenize_pair(SINGLE, default_tokenizer)
    system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    expected_prompt = (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\nWhat is 7 + 5?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert default_tokenizer.decode(pair["prompt_ids"]) == expected_prompt
    assert pair["prompt_ids"][0] == 1 and pair["prompt_ids"][1] != 1  # one BOS-like token
    assert len(pair["prompt_ids"]) == 38
    assert pair["chosen_ids"] == [39, 1232, 216, 37, 446, 216, 33, 34, 30, 2]
    assert pair["truncated"] is False


@pytest.mark.parametrize("example", [SINGLE, MULTI], ids=["single", "multi"])
def test_ids_match_the_template_rendering(default_tokenizer, example):
    """prompt + chosen equals the template's own rendering of the finished conversation."""
    pair = tokenize_pair(example, default_tokenizer)
    prompt = example["prompt"]
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    full = default_tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": example["chosen"]}], tokenize=False
    )
    ids = default_tokenizer(full, add_special_tokens=False).input_ids
    # The template ends a turn with "<|im_end|>\n"; we score up to and including <|im_end|>.
    assert ids[:-1] == pair["prompt_ids"] + pair["chosen_ids"]
    for response in ("chosen_ids", "rejected_ids"):
        assert pair[response].count(2) == 1 and pair[response][-1] == 2


def test_reply_that_already_ends_with_im_end_is_not_doubled(default_tokenizer):
    pair = tokenize_pair({**SINGLE, "chosen": "7 + 5 = 12.<|im_end|>"}, default_tokenizer)
    assert pair["chosen_ids"] == [39, 1232, 216, 37, 446, 216, 33, 34, 30, 2]


# ---------------------------------------------------------------- masks


@pytest.mark.parametrize("layout", LAYOUTS)
def test_masks_token_by_token(default_tokenizer, layout):
    pairs = [tokenize_pair(SINGLE, default_tokenizer), tokenize_pair(MULTI, default_tokenizer)]
    batch = collate(pairs, layout, pad_id=default_tokenizer.pad_token_id)
    assert batch["num_pairs"] == 2
    expected = {
        0: SINGLE["chosen"],
        1: MULTI["chosen"],
        2: SINGLE["rejected"],
        3: MULTI["rejected"],
    }
    for seq, text in expected.items():
        for row in range(batch["input_ids"].shape[0]):
            keep = (batch["target_seq"][row] == seq) & ~batch["target_in_prompt"][row]
            if keep.any():
                got = default_tokenizer.decode(batch["targets"][row][keep])
                assert got == text + "<|im_end|>"
    # Prompt tokens are scored for chosen sequences only, and every prompt token after the first.
    in_prompt_seqs = set(batch["target_seq"][batch["target_in_prompt"]].tolist())
    assert in_prompt_seqs == {0, 1}
    assert int(batch["target_in_prompt"].sum()) == sum(len(p["prompt_ids"]) - 1 for p in pairs)
    # Unscored positions carry -100 and -1 together.
    assert torch.equal(batch["targets"] == IGNORE, batch["target_seq"] == -1)


def test_padded_rows_and_eos_scored_when_pad_is_eos(default_tokenizer):
    pairs = [tokenize_pair(SINGLE, default_tokenizer), tokenize_pair(MULTI, default_tokenizer)]
    batch = collate_padded(pairs, pad_id=2)
    assert batch["input_ids"].shape == (4, 51)  # 38 prompt + 13 rejected ids
    assert scored_text(default_tokenizer, batch, 0) == "7 + 5 = 12.<|im_end|>"
    assert scored_text(default_tokenizer, batch, 3) == "Red, green and blue.<|im_end|>"
    assert scored_text(default_tokenizer, batch, 2, in_prompt=True) == ""  # rejected: no prompt
    # Row 0 is padded with pad == eos == 2: the real final <|im_end|> is scored exactly once.
    row = batch["targets"][0]
    assert int((row[~batch["target_in_prompt"][0]] == 2).sum()) == 1
    length = int(batch["attention_mask"][0].sum())
    assert row[length - 2] == 2 and (row[length - 1 :] == IGNORE).all()
    assert batch["position_ids"][0, :length].tolist() == list(range(length))


def test_packed_and_prefix_position_ids(default_tokenizer):
    pairs = [tokenize_pair(SINGLE, default_tokenizer)]
    p, c, r = (len(pairs[0][k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids"))
    packed = collate(pairs, "packed")
    assert packed["position_ids"][0].tolist() == list(range(p + c)) + list(range(p + r))
    prefix = collate(pairs, "prefix")
    assert prefix["position_ids"][0].tolist() == (
        list(range(p - 1)) + list(range(p - 1, p + c)) + list(range(p - 1, p + r))
    )
    t = (p - 1) + (c + 1) + (r + 1)  # prompt[:-1], then each branch headed by the last prompt token
    assert prefix["attention_mask"].shape == (1, 1, t, t)
    assert packed["input_ids"].shape == (1, 2 * p + c + r)
    allowed = prefix["attention_mask"][0, 0] == 0
    first_rejected = p - 1 + c + 1  # the repeated last prompt token heading the rejected branch
    assert not allowed[first_rejected, p - 1 : first_rejected].any()  # never sees the chosen branch
    assert allowed[first_rejected, : p - 1].all() and allowed[first_rejected, first_rejected]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_layouts_agree_on_tiny_model(default_tokenizer, attn):
    model = build_tiny_model(len(default_tokenizer)).eval()
    model.set_attn_implementation(attn)
    examples = [SINGLE, MULTI, {**SINGLE, "chosen": "Twelve."}]
    pairs = [tokenize_pair(e, default_tokenizer) for e in examples]
    with torch.no_grad():
        results = [sequence_logps(model, collate(pairs, lay, pad_id=2)) for lay in LAYOUTS]
    assert results[0].shape == (6,)
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_layouts_agree_on_default_model(default_tokenizer):
    from orpo_lab.model import load_model

    model, _ = load_model("default", device="cpu", precision="fp32")
    model.eval()
    pairs = [tokenize_pair(e, default_tokenizer) for e in (SINGLE, MULTI)]
    with torch.no_grad():
        results = [sequence_logps(model, collate(pairs, lay, pad_id=2)) for lay in LAYOUTS]
    batch = collate(pairs, "padded", pad_id=2)
    counts = torch.bincount(batch["target_seq"][batch["targets"] != IGNORE], minlength=4)
    means = [r / counts for r in results]  # (2B,) mean log-prob per sequence
    assert means[0].max() < 0
    for other in means[1:]:
        torch.testing.assert_close(other, means[0], atol=1e-4, rtol=0)


def test_unknown_layout_is_refused(default_tokenizer):
    with pytest.raises(ValueError, match="layout must be"):
        collate([tokenize_pair(SINGLE, default_tokenizer)], "ragged")


# ---------------------------------------------------------------- truncation


def test_truncation_never_empties_a_response(default_tokenizer):
    long = {"prompt": "word " * 300, "chosen": "yes " * 200, "rejected": "no " * 200}
    pair = tokenize_pair(long, default_tokenizer, max_length=64, max_prompt_length=48)
    assert pair["truncated"] is True
    assert len(pair["prompt_ids"]) == 48
    # The prompt keeps its end: the assistant header the reply is conditioned on.
    assert default_tokenizer.decode(pair["prompt_ids"]).endswith("<|im_start|>assistant\n")
    assert len(pair["prompt_ids"]) + len(pair["chosen_ids"]) == 64
    assert pair["chosen_ids"][-1] == 2 and pair["chosen_ids"].count(2) == 1
    # A prompt that alone exceeds max_length still leaves MIN_RESPONSE_TOKENS + end-of-turn.
    tight = tokenize_pair(long, default_tokenizer, max_length=20, max_prompt_length=256)
    assert len(tight["chosen_ids"]) == len(tight["rejected_ids"]) == MIN_RESPONSE_TOKENS + 1
    assert len(tight["prompt_ids"]) == 20 - MIN_RESPONSE_TOKENS - 1


def test_tokenize_dataset_counts_cut_pairs(default_tokenizer):
    long = {"prompt": "Hi", "chosen": "yes " * 100, "rejected": "no"}
    pairs, stats = tokenize_dataset([SINGLE, long, MULTI], default_tokenizer, max_length=64)
    assert stats == {"pairs": 3, "truncated": 1}
    assert [p["truncated"] for p in pairs] == [False, True, False]
    assert pairs[1]["rejected_ids"] == tokenize_pair(long, default_tokenizer)["rejected_ids"]


def test_tokenize_pairs_gives_tokenize_pairs_ids_batched(default_tokenizer):
    """The batched encoding (the backend's encode_batch) is the per-pair one, budgets included,
    with and without a chat template, and through a tokenizer that has no fast backend."""
    import copy

    long = {"prompt": "word " * 300, "chosen": "yes " * 200, "rejected": "no " * 200}
    carrying = {**SINGLE, "chosen": "7 + 5 = 12.<|im_end|>"}
    rows = [SINGLE, MULTI, long, carrying]
    plain = copy.deepcopy(default_tokenizer)
    plain.chat_template, plain._orpo_lab_eot = None, None

    class WithoutBackend:  # a slow tokenizer: everything but the backend
        def __init__(self, tok):
            self.tok = tok

        def __getattr__(self, name):
            if name == "backend_tokenizer":
                raise AttributeError(name)
            return getattr(self.tok, name)

        def __call__(self, *args, **kwargs):
            return self.tok(*args, **kwargs)

    cases = [(default_tokenizer, rows), (plain, [SINGLE, long]), (WithoutBackend(plain), [long])]
    for tok, batch_rows in cases:
        batch = {key: [r[key] for r in batch_rows] for key in ("prompt", "chosen", "rejected")}
        for budgets in ((512, 256), (64, 48), (20, 256)):
            expected = [tokenize_pair(r, tok, *budgets) for r in batch_rows]
            assert tokenize_pairs(batch, tok, *budgets) == expected
    assert any(p["truncated"] for p in tokenize_pairs(batch, default_tokenizer, 64, 48))


# ---------------------------------------------------------------- loading: formats and sources

STANDARD = [
    {"prompt": "What is 7 + 5?", "chosen": "7 + 5 = 12.", "rejected": "7 + 5 = 13.", "family": "a"},
    {
        "prompt": "Name three colours.",
        "chosen": "- red\n- green\n- blue",
        "rejected": "Red, green, blue.",
        "family": "b",
    },
]


def as_conversational(row: dict) -> dict:
    return {
        "prompt": [{"role": "user", "content": row["prompt"]}],
        "chosen": [{"role": "assistant", "content": row["chosen"]}],
        "rejected": [{"role": "assistant", "content": row["rejected"]}],
        "family": row["family"],
    }


def as_implicit(row: dict) -> dict:
    user = {"role": "user", "content": row["prompt"]}
    return {
        "chosen": [user, {"role": "assistant", "content": row["chosen"]}],
        "rejected": [user, {"role": "assistant", "content": row["rejected"]}],
        "family": row["family"],
    }


def as_mapped(row: dict) -> dict:
    return {
        "question": row["prompt"],
        "good": row["chosen"],
        "bad": row["rejected"],
        "family": row["family"],
    }


MAP = {"question": "prompt", "good": "chosen", "bad": "rejected"}


def write(path, rows: list[dict], kind: str):
    import datasets

    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "json":
        path.write_text(json.dumps(rows))
    elif kind == "csv":
        datasets.Dataset.from_list(rows).to_csv(path, index=False)
    elif kind == "parquet":
        datasets.Dataset.from_list(rows).to_parquet(path)
    return path


def token_ids(ds, tokenizer) -> list[dict]:
    return [tokenize_pair(row, tokenizer) for row in ds]


@pytest.mark.parametrize(
    ("fmt", "kind"),
    [
        ("standard", "jsonl"),
        ("standard", "json"),
        ("standard", "csv"),
        ("standard", "parquet"),
        ("standard", "memory"),
        ("conversational", "jsonl"),
        ("conversational", "parquet"),
        ("conversational", "memory"),
        ("implicit", "jsonl"),
        ("implicit", "json"),
        ("mapped", "csv"),
        ("mapped", "jsonl"),
    ],
)
def test_formats_round_trip_to_identical_ids(tmp_path, default_tokenizer, fmt, kind):
    import datasets

    convert = {
        "standard": dict,
        "conversational": as_conversational,
        "implicit": as_implicit,
        "mapped": as_mapped,
    }
    rows = [convert[fmt](r) for r in STANDARD]
    source = (
        datasets.Dataset.from_list(rows)
        if kind == "memory"
        else write(tmp_path / f"d.{kind}", rows, kind)
    )
    before = None if kind == "memory" else source.read_bytes()
    ds = load_preferences(source, column_map=MAP if fmt == "mapped" else None)
    assert ds.column_names == ["prompt", "chosen", "rejected", "family"]
    assert ds[0]["prompt"] == [{"role": "user", "content": "What is 7 + 5?"}]
    assert ds[1]["chosen"] == "- red\n- green\n- blue" and ds[1]["family"] == "b"
    expected = token_ids(load_preferences(datasets.Dataset.from_list(STANDARD)), default_tokenizer)
    assert token_ids(ds, default_tokenizer) == expected
    if before is not None:
        assert source.read_bytes() == before  # never modifies the user's file


def test_multi_turn_conversational_and_implicit_agree(default_tokenizer):
    import datasets

    explicit = {
        "prompt": MULTI_PROMPT,
        "chosen": [{"role": "assistant", "content": MULTI["chosen"]}],
        "rejected": MULTI["rejected"],
    }
    implicit = {
        "chosen": MULTI_PROMPT + [{"role": "assistant", "content": MULTI["chosen"]}],
        "rejected": MULTI_PROMPT + [{"role": "assistant", "content": MULTI["rejected"]}],
    }
    a = load_preferences(datasets.Dataset.from_list([explicit]))[0]
    b = load_preferences(datasets.Dataset.from_list([implicit]))[0]
    assert a == b and a["prompt"] == MULTI_PROMPT
    assert tokenize_pair(a, default_tokenizer) == tokenize_pair(MULTI, default_tokenizer)


# ---------------------------------------------------------------- loading: errors


def bad_jsonl(tmp_path, lines: list[str | bytes]):
    path = tmp_path / "prefs.jsonl"
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


GOOD_LINE = '{"prompt": "Hi", "chosen": "Hello.", "rejected": "Go away."}'


@pytest.mark.parametrize(
    ("line", "fragments"),
    [
        ('{"prompt": "Hi", "rejected": "No."}', ["line 2", "field 'chosen'", "missing"]),
        ('{"chosen": "Yes.", "rejected": "No."}', ["line 2", "field 'prompt'", "missing"]),
        (
            '{"prompt": "Hi", "chosen": "  ", "rejected": "No."}',
            ["line 2", "field 'chosen'", "empty"],
        ),
        (
            '{"prompt": "Hi", "chosen": "Same.", "rejected": "Same."}',
            ["line 2", "field 'rejected'", "identical to chosen"],
        ),
        (
            '{"prompt": "Hi", "chosen": 42, "rejected": "No."}',
            ["line 2", "field 'chosen'", "expected a string, got int"],
        ),
        (
            '{"prompt": [{"role": "user", "content": 7}], "chosen": "a", "rejected": "b"}',
            ["line 2", "field 'prompt[0].content'", "expected a string"],
        ),
        (
            '{"prompt": "Hi", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}',
            ["line 2", "field 'chosen'", "assistant"],
        ),
        (
            '{"prompt": "Hi", "chosen": "a"',
            ["line 2", "malformed JSON", "one JSON object per line"],
        ),
        (
            b'{"prompt": "Hi \xff", "chosen": "a", "rejected": "b"}',
            ["line 2", "not UTF-8", "re-save the file as UTF-8"],
        ),
        ("[1, 2]", ["line 2", "expected a JSON object"]),
    ],
)
def test_bad_rows_are_refused_with_file_line_and_field(tmp_path, line, fragments):
    path = bad_jsonl(tmp_path, [GOOD_LINE, line, GOOD_LINE])
    with pytest.raises(PreferenceDataError) as err:
        load_preferences(path)
    message = str(err.value)
    for fragment in [str(path), "1 bad row(s)", "skip_bad_rows (--skip-bad-rows", *fragments]:
        assert fragment in message, (fragment, message)


def test_skip_bad_rows_drops_and_reports(tmp_path):
    from orpo_lab.preferences import SkippedRowsWarning

    path = bad_jsonl(
        tmp_path,
        [GOOD_LINE, "{oops", GOOD_LINE, '{"prompt": "Hi", "chosen": "a", "rejected": "a"}'],
    )
    with pytest.warns(SkippedRowsWarning, match="skipped 2 bad row") as record:
        ds = load_preferences(path, skip_bad_rows=True)
    assert len(ds) == 2
    warning = record[0].message
    assert (warning.skipped, warning.total) == (2, 4)
    assert "line 2" in warning.problems[0] and "line 4" in warning.problems[1]


def test_error_lists_only_the_first_problems(tmp_path):
    path = bad_jsonl(tmp_path, ["{bad"] * 8)
    with pytest.raises(PreferenceDataError, match=r"8 bad row\(s\)") as err:
        load_preferences(path)
    assert (
        "line 5" in str(err.value) and "line 6" not in str(err.value) and "3 more" in str(err.value)
    )


def test_prompt_over_budget(tmp_path, default_tokenizer):
    """40 words -> 40 tokens, plus the template's 31 (system prompt, user and assistant headers) = 71."""
    long = {"prompt": "word " * 40, "chosen": "a", "rejected": "b"}
    path = bad_jsonl(tmp_path, [GOOD_LINE, json.dumps(long)])
    with pytest.warns(UserWarning, match="skipped 1 bad row"):
        ds = load_preferences(
            path, max_prompt_tokens=64, tokenizer=default_tokenizer, skip_bad_rows=True
        )
    assert len(ds) == 1
    with pytest.raises(
        PreferenceDataError, match=r"line 2: field 'prompt': 71 tokens .* budget of 64"
    ):
        load_preferences(path, max_prompt_tokens=64, tokenizer=default_tokenizer)
    assert len(load_preferences(path, max_prompt_tokens=71, tokenizer=default_tokenizer)) == 2


def test_csv_and_column_map_errors(tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_text("prompt,chosen,rejected\nHi,Yes.,No.\nHi,,No.\n")
    with pytest.raises(PreferenceDataError, match=r"p.csv: row 2: field 'chosen': missing"):
        load_preferences(csv)
    with pytest.raises(PreferenceDataError, match=r"row 1: field 'question'.*column_map"):
        load_preferences(csv, column_map=MAP)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("prompt,chosen,rejected\nHi,Oui,Non\ncaf\u00e9,a,b\n".encode("latin-1"))
    with pytest.raises(PreferenceDataError, match=r"latin.csv: line 3: bytes that are not UTF-8"):
        load_preferences(latin)


def test_a_missing_column_is_one_message_before_any_row(tmp_path):
    """A CSV without `rejected`: one message naming it and the columns there, not one per row."""
    csv = tmp_path / "two.csv"
    csv.write_text("prompt,chosen,worse\n" + "".join(f"Q{i},A{i}.,B{i}.\n" for i in range(30)))
    with pytest.raises(PreferenceDataError) as caught:
        load_preferences(csv)
    message = str(caught.value)
    assert "no 'rejected' column" in message and "prompt, chosen, worse" in message
    assert "row" not in message.replace("rows", "") and "skip" not in message
    renamed = load_preferences(csv, column_map="worse=rejected")  # the fix the message names
    assert len(renamed) == 30 and renamed[0]["rejected"] == "B0."


def test_missing_file_and_unknown_default_split(tmp_path):
    with pytest.raises(PreferenceDataError, match="file not found"):
        load_preferences(tmp_path / "nope.jsonl")
    with pytest.raises(PreferenceDataError, match="no split 'validation'"):
        load_preferences("default", split="validation")


# ---------------------------------------------------------------- votes


def test_votes_to_dataset(tmp_path):
    votes = [
        {
            "prompt": "Hi",
            "chosen": "Hello.",
            "rejected": "Go away.",
            "left": "Hello.",
            "right": "Go away.",
            "time": 1.0,
        },
        {"prompt": "Hi", "left": "A.", "right": "B.", "winner": "right", "time": 2.0},
        {"prompt": "Hi", "left": "A.", "right": "B.", "winner": "tie", "time": 3.0},
        {
            "prompt": [{"role": "user", "content": "Yo"}],
            "chosen": "Hey.",
            "rejected": "Bye.",
            "tie": False,
            "time": 4.0,
        },
    ]
    path = tmp_path / "votes.jsonl"
    path.write_text("".join(json.dumps(v) + "\n" for v in votes))
    for source in (votes, path):
        ds = votes_to_dataset(source)
        assert ds.column_names == ["prompt", "chosen", "rejected", "time"]
        assert [(r["chosen"], r["rejected"]) for r in ds] == [
            ("Hello.", "Go away."),
            ("B.", "A."),
            ("Hey.", "Bye."),
        ]
        assert ds[2]["prompt"] == [{"role": "user", "content": "Yo"}] and ds[1]["time"] == 2.0
