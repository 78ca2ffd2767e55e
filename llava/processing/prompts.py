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

Records become conversations in one place, ``record_conversation``, with upstream's rules:

* a ``system`` turn (ShareGPT-style sets, upstream's Qwen preprocessing) may come first and is the
  conversation's system prompt, rendered as the template renders one (ChatML: its system block with
  that text instead of the default; ``plain``: the text in front); anywhere else it is an error;
* a lone ``<image>`` in the first human turn is moved to its front, followed by a newline, as
  LLaVA-NeXT's ``preprocess_multimodal`` does (``"What is <image> this?"`` ->
  ``"<image>\\nWhat is  this?"``); several placeholders stay where they are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from .conversation import Conversation, Segment, get_conv_template


def bos_prefix(tokenizer) -> list[int]:
    """``[bos_id]`` when the tokenizer adds a BOS on its own (Llama-style), else ``[]`` (Qwen)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    with_special = tokenizer("a").input_ids
    without = tokenizer("a", add_special_tokens=False).input_ids
    if with_special[:1] == [bos] and with_special[1 : 1 + len(without)] == without:
        return [bos]
    return []


def tokenizer_image_token(
    prompt: str,
    tokenizer,
    image_token_index: int = IMAGE_TOKEN_INDEX,
    return_tensors: str | None = None,
) -> list[int] | torch.Tensor:
    """Token ids of ``prompt`` with each ``<image>`` replaced by ``image_token_index``.

    The text between placeholders is tokenised piece by piece (no special tokens), so the
    placeholder never merges with its neighbours; a BOS is prepended only when the tokenizer
    would add one itself.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a str, got {type(prompt).__name__}")
    input_ids = bos_prefix(tokenizer)
    for index, chunk in enumerate(prompt.split(DEFAULT_IMAGE_TOKEN)):
        if index > 0:
            input_ids.append(image_token_index)
        if chunk:
            input_ids.extend(tokenizer(chunk, add_special_tokens=False).input_ids)
    if return_tensors is None:
        return input_ids
    if return_tensors == "pt":
        return torch.tensor(input_ids, dtype=torch.long)
    raise ValueError(f"unsupported return_tensors={return_tensors!r} (use None or 'pt')")


ROLE_ALIASES = {"human": 0, "user": 0, "gpt": 1, "assistant": 1}
SYSTEM_ROLE = "system"


def _turns(conversations: Sequence[dict], where: str) -> tuple[str | None, list[tuple[int, str]]]:
    """``(system text or None, [(speaker, text)])`` of a record; speaker 0 = user, 1 = assistant.

    Only the first turn may be a system turn: a later one has no place in the templates (they render
    one system prompt, before the turns), so the record is refused rather than silently reordered.
    """
    system, turns = None, []
    for index, turn in enumerate(conversations):
        speaker = str(turn.get("from", turn.get("role", ""))).lower() if isinstance(turn, dict) else ""
        text = turn.get("value", turn.get("content")) if isinstance(turn, dict) else None
        if speaker == SYSTEM_ROLE and isinstance(text, str):
            if index != 0:
                raise ValueError(
                    f"{where}: turn {index} is a system turn; only the first turn may be one (it becomes "
                    "the system prompt): move it to the front or drop it"
                )
            system = text
            continue
        if speaker not in ROLE_ALIASES or not isinstance(text, str):
            raise ValueError(
                f"{where}: turn {index} needs 'from' (human|gpt, or system first) and a string 'value', "
                f"got {turn!r}"
            )
        turns.append((ROLE_ALIASES[speaker], text))
    if not turns:
        raise ValueError(f"{where}: empty conversation" if system is None else
                         f"{where}: no human or gpt turn after the system turn")
    return system, turns


def place_image_first(text: str) -> str:
    """A lone ``<image>`` moved to the front of ``text``, followed by a newline: LLaVA-NeXT's
    ``preprocess_multimodal`` rule (the text around it is stripped; text already starting with it, or
    with several placeholders, is returned unchanged)."""
    if text.count(DEFAULT_IMAGE_TOKEN) != 1 or text.startswith(DEFAULT_IMAGE_TOKEN):
        return text
    rest = text.replace(DEFAULT_IMAGE_TOKEN, "").strip()
    return (DEFAULT_IMAGE_TOKEN + "\n" + rest).strip()


def record_conversation(
    conversations: Sequence[dict], template: str | Conversation = "qwen_1_5", where: str = "sample",
    question_only: bool = False,
) -> Conversation:
    """LLaVA ``conversations`` as a ``Conversation`` of ``template``: the one place records become turns.

    A first ``system`` turn is the system prompt; a lone ``<image>`` of the first human turn goes to
    its front (``place_image_first``). ``question_only`` keeps the turns up to the first human one and
    leaves an assistant turn open: the generation prompt of the record's first question, whose ids
    are the prefix of the record's training ids. Errors name the record (``where``) and the turn.
    """
    conv = _template(template)
    system, turns = _turns(conversations, where)
    if system is not None:
        conv.system = system
    first_human = next((index for index, (speaker, _) in enumerate(turns) if speaker == 0), None)
    if first_human is not None:
        turns[first_human] = (0, place_image_first(turns[first_human][1]))
    if question_only:
        if first_human is None:
            raise ValueError(f"{where}: no human turn to answer")
        turns = [*turns[: first_human + 1], (1, None)]
    for index, (speaker, text) in enumerate(turns):
        if conv.roles[0] == conv.roles[1] and speaker != index % 2:
            raise ValueError(
                f"{where}: turn {index} is {('human', 'gpt')[speaker]!r}, but template {conv.version!r} "
                "tells the speakers apart by position only, so turns must alternate human, gpt, human, ..."
            )
        conv.append_message(conv.roles[speaker], text)
    return conv


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

    ``role`` / ``content`` and ``user`` / ``assistant`` are accepted too, and a first ``system`` turn
    (``record_conversation``). ``template`` is a registered name or an empty ``Conversation`` (e.g. a
    LLaVA-NeXT pre-wrapped one). Errors name the record (``where``) and the turn.
    """
    conv = record_conversation(conversations, template, where)
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


__all__ = [
    "ROLE_ALIASES",
    "SYSTEM_ROLE",
    "bos_prefix",
    "place_image_first",
    "record_conversation",
    "tokenize_conversation",
    "tokenize_prompt",
    "tokenizer_image_token",
]
