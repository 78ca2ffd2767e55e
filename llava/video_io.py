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
    read_frames,
    read_pack,
    sample_frame_ids_uniform,
)

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
        return ",".join(f"{t:.2f}s" for t in self.frame_times)


def time_instruction(timing: VideoTiming) -> str:
    """LLaVA-NeXT's ``--add_time_instruction`` text for a video, word for word (its missing space after
    the frame list included, so a checkpoint trained upstream reads the prompt it learnt)."""
    return (
        f"The video lasts for {timing.duration:.2f} seconds, and {len(timing.frame_times)} frames are "
        f"uniformly sampled from it. These frames are located at {timing.frame_time_str()}.Please answer "
        "the following questions related to this video."
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

    @property
    def timing(self) -> VideoTiming:
        return VideoTiming(self.frame_times, self.duration)

    def frame_time_str(self) -> str:
        """LLaVA-NeXT's time-instruction string, e.g. ``"0.00s,1.50s,3.00s"``."""
        return self.timing.frame_time_str()


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
    :class:`VideoTiming`; the video is probed again for its frame rate (demuxed, not decoded)."""
    if codec.frame_ids is None:
        raise ValueError(f"{video_path}: these codec inputs carry no frame ids (packs record no frame times)")
    index = probe(video_path)
    if not index.fps > 0:
        raise VideoReadError(video_path, "the video stream declares no frame rate")
    frame_ids = np.asarray(codec.frame_ids, dtype=np.float64)
    return VideoTiming(frame_ids / index.fps, index.num_frames / index.fps)


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
