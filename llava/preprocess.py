"""Conversation -> ``(input_ids, labels)`` for supervised fine-tuning.

Only what the model must learn to write is supervised: each assistant reply and the
``<|im_end|>`` that closes it (so the model learns to stop). The system text, the user
turns, the ``<|im_start|>assistant\\n`` headers, the newlines between turns and (once
spliced by the model) every visual position are labelled ``IGNORE_INDEX``. The rendered
text is exactly ``Conversation.get_prompt()`` for the same turns; ``<image>`` becomes
``IMAGE_TOKEN_INDEX``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .constants import IGNORE_INDEX
from .conversation import (
    THINK_END,
    THINK_START,
    Conversation,
    SeparatorStyle,
    get_conv_template,
    split_thought,
)
from .mm_utils import tokenizer_image_token

ROLE_ALIASES = {"human": 0, "user": 0, "gpt": 1, "assistant": 1}


def _turns(conversations: Sequence[dict], where: str) -> list[tuple[int, str]]:
    turns = []
    for index, turn in enumerate(conversations):
        speaker = str(turn.get("from", turn.get("role", ""))).lower()
        text = turn.get("value", turn.get("content"))
        if speaker not in ROLE_ALIASES or not isinstance(text, str):
            raise ValueError(f"{where}: turn {index} needs 'from' (human|gpt) and a string 'value', got {turn!r}")
        turns.append((ROLE_ALIASES[speaker], text))
    if not turns:
        raise ValueError(f"{where}: empty conversation")
    return turns


def conversation_segments(conv: Conversation, turns: list[tuple[int, str]]) -> list[tuple[str, bool]]:
    """``(text, supervised)`` pieces whose concatenation is ``conv.get_prompt()``."""
    if conv.sep_style == SeparatorStyle.PLAIN:
        seps = (conv.sep, conv.sep2 if conv.sep2 is not None else conv.sep)
        segments = [(conv.system, False)] if conv.system else []
        for index, (speaker, text) in enumerate(turns):
            segments.append((text + seps[index % 2], speaker == 1))
        return segments
    if conv.sep_style != SeparatorStyle.CHATML:
        raise ValueError(f"unsupported conversation style {conv.sep_style!r}")
    segments = [(f"<|im_start|>system\n{conv.system}{conv.sep}\n", False)] if conv.system else []
    last_user = max((i for i, (speaker, _) in enumerate(turns) if speaker == 0), default=-1)
    for index, (speaker, text) in enumerate(turns):
        role = conv.roles[speaker].removeprefix("<|im_start|>")
        if speaker == 0:
            segments.append((f"<|im_start|>{role}\n{text}{conv.sep}\n", False))
            continue
        if conv.enable_thinking is not None:  # Qwen3: old thoughts dropped, recent ones kept
            thought, answer = split_thought(text)
            text = f"{THINK_START}\n{thought.strip(chr(10))}\n{THINK_END}\n\n{answer}" if index > last_user else answer
        segments += [(f"<|im_start|>{role}\n", False), (text + conv.sep, True), ("\n", False)]
    return segments


def tokenize_conversation(
    conversations: Sequence[dict], tokenizer, template: str | Conversation = "qwen_1_5", where: str = "sample"
) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaVA ``conversations`` (``[{"from": "human"|"gpt", "value": ...}]``) -> ids and labels."""
    conv = get_conv_template(template) if isinstance(template, str) else template.copy()
    input_ids: list[int] = []
    labels: list[int] = []
    for text, supervised in conversation_segments(conv, _turns(conversations, where)):
        if not text:
            continue
        ids = tokenizer_image_token(text, tokenizer)
        input_ids += ids
        labels += ids if supervised else [IGNORE_INDEX] * len(ids)
    return torch.tensor(input_ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)


__all__ = ["conversation_segments", "tokenize_conversation"]
