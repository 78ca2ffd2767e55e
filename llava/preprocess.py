"""Conversation -> ``(input_ids, labels)`` for supervised fine-tuning, and the matching inference ids.

There is no template logic here: a LLaVA record becomes a ``Conversation`` and its
``segments()`` -- the one renderer, also behind ``get_prompt()`` and the Hugging Face chat
template -- say which text is supervised (each assistant reply and the separator that closes
it) and which is context (system text, user turns, role headers, newlines, and once spliced by
the model every visual position), labelled ``IGNORE_INDEX``. ``<image>`` becomes
``IMAGE_TOKEN_INDEX``.

Training and inference tokenise the same way, segment by segment (``tokenize_conversation`` /
``tokenize_prompt``), so the ids of a generation prompt are exactly the prefix of the training
ids of the same conversation with its answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .constants import IGNORE_INDEX
from .conversation import Conversation, Segment, get_conv_template
from .mm_utils import bos_prefix, tokenizer_image_token

ROLE_ALIASES = {"human": 0, "user": 0, "gpt": 1, "assistant": 1}


def _turns(conversations: Sequence[dict], where: str) -> list[tuple[int, str]]:
    """``(speaker, text)`` of each record turn; speaker 0 = user, 1 = assistant."""
    turns = []
    for index, turn in enumerate(conversations):
        speaker = str(turn.get("from", turn.get("role", ""))).lower() if isinstance(turn, dict) else ""
        text = turn.get("value", turn.get("content")) if isinstance(turn, dict) else None
        if speaker not in ROLE_ALIASES or not isinstance(text, str):
            raise ValueError(
                f"{where}: turn {index} needs 'from' (human|gpt) and a string 'value', got {turn!r}"
            )
        turns.append((ROLE_ALIASES[speaker], text))
    if not turns:
        raise ValueError(f"{where}: empty conversation")
    return turns


def _template(template: str | Conversation) -> Conversation:
    """A fresh, empty copy of the template (a registered name or a ``Conversation`` object)."""
    if isinstance(template, str):
        return get_conv_template(template)
    if not isinstance(template, Conversation):
        raise ValueError(
            f"template must be a registered template name or a Conversation, got {type(template).__name__}"
        )
    if template.messages:
        raise ValueError(
            f"template Conversation already has {len(template.messages)} message(s); pass an empty template "
            "(the turns come from `conversations`), or use tokenize_prompt for a finished Conversation"
        )
    return template.copy()


def _tokenize_segments(segments: Sequence[Segment], tokenizer) -> tuple[list[int], list[int]]:
    """Ids and labels of ``segments``, each tokenised on its own (``<image>`` -> ``IMAGE_TOKEN_INDEX``).

    A BOS, for tokenizers that add one (Llama-style; Qwen has none), is put once at the start
    rather than before every segment, and is not supervised.
    """
    bos = bos_prefix(tokenizer)
    input_ids, labels = list(bos), [IGNORE_INDEX] * len(bos)
    for text, supervised in segments:
        ids = tokenizer_image_token(text, tokenizer)[len(bos) :]
        input_ids += ids
        labels += ids if supervised else [IGNORE_INDEX] * len(ids)
    return input_ids, labels


def tokenize_conversation(
    conversations: Sequence[dict], tokenizer, template: str | Conversation = "qwen_1_5", where: str = "sample"
) -> tuple[torch.Tensor, torch.Tensor]:
    """LLaVA ``conversations`` (``[{"from": "human"|"gpt", "value": ...}]``) -> 1-D ids and labels.

    ``role`` / ``content`` and ``user`` / ``assistant`` are accepted too. ``template`` is a
    registered name or an empty ``Conversation`` (e.g. a LLaVA-NeXT pre-wrapped one). Errors
    name the record (``where``) and the turn.
    """
    conv = _template(template)
    for index, (speaker, text) in enumerate(_turns(conversations, where)):
        if conv.roles[0] == conv.roles[1] and speaker != index % 2:
            raise ValueError(
                f"{where}: turn {index} is {('human', 'gpt')[speaker]!r}, but template {conv.version!r} "
                "tells the speakers apart by position only, so turns must alternate human, gpt, human, ..."
            )
        conv.append_message(conv.roles[speaker], text)
    try:
        segments = conv.segments()
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc
    input_ids, labels = _tokenize_segments(segments, tokenizer)
    return torch.tensor(input_ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)


def tokenize_prompt(conv: Conversation, tokenizer) -> torch.Tensor:
    """1-D ids of ``conv`` (typically ending in an open assistant turn, for ``generate``).

    Tokenised exactly as ``tokenize_conversation`` tokenises training samples, so the prompt is
    the prefix of the training ids of the same conversation plus its answer.
    """
    if not isinstance(conv, Conversation):
        raise ValueError(f"conv must be a Conversation, got {type(conv).__name__}")
    input_ids, _ = _tokenize_segments(conv.segments(), tokenizer)
    return torch.tensor(input_ids, dtype=torch.long)


__all__ = ["ROLE_ALIASES", "tokenize_conversation", "tokenize_prompt"]
