"""Container probing, frame indexing and GOP-aware decoding with PyAV.

Why this module exists: the reader must decode only what a request needs. It builds a
display-order index of the stream by demuxing packets (no decoding), then for each
wanted frame seeks to the keyframe that starts its GOP segment and decodes forward,
telling FFmpeg to skip non-reference frames nobody asked for (``skip_frame=NONREF``).
Frames are matched to display indices through their presentation timestamps, so the
result does not depend on which other frames were requested or skipped.
"""

from __future__ import annotations

import bisect
import functools
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import av
import numpy as np
from av.video.reformatter import ColorRange, VideoReformatter

from .errors import UnsupportedCodecError, VideoReadError
from .images import check_regular_file

#: Codecs whose FFmpeg decoders export bitstream motion vectors (``flags2=+export_mvs``).
MV_EXPORT_CODECS = frozenset(
    {
        "h264",
        "mpeg1video",
        "mpeg2video",
        "mpeg4",
        "h263",
        "h263p",
        "msmpeg4v1",
        "msmpeg4v2",
        "msmpeg4v3",
        "wmv1",
        "wmv2",
        "flv1",
    }
)

#: FFmpeg picture-type codes (``AVPictureType``) as letters.
PICT_TYPES = {0: "?", 1: "I", 2: "P", 3: "B", 4: "S", 5: "SI", 6: "SP", 7: "BI"}

#: Pixel formats whose plane 0 is 8-bit luma (or gray) and can be read without conversion.
_LUMA8_FORMATS = frozenset(
    {
        "yuv420p",
        "yuvj420p",
        "yuv422p",
        "yuvj422p",
        "yuv444p",
        "yuvj444p",
        "yuv440p",
        "yuvj440p",
        "yuv411p",
        "yuv410p",
        "nv12",
        "nv21",
        "nv16",
        "gray",
        "yuva420p",
        "yuva444p",
    }
)


@dataclass(frozen=True)
class VideoIndex:
    """What the reader knows about a video stream before decoding it."""

    path: str
    codec: str
    width: int
    height: int
    pts: np.ndarray | None  # int64 [N] display-order presentation timestamps; None = no usable pts
    keyframes: np.ndarray  # int64 display indices where a decodable GOP segment starts (sorted)
    num_frames: int
    time_base: float
    fps: float

    @property
    def exports_mvs(self) -> bool:
        """True when FFmpeg can export this codec's bitstream motion vectors."""
        return self.codec in MV_EXPORT_CODECS

    @functools.cached_property
    def _keyframe_list(self) -> list[int]:
        # The segment look-ups run per packet and per frame in the decode thread: bisect on
        # Python ints costs a fraction of a numpy call on a small array.
        return [int(k) for k in self.keyframes]

    def segment_start(self, idx: int) -> int:
        """Display index of the keyframe that starts the GOP segment containing ``idx``."""
        keys = self._keyframe_list
        return keys[max(bisect.bisect_right(keys, idx) - 1, 0)]

    def next_segment_start(self, idx: int) -> int:
        """Display index of the first keyframe after ``idx`` (``num_frames`` if none)."""
        keys = self._keyframe_list
        pos = bisect.bisect_right(keys, idx)
        return keys[pos] if pos < len(keys) else self.num_frames

    def timestamp(self, idx: int) -> float:
        """Presentation time of display frame ``idx`` in seconds."""
        if self.pts is not None:
            return float(self.pts[idx]) * self.time_base
        return idx / self.fps if self.fps > 0 else float(idx)


