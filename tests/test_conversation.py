"""Conversation templates render the exact prompt strings the models were trained on."""

from __future__ import annotations

import pytest

from llava.processing import conversation as conversation_lib
from llava.processing.conversation import (
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


# --------------------------------------------------------------------- one renderer: segments()
LLAVA_NEXT_SYSTEM = "<|im_start|>system\nYou are a helpful assistant."
LLAVA_NEXT_ROLES = ("<|im_start|>user", "<|im_start|>assistant")
SINGLE = ("<image>\nWhat is this?", "A cat.")
MULTI = ("<image>\nWhat is this?", "A cat.", "And the colour?", "Black.")
THOUGHTS = ("q1", "<think>\nold reasoning\n</think>\n\na1", "q2", "<think>\nstep 1\nstep 2\n</think>\n\na2")


def open_turn(turns: tuple[str, ...]) -> tuple[str | None, ...]:
    """The same conversation asking for its last (assistant) reply."""
    return (*turns[:-1], None)


def llava_next_qwen() -> Conversation:
    """LLaVA-NeXT's own ``conv_qwen``: system and roles already wrapped in <|im_start|>."""
    return Conversation(
        system=LLAVA_NEXT_SYSTEM, roles=LLAVA_NEXT_ROLES, sep_style=SeparatorStyle.CHATML, sep="<|im_end|>"
    )


def conversation_cases(name: str) -> list[tuple[str, Conversation]]:
    """``(label, conversation)`` for every shape the renderers must agree on, for template ``name``.

    Single / multi-turn, ``<image>``, closed (training) and open (generation) forms, custom and
    empty system, and for Qwen3-style templates thoughts with ``enable_thinking`` True / False.
    Shared by the tokenizer and preprocess tests.
    """
    shapes = {"single": SINGLE, "multi": MULTI, "text_only": ("Hello there", "Hi!")}
    cases = []
    for label, turns in shapes.items():
        cases += [(f"{label}_closed", chat(name, *turns)), (f"{label}_open", chat(name, *open_turn(turns)))]
    for label, system in (("custom_system", "Be brief."), ("empty_system", "")):
        for form, turns in (("closed", MULTI), ("open", open_turn(MULTI))):
            conv = chat(name, *turns)
            conv.system = system
            cases.append((f"{label}_{form}", conv))
    if conv_templates[name].enable_thinking is not None:
        for thinking in (False, True):
            for label, turns in (("thought", THOUGHTS), ("no_thought", MULTI)):
                for form, form_turns in (("closed", turns), ("open", open_turn(turns))):
                    conv = chat(name, *form_turns)
                    conv.enable_thinking = thinking
                    cases.append((f"{label}_{form}_thinking_{thinking}", conv))
    return cases


def supervised(conv: Conversation) -> list[str]:
    return [text for text, keep in conv.segments() if keep]


@pytest.mark.parametrize("name", sorted(conv_templates))
def test_segments_join_to_the_prompt_for_every_template_and_shape(name):
    for label, conv in conversation_cases(name):
        segments = conv.segments()
        assert "".join(text for text, _ in segments) == conv.get_prompt(), label
        assert all(text for text, _ in segments), f"{label}: empty segment"
        flags = [keep for _, keep in segments]
        assert all(a != b for a, b in zip(flags, flags[1:])), f"{label}: adjacent segments not merged"
        replies = [m for i, (r, m) in enumerate(conv.messages) if m is not None and i % 2 == 1]
        assert len(supervised(conv)) == len(replies), label
        if conv.messages[-1][1] is None:
            assert segments[-1][1] is False, f"{label}: an open turn's header is context, not a target"


def test_supervised_pieces_are_exactly_the_replies_and_their_separator():
    assert supervised(chat("qwen_1_5", *MULTI)) == ["A cat.<|im_end|>", "Black.<|im_end|>"]
    assert supervised(chat("qwen_1_5", *open_turn(MULTI))) == ["A cat.<|im_end|>"]
    assert chat("qwen_1_5", *SINGLE).segments() == [
        (QWEN_SYSTEM + "<|im_start|>user\n<image>\nWhat is this?<|im_end|>\n<|im_start|>assistant\n", False),
        ("A cat.<|im_end|>", True),
        ("\n", False),
    ]
    assert chat("plain", "<image>", "A dog.").segments() == [("<image>\n", False), ("A dog.\n", True)]
    assert chat("plain", "<image>", None).segments() == [("<image>\n", False)]


def test_qwen3_empty_thought_is_part_of_the_unsupervised_header():
    """Non-thinking mode: the empty think block is what the generation header gives at inference."""
    header = "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
    assert chat("qwen3", "q", "a").segments() == [
        (header + "<think>\n\n</think>\n\n", False),
        ("a<|im_end|>", True),
        ("\n", False),
    ]
    assert chat("qwen3", "q", None).segments() == [(header + "<think>\n\n</think>\n\n", False)]
    # An explicitly empty thought is the same as none.
    assert chat("qwen3", "q", "<think>\n\n</think>\n\na").segments() == chat("qwen3", "q", "a").segments()


def test_qwen3_written_thoughts_are_supervised():
    header = "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n"
    assert chat("qwen3", "q", "<think>\nstep\n</think>\n\na").segments() == [
        (header, False),
        ("<think>\nstep\n</think>\n\na<|im_end|>", True),
        ("\n", False),
    ]
    thinking = chat("qwen3", "q", "a")
    thinking.enable_thinking = True  # the model opens (and here closes at once) the think block itself
    assert thinking.segments() == [
        (header, False),
        ("<think>\n\n</think>\n\na<|im_end|>", True),
        ("\n", False),
    ]
    # Old thoughts are dropped from the text, hence from the targets too.
    assert supervised(chat("qwen3", *THOUGHTS)) == [
        "a1<|im_end|>",
        "<think>\nstep 1\nstep 2\n</think>\n\na2<|im_end|>",
    ]


def test_llava_next_pre_wrapped_template_renders_its_system_once():
    conv, bare = llava_next_qwen(), get_conv_template("qwen_1_5")
    for message in MULTI:
        conv.append_message(conv.roles[len(conv.messages) % 2], message)
        bare.append_message(bare.roles[len(bare.messages) % 2], message)
    assert conv.segments() == bare.segments()
    assert conv.get_prompt().count("You are a helpful assistant.") == 1
    assert conv.to_messages() == bare.to_messages()
    assert conv.to_messages()[0] == {"role": "system", "content": "You are a helpful assistant."}


def test_to_messages_keeps_an_emptied_system_prompt_empty():
    """The qwen_1_5 chat template inserts its default system without a system message: say "none"."""
    conv = chat("qwen_1_5", "hi", None)
    conv.system = ""
    assert conv.to_messages() == [{"role": "system", "content": ""}, {"role": "user", "content": "hi"}]
    assert chat("qwen3", "hi", None).to_messages() == [{"role": "user", "content": "hi"}]
    assert chat("plain", "<image>", "A dog.").to_messages() == [
        {"role": "user", "content": "<image>"},
        {"role": "assistant", "content": "A dog."},
    ]


def test_chat_template_is_generated_for_every_template():
    for name, template in conv_templates.items():
        text = template.chat_template()
        assert "{% generation %}" in text.replace("{%-", "{%"), f"{name}: no assistant mask for HF"
        thoughts = "true" if template.enable_thinking is not None else "false"
        assert f"{{%- set thoughts = {thoughts} %}}" in text, name
    assert '"You are a helpful assistant."' in conv_templates["qwen_1_5"].chat_template()


def test_malformed_pre_wrapped_system_is_named():
    conv = chat("qwen_1_5", "hi", None)
    conv.system = "<|im_start|>sys You are a helpful assistant."
    with pytest.raises(ValueError, match="system starts with"):
        conv.get_prompt()
