"""Videos -> LLaVA-OV visual inputs, in the two modes a checkpoint is trained with.

* ``frames``: ``frames_upbound`` uniformly sampled frames (LLaVA-NeXT's ``fps`` / ``force_sample``
  rules, ``video_utils_llava``), one ``video`` entry ``[C, T, H, W]`` spread over the encoder's
  temporal RoPE grid;
* ``codec``: the codec reader (``cv_reader``, this project's Stage 1) picks the patches that carry
  motion and residual energy from ``sequence_length`` frames and packs them into
  ``keep_frames_equiv`` mosaics; one ``codec`` entry ``[C, N, S, S]`` with its ``[K, 3]``
  ``(t, h, w)`` positions.

With ``time_instruction`` (a model trained with ``--add_time_instruction``) a video read from a file also
gets LLaVA-NeXT's time instruction (its length and the sampled frames' times: the uniform frames', or the
``T`` frames the codec sampled its patches from), which the processor writes after its visual tokens.

The settings are saved in the checkpoint's ``processor_config.json`` (``video``), so every entry
point reads videos the way the model was trained. Self-contained (numpy, torch, PyAV through
``video_utils_llava``): the file travels inside checkpoint folders; the codec mode needs the codec
reader installed and says so when it is not.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

VIDEO_MODES = ("codec", "frames")
CODEC_READER_MISSING = (
    "codec-mode video needs this project's codec reader (the `cv_reader` package), which is not installed: "
    "install the llava-ov-encoder project (`pip install <its checkout>`), or read videos as uniform frames "
    "(processor.video_processor.mode = 'frames')"
)


@dataclasses.dataclass
class VisualEntry:
    """One model input: ``pixels`` of ``modality`` (``image`` / ``video`` / ``codec``), the source's
    ``(width, height)``, a codec input's ``[K, 3]`` positions, and the time instruction that follows a video's
    visual tokens (None: none)."""

    pixels: torch.Tensor
    modality: str
    size: tuple[int, int]
    positions: torch.Tensor | None = None
    instruction: str | None = None


class LlavaOVVideoProcessor:
    """Reads a video (a file path, or its frames) into a :class:`VisualEntry` with the saved settings.

    ``mode`` is ``frames`` or ``codec``; ``frames_upbound`` / ``fps`` / ``force_sample`` are the frames
    mode's sampling; ``codec`` holds the codec reader's ``Stage1Params`` fields (``sequence_length``,
    ``square_size``, ``keep_frames_equiv``, ``patch_size``, ...), None for its LLaVA defaults;
    ``time_instruction``: a video file's entry carries the time instruction (module docstring).
    """

    def __init__(self, image_processor, mode: str = "frames", frames_upbound: int = 16, fps: float | None = None,
                 force_sample: bool = False, codec: dict | None = None, rope_temporal_size: int | None = None,
                 time_instruction: bool = False):
        if mode not in VIDEO_MODES:
            raise ValueError(f"video mode must be one of {VIDEO_MODES}, got {mode!r}")
        if not isinstance(frames_upbound, int) or frames_upbound < 1:
            raise ValueError(f"frames_upbound must be a positive int, got {frames_upbound!r}")
        self.image_processor = image_processor
        self.mode, self.frames_upbound, self.fps, self.force_sample = mode, frames_upbound, fps, force_sample
        self.codec = dict(codec or {})
        self.rope_temporal_size = rope_temporal_size
        self.time_instruction = bool(time_instruction)

    def to_dict(self) -> dict[str, Any]:
        """The settings as saved in ``processor_config.json``."""
        return {"mode": self.mode, "frames_upbound": self.frames_upbound, "fps": self.fps,
                "force_sample": self.force_sample, "codec": dict(self.codec),
                "rope_temporal_size": self.rope_temporal_size, "time_instruction": self.time_instruction}

    def __call__(self, video: Any, mode: str | None = None) -> VisualEntry:
        """``video``: a path (read in ``mode``, default the saved one) or a list / ``[T, H, W, 3]`` array of frames."""
        if isinstance(video, (str, os.PathLike)):
            # PyAV, only when a file is read
            from .video_utils_llava import read_video_frames, time_instruction

            mode = mode or self.mode
            if mode == "codec":
                codec = self.codec_patches(video)
                entry = self.codec_entry(codec, where=str(video))
                if self.time_instruction:
                    entry.instruction = time_instruction(*self.codec_timing(video, codec))
                return entry
            clip = read_video_frames(video, self.frames_upbound, self.fps, self.force_sample)
            entry = self.frames_entry(clip.frames)
            if self.time_instruction:
                entry.instruction = time_instruction(clip.frame_times, clip.duration)
            return entry
        return self.frames_entry(video)

    def frames_entry(self, frames: Sequence[Any] | np.ndarray) -> VisualEntry:
        """One video given as its frames (PIL images or ``HxWx3`` uint8 arrays), all resized like the first."""
        frames = list(frames)
        if not frames:
            raise ValueError("a video needs at least one frame, got none")
        grid_t = self.rope_temporal_size
        if grid_t and len(frames) > grid_t:
            raise ValueError(f"a video of {len(frames)} frames: the encoder's temporal grid holds {grid_t}")
        pixels = self.image_processor(videos=[frames], return_tensors="pt")["pixel_values_videos"][0]
        first = frames[0]
        size = first.size if isinstance(first, Image.Image) else (int(first.shape[1]), int(first.shape[0]))
        return VisualEntry(pixels, "video", size)

    def codec_patches(self, path: str | os.PathLike):
        """The codec reader's patches of the video at ``path`` with the saved codec settings."""
        try:
            import cv_reader
        except ImportError:
            raise ImportError(CODEC_READER_MISSING) from None
        params = cv_reader.LLAVA_CODEC.replace(**self.codec) if self.codec else cv_reader.LLAVA_CODEC
        return cv_reader.codec_patchify(path, params)

    @staticmethod
    def codec_timing(path: str | os.PathLike, codec) -> tuple[np.ndarray, float]:
        """``(seconds of the T frames the codec sampled, the video's duration)``: frame ids / the stream's frame
        rate (the video is probed again: demuxed, not decoded)."""
        import cv_reader

        if codec.frame_ids is None:
            raise ValueError(f"{path}: these codec inputs carry no frame ids (packs record no frame times)")
        index = cv_reader.probe(path)
        if not index.fps > 0:
            raise cv_reader.VideoReadError(path, "the video stream declares no frame rate")
        return np.asarray(codec.frame_ids, dtype=np.float64) / index.fps, index.num_frames / index.fps

    def codec_entry(self, codec, where: str = "codec input") -> VisualEntry:
        """Codec mosaics ``[N, S, S, 3]`` + positions ``[K, 3]`` (any object with ``mosaics`` and ``positions``)."""
        mosaics, positions = np.asarray(codec.mosaics), torch.as_tensor(np.asarray(codec.positions)).long()
        grid_t = self.rope_temporal_size
        if grid_t and len(positions) and int(positions[:, 0].max()) >= grid_t:
            raise ValueError(
                f"{where}: positions t must be < {grid_t}, the encoder's temporal RoPE grid, but they span "
                f"{int(positions[:, 0].max()) + 1} frames"
            )
        pixels = self.image_processor(videos=[list(mosaics)], do_resize=False, return_tensors="pt")
        side = int(mosaics.shape[1])
        return VisualEntry(pixels["pixel_values_videos"][0], "codec", (side, side), positions)


__all__ = ["CODEC_READER_MISSING", "VIDEO_MODES", "LlavaOVVideoProcessor", "VisualEntry"]
