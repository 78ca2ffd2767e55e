"""The tiny offline tokenizer behaves like Qwen2's where the project relies on it."""

from __future__ import annotations

import json

import pytest
from test_conversation import MULTI, THOUGHTS, chat, conversation_cases, llava_next_qwen
from transformers import AutoTokenizer

from llava.processing.conversation import conv_templates, get_conv_template
from llava.processing.prompts import tokenize_conversation
from llava.synthetic.tokenizer import SPECIAL_TOKENS, THINK_TOKENS, build_tiny_qwen_tokenizer

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
    assert ids == list(range(base, base + len(ids))), "added tokens follow the regular vocabulary, as in Qwen2"
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


# --------------------------------------------------------------------- chat template per conv template
@pytest.fixture(scope="module", params=sorted(conv_templates))
def per_template(request, tmp_path_factory):
    """``(name, tokenizer)``: built with that template, saved and reloaded through ``AutoTokenizer``."""
    save_dir = tmp_path_factory.mktemp(f"tiny_{request.param}")
    build_tiny_qwen_tokenizer(save_dir, template=request.param)
    return request.param, AutoTokenizer.from_pretrained(save_dir)


def render(tokenizer, conv, **kwargs) -> str:
    """What a Hugging Face user gets for ``conv``: open last turn -> ``add_generation_prompt``."""
    is_open = bool(conv.messages) and conv.messages[-1][1] is None
    return tokenizer.apply_chat_template(
        conv.to_messages(), tokenize=False, add_generation_prompt=is_open, **kwargs
    )


def test_apply_chat_template_renders_get_prompt_for_every_shape(per_template):
    name, tokenizer = per_template
    default_thinking = conv_templates[name].enable_thinking
    for label, conv in conversation_cases(name):
        # The template's own thinking mode must need no argument; the other one is asked for.
        kwargs = {} if conv.enable_thinking == default_thinking else {"enable_thinking": conv.enable_thinking}
        assert render(tokenizer, conv, **kwargs) == conv.get_prompt(), label


THINKING_TEMPLATES = sorted(name for name, conv in conv_templates.items() if conv.enable_thinking is not None)


@pytest.mark.parametrize("name", THINKING_TEMPLATES)
def test_enable_thinking_can_be_passed_explicitly(name):
    tokenizer = build_tiny_qwen_tokenizer(template=name)
    for thinking in (False, True):
        for turns in (THOUGHTS, MULTI, MULTI[:-1] + (None,)):
            conv = chat(name, *turns)
            conv.enable_thinking = thinking
            assert render(tokenizer, conv, enable_thinking=thinking) == conv.get_prompt(), (thinking, turns)


def test_multimodal_content_parts_render_the_placeholders_as_trained(per_template):
    """An image part is ``<image>\\n`` (the line training puts it on), a video part ``<video>\\n``."""
    name, tokenizer = per_template
    for part, placeholder in (("image", "<image>"), ("video", "<video>")):
        conv = chat(name, f"{placeholder}\nWhat is this?", None)
        messages = conv.to_messages()
        user = next(m for m in messages if m["role"] == "user")
        user["content"] = [{"type": part}, {"type": "text", "text": "What is this?"}]
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert rendered == conv.get_prompt()


def test_assistant_tokens_mask_equals_the_training_labels(per_template):
    """HF's ``return_assistant_tokens_mask`` marks exactly the tokens our labels supervise."""
    name, tokenizer = per_template
    records = [
        {"from": "human", "value": "What is this?"},
        {"from": "gpt", "value": "A cat."},
        {"from": "human", "value": "And the colour?"},
        {"from": "gpt", "value": "Black."},
    ]
    input_ids, labels = tokenize_conversation(records, tokenizer, name)
    conv = chat(name, *(record["value"] for record in records))
    out = tokenizer.apply_chat_template(
        conv.to_messages(), tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert out["input_ids"] == input_ids.tolist()
    assert out["assistant_masks"] == (labels != -100).int().tolist()


def test_llava_next_pre_wrapped_conversation_renders_through_the_qwen_template(saved):
    _, reloaded, _ = saved  # built with the default template, qwen_1_5
    conv = llava_next_qwen()
    for message in MULTI[:-1] + (None,):
        conv.append_message(conv.roles[len(conv.messages) % 2], message)
    assert render(reloaded, conv) == conv.get_prompt()
    assert conv.get_prompt().count("You are a helpful assistant.") == 1


def test_qwen3_reads_hugging_face_reasoning_content():
    tokenizer = build_tiny_qwen_tokenizer(template="qwen3")
    messages = [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a", "reasoning_content": "step"},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == chat("qwen3", "q", "<think>\nstep\n</think>\n\na").get_prompt()


def test_unknown_template_is_named():
    with pytest.raises(ValueError, match="no_such_template"):
        build_tiny_qwen_tokenizer(template="no_such_template")
    with pytest.raises(ValueError, match="template must be"):
        build_tiny_qwen_tokenizer(template={"system": ""})
