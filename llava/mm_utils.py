"""Multimodal helpers shared by training, evaluation and serving (LLaVA-NeXT names and semantics).

**The size convention of the project** (stated here, once): an image size is PIL-style
``(width, height)``, ``image.size``. It is what LLaVA-NeXT's callers pass
(``image_sizes=[img.size]``), what the OV-Encoder image processor returns as ``image_sizes``,
what ``llava.mm_inputs`` puts in ``VisualInputs.image_sizes`` and what the model reads to
unpad ``anyres`` images. Each ``image_grid_pinpoints`` pair is read as ``(width, height)`` too
(the usual pinpoint sets are symmetric, so this only matters for hand-written lists), and
``get_anyres_image_grid_shape`` returns ``(num_tiles_wide, num_tiles_high)``. Pixel tensors
are ``[C, H, W]`` as usual.
"""

from __future__ import annotations

import ast
import math
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import StoppingCriteria

from .constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX

DEFAULT_TILE_SIZE = 448
_GRID_RANGE = re.compile(r"\((\d+)x(\d+)\)")
_ANYRES_MAX = re.compile(r"^anyres_max_(\d+)$")


# ============================================================== tokenisation
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


# ============================================================== square padding
def expand2square(pil_img: Image.Image, background_color: Any) -> Image.Image:
    """Pad the short side so the image is square, content centred (LLaVA ``pad`` aspect ratio)."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    side = max(width, height)
    result = Image.new(pil_img.mode, (side, side), background_color)
    result.paste(pil_img, ((side - width) // 2, (side - height) // 2))
    return result


# ============================================================== anyres tiling
def parse_grid_pinpoints(grid_pinpoints: Any, tile_size: int) -> list[tuple[int, int]]:
    """Candidate resolutions as ``(width, height)`` pairs.

    Accepts a list of pairs, a string literal of one (``"[[448, 896], ...]"``), or a range
    string ``"(1x1),...,(3x3)"`` whose grid counts are multiplied by ``tile_size``.
    """
    if isinstance(grid_pinpoints, str):
        ranges = _GRID_RANGE.findall(grid_pinpoints)
        if ranges:
            (w0, h0), (w1, h1) = (tuple(map(int, pair)) for pair in (ranges[0], ranges[-1]))
            return [(i * tile_size, j * tile_size) for i in range(w0, w1 + 1) for j in range(h0, h1 + 1)]
        try:
            grid_pinpoints = ast.literal_eval(grid_pinpoints)
        except (ValueError, SyntaxError) as exc:
            raise ValueError(f"cannot parse image_grid_pinpoints {grid_pinpoints!r}") from exc
    pairs = []
    for pair in grid_pinpoints or []:
        if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in pair):
            raise ValueError(f"image_grid_pinpoints entry {pair!r} is not a pair of positive ints")
        pairs.append((int(pair[0]), int(pair[1])))
    if not pairs:
        raise ValueError(f"image_grid_pinpoints is empty: {grid_pinpoints!r}")
    return pairs


def parse_anyres_max(image_aspect_ratio: str | None) -> int | None:
    """``N`` of ``"anyres_max_N"`` (the cap on tiles the model keeps after unpadding), else None."""
    match = _ANYRES_MAX.match(image_aspect_ratio or "")
    return int(match.group(1)) if match else None


def _is_anyres(image_aspect_ratio: str | None) -> bool:
    return image_aspect_ratio == "anyres" or parse_anyres_max(image_aspect_ratio) is not None


def select_best_resolution(
    original_size: tuple[int, int], possible_resolutions: Sequence[Sequence[int]]
) -> tuple[int, int]:
    """The candidate ``(width, height)`` keeping the most original pixels, then wasting the fewest."""
    orig_w, orig_h = original_size
    if orig_w < 1 or orig_h < 1:
        raise ValueError(f"original_size must be positive (width, height), got {original_size}")
    best, best_key = None, None
    for width, height in possible_resolutions:
        scale = min(width / orig_w, height / orig_h)
        effective = min(int(orig_w * scale) * int(orig_h * scale), orig_w * orig_h)
        key = (effective, -(width * height - effective))
        if best_key is None or key > best_key:
            best, best_key = (int(width), int(height)), key
    if best is None:
        raise ValueError("possible_resolutions is empty")
    return best


def resize_and_pad_image(
    image: Image.Image, target_resolution: tuple[int, int], background_color: Any = (0, 0, 0)
) -> Image.Image:
    """Fit ``image`` inside ``(width, height)`` keeping its aspect ratio, centred on a padded canvas."""
    orig_w, orig_h = image.size
    target_w, target_h = target_resolution
    scale_w, scale_h = target_w / orig_w, target_h / orig_h
    if scale_w < scale_h:
        new_w, new_h = target_w, min(math.ceil(orig_h * scale_w), target_h)
    else:
        new_w, new_h = min(math.ceil(orig_w * scale_h), target_w), target_h
    resized = image.convert("RGB").resize((new_w, new_h), Image.BICUBIC)
    canvas = Image.new("RGB", (target_w, target_h), background_color)
    canvas.paste(resized, ((target_w - new_w) // 2, (target_h - new_h) // 2))
    return canvas


def divide_to_patches(image: Image.Image, patch_size: int) -> list[Image.Image]:
    """Square crops of ``patch_size`` in raster order (row by row), as the model lays tiles out."""
    width, height = image.size
    return [
        image.crop((left, top, left + patch_size, top + patch_size))
        for top in range(0, height, patch_size)
        for left in range(0, width, patch_size)
    ]


def get_anyres_image_grid_shape(
    image_size: tuple[int, int], grid_pinpoints: Any, patch_size: int
) -> tuple[int, int]:
    """``(tiles_wide, tiles_high)`` an image of ``(width, height)`` is cut into; ``patch_size`` = tile side."""
    resolutions = parse_grid_pinpoints(grid_pinpoints, patch_size)
    width, height = select_best_resolution(image_size, resolutions)
    return width // patch_size, height // patch_size


def _check_tileable(resolutions: list[tuple[int, int]], tile_size: int) -> None:
    bad = [r for r in resolutions if r[0] % tile_size or r[1] % tile_size]
    if bad:
        raise ValueError(f"image_grid_pinpoints {bad} are not multiples of the tile size {tile_size}")


def process_anyres_image(image: Image.Image, processor, grid_pinpoints: Any, tile_size: int) -> torch.Tensor:
    """``[1 + n_tiles, C, tile, tile]``: the whole image resized to one tile, then its tiles."""
    image = _as_pil(image, "image")
    resolutions = parse_grid_pinpoints(grid_pinpoints, tile_size)
    _check_tileable(resolutions, tile_size)
    best = select_best_resolution(image.size, resolutions)
    tiles = divide_to_patches(resize_and_pad_image(image, best), tile_size)
    base = image.resize((tile_size, tile_size), Image.BICUBIC)
    size = {"height": tile_size, "width": tile_size}
    return _pixel_values(processor, [base, *tiles], size=size)


def unpad_image(tensor: torch.Tensor, original_size: tuple[int, int]) -> torch.Tensor:
    """Crop the padding ``resize_and_pad_image`` added from a ``[C, H, W]`` feature map.

    ``original_size`` is the image's ``(width, height)`` before padding.
    """
    orig_w, orig_h = original_size
    cur_h, cur_w = tensor.shape[-2:]
    if orig_w / orig_h > cur_w / cur_h:  # padded top and bottom
        new_h = int(orig_h * (cur_w / orig_w))
        pad = (cur_h - new_h) // 2
        return tensor[..., pad : cur_h - pad, :]
    new_w = int(orig_w * (cur_h / orig_h))
    pad = (cur_w - new_w) // 2
    return tensor[..., :, pad : cur_w - pad]


# ============================================================== process_images
def _as_pil(image: Any, where: str) -> Image.Image:
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim in (2, 3):
        return Image.fromarray(image).convert("RGB")
    raise ValueError(f"{where}: expected a PIL image or uint8 HxW(xC) array, got {type(image).__name__}")


def _pixel_values(processor, images: list[Image.Image], **overrides) -> torch.Tensor | list[torch.Tensor]:
    return processor(images=images, return_tensors="pt", **overrides)["pixel_values"]


def anyres_tile_size(image_processor, model_cfg) -> int:
    """Tile side: the processor's fixed size if it has one, else ``model_cfg.image_tile_size`` or 448."""
    size = getattr(image_processor, "size", None)
    if isinstance(size, dict):
        for key in ("height", "shortest_edge"):
            if size.get(key):
                return int(size[key])
    return int(getattr(model_cfg, "image_tile_size", None) or DEFAULT_TILE_SIZE)


