"""The tiny offline tokenizer behaves like Qwen2's where the project relies on it."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from llava.conversation import get_conv_template
from llava.tokenizer_utils import SPECIAL_TOKENS, THINK_TOKENS, build_tiny_qwen_tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces, tabs\tand\nnewlines\r\n",
    "Ünïcödé: 你好，世界! Привет 🚲🐈‍⬛ ﷽ 𝔘𝔫𝔦",
    "digits 1234567890 and symbols <>{}[]|\\^~`",
    "<|im_start|>user\nhi<|im_end|>\n<think>\nhm\n</think>\n\nok<|endoftext|>",
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("tiny_qwen_tokenizer")
    built = build_tiny_qwen_tokenizer(save_dir)
    return built, AutoTokenizer.from_pretrained(save_dir), save_dir


def test_special_tokens_and_config_like_qwen2(saved):
    tokenizer, _, _ = saved
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None and tokenizer.bos_token_id is None
    assert tokenizer.model_max_length == 2048
    base = tokenizer.vocab_size
    assert 400 <= base <= 600
    ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS + THINK_TOKENS))
    assert ids == list(range(base, base + 5)), "added tokens follow the regular vocabulary, as in Qwen2"
    for token, token_id in zip(SPECIAL_TOKENS + THINK_TOKENS, ids):
        assert tokenizer(token, add_special_tokens=False).input_ids == [token_id]
        assert tokenizer(f"a{token}b", add_special_tokens=False).input_ids.count(token_id) == 1


def test_no_special_tokens_are_added_to_plain_text(saved):
    tokenizer, _, _ = saved
    assert tokenizer("hello").input_ids == tokenizer("hello", add_special_tokens=False).input_ids


@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_round_trip_of_arbitrary_text(saved, text):
    tokenizer, _, _ = saved
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id is None and all(0 <= i < len(tokenizer) for i in ids)


def test_skip_special_tokens_keeps_think_tags(saved):
    tokenizer, _, _ = saved
    ids = tokenizer("<|im_start|>x<think>y</think><|im_end|>").input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "x<think>y</think>"


def test_saved_tokenizer_reloads_equivalent_without_network(saved):
    tokenizer, reloaded, save_dir = saved
    assert {p.name for p in save_dir.iterdir()} >= {"tokenizer.json", "tokenizer_config.json"}
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    for text in TEXTS:
        assert reloaded(text).input_ids == tokenizer(text).input_ids
        assert reloaded.decode(reloaded(text).input_ids) == text
    for attr in ("eos_token_id", "pad_token_id", "bos_token_id", "model_max_length", "chat_template"):
        assert getattr(reloaded, attr) == getattr(tokenizer, attr), attr


def test_building_twice_gives_identical_tokenizer(saved, tmp_path):
    tokenizer, _, save_dir = saved
    again = build_tiny_qwen_tokenizer(tmp_path)
    assert again.get_vocab() == tokenizer.get_vocab()
    first = json.loads((save_dir / "tokenizer.json").read_text())
    second = json.loads((tmp_path / "tokenizer.json").read_text())
    assert first["model"]["merges"] == second["model"]["merges"]


def test_chat_template_matches_qwen_1_5_conversation(saved):
    _, reloaded, _ = saved
    conv = get_conv_template("qwen_1_5")
    for message in ("<image>\nWhat is shown?", "A red bus.", "Where is it going?", None):
        conv.append_message(conv.roles[len(conv.messages) % 2], message)
    rendered = reloaded.apply_chat_template(conv.to_messages(), tokenize=False, add_generation_prompt=True)
    assert rendered == conv.get_prompt()


def test_invalid_vocab_size_is_rejected():
    with pytest.raises(ValueError, match="vocab_size"):
        build_tiny_qwen_tokenizer(vocab_size=100)
