"""Training ids / labels and inference ids both come from ``Conversation.segments()``."""

from __future__ import annotations

import pytest
import torch
from test_conversation import MULTI, conversation_cases, llava_next_qwen
from tokenizers import processors

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.processing.conversation import conv_templates, get_conv_template
from llava.processing.prompts import tokenize_conversation, tokenize_prompt, tokenizer_image_token
from llava.synthetic.tokenizer import build_tiny_qwen_tokenizer

RECORDS = [
    {"from": "human", "value": "<image>\nWhat is shown?"},
    {"from": "gpt", "value": "A red ball."},
    {"from": "human", "value": "Where is it going?"},
    {"from": "gpt", "value": "To the left."},
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_qwen_tokenizer()


def decode(tokenizer, ids: torch.Tensor) -> str:
    """Text of ids, each ``IMAGE_TOKEN_INDEX`` written back as ``<image>``."""
    pieces, run = [], []
    for token in ids.tolist():
        if token == IMAGE_TOKEN_INDEX:
            pieces += [tokenizer.decode(run), "<image>"]
            run = []
        else:
            run.append(token)
    return "".join([*pieces, tokenizer.decode(run)])


def supervised_spans(tokenizer, ids: torch.Tensor, labels: torch.Tensor) -> list[str]:
    spans, current = [], []
    for token, label in zip(ids.tolist(), labels.tolist()):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    return spans


def records_of(conv) -> list[dict]:
    return [{"from": ("human", "gpt")[i % 2], "value": text} for i, (_, text) in enumerate(conv.messages)]


def template_of(conv):
    """An empty copy of ``conv`` (its system / thinking settings, no messages) to pass as ``template``."""
    template = conv.copy()
    template.messages = []
    return template


@pytest.mark.parametrize("name", sorted(conv_templates))
def test_ids_render_the_prompt_and_labels_are_the_supervised_segments(tokenizer, name):
    for label, conv in conversation_cases(name):
        if conv.messages[-1][1] is None:
            continue  # training samples are closed
        ids, labels = tokenize_conversation(records_of(conv), tokenizer, template_of(conv), where=label)
        assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape
        assert decode(tokenizer, ids) == conv.get_prompt(), label
        assert labels[ids == IMAGE_TOKEN_INDEX].eq(IGNORE_INDEX).all(), label
        expected = [text for text, keep in conv.segments() if keep]
        assert supervised_spans(tokenizer, ids, labels) == expected, label


@pytest.mark.parametrize("name", sorted(conv_templates))
def test_inference_prompt_ids_are_the_prefix_of_the_training_ids(tokenizer, name):
    for label, conv in conversation_cases(name):
        if conv.messages[-1][1] is not None:
            continue
        prompt = tokenize_prompt(conv, tokenizer)
        assert prompt.dtype == torch.long and prompt.dim() == 1
        assert decode(tokenizer, prompt) == conv.get_prompt(), label
        answered = conv.copy()
        answered.messages[-1][1] = "Yes, it is."
        ids, labels = tokenize_conversation(records_of(answered), tokenizer, template_of(conv), where=label)
        assert torch.equal(ids[: len(prompt)], prompt), label
        answer = [text for text, keep in answered.segments() if keep][-1]
        assert "Yes, it is." in answer
        assert supervised_spans(tokenizer, ids[len(prompt) :], labels[len(prompt) :]) == [answer], label


def test_open_chatml_prompt_tokenises_like_the_whole_prompt_string(tokenizer):
    """Segments only split where supervision changes, so serving code tokenising get_prompt() agrees."""
    for name in ("qwen_1_5", "qwen3"):
        conv = get_conv_template(name)
        conv.append_message(conv.roles[0], "<image>\nDescribe it.")
        conv.append_message(conv.roles[1], None)
        whole = tokenizer_image_token(conv.get_prompt(), tokenizer)
        assert tokenize_prompt(conv, tokenizer).tolist() == whole, name


def test_llava_next_pre_wrapped_template_gives_the_qwen_1_5_ids(tokenizer):
    ids, labels = tokenize_conversation(RECORDS, tokenizer, llava_next_qwen())
    bare_ids, bare_labels = tokenize_conversation(RECORDS, tokenizer, "qwen_1_5")
    assert torch.equal(ids, bare_ids) and torch.equal(labels, bare_labels)
    conv = llava_next_qwen()
    for record in RECORDS:
        conv.append_message(conv.roles[record["from"] == "gpt"], record["value"])
    assert decode(tokenizer, ids) == conv.get_prompt()
    assert decode(tokenizer, ids).count("You are a helpful assistant.") == 1
    conv.messages[-1][1] = None
    assert torch.equal(tokenize_prompt(conv, tokenizer), ids[: len(tokenize_prompt(conv, tokenizer))])


def test_role_and_content_aliases(tokenizer):
    aliased = [
        {"role": "user" if r["from"] == "human" else "assistant", "content": r["value"]} for r in RECORDS
    ]
    expected = tokenize_conversation(RECORDS, tokenizer)
    for got, want in zip(tokenize_conversation(aliased, tokenizer), expected):
        assert torch.equal(got, want)


def test_qwen3_supervises_the_answer_not_the_empty_thought(tokenizer):
    ids, labels = tokenize_conversation(RECORDS, tokenizer, "qwen3")
    assert supervised_spans(tokenizer, ids, labels) == ["A red ball.<|im_end|>", "To the left.<|im_end|>"]
    assert "<think>\n\n</think>\n\nTo the left." in decode(tokenizer, ids)


def test_bos_is_added_once_for_tokenizers_that_add_one():
    """Llama-style LLMs: one unsupervised BOS at the start, not one per segment."""
    bos_tokenizer = build_tiny_qwen_tokenizer()
    bos_tokenizer.bos_token = "<|endoftext|>"
    bos = bos_tokenizer.bos_token_id
    bos_tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", pair="<|endoftext|> $A $B", special_tokens=[("<|endoftext|>", bos)]
    )
    assert bos_tokenizer("a").input_ids[0] == bos
    ids, labels = tokenize_conversation(RECORDS, bos_tokenizer)
    assert ids[0] == bos and labels[0] == IGNORE_INDEX and (ids == bos).sum() == 1
    plain_ids, _ = tokenize_conversation(RECORDS, build_tiny_qwen_tokenizer())
    assert torch.equal(ids[1:], plain_ids)


