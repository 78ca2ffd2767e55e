"""Image / video-frame preprocessing for the OV-Encoder (numpy + PIL only, no torchvision).

Images keep their native resolution: each side is rounded to a multiple of the patch
size, and the area is kept inside ``[min_pixels, max_pixels]`` while preserving the
aspect ratio (or a fixed ``size`` is used). Pixels are converted to RGB, resized with
bicubic filtering, rescaled to [0, 1] and normalised with the CLIP mean / std.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def fit_to_patch_grid(
    height: int, width: int, patch_size: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """Target ``(height, width)``: multiples of ``patch_size``, area within the pixel budget.

    Rounds each side to the nearest multiple of the patch size, then scales both sides by
    the same factor when the area leaves ``[min_pixels, max_pixels]``.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image has an empty side: height={height}, width={width}")
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels ({min_pixels}) must not exceed max_pixels ({max_pixels})")
    if max_pixels < patch_size * patch_size:
        raise ValueError(f"max_pixels ({max_pixels}) is smaller than one {patch_size}x{patch_size} patch")

    def snap(value: float, rounding) -> int:
        return max(patch_size, int(rounding(value / patch_size)) * patch_size)

    new_h, new_w = snap(height, round), snap(width, round)
    if new_h * new_w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        new_h, new_w = snap(height / scale, math.floor), snap(width / scale, math.floor)
    elif new_h * new_w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        new_h, new_w = snap(height * scale, math.ceil), snap(width * scale, math.ceil)
    return new_h, new_w


def to_rgb_array(image: Any, where: str = "image") -> np.ndarray:
    """PIL image / numpy / torch array (HWC or CHW, uint8 or float in [0, 1]) -> HWC RGB array."""
    if isinstance(image, Image.Image):
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    if hasattr(image, "detach") and hasattr(image, "cpu"):  # torch tensor, without importing torch here
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise ValueError(f"{where}: expected a PIL image, numpy array or tensor, got {type(image).__name__}")
    array = image
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"{where}: expected an HxW, HxWxC or CxHxW array, got shape {array.shape}")
    if array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        array = array.transpose(1, 2, 0)  # CHW -> HWC
    channels = array.shape[-1]
    if channels not in (1, 3, 4):
        raise ValueError(f"{where}: expected 1, 3 or 4 channels, got shape {image.shape}")
    if channels == 1:
        array = np.repeat(array, 3, axis=-1)
    elif channels == 4:
        array = array[..., :3]
    if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{where}: unsupported dtype {array.dtype} (use uint8 or float in [0, 1])")
    return array


