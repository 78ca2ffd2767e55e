"""The LLaVA-OV processor: chat template, media and placeholder expansion in one place.

``LlavaOVProcessor`` holds the tokenizer, the OV-Encoder image processor and a video processor
(``frames`` or ``codec`` mode, the settings the model was trained with). It renders conversations
with the chat template the model was trained on (an image part is ``<image>\\n``, a video part
``<video>\\n``), turns images and videos into the model's visual inputs, and expands each
placeholder into exactly as many ``<|image_pad|>`` tokens as the model makes visual tokens for it:

    processor = AutoProcessor.from_pretrained(CKPT, trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, images=[image], return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=64)

The visual inputs are lists, one entry per media item in prompt order (``images``, ``modalities``,
``image_sizes``, ``patch_positions``; see ``modeling_llava.py``). A codec video is ``N`` mosaics,
and takes ``N`` runs of tokens separated by a newline, as the model was trained on codec records. A model
trained with ``--add_time_instruction`` saves ``time_instruction`` in its video settings: a video file's tokens
are then followed by LLaVA-NeXT's time instruction, as in training.
:class:`VisualLayout` is the one definition of how many tokens an input makes.

Self-contained (transformers, torch, numpy, Pillow, PyAV): the file travels inside checkpoint folders.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .image_processing_llava import (
    anyres_tile_size,
    get_anyres_image_grid_shape,
    is_anyres,
    parse_anyres_max,
    parse_grid_pinpoints,
    process_images,
    select_best_resolution,
    unpad_image,
)
from .video_processing_llava import LlavaOVVideoProcessor, VisualEntry

IMAGE_PLACEHOLDER = "<image>"
VIDEO_PLACEHOLDER = "<video>"
IMAGE_PAD = "<|image_pad|>"
VISUAL_KEYS = ("images", "modalities", "image_sizes", "patch_positions")
_PLACEHOLDER = re.compile(f"({re.escape(IMAGE_PLACEHOLDER)}|{re.escape(VIDEO_PLACEHOLDER)})")


@dataclasses.dataclass
class VisualLayout:
    """How the model arranges visual tokens (the model config's keys that decide it), and the counts."""

    patch_size: int = 16
    mm_projector_type: str = "linear"
    mm_spatial_merge_size: int = 2
    mm_patch_merge_type: str = "flat"
    mm_newline_position: str = "one_token"
    mm_spatial_pool_stride: int | None = None
    image_aspect_ratio: str | None = None
    image_grid_pinpoints: Any = None
    image_tile_size: int | None = None

    @classmethod
    def from_config(cls, config, patch_size: int) -> VisualLayout:
        """The layout of a LLaVA config (``LlavaQwenConfig`` or any object with its keys)."""
        fields = {f.name: getattr(config, f.name, f.default) for f in dataclasses.fields(cls) if f.name != "patch_size"}
        return cls(patch_size=int(patch_size), **fields)

    def placeholders(self, shape: Sequence[int], modality: str) -> int:
        """``<image>`` placeholders an input takes: one per mosaic for ``codec``, else 1."""
        return int(shape[1]) if modality == "codec" and len(shape) == 4 else 1

    def placeholder_tokens(self, shape: Sequence[int], modality: str, image_size=None, positions=None) -> list[int]:
        """Visual tokens of each placeholder of one input (the model splits a codec input's tokens into
        ``N`` near-equal runs, a trailing newline token with the last)."""
        total = self.tokens(shape, modality, image_size, positions)
        count = self.placeholders(shape, modality)
        if count == 1:
            return [total]
        newline = self._newline(modality)
        base, extra = divmod(total - newline, count)
        runs = [base + (1 if i < extra else 0) for i in range(count)]
        runs[-1] += newline
        return runs

    def _newline(self, modality: str) -> int:
        unpad = "unpad" in (self.mm_patch_merge_type or "")
        return int(unpad and (modality == "image" or self.mm_newline_position == "one_token"))

    def tokens(self, shape: Sequence[int], modality: str, image_size=None, positions=None) -> int:
        """Visual tokens of one input of ``shape`` (its pixels' shape), from shapes (and a codec input's
        positions, for a merging projector) alone: nothing is encoded. A ``codec`` input without
        ``positions`` is counted as if every mosaic were one frame (exact unless the projector merges)."""
        patch = self.patch_size
        merge = int(self.mm_spatial_merge_size) if self.mm_projector_type == "spatial_merge" else 1
        unpad = "unpad" in (self.mm_patch_merge_type or "")
        newline = self._newline(modality)

        def grid(height: int, width: int) -> tuple[int, int]:  # a frame's token grid after the projector
            return -(-(height // patch) // merge), -(-(width // patch) // merge)

        if modality == "image" and len(shape) == 3:
            rows, cols = grid(shape[1], shape[2])
            return rows * cols + newline
        if modality == "image":  # anyres: [1 + tiles, C, tile, tile]
            rows, cols = grid(shape[2], shape[3])
            if shape[0] == 1 or not unpad:
                return shape[0] * rows * cols + newline
            tiles_w, tiles_h = get_anyres_image_grid_shape(image_size, self.image_grid_pinpoints, shape[-1])
            kept = unpad_image(torch.empty(0, tiles_h * rows, tiles_w * cols), image_size).shape[1:]
            kept_rows, kept_cols = int(kept[0]), int(kept[1])
            max_tiles = parse_anyres_max(self.image_aspect_ratio)
            if max_tiles:
                scale = math.sqrt(kept_rows * kept_cols / (max_tiles * rows * cols))
                if scale > 1.1:
                    kept_rows, kept_cols = int(kept_rows / scale), int(kept_cols / scale)
            return rows * cols + kept_rows * (kept_cols + 1)
        frames = shape[1]
        rows, cols = grid(shape[2], shape[3])
        if modality == "video":
            stride = self.mm_spatial_pool_stride
            if stride and stride != 1:
                rows, cols = -(-rows // stride), -(-cols // stride)
            return frames * rows * cols + newline
        if positions is None or merge == 1:
            return (frames * rows * cols if positions is None else len(positions)) + newline
        positions = torch.as_tensor(positions)
        groups = torch.stack((positions[:, 0], positions[:, 1] // merge, positions[:, 2] // merge), -1)
        return int(torch.unique(groups, dim=0).shape[0]) + newline

    def image_shape(self, size: tuple[int, int], image_processor) -> tuple[int, ...]:
        """The pixels' shape of an image of ``size`` = ``(width, height)`` (``process_images``), without pixels."""
        width, height = size
        aspect = self.image_aspect_ratio
        if is_anyres(aspect):
            tile = anyres_tile_size(image_processor, self)
            best_w, best_h = select_best_resolution(size, parse_grid_pinpoints(self.image_grid_pinpoints, tile))
            return (1 + (best_w // tile) * (best_h // tile), 3, tile, tile)
        if aspect == "pad":
            height = width = max(width, height)
        return (3, *image_processor.target_size(height, width))


class LlavaOVProcessor(ProcessorMixin):
    """Tokenizer + OV-Encoder image processor + video processor of a LLaVA-OV checkpoint (module docstring).

    ``layout`` is the model's :class:`VisualLayout` (as a dict), ``video`` the video processor's settings
    (``LlavaOVVideoProcessor.to_dict()``), ``image_token`` the token each visual token is written as,
    ``stop_string`` where an answer ends (the conversation template's).
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template: str | None = None,
                 layout: dict | None = None, video: dict | None = None, image_token: str = IMAGE_PAD,
                 stop_string: str | None = None, **kwargs):
        self.layout = dict(layout or {})
        self.video = dict(video or {})
        self.image_token = image_token
        self.stop_string = stop_string
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)
        self.visual_layout = VisualLayout(**self.layout)
        self.video_processor = LlavaOVVideoProcessor(image_processor, **self.video)
        token_id = tokenizer.convert_tokens_to_ids(image_token) if tokenizer is not None else None
        if tokenizer is not None and (token_id is None or token_id == tokenizer.unk_token_id):
            raise ValueError(f"the tokenizer has no {image_token!r} token: add it as a special token")
        self.image_token_id = token_id

    # ------------------------------------------------------------------ media -> entries
    def image_entry(self, image: Any) -> VisualEntry:
        """One image (PIL or ``HxWx3`` uint8 array) with the checkpoint's image settings."""
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise TypeError(f"an image must be a PIL image or a uint8 array, got {type(image).__name__}")
        image = image.convert("RGB")
        pixels = process_images([image], self.image_processor, self.visual_layout)[0]
        return VisualEntry(pixels, "image", image.size)

    def placeholder_tokens(self, entry: VisualEntry) -> list[int]:
        """Visual tokens of each placeholder ``entry`` takes."""
        return self.visual_layout.placeholder_tokens(tuple(entry.pixels.shape), entry.modality, entry.size, entry.positions)

    def expansion(self, entry: VisualEntry) -> str:
        """The text a placeholder of ``entry`` becomes: its runs of image tokens (a codec video: one run per
        mosaic, newline-separated)."""
        return "\n".join(self.image_token * n for n in self.placeholder_tokens(entry))

    def placeholder_text(self, entry: VisualEntry) -> str:
        """What a placeholder of ``entry`` is replaced with in a prompt: its expansion, then a video's time
        instruction where training put it."""
        expansion = self.expansion(entry)
        return f"{expansion}\n{entry.instruction}\n" if entry.instruction else expansion

    # ------------------------------------------------------------------ call
    def __call__(self, images=None, text=None, videos=None, return_tensors: str | None = "pt", padding=True,
                 padding_side: str | None = None, video_mode: str | None = None, **kwargs) -> BatchFeature:
        """Token ids with every ``<image>`` / ``<video>`` expanded, and the visual inputs in prompt order.

        ``images``: a list (or one list per text); ``videos``: a list, each a path (read in ``video_mode``,
        default the saved one) or a list of frames; consumed in the order their placeholders appear
        across the texts.
        """
        if text is None:
            raise ValueError("pass text=... (a prompt with <image> / <video> placeholders, e.g. from "
                             "apply_chat_template)")
        texts = [text] if isinstance(text, str) else list(text)
        image_queue = _flat(images)
        video_queue = [videos] if isinstance(videos, str) else list(videos or [])
        expanded, entries = [], []
        for sample, prompt in enumerate(texts):
            parts = []
            for piece in _PLACEHOLDER.split(prompt):
                if piece not in (IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER):
                    parts.append(piece)
                    continue
                queue, kind = (image_queue, "image") if piece == IMAGE_PLACEHOLDER else (video_queue, "video")
                if not queue:
                    raise ValueError(f"text {sample} has more {piece} placeholders than {kind}s were given")
                media = queue.pop(0)
                entry = self.image_entry(media) if kind == "image" else self.video_processor(media, video_mode)
                entries.append(entry)
                parts.append(self.placeholder_text(entry))
            expanded.append("".join(parts))
        if image_queue or video_queue:
            raise ValueError(f"{len(image_queue)} images and {len(video_queue)} videos were given without a "
                             "placeholder in the text: add <image> / <video> (apply_chat_template writes them)")
        tokenizer_kwargs = {"padding": padding, "add_special_tokens": False}
        if padding_side is not None:
            tokenizer_kwargs["padding_side"] = padding_side
        encoded = self.tokenizer(expanded, return_tensors=return_tensors, **tokenizer_kwargs)
        data = dict(encoded)
        if entries:
            data.update(images=[e.pixels for e in entries], modalities=[e.modality for e in entries],
                        image_sizes=[e.size for e in entries], patch_positions=[e.positions for e in entries])
        return BatchFeature(data, tensor_type=return_tensors, skip_tensor_conversion=list(VISUAL_KEYS))

    def answer(self, text: str) -> str:
        """``text`` up to the stop string (the template's), stripped."""
        if self.stop_string:
            text = text.split(self.stop_string, 1)[0]
        return text.strip()

    def post_process_image_text_to_text(self, generated_outputs, skip_special_tokens=True, **kwargs):
        """Decoded answers cut at the template's stop string (used by ``pipeline("image-text-to-text")``)."""
        texts = self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)
        return [self.answer(t) for t in texts]

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", *VISUAL_KEYS]


def _flat(media) -> list:
    """Media as one list in prompt order: one item, a list, or one list per text."""
    if media is None:
        return []
    if not isinstance(media, (list, tuple)):
        return [media]
    if media and all(isinstance(item, (list, tuple)) for item in media):
        return [item for per_text in media for item in per_text]
    return list(media)


__all__ = ["IMAGE_PAD", "IMAGE_PLACEHOLDER", "VIDEO_PLACEHOLDER", "LlavaOVProcessor", "VisualLayout"]
