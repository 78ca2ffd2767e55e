"""LLaVA's image arrangements on top of the OV-Encoder image processor: native resolution, ``pad``
(square) and ``anyres`` tiles (a base view, then the tiles of the best-fitting grid).

**The size convention** (stated here, once): an image size is PIL-style ``(width, height)``,
``image.size``, what LLaVA-NeXT's callers pass (``image_sizes=[img.size]``) and what the model
reads to unpad ``anyres`` images. Each ``image_grid_pinpoints`` pair is read as
``(width, height)`` too, and ``get_anyres_image_grid_shape`` returns
``(num_tiles_wide, num_tiles_high)``. Pixel tensors are ``[C, H, W]``.

Self-contained (torch, numpy, Pillow): the file travels inside checkpoint folders.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

DEFAULT_TILE_SIZE = 448
_GRID_RANGE = re.compile(r"\((\d+)x(\d+)\)")
_ANYRES_MAX = re.compile(r"^anyres_max_(\d+)$")


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


def is_anyres(image_aspect_ratio: str | None) -> bool:
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
    if is_anyres(aspect):
        pinpoints = getattr(model_cfg, "image_grid_pinpoints", None)
        if pinpoints is None:
            raise ValueError(f"image_aspect_ratio={aspect!r} needs model_cfg.image_grid_pinpoints")
        tile = anyres_tile_size(image_processor, model_cfg)
        return _stack_if_same_shape(
            [process_anyres_image(image, image_processor, pinpoints, tile) for image in images]
        )
    return _pixel_values(image_processor, images)


__all__ = [
    "anyres_tile_size",
    "divide_to_patches",
    "expand2square",
    "get_anyres_image_grid_shape",
    "is_anyres",
    "parse_anyres_max",
    "parse_grid_pinpoints",
    "process_anyres_image",
    "process_images",
    "resize_and_pad_image",
    "select_best_resolution",
    "unpad_image",
]