def _stack_if_same_shape(tensors: list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
    if all(t.shape == tensors[0].shape for t in tensors):
        return torch.stack(tensors, dim=0)
    return tensors


def process_images(images: Sequence[Any], image_processor, model_cfg) -> torch.Tensor | list[torch.Tensor]:
    """Pixel values for a list of images according to ``model_cfg.image_aspect_ratio``.

    ``"pad"``: pad to square with the processor's mean colour, then process.
    ``"anyres"`` / ``"anyres_max_N"``: ``[1 + tiles, C, t, t]`` per image (see ``process_anyres_image``).
    Anything else (``None``, ``"native"``, ``"square"``, ...): the processor as configured
    (native resolution for the OV-Encoder processor). A tensor when every result has the
    same shape, else a list, as in LLaVA.
    """
    if isinstance(images, (Image.Image, np.ndarray)):
        images = [images]
    images = [_as_pil(image, f"images[{i}]") for i, image in enumerate(images)]
    if not images:
        raise ValueError("process_images got an empty list of images")
    aspect = getattr(model_cfg, "image_aspect_ratio", None)
    if aspect == "pad":
        color = tuple(int(x * 255) for x in image_processor.image_mean)  # LLaVA truncates
        squared = [expand2square(image, color) for image in images]
        return _stack_if_same_shape([_pixel_values(image_processor, [image])[0] for image in squared])
    if _is_anyres(aspect):
        pinpoints = getattr(model_cfg, "image_grid_pinpoints", None)
        if pinpoints is None:
            raise ValueError(f"image_aspect_ratio={aspect!r} needs model_cfg.image_grid_pinpoints")
        tile = anyres_tile_size(image_processor, model_cfg)
        return _stack_if_same_shape(
            [process_anyres_image(image, image_processor, pinpoints, tile) for image in images]
        )
    return _pixel_values(image_processor, images)


# ============================================================== misc
def get_model_name_from_path(model_path: str | os.PathLike) -> str:
    """``.../llava-qwen`` -> ``llava-qwen``; ``.../run/checkpoint-500`` -> ``run_checkpoint-500``."""
    parts = [p for p in re.split(r"[\\/]+", str(model_path).strip()) if p]
    if not parts:
        raise ValueError(f"cannot derive a model name from an empty path {model_path!r}")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stop a row once its generated text ends with (token ids) or contains (decoded tail) a keyword.

    ``input_ids`` is the prompt as it appears at the start of ``generate``'s output: pass the
    prompt ids when generating from ``input_ids``; pass ``None`` when generating from
    ``inputs_embeds`` (LLaVA), whose output holds only new tokens.
    """

    def __init__(self, keywords: Sequence[str], tokenizer, input_ids: torch.Tensor | None):
        if isinstance(keywords, str):
            keywords = [keywords]
        if not keywords or any(not isinstance(k, str) or not k for k in keywords):
            raise ValueError(f"keywords must be non-empty strings, got {keywords!r}")
        self.keywords = list(keywords)
        self.tokenizer = tokenizer
        self.keyword_ids = [
            torch.tensor(tokenizer(k, add_special_tokens=False).input_ids) for k in self.keywords
        ]
        self.start_len = 0 if input_ids is None else int(input_ids.shape[-1])
        self.tail_tokens = max(len(ids) for ids in self.keyword_ids) + 2

    def _ends_with_keyword_ids(self, generated: torch.Tensor) -> torch.Tensor:
        hit = torch.zeros(generated.shape[0], dtype=torch.bool, device=generated.device)
        for ids in self.keyword_ids:
            if 0 < ids.numel() <= generated.shape[1]:
                hit |= (generated[:, -ids.numel() :] == ids.to(generated.device)).all(dim=1)
        return hit

    def _tail_contains_keyword(self, generated: torch.Tensor) -> torch.Tensor:
        tails = self.tokenizer.batch_decode(generated[:, -self.tail_tokens :], skip_special_tokens=False)
        return torch.tensor(
            [any(k in tail for k in self.keywords) for tail in tails], device=generated.device
        )

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None = None, **kwargs
    ) -> torch.BoolTensor:
        generated = input_ids[:, self.start_len :]
        if generated.shape[1] == 0:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return self._ends_with_keyword_ids(generated) | self._tail_contains_keyword(generated)


__all__ = [
    "KeywordsStoppingCriteria",
    "anyres_tile_size",
    "bos_prefix",
    "divide_to_patches",
    "expand2square",
    "get_anyres_image_grid_shape",
    "get_model_name_from_path",
    "parse_anyres_max",
    "parse_grid_pinpoints",
    "process_anyres_image",
    "process_images",
    "resize_and_pad_image",
    "select_best_resolution",
    "tokenizer_image_token",
    "unpad_image",
]
