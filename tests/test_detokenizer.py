"""The server streams an answer's text piece by piece (``llava.serve.engine.Detokenizer``): the pieces are the
decoded answer, a character split across tokens is never sent in halves, and the tokenizer's work grows
linearly with the answer (decoding the whole answer for every token was quadratic)."""

from __future__ import annotations

import threading

import pytest
from train_helpers import scripted

from llava.model.builder import load_pretrained_model
from llava.model.tiny import save_tiny_checkpoint
from llava.processing.conversation import get_conv_template
from llava.processing.media import VisualInputs
from llava.serve.engine import ChatEngine, Detokenizer, Sampling
from llava.synthetic.tokenizer import build_tiny_qwen_tokenizer

# Multi-byte characters the tiny byte-level vocabulary splits over several tokens, and a special token inside.
TEXT = "Grüße, 世界! A cat 🐈 sat on the mat.<|endoftext|> Ça va? ½ — done.\n"


class _CountingTokenizer:
    """A tokenizer that counts the ids it is asked to decode."""

    def __init__(self, tokenizer):
        self.tokenizer, self.decoded = tokenizer, 0

    def decode(self, ids, **kwargs):
        self.decoded += len(ids)
        return self.tokenizer.decode(ids, **kwargs)


def test_pieces_are_the_decoded_answer_and_cost_grows_linearly():
    tokenizer = build_tiny_qwen_tokenizer()
    ids = tokenizer(TEXT * 20, add_special_tokens=False).input_ids
    assert len(ids) > 600 and tokenizer.convert_tokens_to_ids("<|endoftext|>") in ids
    counting = _CountingTokenizer(tokenizer)
    detokenizer = Detokenizer(counting)
    pieces = [detokenizer.add(token) for token in ids]
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)
    assert not any("\ufffd" in piece for piece in pieces)  # split characters were held back, then sent whole
    assert pieces.count("") > 20  # ... which happened (and for the special tokens)
    assert counting.decoded < 10 * len(ids)  # the whole answer per token would be len(ids) ** 2 / 2


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    checkpoint = save_tiny_checkpoint(tmp_path_factory.mktemp("detok") / "tiny")
    tokenizer, model, _, _ = load_pretrained_model(str(checkpoint))
    return tokenizer, scripted(model, tokenizer, TEXT * 3)


def test_the_engine_streams_the_scripted_answer(loaded):
    tokenizer, model = loaded
    conv = get_conv_template("qwen_1_5")
    conv.append_message(conv.roles[0], "Say it.")
    conv.append_message(conv.roles[1], None)
    ids = tokenizer(TEXT * 3, add_special_tokens=False).input_ids
    want = tokenizer.decode(ids, skip_special_tokens=True)
    sampling = Sampling(max_tokens=len(ids), temperature=0)
    deltas = list(ChatEngine(tokenizer, model).stream(conv, VisualInputs(), sampling, threading.Event(), []))
    assert "".join(delta.text for delta in deltas) == want
    assert not any("\ufffd" in delta.text for delta in deltas)
