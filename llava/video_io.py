"""Video inputs for the model: uniformly sampled RGB frames, or codec-style patch mosaics.

``load_video_frames`` follows LLaVA-NeXT's ``load_video`` sampling (``frames_upbound``,
``video_fps``, ``force_sample``) and decodes with decord when it is installed, PyAV otherwise.
The PyAV path decodes sequentially and keeps only the wanted frames, so memory is bounded by
the frames returned, not by the video length.

``load_codec_inputs`` returns the OV-Encoder's codec input (``N`` mosaics plus one
``(t, h, w)`` position per mosaic patch, see DESIGN §4) either from Stage-2 files on disk or
computed in memory by ``cv_reader.codec_patchify``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

BACKENDS = ("auto", "decord", "pyav")
DEFAULT_CODEC_PATCH_SIZE = 16


class VideoLoadError(ValueError):
    """The video cannot be read: missing file, not a video, no video stream, no frames."""


class CodecInputError(ValueError):
    """Precomputed codec inputs are missing or inconsistent, or cv_reader cannot produce them."""


# ============================================================== frames
@dataclass
class VideoFrames:
    """Sampled frames and their timing (times in seconds, from frame index / average fps)."""

    frames: np.ndarray  # uint8 [T, H, W, 3] RGB
    frame_indices: np.ndarray  # int64 [T], indices into the decoded frame sequence
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
        indices = np.linspace(0, total_frames - 1, frames_upbound).astype(np.int64)
    return indices


def load_video_frames(
    path: str | os.PathLike,
    frames_upbound: int | None = 32,
    fps: float | None = None,
    force_sample: bool = False,
    backend: str = "auto",
) -> VideoFrames:
    """Decode the sampled frames of a video as RGB uint8 (see ``sample_frame_indices``).

    ``backend``: ``"auto"`` (decord if importable, else PyAV), ``"decord"`` or ``"pyav"``.
    """
    path = _existing_file(path)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = "decord" if _decord_available() else "pyav"
    sampling = {"frames_upbound": frames_upbound, "fps": fps, "force_sample": force_sample}
    if backend == "decord":
        return _load_with_decord(path, **sampling)
    return _load_with_pyav(path, **sampling)


def _existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise VideoLoadError(f"video file not found: {path}")
    return path


def _decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def _result(frames: np.ndarray, indices: np.ndarray, total: int, avg_fps: float) -> VideoFrames:
    return VideoFrames(
        frames=frames,
        frame_indices=indices,
        frame_times=indices / avg_fps,
        duration=total / avg_fps,
        fps=float(avg_fps),
        total_frames=int(total),
    )


def _load_with_decord(path: Path, **sampling) -> VideoFrames:
    import decord

    _require_video_stream(path)  # decord's errors for audio-only / non-media files are cryptic
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        total, avg_fps = len(reader), float(reader.get_avg_fps())
    except Exception as exc:  # decord raises bare RuntimeError / DECORDError
        raise VideoLoadError(f"cannot read video {path}: {exc}") from exc
    if total < 1 or not avg_fps > 0:
        raise VideoLoadError(f"video {path} has no frames (frames={total}, fps={avg_fps})")
    indices = sample_frame_indices(total, avg_fps, **sampling)
    frames = reader.get_batch(indices.tolist()).asnumpy()
    return _result(np.ascontiguousarray(frames, dtype=np.uint8), indices, total, avg_fps)


def _open_container(path: Path):
    import av

    try:
        return av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise VideoLoadError(f"cannot open {path} as a video: {exc}") from exc


def _require_video_stream(path: Path) -> None:
    with _open_container(path) as container:
        if not container.streams.video:
            raise VideoLoadError(f"{path} has no video stream")


def _pyav_stream_info(path: Path) -> tuple[int, float]:
    """``(frame count, average fps)`` from the container; counts packets when the header has no count."""
    with _open_container(path) as container:
        if not container.streams.video:
            raise VideoLoadError(f"{path} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        total = stream.frames or sum(1 for p in container.demux(stream) if p.size)
    if total < 1:
        raise VideoLoadError(f"video {path} has no frames")
    if not rate:
        raise VideoLoadError(f"video {path} has no frame rate")
    return int(total), float(rate)


def _decode_wanted(path: Path, wanted: Iterable[int]) -> tuple[dict[int, np.ndarray], int]:
    """Decode from the start, keeping only ``wanted`` frames; returns them and the frames decoded."""
    import av

    wanted = {int(i) for i in wanted}
    last = max(wanted)
    kept: dict[int, np.ndarray] = {}
    decoded = 0
    with _open_container(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for decoded, frame in enumerate(container.decode(stream), start=1):
                index = decoded - 1
                if index in wanted:
                    kept[index] = frame.to_ndarray(format="rgb24")
                if index >= last:
                    break
        except av.error.FFmpegError as exc:
            if not kept:
                raise VideoLoadError(f"cannot decode {path}: {exc}") from exc
    return kept, decoded


def _load_with_pyav(path: Path, **sampling) -> VideoFrames:
    total, avg_fps = _pyav_stream_info(path)
    indices = sample_frame_indices(total, avg_fps, **sampling)
    kept, decoded = _decode_wanted(path, indices)
    if len(kept) < len(set(indices.tolist())):
        # The header over-counted the frames: sample again over what really decodes.
        if decoded < 1:
            raise VideoLoadError(f"video {path} has no decodable frames")
        total = decoded
        indices = sample_frame_indices(total, avg_fps, **sampling)
        kept, _ = _decode_wanted(path, indices)
    frames = np.stack([kept[int(i)] for i in indices])
    return _result(frames, indices, total, avg_fps)


# ============================================================== codec inputs
@dataclass
class CodecInputs:
    """Codec-style patch input for one video (DESIGN §4)."""

    mosaics: np.ndarray  # uint8 [N, S, S, 3]
    positions: np.ndarray  # int32 [K, 3] (t, h, w)
    frame_ids: np.ndarray | None = None  # int [T] source frame of each t, when known


def load_codec_inputs(
    video_path: str | os.PathLike | None = None,
    mosaic_paths: Sequence[str | os.PathLike] | None = None,
    positions_path: str | os.PathLike | None = None,
    **codec_params: Any,
) -> CodecInputs:
    """Codec inputs from Stage-2 files (``mosaic_paths`` + ``positions_path``) or from a video.

    Precomputed files are checked against ``patch_size`` (default 16) and ``padding_policy``
    (``"zero"``: ``K == N * (S // patch)**2``; ``"exclude"``: at most that, a multiple of ``N``);
    ``square_size`` / ``sequence_length`` are checked when given; other parameters are ignored
    there. With ``video_path`` all parameters go to ``cv_reader.codec_patchify``.
    """
    if video_path is not None and (mosaic_paths is not None or positions_path is not None):
        raise ValueError("pass either video_path or mosaic_paths + positions_path, not both")
    if video_path is not None:
        return _codec_inputs_from_video(video_path, codec_params)
    if mosaic_paths is None or positions_path is None:
        raise ValueError("precomputed codec inputs need both mosaic_paths and positions_path")
    mosaics = load_mosaics(mosaic_paths)
    positions = load_positions(positions_path)
    validate_codec_inputs(mosaics, positions, **_validation_params(codec_params))
    return CodecInputs(mosaics=mosaics, positions=positions)


def _validation_params(codec_params: dict[str, Any]) -> dict[str, Any]:
    keys = ("patch_size", "padding_policy", "square_size", "sequence_length")
    return {key: codec_params[key] for key in keys if codec_params.get(key) is not None}


def load_mosaics(paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """``[N, S, S, 3]`` uint8 RGB from ``N`` square mosaic images of one size."""
    if isinstance(paths, (str, os.PathLike)):
        raise ValueError(f"mosaic_paths must be a list of image paths, got a single path {paths!r}")
    if len(paths) == 0:
        raise CodecInputError("mosaic_paths is empty")
    arrays = []
    for path in paths:
        if not Path(path).is_file():
            raise CodecInputError(f"mosaic image not found: {path}")
        try:
            with Image.open(path) as image:
                arrays.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
        except OSError as exc:
            raise CodecInputError(f"cannot read mosaic image {path}: {exc}") from exc
        height, width = arrays[-1].shape[:2]
        if height != width or arrays[-1].shape != arrays[0].shape:
            raise CodecInputError(
                f"mosaic {path} is {width}x{height}; mosaics must be square and all the size of the first "
                f"({arrays[0].shape[1]}x{arrays[0].shape[0]})"
            )
    return np.stack(arrays)


def load_positions(path: str | os.PathLike) -> np.ndarray:
    """``positions_thw.npy`` as int32 ``[K, 3]``; never unpickles (object arrays are refused)."""
    if not Path(path).is_file():
        raise CodecInputError(f"positions file not found: {path}")
    try:
        positions = np.load(path, allow_pickle=False)
    except ValueError as exc:  # object arrays need pickle
        raise CodecInputError(f"{path}: not a plain numeric .npy array ({exc})") from exc
    except OSError as exc:
        raise CodecInputError(f"{path}: not a .npy file ({exc})") from exc
    if not isinstance(positions, np.ndarray):
        raise CodecInputError(f"{path}: expected one .npy array, got {type(positions).__name__}")
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise CodecInputError(f"{path}: positions must have shape [K, 3], got {positions.shape}")
    if not np.issubdtype(positions.dtype, np.integer):
        raise CodecInputError(f"{path}: positions must be integers, got dtype {positions.dtype}")
    if positions.size and (positions.min() < 0 or positions.max() > np.iinfo(np.int32).max):
        raise CodecInputError(f"{path}: positions must be non-negative int32 values")
    return positions.astype(np.int32)


def validate_codec_inputs(
    mosaics: np.ndarray,
    positions: np.ndarray,
    patch_size: int = DEFAULT_CODEC_PATCH_SIZE,
    padding_policy: str = "zero",
    square_size: int | None = None,
    sequence_length: int | None = None,
) -> None:
    """Check mosaics and positions describe the same patches (DESIGN §4), with a clear error if not."""
    if padding_policy not in ("zero", "exclude"):
        raise ValueError(f"padding_policy must be 'zero' or 'exclude', got {padding_policy!r}")
    num, side = mosaics.shape[0], mosaics.shape[1]
    if square_size is not None and side != square_size:
        raise CodecInputError(f"mosaics are {side}x{side}, expected square_size={square_size}")
    if side % patch_size:
        raise CodecInputError(f"mosaic side {side} is not a multiple of patch_size={patch_size}")
    grid = side // patch_size
    k = positions.shape[0]
    if padding_policy == "zero" and k != num * grid * grid:
        raise CodecInputError(
            f"positions has K={k} rows but {num} mosaics of {grid}x{grid} patches need K={num * grid * grid}"
        )
    if padding_policy == "exclude" and (k > num * grid * grid or k % num):
        raise CodecInputError(
            f"positions has K={k} rows, not a multiple of {num} mosaics within {grid}x{grid} each"
        )
    if k and (positions[:, 1:].max() >= grid):
        raise CodecInputError(
            f"positions (h, w) must be < {grid} (the {side}px canvas in {patch_size}px patches)"
        )
    if k and sequence_length is not None and positions[:, 0].max() >= sequence_length:
        raise CodecInputError(f"positions t must be < sequence_length={sequence_length}")


def _codec_inputs_from_video(video_path: str | os.PathLike, codec_params: dict[str, Any]) -> CodecInputs:
    try:
        from cv_reader import codec_patchify
    except ImportError as exc:
        raise CodecInputError(
            "computing codec inputs from a video needs the cv_reader package "
            "(pip install -e Compressed_Video_Reader), or pass precomputed mosaic_paths + positions_path"
        ) from exc
    path = _existing_file(video_path)
    result = codec_patchify(path, **codec_params)
    mosaics = np.asarray(result.mosaics, dtype=np.uint8)
    positions = np.asarray(result.positions, dtype=np.int32)
    validate_codec_inputs(mosaics, positions, **_validation_params(codec_params))
    frame_ids = getattr(result, "frame_ids", None)
    return CodecInputs(
        mosaics=mosaics, positions=positions, frame_ids=None if frame_ids is None else np.asarray(frame_ids)
    )


__all__ = [
    "CodecInputError",
    "CodecInputs",
    "VideoFrames",
    "VideoLoadError",
    "load_codec_inputs",
    "load_mosaics",
    "load_positions",
    "load_video_frames",
    "sample_frame_indices",
    "validate_codec_inputs",
]
