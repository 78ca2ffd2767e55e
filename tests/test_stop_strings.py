"""Every entry point that generates ends an answer where its conversation template says (ChatML at
``<|im_end|>``, ``plain`` at its ``"\\n"`` separator), through the one rule ``llava.inference.generation.StopRule``.
The held-out predictor and the lmms-eval model are tested beside their other tests."""

from __future__ import annotations

import threading

import pytest
from train_helpers import scripted

from llava.inference.chat import ChatSession
from llava.inference.generation import StopRule
from llava.model.builder import load_pretrained_model
from llava.model.tiny import save_tiny_checkpoint
from llava.processing.conversation import get_conv_template
from llava.processing.media import VisualInputs
from llava.serve.engine import ChatEngine, Sampling

SCRIPT = "Yes.\nNo<|im_end|>More\nAgain"  # what the model writes; then "Again" forever
STOPPED = {"qwen_1_5": "Yes.\nNo", "qwen3": "Yes.\nNo", "plain": "Yes."}


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    checkpoint = save_tiny_checkpoint(tmp_path_factory.mktemp("stop") / "tiny")
    tokenizer, model, _, _ = load_pretrained_model(str(checkpoint))
    return tokenizer, scripted(model, tokenizer, SCRIPT)


@pytest.mark.parametrize("template", sorted(STOPPED))
def test_the_chat_session_stops_where_the_template_says(loaded, template):
    tokenizer, model = loaded
    session = ChatSession(tokenizer, model, conv_template=template, temperature=0, max_new_tokens=12)
    assert session.ask("Say yes.") == STOPPED[template]
    assert session.conv.messages[-1][1] == STOPPED[template]  # the history holds the cut answer


@pytest.mark.parametrize("template", sorted(STOPPED))
def test_the_server_engine_stops_where_the_template_says(loaded, template):
    tokenizer, model = loaded
    conv = get_conv_template(template)
    conv.append_message(conv.roles[0], "Say yes.")
    conv.append_message(conv.roles[1], None)
    engine = ChatEngine(tokenizer, model)
    (answer,) = engine.complete(conv, VisualInputs(), Sampling(max_tokens=12, temperature=0), threading.Event())
    assert (answer.text, answer.finish_reason) == (STOPPED[template], "stop")
    streamed = "".join(delta.text for delta in engine.stream(conv, VisualInputs(), Sampling(max_tokens=12,
                                                             temperature=0), threading.Event(), []))
    assert streamed.strip() == STOPPED[template]  # the stop string is never sent


def test_the_stop_rule_is_the_templates(loaded):
    tokenizer, _ = loaded
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert StopRule.of("qwen_1_5", tokenizer) == StopRule("<|im_end|>", im_end)
    assert StopRule.of(get_conv_template("qwen3"), tokenizer) == StopRule("<|im_end|>", im_end)
    assert StopRule.of("plain", tokenizer) == StopRule("\n", tokenizer("\n").input_ids[0])
    assert StopRule.of("plain", tokenizer).cut("A cat.\nA dog.") == "A cat."
    assert StopRule.of("qwen_1_5", tokenizer).cut("A cat.<|im_end|>\nmore") == "A cat."
