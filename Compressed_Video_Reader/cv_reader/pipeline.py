"""Stage-1 selection and the in-memory ``codec_patchify`` path.

Why: evaluation and chat call :func:`codec_patchify` per video, Stage 1 writes the same
selection to disk; both run :func:`select_patches`, which streams records from the
reader (one decode pass, only the sampled frames and their references) and keeps just a
``[T, grid, grid]`` score volume (plus the T canvas images when mosaics are wanted).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from .camera import MODES as MV_COMPENSATE_MODES
from .canvas import CanvasGeometry, display_hw, rotate_display
from .decode import FrameSource, VideoIndex, build_index, rgb_resized
from .errors import VideoReadError
from .mosaic import pack_mosaics
from .reader import FrameRecord, read_video
from .saliency import FUSE_MODES, fused_energy
from .selection import PADDING_POLICIES, global_topk, sample_frame_ids_uniform


@dataclass(frozen=True)
class Stage1Params:
    """Stage-1 parameters with the upstream names and defaults (those of the Stage-1 CLI).

    The model's codec inputs use :data:`LLAVA_CODEC` instead (``docs/formats.md``).
    """

    sequence_length: int = 64
    sample_start_offset: int = 0
    patch_size: int = 16
    square_size: int = 576
    keep_frames_equiv: int = 8
    padding_policy: str = "exclude"
    keep_uniform_first: bool = False
    keep_first_full_frame: bool = False
    mv_unit_div: float = 4.0
    mv_pct: float = 95.0
    res_pct: float = 95.0
    fuse_mode: str = "weighted"
    w_mv: float = 1.0
    w_res: float = 1.0
    mv_compensate: str = "median"
    res_use_grad: bool = False
    # Motion estimation for frames without bitstream vectors (not in upstream).
    block_size: int = 16
    search_range: int = 16
    analysis_max_side: int | None = 288
    threads: int = 0

    def __post_init__(self) -> None:
        if self.sequence_length <= 0:
            raise ValueError(f"sequence_length must be > 0, got {self.sequence_length}")
        if self.keep_frames_equiv <= 0:
            raise ValueError(f"keep_frames_equiv must be > 0, got {self.keep_frames_equiv}")
        if self.padding_policy not in PADDING_POLICIES:
            raise ValueError(f"padding_policy must be one of {PADDING_POLICIES}")
        if self.fuse_mode not in FUSE_MODES:
            raise ValueError(f"fuse_mode must be one of {FUSE_MODES}")
        if self.mv_compensate not in MV_COMPENSATE_MODES:
            raise ValueError(f"mv_compensate must be one of {MV_COMPENSATE_MODES}")
        if self.mv_unit_div <= 0:
            raise ValueError("mv_unit_div must be > 0")
        CanvasGeometry(1, 1, self.square_size, self.patch_size)  # validates size/patch

    @classmethod
    def from_kwargs(cls, **kw: Any) -> Stage1Params:
        return cls().replace(**kw)

    def replace(self, **kw: Any) -> Stage1Params:
        """A copy with some parameters changed; unknown names raise ``TypeError``."""
        unknown = set(kw) - {f.name for f in fields(self)}
        if unknown:
            known = [f.name for f in fields(self)]
            raise TypeError(f"unknown codec parameter(s): {sorted(unknown)}; known: {known}")
        return dataclasses.replace(self, **kw)


#: The codec configuration of the LLaVA pipeline: what the model's codec inputs are made with
#: wherever they are produced (online in chat and evaluation, Stage-2 packs for training).
#: T 64 frames, 8 mosaics of 576 x 576 in 16 px patches (K = 10,368), padding ``zero``, frame
#: t = 0 complete in mosaic 0, median camera-motion compensation. The Stage-1 CLI keeps the
#: upstream defaults (:class:`Stage1Params`: ``exclude``, no full first frame) unless run
#: with ``--preset llava``.
LLAVA_CODEC = Stage1Params(padding_policy="zero", keep_first_full_frame=True)


@dataclass
class Selection:
    """Stage-1 result for one video."""

    thw: np.ndarray  # int32 [K, 3]
    frame_ids: np.ndarray  # int32 [T]
    geometry: CanvasGeometry
    scores: np.ndarray  # float32 [T, grid, grid]
    index: VideoIndex
    rotation: int = 0
    mv_sources: list[str] = field(default_factory=list)
    canvases: np.ndarray | None = None  # uint8 [T, S, S, 3] when requested

    @property
    def k(self) -> int:
        return int(self.thw.shape[0])


def select_patches(
    path: str | os.PathLike,
    params: Stage1Params | None = None,
    *,
    with_canvases: bool = False,
    index: VideoIndex | None = None,
    on_record: Callable[[FrameRecord], None] | None = None,
) -> Selection:
    """Sample T frames, score every canvas patch by fused MV/residual energy, pick top-K.

    ``on_record`` sees every decoded :class:`FrameRecord` (e.g. to dump it) without a second decode.
    """
    p = params or Stage1Params()
    index = index or build_index(path, keep_open=True)
    frame_ids = sample_frame_ids_uniform(index.num_frames, p.sequence_length, p.sample_start_offset)
    uniq = sorted(set(frame_ids))
    # Rotation is only known from decoded frames; the RGB size must be fixed before decoding,
    # so resize in coded orientation to the size that the display-oriented canvas needs.
    geo = None
    scores_by_id: dict[int, np.ndarray] = {}
    canv_by_id: dict[int, np.ndarray] = {}
    sources: list[str] = []
    chunk: list[FrameRecord] = []
    rotation = 0
    for rec in _records_with_canvas(index, uniq, p, with_canvases):
        if geo is None:
            rotation = rec.rotation
            dh, dw = display_hw(index.height, index.width, rotation)
            geo = CanvasGeometry(dh, dw, p.square_size, p.patch_size)
            if p.padding_policy == "exclude" and not geo.valid_mask.any():
                raise VideoReadError(
                    index.path,
                    f"frame {dw}x{dh} maps to a canvas content region smaller "
                    f"than one {p.patch_size}px patch; nothing can be selected",
                )
        chunk.append(rec)
        sources.append(rec.mv_source)
        if on_record is not None:
            on_record(rec)
        if with_canvases:
            canv_by_id[rec.index] = geo.place(rotate_display(rec.rgb, rotation))
        if len(chunk) >= _SCORE_BATCH:
            _score_chunk(chunk, p, geo, rotation, scores_by_id)
    if chunk:
        _score_chunk(chunk, p, geo, rotation, scores_by_id)
    if geo is None:
        raise VideoReadError(index.path, "no frames could be decoded")
    scores = np.stack([scores_by_id[i] for i in frame_ids]).astype(np.float32)
    top = global_topk(
        scores,
        geo.valid_mask,
        p.keep_frames_equiv,
        p.padding_policy,
        p.keep_uniform_first,
        p.keep_first_full_frame,
    )
    canvases = np.stack([canv_by_id[i] for i in frame_ids]) if with_canvases else None
    return Selection(
        thw=top.thw,
        frame_ids=np.asarray(frame_ids, np.int32),
        geometry=geo,
        scores=scores,
        index=index,
        rotation=rotation,
        mv_sources=sources,
        canvases=canvases,
    )


_SCORE_BATCH = 16  # frames scored per batch: fewer numpy calls, bounded memory


def _score_chunk(
    chunk: list[FrameRecord], p: Stage1Params, geo: CanvasGeometry, rotation: int, out: dict[int, np.ndarray]
) -> None:
    """Fused energy and canvas patch scores of a batch of records (emptied afterwards)."""
    energy = fused_energy(
        np.stack([r.mv for r in chunk]),
        np.stack([r.mv_ref for r in chunk]),
        np.stack([r.residual for r in chunk]),
        mv_unit_div=p.mv_unit_div,
        mv_pct=p.mv_pct,
        res_pct=p.res_pct,
        fuse_mode=p.fuse_mode,
        w_mv=p.w_mv,
        w_res=p.w_res,
        mv_compensate=p.mv_compensate,
        res_use_grad=p.res_use_grad,
    )
    scores = geo.patch_scores(rotate_display(energy, rotation, axes=(1, 2)))
    for r, s in zip(chunk, scores):
        out[r.index] = s
    chunk.clear()


def _records_with_canvas(index: VideoIndex, ids: list[int], p: Stage1Params, with_canvases: bool):
    rgb_size = None
    if with_canvases:
        rgb_size = _coded_rgb_size(index, p, _peek_rotation(index))
    return read_video(
        index.path,
        ids,
        True,
        block_size=p.block_size,
        search_range=p.search_range,
        max_side=p.analysis_max_side,
        threads=p.threads,
        rgb_size=rgb_size,
        index=index,
    )


def _peek_rotation(index: VideoIndex) -> int:
    """Display rotation of the stream (decodes the first frame only)."""
    src = FrameSource(index, [0], export_mvs=False, threads=1)
    for _, frame in src.frames():
        return int(getattr(frame, "rotation", 0) or 0)
    return 0


def _coded_rgb_size(index: VideoIndex, p: Stage1Params, rotation: int) -> tuple[int, int]:
    """(width, height) to resize coded frames to, so the rotated result fills the canvas content."""
    dh, dw = display_hw(index.height, index.width, rotation)
    hn, wn = CanvasGeometry(dh, dw, p.square_size, p.patch_size).content_hw
    return (hn, wn) if (int(round(rotation / 90.0)) % 2) else (wn, hn)


def _checked_ids(index: VideoIndex, frame_ids: Iterable[int]) -> list[int]:
    ids = [int(i) for i in frame_ids]
    bad = [i for i in ids if i < 0 or i >= index.num_frames]
    if bad:
        raise VideoReadError(
            index.path, f"frame ids {bad[:5]} out of range for a {index.num_frames}-frame video"
        )
    return ids


def _decode_frames(
    index: VideoIndex, ids: list[int], threads: int, convert: Callable[[av.VideoFrame], np.ndarray]
) -> list[np.ndarray]:
    """``convert(frame)`` of each wanted display frame, in the order of ``ids`` (repeats allowed)."""
    wanted = set(ids)
    got: dict[int, np.ndarray] = {}
    for idx, frame in FrameSource(index, wanted, export_mvs=False, threads=threads).frames():
        if idx in wanted and idx not in got:
            got[idx] = convert(frame)
            if len(got) == len(wanted):
                break
    missing = sorted(wanted - set(got))
    if missing:
        raise VideoReadError(
            index.path, f"could not decode frame(s) {missing[:5]} (truncated or corrupt stream?)"
        )
    return [got[i] for i in ids]


def read_frames(
    path: str | os.PathLike, frame_ids: Iterable[int], *, threads: int = 0, index: VideoIndex | None = None
) -> np.ndarray:
    """RGB uint8 ``[T, H, W, 3]`` of display frames ``frame_ids`` at their decoded size, upright.

    Only the wanted frames' GOP segments are decoded (seeking between them); frames carrying
    a display rotation are turned upright, as the codec canvas is.
    """
    index = index or build_index(path)

    def upright(frame: av.VideoFrame) -> np.ndarray:
        return rotate_display(frame.to_ndarray(format="rgb24"), int(getattr(frame, "rotation", 0) or 0))

    return np.stack(_decode_frames(index, _checked_ids(index, frame_ids), threads, upright))


def load_canvases(
    path: str | os.PathLike, frame_ids: np.ndarray, square_size: int, patch_size: int, threads: int = 0
) -> np.ndarray:
    """Decode ``frame_ids`` and map them onto the canvas (RGB ``[T, S, S, 3]``), as Stage 1 does."""
    index = build_index(path)
    ids = _checked_ids(index, frame_ids)
    rotation = _peek_rotation(index)
    p = Stage1Params(square_size=square_size, patch_size=patch_size)
    w, h = _coded_rgb_size(index, p, rotation)
    dh, dw = display_hw(index.height, index.width, rotation)
    geo = CanvasGeometry(dh, dw, square_size, patch_size)
    fmt = VideoReformatter()

    def on_canvas(frame: av.VideoFrame) -> np.ndarray:
        return geo.place(rotate_display(rgb_resized(frame, w, h, fmt), rotation))

    return np.stack(_decode_frames(index, ids, threads, on_canvas))


def stage1_meta(sel: Selection, p: Stage1Params, sample_id: str = "", sample_key: str = "") -> dict:
    """Upstream-compatible ``meta.json`` content (plus a few extra diagnostic fields)."""
    geo = sel.geometry
    vm = geo.valid_mask
    pol = p.padding_policy
    bad = int((~vm[sel.thw[:, 1], sel.thw[:, 2]]).sum()) if sel.k else 0
    return {
        "sample_id": str(sample_id),
        "sample_key": str(sample_key),
        "video": str(sel.index.path),
        "T": int(p.sequence_length),
        "frame_ids": None,
        "preprocess": f"square{p.square_size}",
        "square_size": int(p.square_size),
        "patch": int(p.patch_size),
        "keep_frames_equiv": int(p.keep_frames_equiv),
        "padding_policy": pol,
        "keep_uniform_first": bool(p.keep_uniform_first),
        "keep_first_full_frame": bool(p.keep_first_full_frame),
        "H0": int(geo.height),
        "W0": int(geo.width),
        "pad_info": geo.pad_info(),
        "hb": geo.grid,
        "wb": geo.grid,
        "S_total": geo.grid * geo.grid,
        "S_valid": int(vm.sum()),
        "K": sel.k,
        "padding_patch_filtered": 0,
        "padding_patches_selected": bad,
        "valid_ranges": geo.valid_ranges(),
        "codec": sel.index.codec,
        "num_frames": sel.index.num_frames,
        "rotation": int(sel.rotation),
        "mv_source_counts": {s: sel.mv_sources.count(s) for s in sorted(set(sel.mv_sources))},
        "params": asdict(p),
    }


@dataclass
class CodecPatches:
    """Codec-style patch input of one video: the one result type, computed or read from a pack.

    ``positions[j]`` is the ``(t, h, w)`` of the j-th mosaic slot, mosaic by mosaic in raster
    order (``docs/formats.md``). ``frame_ids`` (source frame of each ``t``) and ``meta`` are
    known when the patches were computed here or the pack recorded them.
    """

    mosaics: np.ndarray  # uint8 [N, S, S, 3]
    positions: np.ndarray  # int32 [K, 3] (t, h, w)
    frame_ids: np.ndarray | None = None  # int32 [T]
    meta: dict = field(default_factory=dict)

    @property
    def num_images(self) -> int:
        return int(self.mosaics.shape[0])


def codec_patchify(
    path: str | os.PathLike,
    params: Stage1Params | None = None,
    *,
    num_images: int | None = None,
    layout: str = "time_spatial",
    **overrides: Any,
) -> CodecPatches:
    """Select codec-style patches of ``path`` and pack them into ``N`` mosaics in memory.

    ``params`` defaults to :data:`LLAVA_CODEC` (the model's configuration); keyword
    ``overrides`` change single Stage-1 parameters (``sequence_length=16, square_size=64``).
    ``num_images`` defaults to ``keep_frames_equiv``.
    """
    p = (params or LLAVA_CODEC).replace(**overrides)
    n = int(num_images or p.keep_frames_equiv)
    sel = select_patches(path, p, with_canvases=True)
    mosaics, positions = pack_mosaics(
        sel.canvases,
        sel.thw,
        p.patch_size,
        n,
        p.padding_policy,
        sel.geometry.valid_ranges(),
        layout,
        first_full=bool(p.keep_first_full_frame),
    )
    meta = stage1_meta(sel, p)
    meta["num_images"] = n
    meta["layout"] = layout
    return CodecPatches(mosaics=mosaics, positions=positions, frame_ids=sel.frame_ids, meta=meta)


__all__ = [
    "LLAVA_CODEC",
    "CodecPatches",
    "Selection",
    "Stage1Params",
    "codec_patchify",
    "load_canvases",
    "read_frames",
    "select_patches",
    "stage1_meta",
]
