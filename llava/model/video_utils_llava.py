"""Uniformly sampled video frames, portable: the frames reader that travels inside checkpoint folders.

Why this module exists: a checkpoint of this project ships its model and processor code in its folder
(Hugging Face ``trust_remote_code``), and that code runs in environments that have torch,
transformers, PyAV, Pillow and numpy but not this project, so not its codec reader ``cv_reader``.
This file is copied alone into such folders: it imports only the standard library, numpy and PyAV
(``av``) at top level, and nothing of ``llava``.

* :func:`uniform_frame_ids` is ``cv_reader.sample_frame_ids_uniform`` (from the first frame): the
  one uniform sampler, so frames mode and the codec reader pick the same frames;
* :func:`sample_frame_indices` adds LLaVA-NeXT's ``frames_upbound`` / ``fps`` / ``force_sample``
  rules on top; it is the canonical definition (``llava.processing.video`` uses this one);
* :func:`read_video_frames` decodes the sampled frames as upright RGB uint8. Where ``cv_reader`` is
  installed it is used (``probe`` + ``read_frames``, as ``llava.processing.video.load_video_frames`` does:
  it seeks between GOP segments). Elsewhere the video is read with PyAV alone, following the codec
  reader's rules so the result is bit-identical: frames are counted and put in display order from a
  demux of the first video stream (packets, not decoded frames: empty and discarded packets are not
  frames; display order is presentation-timestamp order, or decode order where timestamps are
  missing or repeated), the frame rate is the stream's average rate (else the guessed, else the
  base rate), frames are converted with ``to_ndarray(format="rgb24")`` and turned upright by their
  display rotation. That path decodes sequentially from the start (skipping the non-reference
  frames nobody asked for) and keeps only the wanted frames, so memory is bounded by the frames
  returned.

Every file that is not a readable video (missing, not a regular file, no video stream, no frame
rate, no frames, truncated) raises :class:`ValueError` naming the file and the problem (the codec
reader's ``VideoReadError`` on its path, itself a :class:`ValueError`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

#: The problem named when a video stream has no frame rate (frame times and fps sampling need one).
_NO_RATE = "the video stream declares no frame rate"


@dataclass(frozen=True)
class VideoClip:
    """The sampled frames of a video (upright RGB) and where they come from."""

    frames: np.ndarray  # uint8 [T, H, W, 3] RGB, upright
    frame_indices: np.ndarray  # int64 [T], display-order indices into the video's frames
    avg_fps: float  # average frames per second of the video stream
    total_frames: int  # frames in the video

    @property
    def frame_times(self) -> np.ndarray:
        """Seconds of each sampled frame (frame index / average fps, as LLaVA-NeXT computes them)."""
        return self.frame_indices / self.avg_fps

    @property
    def duration(self) -> float:
        """Length of the video in seconds (frame count / average fps)."""
        return self.total_frames / self.avg_fps


def frame_time_str(frame_times: Sequence[float]) -> str:
    """LLaVA-NeXT's list of frame times, e.g. ``"0.00s,1.50s,3.00s"``."""
    return ",".join(f"{t:.2f}s" for t in frame_times)


def time_instruction(frame_times: Sequence[float], duration: float) -> str:
    """LLaVA-NeXT's ``--add_time_instruction`` text for a video whose sampled frames are at ``frame_times``
    seconds, word for word (its missing space after the frame list included, so a checkpoint trained upstream
    reads the prompt it learnt)."""
    return (
        f"The video lasts for {duration:.2f} seconds, and {len(frame_times)} frames are uniformly sampled "
        f"from it. These frames are located at {frame_time_str(frame_times)}.Please answer the following "
        "questions related to this video."
    )


def uniform_frame_ids(total_frames: int, count: int) -> np.ndarray:
    """``count`` frame ids spread uniformly over ``[0, total_frames - 1]``, first and last included.

    Ids are ``floor`` of the evenly spaced positions, so a video shorter than ``count`` repeats frames;
    an empty int64 array when ``total_frames`` or ``count`` is below 1. Identical to the codec
    reader's ``sample_frame_ids_uniform(total_frames, count)``.
    """
    total_frames, count = int(total_frames), int(count)
    if total_frames <= 0 or count <= 0:
        return np.zeros(0, dtype=np.int64)
    positions = np.linspace(0.0, float(total_frames - 1), count)
    return np.floor(positions).astype(np.int64)