def resize_bicubic(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bicubic resize of an HWC array with PIL; float arrays are resized per channel in float32."""
    if array.shape[:2] == (height, width):
        return array
    if array.dtype == np.uint8:
        return np.asarray(Image.fromarray(array).resize((width, height), Image.BICUBIC))
    channels = [
        np.asarray(Image.fromarray(array[..., c].astype(np.float32), mode="F").resize((width, height), Image.BICUBIC))
        for c in range(array.shape[-1])
    ]
    return np.stack(channels, axis=-1)


class OneVisionEncoderImageProcessor(BaseImageProcessor):
    r"""Preprocessor for [`OneVisionEncoderModel`].

    Args:
        do_resize: resize images (to ``size`` if given, else to the native-resolution grid).
        size: optional fixed ``{"height": H, "width": W}`` (multiples of ``patch_size``).
        min_pixels / max_pixels: area budget for native-resolution resizing (``min_pixels``
            defaults to one patch).
        patch_size: images are resized so both sides are multiples of it.
        do_rescale / rescale_factor: map uint8 pixels to [0, 1].
        do_normalize / image_mean / image_std: per-channel normalisation (CLIP by default).
        do_convert_rgb: convert inputs to 3-channel RGB.

    ``__call__(images=..., videos=...)`` returns a ``BatchFeature`` with ``pixel_values``
    (``[B, C, H, W]`` when every image gets the same size, else a list of ``[C, H, W]``)
    and ``image_sizes`` (each input's original ``(width, height)``: the size convention of
    ``llava.model.image_processing_llava``, which the model reads, so this value can be forwarded as is), and for videos
    ``pixel_values_videos`` (``[B, C, T, H, W]``, or a list of ``[C, T, H, W]``); all the
    frames of one video share one size, chosen from the first frame.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        do_resize: bool = True,
        size: dict[str, int] | None = None,
        min_pixels: int | None = None,
        max_pixels: int = 28 * 28 * 1280,
        patch_size: int = 14,
        resample: int = Image.BICUBIC,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        do_convert_rgb: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if size is not None and not {"height", "width"} <= set(size):
            raise ValueError(f"size must be a dict with 'height' and 'width', got {size}")
        self.do_resize = do_resize
        self.size = dict(size) if size is not None else None
        self.min_pixels = min_pixels if min_pixels is not None else patch_size * patch_size
        self.max_pixels = max_pixels
        self.patch_size = patch_size
        self.resample = resample
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.do_normalize = do_normalize
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.do_convert_rgb = do_convert_rgb

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """Size an input of ``(height, width)`` is resized to."""
        if not self.do_resize:
            return height, width
        if self.size is not None:
            return int(self.size["height"]), int(self.size["width"])
        return fit_to_patch_grid(height, width, self.patch_size, self.min_pixels, self.max_pixels)

    def _process_frame(self, image: Any, target: tuple[int, int] | None, where: str) -> np.ndarray:
        if isinstance(image, Image.Image):  # resized by PIL first: no full-size array copies of a big image
            image = image if image.mode == "RGB" else image.convert("RGB")
            height, width = target if target is not None else self.target_size(image.height, image.width)
            if image.size != (width, height):
                image = image.resize((width, height), Image.BICUBIC)
        array = to_rgb_array(image, where)
        is_uint8 = array.dtype == np.uint8
        height, width = target if target is not None else self.target_size(*array.shape[:2])
        array = resize_bicubic(array, height, width).astype(np.float32)
        if self.do_rescale and is_uint8:  # float input is taken to be in [0, 1] already
            array = array * self.rescale_factor
        if self.do_normalize:
            array = (array - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
        if array.shape[0] % self.patch_size or array.shape[1] % self.patch_size:
            raise ValueError(
                f"{where}: size {array.shape[:2]} is not a multiple of patch_size={self.patch_size}; "
                "enable do_resize or choose another size"
            )
        return array.transpose(2, 0, 1)  # CHW

    def preprocess(
        self,
        images: Any = None,
        videos: Any = None,
        return_tensors: str | None = None,
        **overrides,
    ) -> BatchFeature:
        if overrides:
            unknown = [key for key in overrides if not hasattr(self, key)]
            if unknown:
                raise ValueError(f"unknown preprocessing options: {unknown}")
            processor = self.__class__(**{**self.to_dict(), **overrides})
            return processor.preprocess(images=images, videos=videos, return_tensors=return_tensors)
        if images is None and videos is None:
            raise ValueError("pass images=..., videos=... or both")
        data: dict[str, Any] = {}
        if images is not None:
            images = images if isinstance(images, (list, tuple)) else [images]
            processed = [self._process_frame(img, None, f"images[{i}]") for i, img in enumerate(images)]
            data["pixel_values"] = _stack_or_list(processed)
            data["image_sizes"] = np.asarray([_original_size(img) for img in images], dtype=np.int64)
        if videos is not None:
            videos = videos if _is_video_batch(videos) else [videos]
            clips = []
            for v, frames in enumerate(videos):
                frames = list(frames)
                if not frames:
                    raise ValueError(f"videos[{v}] has no frames")
                first = frames[0]
                shape = (first.height, first.width) if isinstance(first, Image.Image) else None
                target = self.target_size(*(shape or to_rgb_array(first, f"videos[{v}][0]").shape[:2]))
                clip = [self._process_frame(f, target, f"videos[{v}][{t}]") for t, f in enumerate(frames)]
                clips.append(np.stack(clip, axis=1))  # [C, T, H, W]
            data["pixel_values_videos"] = _stack_or_list(clips)
        feature = BatchFeature(data={k: v for k, v in data.items() if not isinstance(v, list)})
        if return_tensors is not None:
            feature = feature.convert_to_tensors(return_tensors)
        for key, value in data.items():  # ragged sizes stay as per-sample lists
            if isinstance(value, list):
                feature[key] = _to_tensors(value, return_tensors)
        return feature

    def __call__(self, images: Any = None, videos: Any = None, **kwargs) -> BatchFeature:
        return self.preprocess(images=images, videos=videos, **kwargs)


def _original_size(image: Any) -> tuple[int, int]:
    """``(width, height)``, as PIL's ``image.size`` and LLaVA-NeXT's callers give it."""
    if isinstance(image, Image.Image):
        return image.size
    height, width = to_rgb_array(image).shape[:2]
    return width, height


def _is_video_batch(videos: Any) -> bool:
    """A batch of videos is a list whose items are frame lists or ``[T, H, W, C]`` arrays."""
    if isinstance(videos, np.ndarray):
        return videos.ndim == 5
    if isinstance(videos, (list, tuple)) and videos:
        first = videos[0]
        return isinstance(first, (list, tuple)) or (isinstance(first, np.ndarray) and first.ndim == 4)
    return False


def _stack_or_list(arrays: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    if len({a.shape for a in arrays}) == 1:
        return np.stack(arrays)
    return arrays


def _to_tensors(arrays: list[np.ndarray], return_tensors: str | None):
    if return_tensors in ("pt", "torch"):
        import torch

        return [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
    return arrays


__all__ = ["CLIP_MEAN", "CLIP_STD", "OneVisionEncoderImageProcessor", "fit_to_patch_grid"]
