"""Media -> model inputs: the one module that turns images, frames, videos and codec packs into
exactly what ``model.generate()`` / ``model(...)`` take.

Every entry point calls it — the chat CLI, the demo, the training dataset, the lmms-eval model
and the server — so a given picture or video reaches the model the same way everywhere.

=========================================  ========  ==================================================
media                                      modality  one ``images`` entry
=========================================  ========  ==================================================
PIL image, image path, uint8 HxWx3 array   image     ``[C, H, W]`` native size, or ``[1 + tiles, C, t, t]``
                                                     with ``image_aspect_ratio`` ``anyres`` (its pinpoints)
list of frames (PIL / arrays; lmms-eval)   video     ``[C, T, H, W]``
video path, video mode ``frames``          video     ``[C, T, H, W]``, ``frames_upbound`` uniform frames
video path, video mode ``codec``           codec     ``[C, N, S, S]`` mosaics + ``[K, 3]`` ``(t, h, w)``
                                                     positions, computed online by ``cv_reader``
codec pack (mosaics + positions_thw.npy)   codec     the same, read from a Stage-2 pack at its own canvas
``CodecPatches``                           codec     the same
N images as one clip (``clip()``)          codec     ``[C, N, H, W]`` at uniform ``t`` (upstream's 8-image records)
=========================================  ========  ==================================================

Every entry takes one ``<image>`` placeholder, except ``codec`` entries, which take one per
mosaic (``N``), as Stage-2 records and the upstream code lay them out:
``VisualInputs.placeholder_text()`` is the placeholder text a prompt needs.

Video and codec entries keep the image processor's ``pixel_values_videos`` layout end to end
(it is also the encoder's). ``image_sizes`` are ``(width, height)``, the convention stated in
``llava.model.image_processing_llava``. Videos encoded here use the LLaVA codec configuration (``cv_reader.LLAVA_CODEC``)
unless :class:`VideoOptions` says otherwise; a Stage-2 pack is data, read at its own canvas, frames
and mosaic count whatever the configuration (``codec_pack``), and every codec input is checked
against the encoder: its patch size and its temporal RoPE grid. ``token_count`` says how many
tokens inputs take once spliced, from their shapes alone (the trainer's sample lengths). Image
files are opened by ``cv_reader.read_image``
(regular files only, a pixel limit checked before decoding, EXIF orientation applied,
high-bit-depth samples scaled to 8 bits). Unusable media raise a :class:`~cv_reader.MediaError`
subclass naming the file and the problem.

    processor = VisualProcessor(image_processor, model.config, video_mode="codec")
    visual = processor([pil_image, "clip.mp4"])               # one sample, two placeholders
    batch = prompt_batch(model, tokenizer, [(ids_a, visual_a), (ids_b, visual_b)])   # llava.inference.generation
    model.generate(**batch, max_new_tokens=64)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cv_reader import (
    LLAVA_CODEC,
    CodecInputError,
    CodecPatches,
    ImageReadError,
    MediaError,
    PackGeometry,
    Stage1Params,
    VideoReadError,
    check_pack,
    read_image,
    read_image_size,
    read_pack,
    to_rgb8,
)
from PIL import Image

from ..constants import DEFAULT_IMAGE_TOKEN
from ..model.image_processing_llava import process_images
from ..model.modeling_llava import placeholder_count
from ..model.modeling_llava_vision import grid_positions, temporal_slots
from ..model.processing_llava import VisualLayout
from .video import VideoFrames, codec_timing, load_codec_inputs, load_video_frames, time_instruction

VIDEO_MODES = ("codec", "frames")
_IMAGE_SUFFIXES = frozenset(Image.registered_extensions())


@dataclass
class VisualInputs:
    """Model-ready visual inputs: one entry per ``<image>`` placeholder, in placeholder order.

    ``model_kwargs()`` gives the ``images`` / ``modalities`` / ``image_sizes`` /
    ``patch_positions`` keyword arguments of ``generate()`` and ``forward()``. ``time_instructions``: the
    time instruction of each video file read with ``VideoOptions.time_instruction`` (text, not model input).
    """

    images: list[torch.Tensor] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height)
    patch_positions: list[torch.Tensor | None] = field(default_factory=list)
    time_instructions: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def placeholder_counts(self) -> list[int]:
        """``<image>`` placeholders each entry takes (a codec input: one per mosaic)."""
        return [placeholder_count(entry, modality) for entry, modality in zip(self.images, self.modalities)]

    @property
    def num_placeholders(self) -> int:
        return sum(self.placeholder_counts)

    def placeholder_tokens(self, layout: VisualLayout) -> list[int]:
        """Visual tokens of each placeholder, in order (``layout``: the model's, ``VisualLayout.from_config``)."""
        return [n for entry, modality, size, positions in zip(self.images, self.modalities, self.image_sizes,
                                                              self.patch_positions)
                for n in layout.placeholder_tokens(tuple(entry.shape), modality, size, positions)]

    def placeholder_text(self, separator: str = "\n") -> str:
        """The ``<image>`` placeholders these inputs need in a prompt, e.g. ``"<image>\\n<image>"``."""
        return separator.join([DEFAULT_IMAGE_TOKEN] * self.num_placeholders)

    def prompt_lead(self) -> str:
        """What a user turn starts with in front of the user's words: the placeholders and a newline, then any
        time instruction and a blank line, the text training writes for a record whose turn is
        ``"<image>\\nQuestion"`` (``llava.train.data.add_time_instruction``, upstream's layout)."""
        if not len(self):
            return ""
        lead = self.placeholder_text() + "\n"
        return lead + "".join(f"{note}\n\n" for note in self.time_instructions)

    def __add__(self, other: VisualInputs) -> VisualInputs:
        return VisualInputs.concat([self, other])

    @classmethod
    def concat(cls, parts: Iterable[VisualInputs]) -> VisualInputs:
        """The inputs of several samples as one batch (the model takes one flat list)."""
        out = cls()
        for part in parts:
            out.images += part.images
            out.modalities += part.modalities
            out.image_sizes += part.image_sizes
            out.patch_positions += part.patch_positions
            out.time_instructions += part.time_instructions
        return out

    def to(self, device: torch.device | str) -> VisualInputs:
        """The same inputs on ``device`` (the tower casts pixels to its own dtype)."""
        return replace(
            self,
            images=[t.to(device) for t in self.images],
            patch_positions=[None if p is None else p.to(device) for p in self.patch_positions],
        )

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``generate()`` / ``forward()``; empty for a text-only sample."""
        if not self.images:
            return {}
        return dict(
            images=list(self.images),
            modalities=list(self.modalities),
            image_sizes=list(self.image_sizes),
            patch_positions=list(self.patch_positions),
        )


@dataclass(frozen=True)
class VideoOptions:
    """How a video file becomes model input.

    ``mode``: ``codec`` (codec patches with the ``codec`` configuration, computed online) or
    ``frames`` (uniform frames, LLaVA-NeXT's ``frames_upbound`` / ``fps`` / ``force_sample``).
    ``time_instruction``: a video file's inputs carry LLaVA-NeXT's time instruction (``--add_time_instruction``;
    ``VisualInputs.time_instructions``).
    """

    mode: str = "codec"
    frames_upbound: int = 16
    fps: float | None = None
    force_sample: bool = False
    codec: Stage1Params = LLAVA_CODEC
    time_instruction: bool = False

    def __post_init__(self) -> None:
        if self.mode not in VIDEO_MODES:
            raise ValueError(f"video mode must be one of {VIDEO_MODES}, got {self.mode!r}")


def codec_options(frames: int, images: int, canvas: int, patch_size: int) -> Stage1Params:
    """The LLaVA codec configuration with ``frames`` sampled (T), ``images`` mosaics (N) of ``canvas``
    pixels, cut in the encoder's ``patch_size`` (the trainer, the chat CLI and the predictor agree)."""
    return LLAVA_CODEC.replace(sequence_length=frames, keep_frames_equiv=images, square_size=canvas,
                               patch_size=patch_size)


def is_image_path(path: str | os.PathLike) -> bool:
    """True when the file name has an image suffix PIL knows (otherwise it is read as a video)."""
    return Path(path).suffix.lower() in _IMAGE_SUFFIXES


class VisualProcessor:
    """Turns media into :class:`VisualInputs` with a checkpoint's image settings.

    ``image_processor`` and ``model_config`` come from ``load_pretrained_model``: the config's
    ``image_aspect_ratio`` / ``image_grid_pinpoints`` decide native resolution vs ``anyres``.
    ``video`` (or the same fields as keywords: ``video_mode``, ``frames_upbound``, ``fps``,
    ``force_sample``, ``codec``) decides how video files are read.
    """

    def __init__(
        self, image_processor, model_config, video: VideoOptions | None = None, **video_options: Any
    ) -> None:
        if video is not None and video_options:
            raise ValueError("pass either video=VideoOptions(...) or video option keywords, not both")
        if "video_mode" in video_options:
            video_options["mode"] = video_options.pop("video_mode")
        self.image_processor = image_processor
        self.config = model_config
        self.layout = VisualLayout.from_config(model_config, image_processor.patch_size)
        self.video_options = video or VideoOptions(**video_options)

    # ------------------------------------------------------------------ dispatch
    def __call__(self, visuals: Any) -> VisualInputs:
        """Inputs for one visual or a list of them (one placeholder each), as lmms-eval hands them.

        A PIL image / uint8 ``HxWx3`` array is an image; a path is an image when its suffix is
        an image suffix, else a video; a list / tuple / ``[T, H, W, 3]`` array / ``VideoFrames``
        inside the list is one video's frames; a ``CodecPatches`` or a dict with ``mosaics``
        (or ``image``) and ``positions_thw`` is a codec input. ``None`` or ``[]`` gives no inputs.
        """
        if visuals is None:
            return VisualInputs()
        if not isinstance(visuals, (list, tuple)):
            visuals = [visuals]
        return VisualInputs.concat(self._one(visual, index) for index, visual in enumerate(visuals))

    def _one(self, visual: Any, index: int) -> VisualInputs:
        if isinstance(visual, Image.Image):
            return self.image(visual)
        if isinstance(visual, (str, os.PathLike)):
            return self.image(visual) if is_image_path(visual) else self.video(visual)
        if isinstance(visual, CodecPatches):
            return self.codec(visual)
        if isinstance(visual, dict) and "positions_thw" in visual:
            return self.codec_pack(visual.get("mosaics", visual.get("image")), visual["positions_thw"])
        if isinstance(visual, VideoFrames) or isinstance(visual, (list, tuple)):
            return self.frames(visual)
        if isinstance(visual, np.ndarray) and visual.ndim == 4:
            return self.frames(visual)
        if isinstance(visual, np.ndarray) and visual.ndim in (2, 3):
            return self.image(visual)
        raise ValueError(
            f"visual {index}: unsupported {type(visual).__name__}; expected a PIL image, an image or "
            "video path, a list of frames, CodecPatches, or a dict with mosaics + positions_thw"
        )

    # ------------------------------------------------------------------ kinds
    def image(self, image: Image.Image | np.ndarray | str | os.PathLike) -> VisualInputs:
        """One image with the checkpoint's image settings (native resolution or ``anyres`` tiles)."""
        if isinstance(image, (str, os.PathLike)):
            image = read_image(image)
        elif isinstance(image, np.ndarray):
            image = to_rgb8(Image.fromarray(image))
        else:
            image = to_rgb8(image)
        pixels = process_images([image], self.image_processor, self.config)[0]
        return VisualInputs([pixels], ["image"], [image.size], [None])

    def frames(self, frames: Sequence[Any] | np.ndarray | VideoFrames) -> VisualInputs:
        """One video given as its frames (PIL images or ``HxWx3`` arrays), all resized like the first."""
        if isinstance(frames, VideoFrames):
            frames = frames.frames
        frames = list(frames)
        if not frames:
            raise ValueError("a video needs at least one frame, got none")
        pixels = self.image_processor(videos=[frames], return_tensors="pt")["pixel_values_videos"][0]
        first = frames[0]
        size = first.size if isinstance(first, Image.Image) else (int(first.shape[1]), int(first.shape[0]))
        return VisualInputs([pixels], ["video"], [size], [None])

    def clip(self, frames: Sequence[Any]) -> VisualInputs:
        """``N`` images that stand for one video across ``N`` placeholders, encoded together.

        This is how upstream reads a record with several images and no ``positions_thw`` (its
        8-frame video records): frame ``i`` at time slot ``linspace(0, T - 1, N)[i]`` of the
        codec configuration's ``T`` (8 frames of T 64: ``t = 0, 9, ..., 63``), every patch of it.
        """
        frames = [read_image(f) if isinstance(f, (str, os.PathLike)) else f for f in frames]
        if not frames:
            raise ValueError("a clip needs at least one frame, got none")
        pixels = self.image_processor(videos=[frames], return_tensors="pt")["pixel_values_videos"][0]
        count, height, width = pixels.shape[1:]
        patch = self.image_processor.patch_size
        positions = grid_positions(count, height // patch, width // patch)
        positions[:, 0] = temporal_slots(count, self.video_options.codec.sequence_length)[positions[:, 0]]
        first = frames[0]
        size = first.size if isinstance(first, Image.Image) else (int(first.shape[1]), int(first.shape[0]))
        return VisualInputs([pixels], ["codec"], [size], [positions])

    def video(self, path: str | os.PathLike, mode: str | None = None, **options: Any) -> VisualInputs:
        """One video file, as uniform ``frames`` or online ``codec`` patches (default: the options' mode); with
        ``time_instruction``, its time instruction too (the uniform frames' times, or the ``T`` frames' the codec
        sampled its patches from). ``options``: :class:`VideoOptions` fields for this video only
        (``frames_upbound``, ``fps``, ...; a request's own frame count)."""
        options = replace(self.video_options, **({"mode": mode} if mode is not None else {}), **options)
        if options.mode == "frames":
            clip = load_video_frames(path, options.frames_upbound, options.fps, options.force_sample)
            inputs, timing = self.frames(clip), clip.timing
        else:
            self._check_codec_patch()
            codec = load_codec_inputs(path, params=options.codec)
            inputs = self.codec(codec, where=str(path))
            timing = codec_timing(path, codec) if options.time_instruction else None
        if options.time_instruction:
            inputs.time_instructions.append(time_instruction(timing))
        return inputs

    def codec(self, codec: CodecPatches, where: str = "codec input") -> VisualInputs:
        """Codec mosaics + positions (computed or read) as one ``codec`` entry.

        Checked against the encoder (``where`` names the input in errors): the mosaics are cut in its
        patch size (:func:`cv_reader.pack.check_pack`), and every ``t`` lies on its temporal RoPE grid
        (``rope_temporal_size`` slots). ``t`` is used as written (upstream's rule, the same for a pack
        and for the video encoded here at that ``T``), so a pack of more frames than the grid holds is
        refused here, naming the file, rather than failing in the encoder in the middle of a step.
        """
        check_pack(codec.mosaics, codec.positions, self.image_processor.patch_size, "zero", where)
        grid_t = self.temporal_grid()
        if grid_t is not None and len(codec.positions) and int(codec.positions[:, 0].max()) >= grid_t:
            span = int(codec.positions[:, 0].max()) + 1
            raise CodecInputError(
                where,
                f"positions t must be < {grid_t}, the encoder's temporal RoPE grid (rope_temporal_size), "
                f"but they span {span} frames: make the codec inputs with at most {grid_t} frames (Stage 1 "
                f"--sequence_length, --codec_frames)"
            )
        mosaics = list(codec.mosaics)
        processed = self.image_processor(videos=[mosaics], do_resize=False, return_tensors="pt")
        pixels = processed["pixel_values_videos"][0]
        side = int(codec.mosaics.shape[1])
        return VisualInputs([pixels], ["codec"], [(side, side)], [torch.as_tensor(codec.positions).long()])

    def temporal_grid(self) -> int | None:
        """The encoder's temporal RoPE grid (``rope_temporal_size``; None: unbounded or unknown)."""
        vision = getattr(self.config, "vision_config", None)
        if isinstance(vision, dict):
            size = vision.get("rope_temporal_size")
        else:
            size = getattr(vision, "rope_temporal_size", None)
        return int(size) if size else None

    def _check_codec_patch(self) -> None:
        codec_patch, encoder_patch = self.video_options.codec.patch_size, self.image_processor.patch_size
        if codec_patch != encoder_patch:
            raise ValueError(
                f"the codec configuration cuts {codec_patch}px patches but the encoder's are "
                f"{encoder_patch}px: set the codec patch_size to {encoder_patch} (and a square_size that is "
                "a multiple of it)"
            )

    def codec_pack(
        self, mosaic_paths: Sequence[str | os.PathLike], positions_path: str | os.PathLike
    ) -> VisualInputs:
        """A precomputed Stage-2 pack, read at its own canvas, frames and mosaic count (the codec options
        govern only videos encoded here) and checked against itself and the encoder (:meth:`codec`)."""
        pack = read_pack(mosaic_paths, positions_path, self.image_processor.patch_size)
        return self.codec(pack, where=str(positions_path))

    def codec_geometry(self, entry: torch.Tensor) -> PackGeometry:
        """The geometry of a ``codec`` entry ``[C, N, S, S]``: ``N`` mosaics of ``S`` px, encoder patches."""
        return PackGeometry(int(entry.shape[1]), int(entry.shape[-1]), int(self.image_processor.patch_size))

    # ------------------------------------------------------------------ lengths in tokens
    def token_count(self, visual: VisualInputs) -> int:
        """Tokens the model makes for all of ``visual``'s placeholders, from shapes (and a codec input's
        positions, for a merging projector) alone: nothing is encoded. The count is the processor's
        (``VisualLayout.tokens``, the one definition); ``tests/test_sample_lengths.py`` holds it equal to
        the model's for every kind of input and arrangement."""
        return sum(self.layout.tokens(tuple(entry.shape), modality, size, positions) for entry, modality, size, positions
                   in zip(visual.images, visual.modalities, visual.image_sizes, visual.patch_positions))

    def entry_tokens(
        self, shape: Sequence[int], modality: str, image_size: tuple[int, int] | None = None, positions=None
    ) -> int:
        """Tokens of one entry of ``shape`` (``VisualLayout.tokens``)."""
        return self.layout.tokens(shape, modality, image_size, positions)

    def image_shape(self, size: tuple[int, int]) -> tuple[int, ...]:
        """The shape of :meth:`image`'s entry for an image of ``size`` = ``(width, height)``, without its pixels."""
        return self.layout.image_shape(size, self.image_processor)


__all__ = [
    "VIDEO_MODES",
    "CodecInputError",
    "ImageReadError",
    "MediaError",
    "PackGeometry",
    "VideoOptions",
    "VideoReadError",
    "VisualInputs",
    "VisualProcessor",
    "codec_options",
    "is_image_path",
    "read_image",
    "read_image_size",
]