def test_errors_name_the_record_and_the_turn(tokenizer):
    with pytest.raises(ValueError, match="record-7: turn 1"):
        tokenize_conversation([RECORDS[0], {"from": "robot", "value": "hi"}], tokenizer, where="record-7")
    with pytest.raises(ValueError, match="record-8: turn 0"):
        tokenize_conversation([{"from": "human", "value": None}], tokenizer, where="record-8")
    with pytest.raises(ValueError, match="record-9: empty conversation"):
        tokenize_conversation([], tokenizer, where="record-9")
    with pytest.raises(ValueError, match="record-3: turn 0 is 'gpt'.*alternate"):
        tokenize_conversation([RECORDS[1], RECORDS[0]], tokenizer, "plain", where="record-3")
    with pytest.raises(ValueError, match="no_such_template"):
        tokenize_conversation(RECORDS, tokenizer, "no_such_template")


def test_bad_template_arguments_are_named(tokenizer):
    with pytest.raises(ValueError, match="template must be"):
        tokenize_conversation(RECORDS, tokenizer, {"system": ""})
    finished = get_conv_template("qwen_1_5")
    finished.append_message("user", "hi")
    with pytest.raises(ValueError, match="already has 1 message"):
        tokenize_conversation(RECORDS, tokenizer, finished)
    with pytest.raises(ValueError, match="conv must be a Conversation"):
        tokenize_prompt(MULTI, tokenizer)


