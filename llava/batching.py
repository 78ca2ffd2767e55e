"""Prompts -> model batches: placeholder expansion, truncation, padding and packing, in one place.

A prompt arrives as LLaVA's token ids (one ``-200`` per ``<image>``, ``llava.processing.prompts``), optional
labels, and its visual inputs (``llava.processing.media.VisualInputs``). :func:`collate` expands every
placeholder into its run of ``image_token_id`` tokens (as many as the model makes visual tokens:
``VisualLayout``, the processor's count), cuts each sample to ``max_length`` (never inside its visual
tokens), then pads the batch (right for training, left for generation) or packs it into rows of at
most ``max_length`` tokens whose samples restart their positions and see only themselves
(``segment_ids``, from which the model builds its attention mask). The trainer's collator, batched
generation and log-likelihoods, the chat session and the server all batch through it; the model gets
the Hugging Face form (``input_ids`` with image tokens, ``attention_mask`` or ``segment_ids``,
``position_ids``, ``labels``, and the flat visual lists).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from .model.processing_llava import VisualLayout
from .processing.media import VisualInputs

logger = logging.getLogger(__name__)


@dataclass
class Example:
    """One prompt: ids with ``-200`` placeholders, labels (None: no loss), its visual inputs."""

    input_ids: torch.Tensor
    labels: torch.Tensor | None = None
    visual: VisualInputs | None = None


def expand(example: Example, layout: VisualLayout, image_token_id: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``example``'s ids with each placeholder replaced by its run of ``image_token_id`` (labels ``IGNORE_INDEX``
    there); ``ValueError`` when the placeholders and the visual inputs do not match."""
    ids, labels = example.input_ids, example.labels
    visual = example.visual or VisualInputs()
    runs = visual.placeholder_tokens(layout)
    slots = torch.nonzero(ids == IMAGE_TOKEN_INDEX).flatten().tolist()
    if len(slots) != len(runs):
        raise ValueError(
            f"the prompt has {len(slots)} <image> placeholders but its visual inputs take {len(runs)} "
            "(a codec input one per mosaic)"
        )
    id_parts, label_parts, start = [], [], 0
    for slot, count in zip(slots, runs):
        id_parts += [ids[start:slot], ids.new_full((count,), image_token_id)]
        if labels is not None:
            label_parts += [labels[start:slot], labels.new_full((count,), IGNORE_INDEX)]
        start = slot + 1
    id_parts.append(ids[start:])
    if labels is not None:
        label_parts.append(labels[start:])
    return torch.cat(id_parts), torch.cat(label_parts) if labels is not None else None


def truncate(ids: torch.Tensor, labels: torch.Tensor | None, max_length: int | None, image_token_id: int,
             where: str = "sample") -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first ``max_length`` tokens, or more when the visual tokens alone reach past it: only text after
    the last visual token is ever cut."""
    if max_length is None or len(ids) <= max_length:
        return ids, labels
    visual = torch.nonzero(ids == image_token_id).flatten()
    visual_end = int(visual[-1]) + 1 if len(visual) else 0
    if visual_end > max_length:
        logger.warning("%s: its visual tokens end at %d, past the maximum length %d; the text after them is "
                       "dropped but the visual tokens are kept whole", where, visual_end, max_length)
    keep = max(max_length, visual_end)
    return ids[:keep], labels[:keep] if labels is not None else None


def collate(examples: Sequence[Example], layout: VisualLayout, image_token_id: int, pad_token_id: int,
            max_length: int | None = None, side: str = "right", pack: bool = False,
            one_row: bool = False) -> dict:
    """The model's keyword arguments for ``examples`` (module docstring).

    ``pack``: rows of at most ``max_length`` tokens, first fit in order (``one_row``: all samples in one row,
    for flash attention, which reads the sample boundaries from the restarting ``position_ids``); a sample's
    first label is ignored there, so no sample learns to predict the next one's first token.
    """
    rows = []
    for index, example in enumerate(examples):
        try:
            ids, labels = expand(example, layout, image_token_id)
        except ValueError as error:
            raise ValueError(f"sample {index}: {error}") from None
        rows.append(truncate(ids, labels, max_length, image_token_id, f"sample {index}"))
    with_labels = any(labels is not None for _, labels in rows)
    rows = [(ids, labels if labels is not None else torch.full_like(ids, IGNORE_INDEX)) for ids, labels in rows]
    batch = _packed(rows, pad_token_id, max_length, one_row) if pack else _padded(rows, pad_token_id, side)
    if not with_labels:
        batch.pop("labels")
    batch.update(VisualInputs.concat(e.visual or VisualInputs() for e in examples).model_kwargs())
    return batch


def _padded(rows, pad_token_id: int, side: str) -> dict:
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    longest = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), longest), pad_token_id, dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    attention_mask = torch.zeros_like(input_ids)
    position_ids = torch.zeros_like(input_ids)
    for row, (ids, row_labels) in enumerate(rows):
        n = len(ids)
        span = slice(longest - n, longest) if side == "left" else slice(0, n)
        input_ids[row, span], labels[row, span], attention_mask[row, span] = ids, row_labels, 1
        position_ids[row, span] = torch.arange(n)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
            "labels": labels}


def _packed(rows, pad_token_id: int, capacity: int | None, one_row: bool) -> dict:
    placed: list[list[int]] = []
    room: list[int] = []
    for index, (ids, _) in enumerate(rows):
        n = len(ids)
        fits = next((r for r, free in enumerate(room) if one_row or capacity is None or n <= free), None)
        if fits is None:
            placed.append([index])
            room.append((capacity or n) - n)
        else:
            placed[fits].append(index)
            room[fits] -= n
    longest = max(sum(len(rows[i][0]) for i in row) for row in placed)
    input_ids = torch.full((len(placed), longest), pad_token_id, dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    position_ids = torch.zeros_like(input_ids)
    segment_ids = torch.full_like(input_ids, -1)  # -1: padding
    for r, row in enumerate(placed):
        start = 0
        for index in row:
            ids, row_labels = rows[index]
            n = len(ids)
            input_ids[r, start:start + n], labels[r, start:start + n] = ids, row_labels
            labels[r, start] = IGNORE_INDEX
            position_ids[r, start:start + n] = torch.arange(n)
            segment_ids[r, start:start + n] = index
            start += n
    return {"input_ids": input_ids, "position_ids": position_ids, "segment_ids": segment_ids, "labels": labels}


__all__ = ["Example", "collate", "expand", "truncate"]
