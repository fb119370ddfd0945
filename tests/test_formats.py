"""The public preference datasets' layouts, written by hand, load to the right prompt/response split.

Each fixture copies the columns of a dataset users train ORPO on (ORPO_NOTES.md lists them); each
test asserts, token by token on SmolLM2's real tokenizer and template, which tokens are prompt and
which are response (`preview_pairs`, what the app's preview shows). Then: the held-out split never
overlaps training, raw errors name file, row and field, and a tokenizer without a chat template
trains standard data as plain text.
"""

from __future__ import annotations

import json
import warnings

import datasets
import pytest

from orpo_lab.config import TrainConfig
from orpo_lab.config_checks import parse_column_map
from orpo_lab.config_flags import build_parser, config_from_args
from orpo_lab.data import (
    ChatTemplateError,
    encode_prompt,
    end_of_turn_id,
    preview_pairs,
    set_chat_template,
    tokenize_pair,
)
from orpo_lab.preferences import load_preferences
from orpo_lab.rows import pair_key, split_shared_text
from orpo_lab.sources import PreferenceDataError
from orpo_lab.splits import load_splits

SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
END = "<|im_end|>"


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def chatml(*turns, system=SYSTEM) -> str:
    """SmolLM2's rendering of (role, text) turns, ending with the assistant header."""
    body = "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns)
    return system + body + "<|im_start|>assistant\n"


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- the fixtures, by layout