# ---------------------------------------------------------------- system turns (ShareGPT-style records)
SYSTEM_RECORDS = [{"from": "system", "value": "You are a pirate. Answer in one word."}, *RECORDS]


@pytest.mark.parametrize("name", sorted(conv_templates))
def test_a_first_system_turn_is_the_system_prompt(tokenizer, name):
    """Rendered as the template renders a system prompt: its system block, with the record's text."""
    conv = get_conv_template(name)
    conv.system = SYSTEM_RECORDS[0]["value"]
    for index, record in enumerate(RECORDS):
        conv.append_message(conv.roles[index % 2], record["value"])
    ids, labels = tokenize_conversation(SYSTEM_RECORDS, tokenizer, name, where="record-1")
    assert decode(tokenizer, ids) == conv.get_prompt()
    assert decode(tokenizer, ids).count("You are a pirate.") == 1
    assert "You are a helpful assistant." not in decode(tokenizer, ids)  # instead of the default
    assert supervised_spans(tokenizer, ids, labels) == [text for text, keep in conv.segments() if keep]


def test_a_system_turn_renders_as_upstream_chatml(tokenizer):
    role_content = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello."}]
    for name, think in (("qwen_1_5", ""), ("qwen3", "<think>\n\n</think>\n\n")):
        ids, _ = tokenize_conversation(role_content, tokenizer, name)
        assert decode(tokenizer, ids) == (
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            f"<|im_start|>assistant\n{think}Hello.<|im_end|>\n"
        ), name


def test_a_system_turn_that_is_not_first_is_a_bad_record(tokenizer):
    late = [*RECORDS[:2], {"from": "system", "value": "Now be brief."}, *RECORDS[2:]]
    with pytest.raises(ValueError, match=r"record-5: turn 2 is a system turn; only the first turn may be"):
        tokenize_conversation(late, tokenizer, where="record-5")
    with pytest.raises(ValueError, match="record-6: no human or gpt turn"):
        tokenize_conversation(SYSTEM_RECORDS[:1], tokenizer, where="record-6")


def test_plain_counts_the_turns_after_the_system_turn(tokenizer):
    """The plain template tells speakers apart by position: the system turn does not shift it."""
    ids, labels = tokenize_conversation([SYSTEM_RECORDS[0], *RECORDS[:2]], tokenizer, "plain")
    assert supervised_spans(tokenizer, ids, labels) == ["A red ball.\n"]


# ---------------------------------------------------------------- <image> placement (upstream's rule)
def upstream_preprocess_multimodal(value: str) -> str:
    """LLaVA-NeXT ``llava/train/train.py:preprocess_multimodal`` on one turn (no mmtag, no im_start_end)."""
    if value.count("<image>") == 1 and not value.startswith("<image>"):
        value = value.replace("<image>", "").strip()
        value = ("<image>" + "\n" + value).strip()
    return value


@pytest.mark.parametrize("question", [
    "What is <image> this?",  # -> "<image>\nWhat is  this?" (the double space stays, as upstream)
    "Describe it.\n<image>",
    "  <image>  ",
    "<image>What is it?",  # already first: left alone
    "<image>\nWhat is it?",
    "Compare <image> and <image>.",  # several placeholders stay where they are
    "No image here.",
])
def test_a_lone_image_in_the_first_human_turn_moves_to_the_front_as_upstream(tokenizer, question):
    records = [{"from": "human", "value": question}, {"from": "gpt", "value": "Yes."},
               {"from": "human", "value": "And <image> here?"}, {"from": "gpt", "value": "No."}]
    ids, _ = tokenize_conversation(records, tokenizer, "qwen_1_5")
    text = decode(tokenizer, ids)
    assert f"<|im_start|>user\n{upstream_preprocess_multimodal(question)}<|im_end|>" in text
    assert "<|im_start|>user\nAnd <image> here?<|im_end|>" in text  # only the first human turn
    assert upstream_preprocess_multimodal("What is <image> this?") == "<image>\nWhat is  this?"
