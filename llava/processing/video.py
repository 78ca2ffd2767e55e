"""Video input for the model: a thin layer over the codec reader (``cv_reader``).

Everything video goes through one path:

* opening and probing a file: ``cv_reader.probe`` (codec, size, frame count, fps, keyframes);
* errors: ``cv_reader``'s hierarchy, whose base :class:`MediaError` the chat CLI, the
  dataset and the server catch; each error names the file and the problem;
* frame sampling: ``llava.model.video_utils_llava.sample_frame_indices`` (LLaVA-NeXT's ``frames_upbound`` /
  ``fps`` / ``force_sample`` rules over the uniform sampler; the checkpoint processor's, the same here);
* decoding: ``cv_reader.read_frames`` decodes only the wanted frames' GOP segments, so memory
  is bounded by the frames returned, not by the video's length;
* codec inputs: one result type, :class:`CodecPatches`, computed online by
  ``cv_reader.codec_patchify`` with the LLaVA codec configuration :data:`LLAVA_CODEC` unless told
  otherwise, or read from a Stage-2 pack at the pack's own canvas, frames and mosaic count
  (``docs/formats.md``);
* timing: :class:`VideoTiming` (the sampled frames' times and the video's length, both modes) and
  :func:`time_instruction`, LLaVA-NeXT's ``--add_time_instruction`` text.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from cv_reader import (
    LLAVA_CODEC,
    CodecInputError,
    CodecPatches,
    MediaError,
    Stage1Params,
    VideoReadError,
    codec_patchify,
    probe,
    read_pack,
)

from ..model.video_processing_llava import LlavaOVVideoProcessor
from ..model.video_utils_llava import frame_time_str, read_video_frames, sample_frame_indices
from ..model.video_utils_llava import time_instruction as _time_instruction

#: The codec parameters a pack has its own values of: they apply to videos encoded online only.
PACK_OWN = ("square_size", "sequence_length", "keep_frames_equiv")


@dataclass(frozen=True)
class VideoTiming:
    """When the sampled frames of a video are (seconds, frame index / average fps, as LLaVA-NeXT
    computes them) and how long the video lasts (frame count / average fps)."""

    frame_times: np.ndarray  # float64 [T]
    duration: float

    def frame_time_str(self) -> str:
        """LLaVA-NeXT's time-instruction string, e.g. ``"0.00s,1.50s,3.00s"``."""
        return frame_time_str(self.frame_times)


def time_instruction(timing: VideoTiming) -> str:
    """LLaVA-NeXT's ``--add_time_instruction`` text for a video, word for word (the checkpoint processor's,
    ``llava.model.video_utils_llava.time_instruction``)."""
    return _time_instruction(timing.frame_times, timing.duration)


@dataclass
class VideoFrames:
    """Sampled frames and their timing (times in seconds, from frame index / average fps)."""

    frames: np.ndarray  # uint8 [T, H, W, 3] RGB
    frame_indices: np.ndarray  # int64 [T], display-order indices into the video's frames
    frame_times: np.ndarray  # float64 [T], seconds
    duration: float  # seconds
    fps: float  # average frames per second of the video
    total_frames: int

    @property
    def timing(self) -> VideoTiming:
        return VideoTiming(self.frame_times, self.duration)

    def frame_time_str(self) -> str:
        """LLaVA-NeXT's time-instruction string, e.g. ``"0.00s,1.50s,3.00s"``."""
        return self.timing.frame_time_str()


def load_video_frames(
    path: str | os.PathLike,
    frames_upbound: int | None = 32,
    fps: float | None = None,
    force_sample: bool = False,
) -> VideoFrames:
    """Decode the sampled frames of a video as upright RGB uint8 (``sample_frame_indices``: LLaVA-NeXT's rules).

    The frames are the checkpoint processor's (``llava.model.video_utils_llava.read_video_frames``, here
    through ``cv_reader``), so the project and a checkpoint folder read a video the same way. Raises
    :class:`VideoReadError` (a :class:`MediaError`) naming the file for anything that is not a readable video.
    """
    clip = read_video_frames(path, frames_upbound, fps, force_sample)
    return VideoFrames(
        frames=clip.frames,
        frame_indices=clip.frame_indices,
        frame_times=clip.frame_indices / clip.avg_fps,
        duration=clip.total_frames / clip.avg_fps,
        fps=clip.avg_fps,
        total_frames=clip.total_frames,
    )


def load_codec_inputs(
    video_path: str | os.PathLike | None = None,
    mosaic_paths: Sequence[str | os.PathLike] | None = None,
    positions_path: str | os.PathLike | None = None,
    params: Stage1Params = LLAVA_CODEC,
    **overrides: Any,
) -> CodecPatches:
    """Codec inputs of one video: computed from ``video_path``, or read from a Stage-2 pack.

    ``params`` is the codec configuration of videos encoded here (default :data:`LLAVA_CODEC`);
    keyword ``overrides`` change single parameters (``sequence_length=16, square_size=64``). A
    pack (``mosaic_paths`` + ``positions_path``) is data: it is read at its own canvas, frames and
    mosaic count and checked against itself (``cv_reader.pack.check_pack``: square mosaics of one
    size, a multiple of ``params.patch_size`` (the encoder's), K for ``params.padding_policy``,
    positions inside its patch grid); overriding what a pack has its own value of
    (``square_size``, ``sequence_length``, ``keep_frames_equiv``) is refused, not ignored.
    """
    if video_path is not None and (mosaic_paths is not None or positions_path is not None):
        raise ValueError("pass either video_path or mosaic_paths + positions_path, not both")
    if video_path is not None:
        return codec_patchify(video_path, params.replace(**overrides))
    if mosaic_paths is None or positions_path is None:
        raise ValueError("precomputed codec inputs need both mosaic_paths and positions_path")
    own = sorted(set(overrides) & set(PACK_OWN))
    if own:
        raise ValueError(
            f"a pack is read at its own canvas, frames and mosaic count: {', '.join(own)} apply to videos "
            "encoded online only"
        )
    params = params.replace(**overrides)
    return read_pack(mosaic_paths, positions_path, params.patch_size, params.padding_policy)


def codec_timing(video_path: str | os.PathLike, codec: CodecPatches) -> VideoTiming:
    """The times of the ``T`` frames the codec sampled from ``video_path`` (its ``frame_ids``), as
    :class:`VideoTiming` (the checkpoint processor's rule, ``LlavaOVVideoProcessor.codec_timing``)."""
    return VideoTiming(*LlavaOVVideoProcessor.codec_timing(video_path, codec))


__all__ = [
    "LLAVA_CODEC",
    "CodecInputError",
    "CodecPatches",
    "MediaError",
    "VideoFrames",
    "VideoReadError",
    "VideoTiming",
    "codec_timing",
    "load_codec_inputs",
    "load_video_frames",
    "probe",
    "sample_frame_indices",
    "time_instruction",
]