SPIDER = "How many legs does a spider have?"
ULTRAFEEDBACK = {  # HuggingFaceH4/ultrafeedback_binarized, split train_prefs
    "prompt": SPIDER,
    "prompt_id": "5e4a1f0c9d",
    "chosen": [user(SPIDER), assistant("A spider has eight legs.")],
    "rejected": [user(SPIDER), assistant("Spiders have six legs.")],
    "messages": [user(SPIDER), assistant("A spider has eight legs.")],
    "score_chosen": 9.0,
    "score_rejected": 3.5,
}
CAPY_TURNS = [user("Name a prime number."), assistant("7."), user("And the next one?")]
CAPYBARA = {  # argilla/distilabel-capybara-dpo-7k-binarized: multi-turn, prompt = the opening turn
    "source": "Know-Logic",
    "prompt": "Name a prime number.",
    "chosen": CAPY_TURNS + [assistant("The next prime is 11.")],
    "rejected": CAPY_TURNS + [assistant("8.")],
    "rating_chosen": 5,
    "rating_rejected": 2,
    "chosen_model": "gpt-4",
    "rejected_model": "mistral-7b",
}
MIX_SYSTEM = "You are an assistant that answers in one sentence."
ORPO_MIX = [  # mlabonne/orpo-dpo-mix-40k: prompt and question strings, conversations, a system turn
    {
        "source": "airoboros",
        "prompt": "What is the boiling point of water?",
        "question": "What is the boiling point of water?",
        "chosen": [
            {"role": "system", "content": MIX_SYSTEM},
            user("What is the boiling point of water?"),
            assistant("Water boils at 100 degrees Celsius at sea level."),
        ],
        "rejected": [
            {"role": "system", "content": MIX_SYSTEM},
            user("What is the boiling point of water?"),
            assistant("Water boils at 50 degrees."),
        ],
    },
    {
        "source": "capybara",
        "prompt": "Say hi.",
        "question": "Say hi.",
        "chosen": [user("Say hi."), assistant("Hi!")],
        "rejected": [user("Say hi."), assistant("No.")],
    },
]
HH = [  # Anthropic/hh-rlhf: transcripts identical up to the last assistant reply, no prompt
    {
        "chosen": "\n\nHuman: What is the capital of France?\n\nAssistant: The capital of France is Paris.",
        "rejected": "\n\nHuman: What is the capital of France?\n\nAssistant: The capital of France is Lyon.",
    },
    {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke.\n\nAssistant: Why did the chicken cross the road?",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke.\n\nAssistant: No.",
    },
]
ORCA_SYSTEM = "You are an AI assistant. Think step by step."
ORCA = [  # Intel/orca_dpo_pairs: system, question, chosen, rejected strings
    {
        "system": ORCA_SYSTEM,
        "question": "Translate 'cat' to French.",
        "chosen": "Chat.",
        "rejected": "Chien.",
    },
    {"system": "", "question": "Is 9 prime?", "chosen": "No: 9 = 3 x 3.", "rejected": "Yes."},
]
SKY_Q = "What color is the sky?"
TRL = {  # TRL's four preference configurations (its test data, trl-internal-testing/zen)
    "standard_preference": {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
    "standard_implicit_prompt_preference": {
        "chosen": "The sky is blue.",
        "rejected": "The sky is green.",
    },
    "conversational_preference": {
        "prompt": [user(SKY_Q)],
        "chosen": [assistant("It is blue.")],
        "rejected": [assistant("It is green.")],
    },
    "conversational_implicit_prompt_preference": {
        "chosen": [user(SKY_Q), assistant("It is blue.")],
        "rejected": [user(SKY_Q), assistant("It is green.")],
    },
}


def ultrafeedback_folder(tmp_path):
    """A folder laid out like the hub repository's splits: train_prefs / test_prefs (parquet)."""
    other = {
        **ULTRAFEEDBACK,
        "prompt_id": "77",
        "prompt": "Hi",
        "chosen": [user("Hi"), assistant("Hello!")],
        "rejected": [user("Hi"), assistant("Go away.")],
        "messages": [user("Hi")],
    }
    datasets.Dataset.from_list([ULTRAFEEDBACK, other]).to_parquet(tmp_path / "train_prefs.parquet")
    datasets.Dataset.from_list([other]).to_parquet(tmp_path / "test_prefs.parquet")
    return tmp_path


def hh_folder(tmp_path):
    jsonl(tmp_path / "train.jsonl", HH)
    jsonl(tmp_path / "test.jsonl", HH[:1])
    return tmp_path


CASES = {
    # name: (make the source in a folder, load_preferences kwargs, expected prompt, chosen, rejected)
    "ultrafeedback_binarized": (
        ultrafeedback_folder,
        {"split": "train_prefs"},
        chatml(("user", SPIDER)),
        "A spider has eight legs." + END,
        "Spiders have six legs." + END,
    ),
    "capybara_dpo": (
        lambda p: jsonl(p / "capybara.jsonl", [CAPYBARA]),
        {},
        chatml(
            ("user", "Name a prime number."), ("assistant", "7."), ("user", "And the next one?")
        ),
        "The next prime is 11." + END,
        "8." + END,
    ),
    "orpo_dpo_mix_40k": (
        lambda p: jsonl(p / "mix.jsonl", ORPO_MIX),
        {},
        chatml(
            ("user", "What is the boiling point of water?"),
            system=f"<|im_start|>system\n{MIX_SYSTEM}<|im_end|>\n",
        ),
        "Water boils at 100 degrees Celsius at sea level." + END,
        "Water boils at 50 degrees." + END,
    ),
    "hh_rlhf": (
        hh_folder,
        {"split": "train"},
        chatml(("user", "\n\nHuman: What is the capital of France?\n\nAssistant:")),
        " The capital of France is Paris." + END,
        " The capital of France is Lyon." + END,
    ),
    "orca_dpo_pairs": (
        lambda p: jsonl(p / "orca.jsonl", ORCA),
        {"column_map": "question=prompt"},
        chatml(
            ("user", "Translate 'cat' to French."),
            system=f"<|im_start|>system\n{ORCA_SYSTEM}<|im_end|>\n",
        ),
        "Chat." + END,
        "Chien." + END,
    ),
    **{
        f"trl_{name}": (
            lambda p, row=row: datasets.Dataset.from_list([row]),
            {},
            chatml(("user", "The sky is" if name.startswith("standard") else SKY_Q)),
            (" blue." if name.startswith("standard") else "It is blue.") + END,
            (" green." if name.startswith("standard") else "It is green.") + END,
        )
        for name, row in TRL.items()
    },
}


@pytest.mark.parametrize("name", list(CASES))
def test_public_layouts_split_prompt_and_response_exactly(tmp_path, default_tokenizer, name):
    make, kwargs, prompt, chosen, rejected = CASES[name]
    ds = load_preferences(make(tmp_path), **kwargs)
    shown = preview_pairs(ds, default_tokenizer, n=1)[0]
    assert (shown["prompt"], shown["chosen"], shown["rejected"]) == (prompt, chosen, rejected)
    # The token strings are the same tokens, one by one; the response ends with one end-of-turn.
    assert "".join(shown["chosen_tokens"]) == chosen and shown["chosen_tokens"][-1] == END
    assert "".join(shown["prompt_tokens"]) == prompt
    assert [m["role"] for m in ds[0]["prompt"]].count("user") == prompt.count("<|im_start|>user")


def test_extra_columns_are_kept_and_the_conversation_is_never_duplicated(tmp_path):
    ds = load_preferences(ultrafeedback_folder(tmp_path), split="train_prefs")
    assert ds.column_names == [
        "prompt",
        "chosen",
        "rejected",
        "prompt_id",
        "messages",
        "score_chosen",
        "score_rejected",
    ]
    assert ds[0]["prompt"] == [user(SPIDER)] and ds[0]["score_chosen"] == 9.0
    capy = load_preferences(datasets.Dataset.from_list([CAPYBARA]))[0]
    assert [m["role"] for m in capy["prompt"]] == ["user", "assistant", "user"]
    last_turn = load_preferences(
        datasets.Dataset.from_list([{**CAPYBARA, "prompt": "And the next one?"}])
    )
    assert last_turn[0]["prompt"] == capy["prompt"]
    mix = load_preferences(datasets.Dataset.from_list(ORPO_MIX))
    assert mix[1]["prompt"] == [user("Say hi.")] and mix[1]["question"] == "Say hi."
    orca = load_preferences(datasets.Dataset.from_list(ORCA), column_map={"question": "prompt"})
    assert orca[1]["prompt"] == [user("Is 9 prime?")]  # an empty system column: none
    assert "system" not in orca.column_names


def test_hh_multi_turn_prompt_ends_after_the_last_assistant_marker():
    prompt, chosen, rejected = split_shared_text(HH[1]["chosen"], HH[1]["rejected"])
    assert prompt == "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke.\n\nAssistant:"
    assert (chosen, rejected) == (" Why did the chicken cross the road?", " No.")


@pytest.mark.parametrize(
    ("chosen", "rejected", "expected"),
    [
        ("The sky is blue.", "The sky is green.", ("The sky is", " blue.", " green.")),
        (
            "The sky is bright blue.",
            "The sky is bright black.",
            ("The sky is bright", " blue.", " black."),
        ),  # never split a word
        (
            "Answer:4",
            "Answer:5",
            ("Answer:", "4", "5"),
        ),  # no space to cut back to: where they differ
    ],
)
def test_common_prefix_is_cut_back_to_a_boundary(chosen, rejected, expected):
    assert split_shared_text(chosen, rejected) == expected


# ---------------------------------------------------------------- errors that name file, row, field


@pytest.mark.parametrize(
    ("row", "fragments"),
    [
        (
            {**ULTRAFEEDBACK, "prompt": "Something else entirely"},
            ["line 2", "field 'prompt'", "not the last (or first) user turn", "column_map prompt="],
        ),
        (
            {**ORPO_MIX[0], "prompt": [user("Another question")]},
            ["line 2", "field 'prompt'", "disagree with the conversation"],
        ),
        (
            {
                **ORCA[0],
                "prompt": "q",
                "chosen": [{"role": "system", "content": "Other."}, user("q"), assistant("a")],
                "rejected": [{"role": "system", "content": "Other."}, user("q"), assistant("b")],
            },
            ["line 2", "field 'system'", "differs from the system message"],
        ),
        ({"chosen": "Yes.", "rejected": "No."}, ["line 2", "field 'prompt'", "share no beginning"]),
    ],
)
def test_disagreeing_rows_are_refused_with_file_line_and_field(tmp_path, row, fragments):
    path = jsonl(tmp_path / "prefs.jsonl", [ULTRAFEEDBACK, row])
    with pytest.raises(PreferenceDataError) as err:
        load_preferences(path)
    for fragment in [str(path), *fragments]:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_mixed_type_extra_columns_become_text_with_a_note(tmp_path):
    rows = [
        {**TRL["standard_preference"], "score": 1, "meta": {"a": 1}, "tags": [{"k": 1}]},
        {
            **TRL["standard_preference"],
            "chosen": " blue!",
            "score": "high",
            "meta": "none",
            "tags": [{"k": "x"}],
            "late": "only here",
        },
    ]
    (tmp_path / "m.json").write_text(json.dumps(rows))
    for path, where in (
        (jsonl(tmp_path / "m.jsonl", rows), "line 2"),
        (tmp_path / "m.json", "item 1"),
    ):
        with pytest.warns(UserWarning, match="holds values of different types") as got:
            ds = load_preferences(path)
        notes = [str(w.message) for w in got]
        assert any("'score'" in n and f"str at {path}: {where}" in n for n in notes)
        assert any("'meta'" in n and "column_map meta=" in n for n in notes)
        assert any("'tags'" in n and "nested differently" in n for n in notes)
        assert ds["score"] == ["1", "high"] and ds["meta"] == ['{"a": 1}', "none"]
        assert ds["tags"] == ['[{"k": 1}]', '[{"k": "x"}]'] and ds["late"] == [None, "only here"]


def test_missing_splits_list_the_splits_that_exist(tmp_path):
    folder = ultrafeedback_folder(tmp_path)
    with pytest.raises(PreferenceDataError) as err:
        load_preferences(folder)
    message = str(err.value)
    assert "no split 'train'; the splits here are test_prefs, train_prefs" in message
    assert "--train-split train_prefs --test-split test_prefs" in message
    both = datasets.DatasetDict(
        {"train_prefs": datasets.Dataset.from_list([TRL["standard_preference"]])}
    )
    with pytest.raises(
        PreferenceDataError, match=r"no split 'train'; the splits here are train_prefs"
    ):
        load_preferences(both)
    single = jsonl(tmp_path / "one.jsonl", [TRL["standard_preference"]])
    with pytest.raises(PreferenceDataError, match=r"one split is 'train', it has no split 'test'"):
        load_preferences(single, split="test")


def test_column_map_parsing_and_its_errors():
    assert parse_column_map("question=prompt, good=chosen,sys=") == {
        "question": "prompt",
        "good": "chosen",
        "sys": "",
    }
    for bad, message in [
        ("question", "is not 'old=new'"),
        ("q=promt", "must be one of"),
        ("a=prompt,b=prompt", "two columns to 'prompt'"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_column_map(bad)
    rows = [{"q": "Hi", "good": "Hello.", "bad": "Go.", "prompt": "ignored", "junk": [1]}]
    ds = load_preferences(
        datasets.Dataset.from_list(rows), column_map="q=prompt,good=chosen,bad=rejected,junk="
    )
    assert ds.column_names == ["prompt", "chosen", "rejected"] and ds[0]["prompt"] == [user("Hi")]


# ---------------------------------------------------------------- held-out pairs


def numbered(n: int, duplicate_every: int = 0) -> list[dict]:
    rows = [
        {"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": "No idea."}
        for i in range(n)
    ]
    if duplicate_every:
        rows += [rows[i] for i in range(0, n, duplicate_every)]  # the same pair twice in the source
    return rows


def test_a_single_file_is_carved_never_its_own_test_split(tmp_path):
    path = jsonl(tmp_path / "all.jsonl", numbered(40, duplicate_every=4))
    train, held_out, info = load_splits(path, held_out_size=0.25, seed=3)
    train_keys = {pair_key(r) for r in train}
    assert not any(pair_key(r) in train_keys for r in held_out)  # never a training pair
    assert info["held_out_from"] == "carved" and info["train_pairs"] == len(train) == 50 - 12
    assert info["held_out_pairs"] == len(held_out) == 12 - info["held_out_duplicates_dropped"]
    assert info["held_out_duplicates_dropped"] > 0 and "dropped" in info["held_out"]
    again = load_splits(path, held_out_size=0.25, seed=3)[1]
    assert again["prompt"] == held_out["prompt"]  # seeded: the same pairs every time
    capped = load_splits(path, held_out_size=0.25, max_held_out=5)
    assert len(capped[0]) == 45 and capped[2]["held_out_pairs"] <= 5
    assert load_splits(path, held_out_size=7)[2]["train_pairs"] == 43  # a count
    none = load_splits(path, held_out_size=0)
    assert none[1] is None and none[2]["held_out_from"] == "none" and len(none[0]) == 50
    with pytest.raises(PreferenceDataError, match="train_split='train_prefs' names nothing"):
        load_splits(path, train_split="train_prefs")


def test_a_test_split_is_used_and_overlap_is_dropped(tmp_path):
    rows = numbered(10)
    jsonl(tmp_path / "train_prefs.jsonl", rows)
    jsonl(tmp_path / "test_prefs.jsonl", rows[:2] + numbered(14)[10:])  # 2 leaked training pairs
    train, held_out, info = load_splits(
        tmp_path, train_split="train_prefs", test_split="test_prefs"
    )
    assert len(train) == 10 and info["held_out_from"] == "test_split"
    assert info["held_out_pairs"] == 4 and info["held_out_duplicates_dropped"] == 2
    assert {pair_key(r) for r in train}.isdisjoint(pair_key(r) for r in held_out)
    # The whole of an eval_dataset file; a source without the test split is carved instead.
    other = jsonl(tmp_path / "other.jsonl", numbered(20)[15:])
    assert load_splits(tmp_path, other, train_split="train_prefs")[2]["held_out_pairs"] == 5
    carved = load_splits(tmp_path, train_split="train_prefs", test_split="validation")[2]
    assert carved["held_out_from"] == "carved" and carved["train_pairs"] == 9


def test_config_cli_and_yaml_carry_the_data_fields(tmp_path):
    args = [
        "--column-map",
        "question=prompt",
        "--train-split",
        "train_prefs",
        "--test-split",
        "test_prefs",
        "--held-out-size",
        "0.2",
        "--chat-template",
        "chatml",
    ]
    cfg = config_from_args(build_parser().parse_args(args))
    assert (
        cfg.column_map,
        cfg.train_split,
        cfg.test_split,
        cfg.held_out_size,
        cfg.chat_template,
    ) == ("question=prompt", "train_prefs", "test_prefs", 0.2, "chatml")
    (tmp_path / "c.yaml").write_text("column_map: {question: prompt, system: system}\n")
    assert TrainConfig.from_yaml(tmp_path / "c.yaml").column_map == "question=prompt,system=system"
    for changes, message in [
        ({"column_map": "q=answer"}, "must be one of"),
        ({"held_out_size": 2.5}, "held_out_size must be"),
        ({"test_split": " "}, "test_split must name a split"),
    ]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**changes)


# ---------------------------------------------------------------- models without a chat template


@pytest.fixture()
def plain_tokenizer(default_tokenizer):
    """SmolLM2's vocabulary with no chat template: what a base model such as GPT-2 ships."""
    import copy

    tok = copy.deepcopy(default_tokenizer)
    tok.chat_template = None
    tok._orpo_lab_eot = None
    return tok


def test_standard_data_is_plain_text_without_a_chat_template(plain_tokenizer):
    assert end_of_turn_id(plain_tokenizer) == plain_tokenizer.eos_token_id
    for name in ("standard_preference", "standard_implicit_prompt_preference"):
        shown = preview_pairs(
            load_preferences(datasets.Dataset.from_list([TRL[name]])), plain_tokenizer
        )
        assert (shown[0]["prompt"], shown[0]["chosen"]) == ("The sky is", " blue." + END)
    hh = preview_pairs(load_preferences(datasets.Dataset.from_list(HH)), plain_tokenizer)[0]
    assert hh["prompt"] == "\n\nHuman: What is the capital of France?\n\nAssistant:"
    assert hh["rejected"] == " The capital of France is Lyon." + END  # TRL's layout exactly
    assert (
        encode_prompt([user("The sky is")], plain_tokenizer)
        == plain_tokenizer("The sky is").input_ids
    )


def test_conversations_without_a_chat_template_name_the_options(plain_tokenizer):
    capy = load_preferences(datasets.Dataset.from_list([CAPYBARA]))
    with pytest.raises(ChatTemplateError) as err:
        tokenize_pair(capy[0], plain_tokenizer)
    for fragment in (
        "no chat template",
        "['user', 'assistant', 'user']",
        "chat_template",
        "--chat-template",
        "'chatml'",
        "standard-format data",
    ):
        assert fragment in str(err.value)
    set_chat_template(plain_tokenizer, "chatml")
    shown = preview_pairs(capy, plain_tokenizer)[0]
    assert shown["prompt"] == chatml(
        ("user", "Name a prime number."),
        ("assistant", "7."),
        ("user", "And the next one?"),
        system="",
    )
    with pytest.raises(ValueError, match="neither a known name"):
        set_chat_template(plain_tokenizer, "no-such-template")


def test_warning_free_for_clean_data():
    """Clean rows (the mix's conversations, a shared system turn, extra string columns) load whole
    and without a single warning: a note on clean data would teach users to ignore notes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pairs = load_preferences(datasets.Dataset.from_list(ORPO_MIX))
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    assert len(pairs) == len(ORPO_MIX)


def test_chat_encodes_a_prompt_exactly_as_training_does(default_tokenizer, plain_tokenizer):
    from orpo_lab.chat import encode_chats

    for tok in (default_tokenizer, plain_tokenizer):
        ids, mask = encode_chats(tok, [[user(SKY_Q)], [user("Hi")]])
        assert ids[0].tolist() == encode_prompt([user(SKY_Q)], tok) and bool(mask[0].all())
    with pytest.raises(ChatTemplateError, match="no chat template"):
        encode_chats(plain_tokenizer, [[user("Hi"), assistant("Hello!"), user("And?")]])


def test_skipped_bad_rows_are_counted_for_the_run_log(tmp_path):
    path = jsonl(
        tmp_path / "some_bad.jsonl", numbered(6) + [{"prompt": "x", "chosen": "a", "rejected": "a"}]
    )
    with pytest.warns(UserWarning, match="skipped 1 bad row"):
        train, held_out, info = load_splits(path, held_out_size=2, skip_bad_rows=True)
    assert (info["bad_rows_skipped"], len(train), len(held_out)) == (1, 4, 2)
