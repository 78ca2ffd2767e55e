"""Video input for the model: a thin layer over the codec reader (``cv_reader``).

Everything video goes through one path:

* opening and probing a file: ``cv_reader.probe`` (codec, size, frame count, fps, keyframes);
* errors: ``cv_reader``'s hierarchy, whose base :class:`MediaError` the chat CLI, the
  dataset and the server catch; each error names the file and the problem;
* frame sampling: ``cv_reader.sample_frame_ids_uniform`` (the one uniform sampler), with
  LLaVA-NeXT's ``frames_upbound`` / ``fps`` / ``force_sample`` rules on top;
* decoding: ``cv_reader.read_frames`` decodes only the wanted frames' GOP segments, so memory
  is bounded by the frames returned, not by the video's length;
* codec inputs: one result type, :class:`CodecPatches`, computed online by
  ``cv_reader.codec_patchify`` or read from a Stage-2 pack, both with the LLaVA codec
  configuration :data:`LLAVA_CODEC` unless told otherwise (``docs/formats.md``).
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
    read_frames,
    read_pack,
    sample_frame_ids_uniform,
)


@dataclass
class VideoFrames:
    """Sampled frames and their timing (times in seconds, from frame index / average fps)."""

    frames: np.ndarray  # uint8 [T, H, W, 3] RGB
    frame_indices: np.ndarray  # int64 [T], display-order indices into the video's frames
    frame_times: np.ndarray  # float64 [T], seconds
    duration: float  # seconds
    fps: float  # average frames per second of the video
    total_frames: int

    def frame_time_str(self) -> str:
        """LLaVA-NeXT's time-instruction string, e.g. ``"0.00s,1.50s,3.00s"``."""
        return ",".join(f"{t:.2f}s" for t in self.frame_times)


def sample_frame_indices(
    total_frames: int,
    avg_fps: float,
    frames_upbound: int | None = 32,
    fps: float | None = None,
    force_sample: bool = False,
) -> np.ndarray:
    """Which frames to keep (LLaVA-NeXT semantics).

    Without ``fps``: every frame if there are at most ``frames_upbound``, else ``frames_upbound``
    spread uniformly from the first to the last frame. With ``fps``: one frame every
    ``round(avg_fps / fps)`` frames, falling back to the uniform ``frames_upbound`` when that
    gives too many. ``force_sample`` always returns exactly ``frames_upbound`` uniform indices
    (repeating frames of a short video).
    """
    if total_frames < 1:
        raise ValueError(f"total_frames must be >= 1, got {total_frames}")
    if frames_upbound is not None and frames_upbound < 1:
        raise ValueError(f"frames_upbound must be >= 1 or None, got {frames_upbound}")
    if fps is not None and not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if force_sample and frames_upbound is None:
        raise ValueError("force_sample=True needs a frames_upbound")
    if fps is not None:
        step = max(1, round(avg_fps / fps))
        indices = np.arange(0, total_frames, step, dtype=np.int64)
    else:
        indices = np.arange(total_frames, dtype=np.int64)
    if frames_upbound is not None and (force_sample or len(indices) > frames_upbound):
        indices = np.asarray(sample_frame_ids_uniform(total_frames, frames_upbound), dtype=np.int64)
    return indices


def load_video_frames(
    path: str | os.PathLike,
    frames_upbound: int | None = 32,
    fps: float | None = None,
    force_sample: bool = False,
    threads: int = 0,
) -> VideoFrames:
    """Decode the sampled frames of a video as upright RGB uint8 (see :func:`sample_frame_indices`).

    Raises :class:`VideoReadError` (a :class:`MediaError`) naming the file for anything that
    is not a readable video.
    """
    index = probe(path)
    if not index.fps > 0:
        raise VideoReadError(path, "the video stream declares no frame rate")
    indices = sample_frame_indices(index.num_frames, index.fps, frames_upbound, fps, force_sample)
    frames = read_frames(path, indices, threads=threads, index=index)
    return VideoFrames(
        frames=frames,
        frame_indices=indices,
        frame_times=indices / index.fps,
        duration=index.num_frames / index.fps,
        fps=float(index.fps),
        total_frames=int(index.num_frames),
    )


def load_codec_inputs(
    video_path: str | os.PathLike | None = None,
    mosaic_paths: Sequence[str | os.PathLike] | None = None,
    positions_path: str | os.PathLike | None = None,
    params: Stage1Params = LLAVA_CODEC,
    **overrides: Any,
) -> CodecPatches:
    """Codec inputs of one video: computed from ``video_path``, or read from a Stage-2 pack.

    ``params`` is the codec configuration (default :data:`LLAVA_CODEC`); keyword
    ``overrides`` change single parameters (``sequence_length=16, square_size=64``). A pack
    (``mosaic_paths`` + ``positions_path``) is checked against the configuration: mosaic
    side, patch size, K for the padding policy, positions inside the canvas grid and the
    ``sequence_length`` frames.
    """
    params = params.replace(**overrides)
    if video_path is not None and (mosaic_paths is not None or positions_path is not None):
        raise ValueError("pass either video_path or mosaic_paths + positions_path, not both")
    if video_path is not None:
        return codec_patchify(video_path, params)
    if mosaic_paths is None or positions_path is None:
        raise ValueError("precomputed codec inputs need both mosaic_paths and positions_path")
    return read_pack(mosaic_paths, positions_path, params)


__all__ = [
    "LLAVA_CODEC",
    "CodecInputError",
    "CodecPatches",
    "MediaError",
    "VideoFrames",
    "VideoReadError",
    "load_codec_inputs",
    "load_video_frames",
    "probe",
    "sample_frame_indices",
]
