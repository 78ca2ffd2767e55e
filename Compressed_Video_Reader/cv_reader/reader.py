"""Per-frame codec records: luma, motion-vector field and residual, in display order.

How references are chosen (deterministic: depends only on the stream, never on which
other frames were requested):

* Bitstream vectors (H.264, MPEG-2/4) say only "past" or "future", not which frame
  they point into. Each 4x4 cell takes, among the candidate frames on its vector's side,
  the one whose prediction of the cell has the lowest SAD; bi-predicted cells average the
  best of each side. Past candidates: the reference frames (those other frames may predict
  from) among the ``PAST_REACH`` (12) frames before ``t`` in its GOP segment. Future
  candidates: the reference frames after ``t`` up to the first I/P frame, at most
  ``FUTURE_REACH`` (8) frames ahead (a B-frame's future references are decoded before it,
  so none lies beyond that I/P frame); the keyframe that starts the next segment can be
  one (open GOP), the previous GOP is never decoded. ``t-1`` and ``t+1`` are candidates
  too, reference or not: a cell without a vector is predicted at zero motion from the
  best candidate, so its residual is the change since a neighbouring frame.
* Which frames are references: H.264 marks each picture in its slice headers
  (``nal_ref_idc``; with b-pyramid some B-frames are references), read from each packet
  on its way to the decoder; in MPEG-1/2/4 and the H.263 family every I/P frame and no
  B-frame is one. The decoder decodes every reference frame it passes (later frames need
  them) and ``t-1``/``t+1`` are always decoded for ``t``, so the candidates never depend
  on the request. A stream without usable timestamps is decoded linearly, every frame:
  all frames in the window are candidates there.
* Why these reaches: x264 predicts from several earlier reference frames, B-frames among
  them. On a panning grainy texture (128x96), per cell, the frame (of the 16 on its
  vector's side) that predicts it best with its own vector was, for at least 1% of the
  cells, as far as 8 back for P-frames with x264's defaults (ref=3, bframes=3, b-pyramid
  normal: the previous P, the B-reference before it and the P before that), 10 with
  ``ref=4:bframes=4``, ``preset=slow`` (ref=5) and ``slower`` (ref=8), 12 without
  b-pyramid and 16 only with ``veryslow`` (ref=16, bframes=8); for B-frames at most 10
  back and 4 ahead. Reaching 8 ahead finds the I/P frame that closes a run of up to 8
  B-frames (``veryslow``'s bframes). MPEG-2/4 use the nearest I/P frame on each side.
* Cost: the decoder decodes what it would anyway (requested frames, their neighbours
  and the reference frames on the way); a cell's SAD choice compares at most the
  reference frames of a ``PAST_REACH + FUTURE_REACH + 1`` frame window, and the reader
  holds at most that window's frames beyond the records waiting in its queues.
* Frames without bitstream vectors (HEVC, VP9, AV1, intra frames, or an inter frame whose
  every block is intra) get vectors by block matching against ``t-1``; a frame that
  starts a GOP segment (keyframe) is matched against ``t+1`` instead, so the reader never
  decodes the previous GOP. A single-frame video has no reference: every cell is masked
  and the residual is zero.

Decoding runs in a background thread (PyAV releases the GIL) while the caller's thread
converts frames and runs the compiled kernels (which release it too) for the previous
ones, so the two cores overlap.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from .decode import FrameSource, VideoIndex, build_index, luma_resized, pict_type_name, rgb_resized
from .errors import VideoReadError
from .motion import BitstreamField, estimate_motion, field_from_side_data, grid_shape
from .residual import Compensation, compensate_bitstream, compensate_estimated, residual_from

_MV_TYPE = av.sidedata.sidedata.Type.MOTION_VECTORS

#: Farthest past / future display distance of a bitstream vector's reference candidates
#: (measured on x264 settings: see the module docs).
PAST_REACH = 12
FUTURE_REACH = 8

_T = TypeVar("_T")


@dataclass
class FrameRecord:
    """One decoded frame with its motion field and residual.

    ``mv`` holds ``(dx, dy)`` in quarter-pel on a 4x4-pixel cell grid and points the way
    the content moves (for a past reference: from the reference position to the current
    one; future-reference vectors are negated to the same sense). ``mv_ref`` is the signed
    display distance to the reference frame each cell was predicted from (``-1`` = the
    previous frame, ``+2`` = two frames later, ``0`` = no inter prediction). When the
    reader runs at reduced resolution (``max_side``), ``luma``/``mv``/``residual`` are at
    that resolution and ``scale`` says by how much.
    """

    index: int
    timestamp: float
    pict_type: str
    luma: np.ndarray  # uint8 [H, W]
    mv: np.ndarray  # int16 [Hc, Wc, 2]
    mv_ref: np.ndarray  # int8 [Hc, Wc]
    residual: np.ndarray | None  # int16 [H, W] = luma - prediction
    mv_source: str  # "bitstream" | "estimated"
    rotation: int = 0  # display rotation (degrees counter-clockwise) from the container
    scale: float = 1.0  # processing size / coded size
    rgb: np.ndarray | None = field(default=None, repr=False)  # optional resized RGB (see rgb_size)

    @property
    def mv_mask(self) -> np.ndarray:
        """True for cells that have no inter prediction (intra / no reference)."""
        return self.mv_ref == 0


_local = threading.local()


def _reformatter(kind: str) -> VideoReformatter:
    """A per-thread swscale context per conversion kind (contexts are not thread-safe)."""
    fmt = getattr(_local, kind, None)
    if fmt is None:
        fmt = VideoReformatter()
        setattr(_local, kind, fmt)
    return fmt


class _Held:
    """A decoded frame the reader may still need, converted only when (and if) it is used.

    Why lazy: the decode thread keeps every reference frame that a requested frame might
    predict from, but only some are ever read, and conversion (swscale) runs in whichever
    thread first asks, which is usually the consumer, leaving the decode thread to decode.
    ``ref`` says whether the frame is a reference candidate (see the module docs);
    ``sides`` whether its bitstream vectors point into the past / the future.
    """

    __slots__ = (
        "idx",
        "pict",
        "ref",
        "sides",
        "rotation",
        "mvs",
        "_frame",
        "_size",
        "_rgb_size",
        "_luma",
        "_rgb",
        "_lock",
    )

    def __init__(
        self,
        idx: int,
        pict: str,
        frame: av.VideoFrame,
        size: tuple[int, int],
        rgb_size: tuple[int, int] | None = None,
        ref: bool = False,
    ) -> None:
        self.idx, self.pict, self.ref = idx, pict, ref
        self.mvs: np.ndarray | None = None
        self.sides = (False, False)
        self.rotation = int(getattr(frame, "rotation", 0) or 0)
        self._frame, self._size, self._rgb_size = frame, size, rgb_size
        self._luma: np.ndarray | None = None
        self._rgb: np.ndarray | None = None
        self._lock = threading.Lock()

    def _convert(self) -> None:
        with self._lock:
            if self._frame is None:
                return
            self._luma = luma_resized(self._frame, self._size[0], self._size[1], _reformatter("luma"))
            if self._rgb_size is not None:
                w, h = self._rgb_size
                self._rgb = rgb_resized(self._frame, w, h, _reformatter("rgb"))
            self._frame = None  # give the decoder's buffer back

    @property
    def luma(self) -> np.ndarray:
        if self._luma is None:
            self._convert()
        return self._luma

    @property
    def rgb(self) -> np.ndarray | None:
        if self._rgb_size is not None and self._rgb is None:
            self._convert()
        return self._rgb


@dataclass
class _Bundle:
    """Everything needed to compute one record, gathered by the decode thread."""

    cur: _Held
    past: list[tuple[int, _Held]]  # (signed display distance, frame), nearest first
    future: list[tuple[int, _Held]]
    est_ref: tuple[int, _Held] | None
    field: BitstreamField | None = None  # bitstream vectors on the processing grid
    est_field: np.ndarray | None = None  # block-matching vectors (FFmpeg sense) vs est_ref


def probe(path: str | os.PathLike, allowed_codecs: Iterable[str] | None = None) -> VideoIndex:
    """Index ``path`` (codec, size, frame count, keyframes) without decoding frames."""
    return build_index(path, allowed_codecs)


def work_size(index: VideoIndex, max_side: int | None) -> tuple[int, int]:
    """(width, height) the reader processes at: the coded size, shrunk to ``max_side``."""
    w, h = index.width, index.height
    if max_side is None or max(w, h) <= max_side:
        return w, h
    s = max_side / max(w, h)
    return max(1, int(round(w * s))), max(1, int(round(h * s)))


def read_video(
    path: str | os.PathLike,
    frame_ids: Iterable[int] | None = None,
    with_residual: bool = True,
    *,
    block_size: int = 16,
    search_range: int = 16,
    max_side: int | None = None,
    threads: int = 0,
    rgb_size: tuple[int, int] | None = None,
    index: VideoIndex | None = None,
    background: bool = True,
) -> Iterator[FrameRecord]:
    """Stream :class:`FrameRecord` for ``frame_ids`` (all frames if None) in display order.

    Duplicate ids are returned once. Bad input raises :class:`VideoReadError` right away
    (not at first iteration). ``block_size``/``search_range`` (coded pixels) control
    block-matching estimation. ``max_side`` processes frames downscaled so the longer side
    is at most that (vectors rescaled); None keeps the coded size. ``threads`` sets decoder
    threads for codecs without vector export (0 = FFmpeg's choice). ``rgb_size=(w, h)``
    attaches a bilinear-resized RGB image to each record. Memory holds only a few decoded
    frames (the queue and the references still needed) beyond what the caller keeps.
    """
    index = index or build_index(path, keep_open=True)
    n = index.num_frames
    if frame_ids is None:
        targets = list(range(n))
    else:
        ids = [int(i) for i in frame_ids]
        bad = [i for i in ids if i < 0 or i >= n]
        if bad:
            raise VideoReadError(index.path, f"frame ids {bad[:5]} out of range for a {n}-frame video")
        targets = sorted(set(ids))
    if block_size % 4 or block_size < 4:
        raise ValueError(f"block_size must be a positive multiple of 4, got {block_size}")
    if search_range < 1:
        raise ValueError(f"search_range must be >= 1, got {search_range}")
    if max_side is not None and max_side < 8:
        raise ValueError(f"max_side must be >= 8, got {max_side}")
    size = work_size(index, max_side)
    s = size[0] / index.width
    b = max(4, int(round(block_size * s / 4)) * 4)
    r = max(1, int(round(search_range * s)))

    def produce(group: list[int], eager: bool = False) -> Callable[[Callable[[], int]], Iterator[_Bundle]]:
        return lambda backlog: _bundles(index, group, size, threads, rgb_size, b, r, backlog, eager)

    if not background:
        bundles: Iterator[_Bundle] = produce(targets)(lambda: 0)
    elif index.exports_mvs and (split := _split_point(index, targets)):
        # Vector export forces single-threaded decoding: decode the second half of the
        # GOP segments in a second thread instead. It runs ahead by a bounded number of
        # bundles, converted eagerly so they hold small planes, not decoder frames.
        ahead = _ahead_bundles(size, rgb_size, targets[split:])
        bundles = _chain([(produce(targets[:split]), 4), (produce(targets[split:], eager=True), ahead)])
    else:
        bundles = _chain([(produce(targets), 4)])
    return (_finalise(bd, index, with_residual, s, b, r) for bd in bundles)


_AHEAD_BYTES = 64 << 20  # memory the second decode thread may fill before the consumer reaches it


def _ahead_bundles(size: tuple[int, int], rgb_size: tuple[int, int] | None, targets: list[int]) -> int:
    """How many bundles the second decode thread may prepare: 4..64, within ``_AHEAD_BYTES``.

    A converted bundle holds the planes of its candidates, which it shares with its
    neighbours when targets are closer than the candidate window is wide: each bundle adds
    at most one plane per frame of target spacing (at most a window), plus the current
    frame and its RGB image.
    """
    span = PAST_REACH + FUTURE_REACH + 1
    gap = int(np.median(np.diff(targets))) if len(targets) > 1 else span
    planes = min(max(gap, 1), span) + 1
    per = planes * size[0] * size[1] + (3 * rgb_size[0] * rgb_size[1] if rgb_size else 0)
    return int(min(64, max(4, _AHEAD_BYTES // max(per, 1))))


def _split_point(index: VideoIndex, targets: list[int]) -> int:
    """Index into ``targets`` where a second decoder should take over (0 = do not split).

    Groups never share a GOP segment (references never cross one), and the split balances
    the frames each decoder must decode (segment start to the last frame needed in it).
    """
    if index.pts is None or len(targets) < 2:
        return 0
    starts = [index.segment_start(t) for t in targets]
    work = []  # (position in targets, frames to decode in this segment)
    for i, t in enumerate(targets):
        if i == 0 or starts[i] != starts[i - 1]:
            work.append([i, 0])
        work[-1][1] = min(t + 2, index.next_segment_start(t)) - starts[i]
    total = sum(w for _, w in work)
    best, best_cost, done = 0, total, 0
    for j in range(len(work) - 1):
        done += work[j][1]
        cost = max(done, total - done)
        if cost < best_cost:
            best, best_cost = work[j + 1][0], cost
    # Not worth a second decoder (and its start-up) when it would save little.
    return best if best_cost <= 0.8 * total else 0


class _Background:
    """Run a generator in a daemon thread (started at once), handing items over a bounded queue.

    The factory receives the queue's backlog (``qsize``) so the producer can take on more
    work while the consumer lags behind. ``close`` stops the thread whether or not the
    items were consumed.
    """

    def __init__(self, factory: Callable[[Callable[[], int]], Iterator[_T]], maxsize: int = 4) -> None:
        self._q: queue.Queue = queue.Queue(maxsize)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(factory,), name="cv_reader-decode", daemon=True
        )
        self._thread.start()

    def _run(self, factory: Callable[[Callable[[], int]], Iterator[_T]]) -> None:
        q = self._q
        try:
            gen = factory(q.qsize)
            try:
                for item in gen:
                    if not self._put(("item", item)):
                        return
            finally:
                gen.close()
            self._put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            self._put(("error", exc))

    def _put(self, msg: tuple) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(msg, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[_T]:
        while True:
            kind, val = self._q.get()
            if kind == "item":
                yield val
            elif kind == "end":
                return
            else:
                raise val

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._q.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()


_Factory = Callable[[Callable[[], int]], Iterator[_Bundle]]


def _chain(specs: list[tuple[_Factory, int]]) -> Iterator[_Bundle]:
    """Items of every ``(factory, queue size)`` part in order, each produced in its own thread.

    All threads start at the first ``next`` (not before: an iterator never used decodes
    nothing) and are stopped when iteration ends or is abandoned.
    """
    parts: list[_Background] = []
    try:
        for factory, maxsize in specs:
            parts.append(_Background(factory, maxsize))
        for part in parts:
            yield from part
    finally:
        for part in parts:
            part.close()


def _is_anchor(pict: str) -> bool:
    """True for I/P-type pictures: the frames that close a run of B-frames."""
    return pict in ("I", "P", "SI", "SP", "S")


def _slice_ref_idc(data: bytes, length_size: int) -> int | None:
    """Largest ``nal_ref_idc`` over the slice NAL units of one H.264 packet (None: no slice found).

    ``length_size`` is the byte size of the NAL length prefixes (avcC streams: MP4, MKV);
    0 means Annex B start codes (MPEG-TS, raw streams).
    """
    headers = []
    if length_size:
        pos = 0
        while pos + length_size < len(data):
            size = int.from_bytes(data[pos : pos + length_size], "big")
            pos += length_size
            if size <= 0 or pos + size > len(data):
                return None  # not length-prefixed after all: trust nothing in this packet
            headers.append(data[pos])
            pos += size
    else:
        pos = data.find(b"\x00\x00\x01")
        while 0 <= pos < len(data) - 3:
            headers.append(data[pos + 3])
            pos = data.find(b"\x00\x00\x01", pos + 3)
    ref_idc = [h >> 5 & 3 for h in headers if h & 0x1F in (1, 5)]  # coded slice, non-IDR / IDR
    return max(ref_idc) if ref_idc else None


class _ReferenceSource(FrameSource):
    """A :class:`FrameSource` that also notes whether each H.264 picture in ``frames`` is a reference.

    Why: FFmpeg does not say which frames others predict from, and with x264's b-pyramid
    some B-frames are references. Each slice's NAL header says so (``nal_ref_idc``, what
    ``skip_frame=NONREF`` goes by), and every packet passes through :meth:`_decode_one`
    before its frame comes out, so ``refs[i]`` (display index -> bool) is filled in by the
    time frame ``i`` is yielded, without a second demux pass. A picture whose packet
    holds no parsable slice gets no entry.
    """

    def __init__(
        self, index: VideoIndex, needed: Iterable[int], frames: set[int], refs: dict[int, bool], **kwargs
    ) -> None:
        super().__init__(index, needed, **kwargs)
        self.refs, self._frames = refs, frames
        self._pts_to_idx = {int(p): i for i, p in enumerate(index.pts)}
        self._length_size: int | None = None

    def _decode_one(self, cc, pkt) -> list[av.VideoFrame]:
        i = self._pts_to_idx.get(pkt.pts) if pkt is not None else None  # None without a timestamp
        if i is not None and i in self._frames and i not in self.refs and pkt.size:
            if self._length_size is None:
                extra = bytes(cc.extradata or b"")  # an avcC record: length-prefixed NAL units
                self._length_size = (extra[4] & 3) + 1 if len(extra) > 4 and extra[0] == 1 else 0
            ref_idc = _slice_ref_idc(bytes(pkt), self._length_size)
            if ref_idc is not None:
                self.refs[i] = ref_idc > 0
        return FrameSource._decode_one(cc, pkt)


class _BundleSchedule:
    """Which frames to decode for a list of target frames, what each target's record reads, and when it can go.

    The steps of :func:`_bundles`, in the order a frame meets them: :meth:`keep` (is a decoded frame held, and
    for a target its vectors read), :meth:`drain` (every target whose record can be built is handed over:
    :meth:`ready`, :meth:`bundle`), :meth:`prune` (frames no later record reads are dropped).
    """

    def __init__(self, index: VideoIndex, targets: list[int], size: tuple[int, int], threads: int,
                 rgb_size: tuple[int, int] | None, block: int, search: int, backlog: Callable[[], int],
                 eager: bool):
        self.index, self.targets, self.size, self.rgb_size = index, targets, size, rgb_size
        self.block, self.search, self.backlog, self.eager = block, search, backlog, eager
        self.n = index.num_frames
        self.export = index.exports_mvs
        self.linear = index.pts is None
        # Without bitstream vectors only t-1 / t+1 (block matching) are ever used.
        self.back, self.ahead = (PAST_REACH, FUTURE_REACH) if self.export else (1, 1)
        self.windows = {t: self.window(t) for t in targets}
        self.tset = set(targets)
        self.needed = set(targets)  # decoded even if FFmpeg could skip them: targets and their t-1 / t+1
        for t in targets:
            if t > 0:
                self.needed.add(t - 1)
            if t + 1 < self.n:
                self.needed.add(t + 1)
        self.span = {i for w in self.windows.values() for i in w} if self.export else self.needed
        self.flags: dict[int, bool] = {}  # H.264: display index -> reference picture, filled while decoding
        if self.export and index.codec == "h264" and not self.linear:
            self.source: FrameSource = _ReferenceSource(index, self.needed, self.span, self.flags,
                                                        export_mvs=self.export, threads=threads)
        else:
            self.source = FrameSource(index, self.needed, export_mvs=self.export, threads=threads)
        self.held: dict[int, _Held] = {}
        self.pending: list[int] = []  # targets decoded but not yet handed over
        self.ti = 0  # the next target to hand over
        self.last_out = -1  # the last display index decoded

    def seg(self, i: int) -> int:
        return 0 if self.linear else self.index.segment_start(i)

    def next_seg(self, i: int) -> int:
        return self.n if self.linear else self.index.next_segment_start(i)

    def window(self, t: int) -> range:
        """Display indices the record of ``t`` may read: its candidates and ``t`` itself.

        Past candidates stay in ``t``'s segment; future ones may reach the keyframe that
        starts the next one (an open-GOP B-frame's reference), which is decoded after it.
        """
        return range(max(self.seg(t), t - self.back), min(t + self.ahead, self.next_seg(t), self.n - 1) + 1)

    def is_ref(self, i: int, pict: str) -> bool:
        """Whether frame ``i`` is a reference candidate: a frame the decoder always decodes.

        A linear decode decodes every frame, so all are candidates. Otherwise H.264 says
        per picture (slice headers); in the other codecs (and where a header could not be
        read) B-frames are never references and FFmpeg skips them unless asked for.
        """
        if self.linear:
            return True
        known = self.flags.get(i)
        return known if known is not None else pict not in ("B", "BI")

    def keep(self, idx: int, frame) -> None:
        """Hold decoded frame ``idx`` if a record reads it; a target's vectors and the directions they point."""
        if idx not in self.needed and idx not in self.span:
            return  # most frames of a long video: decoded only because later ones predict from them
        pict = pict_type_name(frame)
        ref = idx in self.span and self.is_ref(idx, pict)
        if idx not in self.needed and not ref:
            return
        target = idx in self.tset
        h = _Held(idx, pict, frame, self.size, self.rgb_size if target else None, ref=ref)
        if target:
            if self.export:
                sd = frame.side_data.get(_MV_TYPE)
                h.mvs = sd.to_ndarray() if sd is not None else None
                if h.mvs is not None and len(h.mvs):
                    src = h.mvs["source"]
                    h.sides = (bool((src < 0).any()), bool((src > 0).any()))
            self.pending.append(idx)
        self.held[idx] = h
        self.prune()

    def ready(self, t: int, eof: bool) -> bool:
        """Whether every frame ``t``'s record may read has been decoded (or never will be)."""
        if eof:
            return True
        if t + 1 < self.n and self.last_out < t + 1:
            return False
        if self.held[t].sides[1]:
            # Future candidates end at the first I/P frame after t (or the window's end).
            if self.last_out < self.windows[t][-1] and not any(
                _is_anchor(self.held[i].pict) for i in range(t + 1, self.last_out + 1) if i in self.held
            ):
                return False
        return True

    def bundle(self, t: int) -> _Bundle:
        """The record of target ``t``: its frame, the candidates its vectors may point at, block matching's frame."""
        held, win = self.held, self.windows[t]
        past: list[tuple[int, _Held]] = []
        fut: list[tuple[int, _Held]] = []
        has_past, has_future = held[t].sides
        # Candidates only for a direction the bitstream vectors use (the others are never read).
        # t-1 and t+1 take part even when no frame predicts from them: a cell without a vector
        # is predicted at zero motion, its residual the change since the neighbouring frame.
        if has_past:
            past = [
                (i - t, held[i])
                for i in range(t - 1, win.start - 1, -1)
                if i in held and (held[i].ref or i == t - 1)
            ]
        if has_future:
            for i in range(t + 1, win.stop):
                if i in held and (held[i].ref or i == t + 1):
                    fut.append((i - t, held[i]))
                    if _is_anchor(held[i].pict):
                        break  # a B-frame's future references are decoded before it: none lie beyond
        if t - 1 >= self.seg(t) and (t - 1) in held:
            est = (-1, held[t - 1])
        elif (t + 1) in held:
            est = (1, held[t + 1])
        else:
            est = None
        bd = _Bundle(cur=held[t], past=past, future=fut, est_ref=est)
        # Load balancing: while the consumer lags behind (items waiting in the queue), the
        # decode thread also computes the vector field; otherwise the consumer does it. The
        # second decode thread (``eager``) also converts every frame the record reads, so a
        # queued bundle holds planes, not decoder frames. Either way the result is the same.
        # (Converting a dozen candidate planes here whenever the consumer lags made the
        # decode thread, Stage 1's critical path on H.264, slower.)
        if self.backlog() >= 1 or self.eager:
            _compute_fields(bd, self.index, self.block, self.search)
            if bd.field is None:  # no usable vectors (all intra): block matching reads est_ref only
                bd.past, bd.future = [], []
        if self.eager:
            reads = [*bd.past, *bd.future] if bd.field is not None else ([est] if est else [])
            for _, h in reads:
                h.luma  # noqa: B018 - converts and releases the decoder frame
            bd.cur.rgb  # noqa: B018
        return bd

    def prune(self) -> None:
        """Drop the frames before the next target's window: no later record reads them."""
        lo = self.windows[self.targets[self.ti]].start if self.ti < len(self.targets) else self.n
        for i in [i for i in self.held if i < lo]:
            del self.held[i]

    def drain(self, eof: bool) -> Iterator[_Bundle]:
        """Hand over, in order, every pending target whose record can be built now."""
        targets, pending = self.targets, self.pending
        while (self.ti < len(targets) and pending and pending[0] == targets[self.ti]
               and self.ready(targets[self.ti], eof)):
            pending.pop(0)
            yield self.bundle(targets[self.ti])
            self.ti += 1
            self.prune()
        self.source.busy = bool(pending)

    def run(self) -> Iterator[_Bundle]:
        for idx, frame in self.source.frames():
            if idx <= self.last_out:
                continue  # re-decoded after a fallback seek
            self.last_out = idx
            self.keep(idx, frame)
            yield from self.drain(False)
            if self.ti >= len(self.targets):
                self.source.busy = False
                break
        yield from self.drain(True)
        if self.ti < len(self.targets):
            raise VideoReadError(
                self.index.path,
                f"could not decode frame(s) {self.targets[self.ti : self.ti + 5]} of {self.n} "
                "(truncated or corrupt stream?)",
            )


def _bundles(
    index: VideoIndex,
    targets: list[int],
    size: tuple[int, int],
    threads: int,
    rgb_size: tuple[int, int] | None,
    block: int,
    search: int,
    backlog: Callable[[], int],
    eager: bool = False,
) -> Iterator[_Bundle]:
    """Bundles for ``targets`` (ascending), decoding only the segments that reach them (:class:`_BundleSchedule`).

    ``eager`` converts every frame a bundle refers to right away (in this thread), so a
    bundle waiting in a queue holds small planes instead of decoder frames.
    """
    if not targets:
        return
    yield from _BundleSchedule(index, targets, size, threads, rgb_size, block, search, backlog, eager).run()


def _compute_fields(bd: _Bundle, index: VideoIndex, block: int, search: int) -> None:
    """Bitstream field on the processing grid; block matching if there is none (idempotent)."""
    if bd.field is not None or bd.est_field is not None:
        return
    cur = bd.cur.luma
    mvs = bd.cur.mvs
    if mvs is not None and len(mvs) and (bd.past or bd.future):
        f = field_from_side_data(mvs, index.height, index.width, size=cur.shape)
        if not f.empty:
            bd.field = f
    if (
        bd.field is None
        and bd.est_field is None
        and bd.est_ref is not None
        and bd.est_ref[1].luma.shape == cur.shape
    ):
        bd.est_field = estimate_motion(cur, bd.est_ref[1].luma, block, search)


def _finalise(
    bd: _Bundle, index: VideoIndex, with_residual: bool, scale: float, block: int = 16, search: int = 16
) -> FrameRecord:
    cur = bd.cur.luma
    h, w = cur.shape
    kind = "estimated"
    _compute_fields(bd, index, block, search)
    if bd.field is not None:
        comp = compensate_bitstream(
            cur, bd.field, [(d, f.luma) for d, f in bd.past], [(d, f.luma) for d, f in bd.future]
        )
        kind = "bitstream"
    elif bd.est_field is not None and bd.est_ref is not None:
        comp = compensate_estimated(cur, bd.est_ref[1].luma, bd.est_ref[0], bd.est_field)
    else:
        hc, wc = grid_shape(h, w)
        comp = Compensation(
            pred=cur.astype(np.int16),
            mv=np.zeros((hc, wc, 2), np.int16),
            mv_ref=np.zeros((hc, wc), np.int8),
        )
    return FrameRecord(
        index=bd.cur.idx,
        timestamp=index.timestamp(bd.cur.idx),
        pict_type=bd.cur.pict,
        luma=cur,
        mv=comp.mv,
        mv_ref=comp.mv_ref,
        residual=residual_from(cur, comp.pred) if with_residual else None,
        mv_source=kind,
        rotation=bd.cur.rotation,
        scale=scale,
        rgb=bd.cur.rgb,
    )


__all__ = ["FrameRecord", "probe", "read_video", "work_size"]