def sample_frame_indices(
    total_frames: int,
    avg_fps: float,
    frames_upbound: int | None = 32,
    fps: float | None = None,
    force_sample: bool = False,
) -> np.ndarray:
    """Which frames to keep (LLaVA-NeXT semantics), as display-order int64 indices.

    Without ``fps``: every frame if there are at most ``frames_upbound``, else ``frames_upbound``
    spread uniformly from the first to the last frame (:func:`uniform_frame_ids`). With ``fps``: one
    frame every ``round(avg_fps / fps)`` frames, falling back to the uniform ``frames_upbound`` when
    that gives too many. ``force_sample`` always returns exactly ``frames_upbound`` uniform indices
    (repeating frames of a short video). ``frames_upbound=None`` sets no cap.
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
        indices = uniform_frame_ids(total_frames, frames_upbound)
    return indices


def read_video_frames(
    path: str | os.PathLike,
    frames_upbound: int | None = 32,
    fps: float | None = None,
    force_sample: bool = False,
) -> VideoClip:
    """The frames :func:`sample_frame_indices` picks from the video at ``path``, upright RGB uint8.

    Uses the codec reader where it is installed, PyAV alone elsewhere (the same frames, bit for
    bit). Raises :class:`ValueError` naming the file for anything that is not a readable video.
    """
    try:
        import cv_reader
    except ImportError:
        cv_reader = None
    if cv_reader is not None:
        index = cv_reader.probe(path)
        if not index.fps > 0:
            raise cv_reader.VideoReadError(path, _NO_RATE)
        indices = sample_frame_indices(index.num_frames, index.fps, frames_upbound, fps, force_sample)
        frames = cv_reader.read_frames(path, indices, threads=0, index=index)
        return VideoClip(frames, indices, float(index.fps), int(index.num_frames))
    index = _probe(path)
    if not index.fps > 0:
        raise _error(index.path, _NO_RATE)
    indices = sample_frame_indices(index.num_frames, index.fps, frames_upbound, fps, force_sample)
    frames = _read_frames(index, indices)
    return VideoClip(frames, indices, float(index.fps), int(index.num_frames))


# ------------------------------------------------------------------ the PyAV path


@dataclass(frozen=True)
class _Index:
    """What a demux of the first video stream says: frame count, display order, frame rate."""

    path: str
    pts: np.ndarray | None  # int64 [N] presentation timestamps in display order; None: decode order
    num_frames: int
    fps: float


def _error(path: Any, problem: str) -> ValueError:
    return ValueError(f"{_printable(path)}: {problem}")


def _printable(path: Any) -> str:
    text = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path)
    text = text.replace("\x00", "\\x00")
    return text if len(text) <= 300 else f"{text[:140]}...{text[-140:]}"


def _file_kind(mode: int) -> str:
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((kind for test, kind in kinds if test(mode)), "not a plain file")


def _check_regular_file(path: str) -> None:
    """A readable regular file, or ValueError. Opened non-blocking so a FIFO cannot hang the caller."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise _error(path, "file not found") from None
    except ValueError:
        raise _error(path, "not a valid file path (it holds a NUL byte)") from None
    except OSError as exc:
        raise _error(path, f"cannot open file ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _error(path, f"file is not a regular file ({_file_kind(info.st_mode)})")
        if info.st_size == 0:
            raise _error(path, "file is empty")
    finally:
        os.close(fd)


def _open(path: str) -> tuple[Any, Any]:
    """``path`` opened, with its first video stream; ValueError for anything that is not a video."""
    _check_regular_file(path)
    try:
        container = av.open(path, mode="r")
    except av.error.FFmpegError as exc:
        raise _error(path, f"not a readable video container (truncated or not a video?): {exc}") from exc
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        container.close()
        raise _error(path, f"no video stream (streams present: {', '.join(kinds) or 'none'})")
    stream = container.streams.video[0]
    cc = stream.codec_context
    if cc is None:
        container.close()
        raise _error(path, "no FFmpeg decoder for this video stream's codec")
    if not cc.width or not cc.height:
        container.close()
        raise _error(path, "video stream has no frame size (corrupt header?)")
    return container, stream


def _probe(path: str | os.PathLike) -> _Index:
    """Demux every packet of the first video stream (no decoding), as the codec reader's ``probe``.

    A frame is a non-empty, non-discarded packet; display order sorts them by presentation timestamp
    when every packet has one and no two are equal, else it is decode order. A truncated file (the
    last packet incomplete, far fewer packets than the header declares, packets covering much less
    than the container's duration) is refused.
    """
    path = os.fspath(path)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    container, stream = _open(path)
    try:
        pts_list: list[int | None] = []
        n_packets = 0
        last_corrupt = False
        last_end = first_pts = None
        try:
            for pkt in container.demux(stream):
                if pkt.size == 0:
                    continue
                n_packets += 1
                last_corrupt = bool(pkt.is_corrupt)
                if pkt.pts is not None:
                    first_pts = pkt.pts if first_pts is None else min(first_pts, pkt.pts)
                    end = pkt.pts + (pkt.duration or 0)
                    last_end = end if last_end is None else max(last_end, end)
                if pkt.is_discard:
                    continue
                pts_list.append(pkt.pts)
        except av.error.FFmpegError as exc:
            raise _error(
                path, f"truncated or corrupt: demuxing failed after {n_packets} packets: {exc}"
            ) from None
        if not pts_list:
            raise _error(path, "video stream contains no frames")
        if last_corrupt:
            raise _error(path, f"truncated: the last of {n_packets} video packets is incomplete")
        declared = int(stream.frames or 0)
        if declared and n_packets < declared - max(2, declared // 50):
            raise _error(path, f"truncated: header declares {declared} frames, file holds {n_packets}")
        if len(container.streams) == 1 and container.duration and first_pts is not None and stream.time_base:
            span = (last_end - first_pts) * float(stream.time_base)
            want = container.duration / 1e6
            if span < 0.8 * want - 0.5:
                raise _error(path, f"truncated: packets cover {span:.2f}s of the declared {want:.2f}s")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        if all(p is not None for p in pts_list) and len(set(pts_list)) == len(pts_list):
            pts = np.sort(np.asarray(pts_list, dtype=np.int64), kind="stable")
        else:  # no usable timestamps: frames are counted in decode order
            pts = None
        return _Index(path=path, pts=pts, num_frames=len(pts_list), fps=fps)
    finally:
        container.close()


def _decode(cc: Any, pkt: Any) -> list[Any]:
    try:
        return list(cc.decode(pkt))
    except av.error.FFmpegError:
        return []  # a corrupt packet: FFmpeg conceals or drops it; missing frames are reported later


def _frames(index: _Index, wanted: set[int]) -> Iterator[tuple[int, Any]]:
    """``(display index, frame)`` of the decoded frames, from the start of the stream.

    With timestamps, a frame's display index is its timestamp's rank and packets of frames nobody
    wants are decoded only if other frames predict from them (``skip_frame=NONREF``); without, every
    frame is decoded and counted in output order.
    """
    container, stream = _open(index.path)
    try:
        cc = stream.codec_context
        cc.thread_count = 0
        cc.thread_type = "AUTO"
        packets = container.demux(stream)
        if index.pts is None:
            count = 0
            try:
                for pkt in packets:
                    if pkt.is_discard:
                        continue
                    for frame in _decode(cc, pkt):
                        yield count, frame
                        count += 1
            except av.error.FFmpegError:
                for frame in _decode(cc, None):
                    yield count, frame
                    count += 1
            return
        pts_to_idx = {int(p): i for i, p in enumerate(index.pts)}
        skip_mode = "DEFAULT"
        while True:
            try:
                pkt = next(packets)
            except (StopIteration, av.error.FFmpegError):
                break  # end of stream, or a truncated / corrupt tail
            if pkt.size == 0:  # the flush packet at the end: the decoder's last frames
                for frame in _decode(cc, pkt):
                    i = pts_to_idx.get(frame.pts)
                    if i is not None:
                        yield i, frame
                break
            if pkt.is_discard:
                continue
            idx = pts_to_idx.get(pkt.pts) if pkt.pts is not None else None
            want = "DEFAULT" if (idx is None or idx in wanted) else "NONREF"
            if want != skip_mode:
                cc.skip_frame = want
                skip_mode = want
            for frame in _decode(cc, pkt):
                i = pts_to_idx.get(frame.pts)
                if i is not None:
                    yield i, frame
    finally:
        container.close()


def _upright_rgb(frame: Any) -> np.ndarray:
    """RGB24 of ``frame`` turned by its display rotation (degrees counter-clockwise)."""
    rgb = frame.to_ndarray(format="rgb24")
    k = round(int(getattr(frame, "rotation", 0) or 0) / 90.0) % 4
    return np.rot90(rgb, k=k, axes=(0, 1)) if k else rgb


def _read_frames(index: _Index, indices: np.ndarray) -> np.ndarray:
    """RGB uint8 ``[T, H, W, 3]`` of display frames ``indices`` (repeats allowed), upright."""
    ids = [int(i) for i in indices]
    bad = [i for i in ids if i < 0 or i >= index.num_frames]
    if bad:
        raise _error(index.path, f"frame ids {bad[:5]} out of range for a {index.num_frames}-frame video")
    wanted = set(ids)
    got: dict[int, np.ndarray] = {}
    frames = _frames(index, wanted)
    try:
        for idx, frame in frames:
            if idx in wanted and idx not in got:
                got[idx] = _upright_rgb(frame)
                if len(got) == len(wanted):
                    break
    finally:
        frames.close()
    missing = sorted(wanted - set(got))
    if missing:
        raise _error(index.path, f"could not decode frame(s) {missing[:5]} (truncated or corrupt stream?)")
    return np.stack([got[i] for i in ids])


__all__ = [
    "VideoClip", "frame_time_str", "read_video_frames", "sample_frame_indices", "time_instruction", "uniform_frame_ids",
]