def open_video(path: str | os.PathLike) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open ``path`` and return its first video stream, or raise :class:`VideoReadError`."""
    path = os.fspath(path)
    check_regular_file(path, VideoReadError)
    if os.path.getsize(path) == 0:
        raise VideoReadError(path, "file is empty")
    try:
        container = av.open(path, mode="r")
    except av.error.FFmpegError as exc:
        raise VideoReadError(
            path, f"not a readable video container (truncated or not a video?): {exc}"
        ) from exc
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        container.close()
        raise VideoReadError(path, f"no video stream (streams present: {', '.join(kinds) or 'none'})")
    stream = container.streams.video[0]
    cc = stream.codec_context
    if cc is None:
        container.close()
        raise UnsupportedCodecError(path, "unknown", "no FFmpeg decoder for this video stream's codec")
    if not cc.width or not cc.height:
        container.close()
        raise VideoReadError(path, "video stream has no frame size (corrupt header?)")
    return container, stream


#: Demuxers whose seeks go through a sample index, so a seek to a keyframe's timestamp is exact.
_REWINDABLE_FORMATS = frozenset({"mov", "matroska"})

_spare_lock = threading.Lock()
_spare: tuple[tuple, av.container.InputContainer] | None = None  # (file identity, container)


def _file_identity(path: str) -> tuple | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _keep_spare(path: str, container: av.container.InputContainer) -> None:
    """Keep ``container`` (demuxed to its end, never decoded) for the next :class:`FrameSource` of ``path``.

    Why: opening a container probes its streams, which on some files decodes frames (a 720p
    H.264 clip with an AAC track: 12 ms, 4 % of Stage 1 on it), and a Stage-1 read opens each
    video twice: to index it, then to decode it, the second time on its critical path. One
    container per process is kept (the previous one is closed); it is used only if the file
    is unchanged, and then rewound by a seek to the first frame.
    """
    global _spare
    identity = _file_identity(path)
    if identity is None:
        container.close()
        return
    with _spare_lock:
        old, _spare = _spare, (identity, container)
    if old is not None:
        old[1].close()


def _take_spare(path: str) -> av.container.InputContainer | None:
    """The container :func:`_keep_spare` kept for ``path`` (handed out once), if the file is unchanged."""
    global _spare
    with _spare_lock:
        if _spare is None or _spare[0][0] != path:
            return None
        identity, container = _spare
        _spare = None
    if _file_identity(path) == identity:
        return container
    container.close()
    return None


def build_index(
    path: str | os.PathLike, allowed_codecs: Iterable[str] | None = None, *, keep_open: bool = False
) -> VideoIndex:
    """Demux every packet of the first video stream (no decoding) into a display-order index.

    ``keep_open``: the caller decodes this file next; the container is left for the first
    :class:`FrameSource` of it (see :func:`_keep_spare`) instead of being opened twice.
    """
    path = os.fspath(path)
    container, stream = open_video(path)
    spare = False
    try:
        codec = stream.codec_context.name
        if allowed_codecs is not None:
            allowed = {c.strip().lower() for c in allowed_codecs}
            aliases = {codec, {"h264": "avc1", "hevc": "h265"}.get(codec, codec)}
            if not aliases & allowed:
                raise UnsupportedCodecError(
                    path, codec, f"codec {codec!r} not in allowed codecs {sorted(allowed)}"
                )
        pts_list: list[int | None] = []
        key_list: list[bool] = []
        first: tuple[int | None, bool] | None = None  # pts and keyframe flag of the first packet
        error: str | None = None
        n_packets = 0
        last_corrupt = False
        last_end = first_pts = None
        try:
            for pkt in container.demux(stream):
                if pkt.size == 0:
                    continue
                n_packets += 1
                last_corrupt = bool(pkt.is_corrupt)
                p = pkt.pts  # packet properties are calls into PyAV, and this loop sees every packet: read once
                if p is not None:
                    first_pts = p if first_pts is None else min(first_pts, p)
                    end = p + (pkt.duration or 0)
                    last_end = end if last_end is None else max(last_end, end)
                if pkt.is_discard:
                    continue
                key = bool(pkt.is_keyframe)
                if first is None:
                    first = (p, key)
                pts_list.append(p)
                key_list.append(key)
        except av.error.FFmpegError as exc:
            error = str(exc)
        if error is not None:
            raise VideoReadError(
                path, f"truncated or corrupt: demuxing failed after {n_packets} packets: {error}"
            )
        if not pts_list:
            raise VideoReadError(path, "video stream contains no frames")
        if last_corrupt:
            raise VideoReadError(path, f"truncated: the last of {n_packets} video packets is incomplete")
        declared = int(stream.frames or 0)
        if declared and n_packets < declared - max(2, declared // 50):
            raise VideoReadError(
                path, f"truncated: header declares {declared} frames, file holds {n_packets}"
            )
        if len(container.streams) == 1 and container.duration and first_pts is not None and stream.time_base:
            span = (last_end - first_pts) * float(stream.time_base)
            want = container.duration / 1e6
            if span < 0.8 * want - 0.5:
                raise VideoReadError(
                    path, f"truncated: packets cover {span:.2f}s of the declared {want:.2f}s"
                )
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        fps = float(rate) if rate else 0.0
        time_base = float(stream.time_base) if stream.time_base else (1.0 / fps if fps else 1.0)
        if all(p is not None for p in pts_list) and len(set(pts_list)) == len(pts_list):
            order = np.argsort(np.asarray(pts_list, dtype=np.int64), kind="stable")
            pts = np.asarray(pts_list, dtype=np.int64)[order]
            keys = np.asarray(key_list, dtype=bool)[order]
            keyframes = np.flatnonzero(keys).astype(np.int64)
            if keyframes.size == 0 or keyframes[0] != 0:
                keyframes = np.concatenate([[0], keyframes]).astype(np.int64)
        else:  # no usable timestamps: decode linearly and count frames
            pts = None
            keyframes = np.zeros(1, dtype=np.int64)
        index = VideoIndex(
            path=path,
            codec=codec,
            width=int(stream.codec_context.width),
            height=int(stream.codec_context.height),
            pts=pts,
            keyframes=keyframes,
            num_frames=len(pts_list),
            time_base=time_base,
            fps=fps,
        )
        # A decoder can start over from this container only where a seek to the first
        # frame lands exactly on it: an indexed container whose first packet is that
        # frame, a keyframe.
        spare = (
            keep_open
            and pts is not None
            and container.format.name.split(",")[0] in _REWINDABLE_FORMATS
            and first == (int(pts[0]), True)
        )
        if spare:
            _keep_spare(path, container)
        return index
    finally:
        if not spare:
            container.close()


def luma_plane(frame: av.VideoFrame) -> np.ndarray:
    """Return the 8-bit luma plane of ``frame`` as a new ``[H, W]`` uint8 array."""
    h, w = frame.height, frame.width
    fmt = frame.format.name
    if fmt in _LUMA8_FORMATS:
        plane = frame.planes[0]
        buf = np.frombuffer(plane, dtype=np.uint8).reshape(-1, plane.line_size)
        return buf[:h, :w].copy()
    return frame.reformat(format="gray").to_ndarray().reshape(h, w).copy()


def rgb_resized(
    frame: av.VideoFrame, width: int, height: int, reformatter: VideoReformatter | None = None
) -> np.ndarray:
    """RGB24 of ``frame`` resized (bilinear, swscale) to ``width`` x ``height``.

    Pass a long-lived ``reformatter`` when converting many frames: it caches the swscale
    context (a fresh one per frame costs several milliseconds).
    """
    if frame.width == width and frame.height == height:
        return frame.to_ndarray(format="rgb24")
    r = reformatter or VideoReformatter()
    return r.reformat(
        frame, width=width, height=height, format="rgb24", interpolation="BILINEAR"
    ).to_ndarray()


def luma_resized(
    frame: av.VideoFrame, width: int, height: int, reformatter: VideoReformatter | None = None
) -> np.ndarray:
    """8-bit luma of ``frame`` area-downscaled to ``width`` x ``height`` (swscale)."""
    if frame.width == width and frame.height == height:
        return luma_plane(frame)
    r = reformatter or VideoReformatter()
    if frame.format.name in _LUMA8_FORMATS:
        # Scale the luma plane alone: "gray" declared full range on both sides, so swscale
        # copies Y values as they are (no limited->full range expansion) and skips chroma.
        full = ColorRange.JPEG
        out = r.reformat(
            frame,
            width=width,
            height=height,
            format="gray",
            interpolation="AREA",
            src_color_range=full,
            dst_color_range=full,
        )
    else:
        out = r.reformat(frame, width=width, height=height, format="gray", interpolation="AREA")
    return luma_plane(out)


class FrameSource:
    """Decode the frames a request needs, in display order, seeking between GOP segments.

    ``needed`` are display indices that must be decoded even if FFmpeg would class them
    as droppable; reference frames are always decoded (the decoder needs them), other
    frames are skipped. While ``busy`` is True (the consumer still waits for frames after
    the current position) the source never seeks.
    """

    def __init__(
        self, index: VideoIndex, needed: Iterable[int], *, export_mvs: bool, threads: int = 0
    ) -> None:
        self.index = index
        self.needed = sorted({int(i) for i in needed})
        self.needed_set = set(self.needed)
        self.export_mvs = export_mvs
        self.threads = threads
        self.busy = False
        self.seeks = 0
        self.decoded = 0

    def _open(self) -> tuple[av.container.InputContainer, av.video.stream.VideoStream, bool]:
        """A container of the video, its stream set up for decoding, and whether it must be rewound first."""
        spare = _take_spare(self.index.path) if self.index.pts is not None else None
        if spare is not None:
            container, stream = spare, spare.streams.video[0]
        else:
            container, stream = open_video(self.index.path)
        cc = stream.codec_context
        if self.export_mvs:
            cc.options = {"flags2": "+export_mvs"}
            # Frame threading races with the MV export (vectors differ run to run).
            cc.thread_count = 1
        else:
            cc.thread_count = int(self.threads)
            cc.thread_type = "AUTO"
        return container, stream, spare is not None

    def frames(self) -> Iterator[tuple[int, av.VideoFrame]]:
        """Yield ``(display_index, frame)`` for needed frames and decoded references."""
        if not self.needed:
            return
        container, stream, rewind = self._open()
        try:
            if self.index.pts is None:
                yield from self._linear(container, stream)
            else:
                yield from self._seeking(container, stream, rewind)
        finally:
            container.close()

    def _linear(self, container, stream) -> Iterator[tuple[int, av.VideoFrame]]:
        last = self.needed[-1]
        count = 0
        for frame in self._decode_packets(container, stream):
            idx = count
            count += 1
            yield idx, frame
            if idx >= last and not self.busy:
                return

    def _seeking(self, container, stream, rewind: bool = False) -> Iterator[tuple[int, av.VideoFrame]]:
        index = self.index
        pts_to_idx = {int(p): i for i, p in enumerate(index.pts)}
        needed = self.needed
        ptr = 0  # first needed index not yet output
        # Highest display index fed to the decoder since the last seek; a container that was
        # read before (``rewind``) seeks even to the first frame.
        max_fed = -2 if rewind else -1
        allow_seek = True
        cc = stream.codec_context
        skip_mode = "DEFAULT"
        packets = container.demux(stream)
        needed_set = self.needed_set
        k_of = -1  # the ``ptr`` whose segment start ``k`` holds (looked up once per needed frame, not per packet)
        k = 0
        while True:
            if allow_seek and not self.busy and ptr < len(needed):
                if k_of != ptr:
                    k, k_of = index.segment_start(needed[ptr]), ptr
                if k > max_fed + 1:
                    container.seek(int(index.pts[k]), stream=stream, backward=True, any_frame=False)
                    cc.flush_buffers()
                    packets = container.demux(stream)
                    max_fed = k - 1
                    self.seeks += 1
                    first_after_seek = True
                else:
                    first_after_seek = False
            else:
                first_after_seek = False
            try:
                pkt = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError:
                break  # truncated / corrupt tail: flush what we have
            if pkt.size == 0:
                flush = pkt
                for frame in self._decode_one(cc, flush):
                    i = pts_to_idx.get(frame.pts)
                    if i is not None:
                        self.decoded += 1
                        yield i, frame
                break
            if pkt.is_discard:
                continue
            idx = pts_to_idx.get(pkt.pts)  # None for a packet without (or with an unknown) timestamp
            if first_after_seek and idx is not None and idx > index.segment_start(needed[ptr]):
                # Seek landed after the wanted keyframe: fall back to decoding from the start.
                container.seek(int(index.pts[0]), stream=stream, backward=True, any_frame=False)
                cc.flush_buffers()
                packets = container.demux(stream)
                allow_seek = False
                max_fed = -1
                continue
            if idx is not None and idx > max_fed:
                max_fed = idx
            want = "DEFAULT" if (idx is None or idx in needed_set) else "NONREF"
            if want != skip_mode:
                cc.skip_frame = want
                skip_mode = want
            for frame in self._decode_one(cc, pkt):
                i = pts_to_idx.get(frame.pts)
                if i is None:
                    continue
                while ptr < len(needed) and needed[ptr] <= i:
                    ptr += 1
                self.decoded += 1
                yield i, frame
            if ptr >= len(needed) and not self.busy:
                return
        # end of stream: nothing more to do

    @staticmethod
    def _decode_one(cc, pkt) -> list[av.VideoFrame]:
        try:
            return list(cc.decode(pkt))
        except av.error.FFmpegError:
            return []  # corrupt packet: FFmpeg conceals or drops it; missing frames are reported later

    def _decode_packets(self, container, stream) -> Iterator[av.VideoFrame]:
        cc = stream.codec_context
        try:
            for pkt in container.demux(stream):
                if pkt.is_discard:
                    continue
                yield from self._decode_one(cc, pkt)
        except av.error.FFmpegError:
            yield from self._decode_one(cc, None)


def pict_type_name(frame: av.VideoFrame) -> str:
    """Letter for the frame's picture type (I, P, B, ...)."""
    pt = frame.pict_type
    try:
        return PICT_TYPES.get(int(pt), str(pt))
    except (TypeError, ValueError):
        return str(getattr(pt, "name", pt))


def keyframe_positions(index: VideoIndex) -> list[int]:
    """Display indices of keyframes (for diagnostics and docs)."""
    return [int(k) for k in index.keyframes]


__all__ = [
    "MV_EXPORT_CODECS",
    "FrameSource",
    "VideoIndex",
    "build_index",
    "luma_plane",
    "luma_resized",
    "open_video",
    "pict_type_name",
    "rgb_resized",
]
