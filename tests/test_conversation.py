"""Conversation templates render the exact prompt strings the models were trained on."""

from __future__ import annotations

import pytest

from llava import conversation as conversation_lib
from llava.conversation import (
    Conversation,
    SeparatorStyle,
    conv_templates,
    default_conversation,
    get_conv_template,
    register_conv_template,
    split_thought,
)

QWEN_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"


def chat(name: str, *turns: str | None) -> Conversation:
    conv = get_conv_template(name)
    for index, message in enumerate(turns):
        conv.append_message(conv.roles[index % 2], message)
    return conv


def test_qwen_1_5_training_prompt_is_exact_chatml():
    conv = chat("qwen_1_5", "<image>\nWhat is this?", "A cat.", "And the colour?", "Black.")
    assert conv.get_prompt() == (
        QWEN_SYSTEM
        + "<|im_start|>user\n<image>\nWhat is this?<|im_end|>\n"
        + "<|im_start|>assistant\nA cat.<|im_end|>\n"
        + "<|im_start|>user\nAnd the colour?<|im_end|>\n"
        + "<|im_start|>assistant\nBlack.<|im_end|>\n"
    )


def test_qwen_1_5_generation_prompt_ends_with_open_assistant_turn():
    prompt = chat("qwen_1_5", "<image>\nDescribe.", None).get_prompt()
    assert prompt == QWEN_SYSTEM + "<|im_start|>user\n<image>\nDescribe.<|im_end|>\n<|im_start|>assistant\n"


def test_qwen_2_is_an_alias_and_stop_strings_are_set():
    assert chat("qwen_2", "hi", None).get_prompt() == chat("qwen_1_5", "hi", None).get_prompt()
    assert conv_templates["qwen_1_5"].stop_str == "<|im_end|>"
    assert conv_templates["qwen3"].stop_str == "<|im_end|>"
    assert conv_templates["plain"].stop_str == "\n"
    assert default_conversation is conv_templates["qwen_1_5"]
    assert conv_templates["qwen_1_5"].version == "qwen" and conv_templates["plain"].version == "plain"


def test_custom_system_message_and_empty_system():
    conv = chat("qwen_1_5", "hi", None)
    conv.system = "Be brief."
    assert conv.get_prompt().startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi")
    conv.system = ""
    assert conv.get_prompt() == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_llava_next_style_system_and_roles_are_accepted():
    """Ported LLaVA-NeXT code wraps system/roles in <|im_start|> itself: same prompt comes out."""
    conv = Conversation(
        system="<|im_start|>system\nYou are a helpful assistant.",
        roles=("<|im_start|>user", "<|im_start|>assistant"),
        sep_style=SeparatorStyle.CHATML,
        sep="<|im_end|>",
    )
    conv.append_message(conv.roles[0], "hi")
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt() == chat("qwen_1_5", "hi", None).get_prompt()


def test_qwen3_non_thinking_generation_prompt():
    prompt = chat("qwen3", "What is 2+2?", None).get_prompt()
    assert (
        prompt == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )


def test_qwen3_thinking_generation_prompt_leaves_the_turn_open():
    conv = chat("qwen3", "What is 2+2?", None)
    conv.enable_thinking = True
    assert conv.get_prompt() == "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"


def test_qwen3_training_prompt_keeps_last_thought_and_drops_old_ones():
    conv = chat("qwen3", "q1", "<think>\nold reasoning\n</think>\n\na1", "q2", "a2")
    conv.system = "Sys."
    assert conv.get_prompt() == (
        "<|im_start|>system\nSys.<|im_end|>\n"
        "<|im_start|>user\nq1<|im_end|>\n"
        "<|im_start|>assistant\na1<|im_end|>\n"
        "<|im_start|>user\nq2<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\na2<|im_end|>\n"
    )
    with_thought = chat("qwen3", "q", "<think>\nstep 1\nstep 2\n</think>\n\nanswer").get_prompt()
    assert with_thought.endswith(
        "<|im_start|>assistant\n<think>\nstep 1\nstep 2\n</think>\n\nanswer<|im_end|>\n"
    )


def test_split_thought():
    assert split_thought("plain answer") == ("", "plain answer")
    assert split_thought("<think>\nwhy\n</think>\n\nbecause") == ("why", "because")


def test_plain_template_concatenates_messages_with_newline():
    assert chat("plain", "<image>", "A dog on the grass.").get_prompt() == "<image>\nA dog on the grass.\n"
    assert chat("plain", "<image>", None).get_prompt() == "<image>\n"


def test_copy_is_independent_of_the_registered_template():
    conv = get_conv_template("qwen_1_5")
    conv.append_message(conv.roles[0], "hi")
    twin = conv.copy()
    twin.append_message(twin.roles[1], "hello")
    twin.messages[0][1] = "edited"
    assert conv.messages == [["user", "hi"]]
    assert conv_templates["qwen_1_5"].messages == []


def test_to_messages_matches_hf_chat_format():
    conv = chat("qwen_1_5", "<image>\nhi", "hello", "bye", None)
    assert conv.to_messages() == [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "<image>\nhi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
    ]


def test_register_conv_template_is_one_call_and_refuses_silent_overwrite():
    name = "test_only_chatml_no_system"
    try:
        register_conv_template(name, conv_templates["qwen_1_5"].copy())
        conv_templates[name].system = ""  # the registered object is the one passed
        assert chat(name, "x", None).get_prompt() == "<|im_start|>user\nx<|im_end|>\n<|im_start|>assistant\n"
        with pytest.raises(ValueError, match=name):
            register_conv_template(name, conv_templates["qwen_1_5"].copy())
        register_conv_template(name, conv_templates["plain"].copy(), override=True)
        assert conv_templates[name].sep_style == SeparatorStyle.PLAIN
    finally:
        conv_templates.pop(name, None)


def test_errors_name_the_bad_input():
    with pytest.raises(ValueError, match="no_such_template"):
        get_conv_template("no_such_template")
    conv = get_conv_template("qwen_1_5")
    with pytest.raises(ValueError, match="user"):
        conv.append_message("user", ("text", "image"))
    conv.append_message("user", None)
    conv.append_message("assistant", "x")
    with pytest.raises(ValueError, match="only the last turn"):
        conv.get_prompt()
    with pytest.raises(ValueError, match="Conversation"):
        register_conv_template("bad", {"system": ""})


def test_module_exports_llava_next_names():
    assert conversation_lib.conv_qwen is conv_templates["qwen_1_5"]
    assert conversation_lib.conv_llava_plain is conv_templates["plain"]
