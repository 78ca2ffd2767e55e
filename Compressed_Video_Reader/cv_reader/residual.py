"""Motion-compensated prediction and residuals on the luma plane.

Why: stock FFmpeg exports no residuals, so the reader rebuilds them as
``current - prediction``, where the prediction is the reference frame warped by the
per-cell motion field (bilinear quarter-pel interpolation with integer rounding; borders
are edge-extended like a codec's reference). Bitstream vectors only say "past" or
"future"; which decoded frame they point into is resolved per 4x4 cell by picking,
among a few candidate reference frames, the one whose integer-pel prediction has the
lowest SAD. All of it is flat ``take`` gathers on whole frames (no per-block loops).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .motion import CELL, BitstreamField, edge_pad, grid_shape


def cells_to_pixels(a: np.ndarray, cell: int = CELL) -> np.ndarray:
    """Nearest upsample ``[Hc, Wc]`` -> ``[Hc*cell, Wc*cell]`` (no cropping)."""
    hc, wc = a.shape
    return np.broadcast_to(a[:, None, :, None], (hc, cell, wc, cell)).reshape(hc * cell, wc * cell)


@functools.lru_cache(maxsize=16)
def _pixel_cells(n: int, hc: int, wc: int, c: int) -> np.ndarray:
    """Per pixel of ``n`` stacked ``[hc*c, wc*c]`` images, the index of its cell in ``n`` flattened ``[hc, wc]`` fields.

    Why: expanding per-cell values to pixels with one ``take`` keeps every later operation
    on contiguous full-size arrays; broadcasting ``[hc, 1, wc, 1]`` against
    ``[hc, c, wc, c]`` runs numpy inner loops only ``c`` long, several times slower.
    Cached: it depends only on the frame shape.
    """
    cell = (np.arange(hc * c) // c)[:, None] * wc + (np.arange(wc * c) // c)[None, :]
    out = cell[None] + (np.arange(n) * (hc * wc))[:, None, None]
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=16)
def _pixel_origins(hc: int, wc: int, cell: int, wp: int, m: int, step: int) -> np.ndarray:
    """Flat position of each (``step``-subsampled) pixel in a plane padded by ``m`` with row stride ``wp`` (cached)."""
    ys = np.arange(0, hc * cell, step) + m
    xs = np.arange(0, wc * cell, step) + m
    out = ys[:, None] * wp + xs[None, :]
    out.setflags(write=False)
    return out


class _RefStack:
    """Candidate reference planes, edge-padded by ``m`` and stacked flat (built once per use).

    Edge padding is what a codec does for vectors pointing outside the frame, so gathers
    need no per-pixel clipping.
    """

    def __init__(self, refs: Sequence[np.ndarray], hc: int, wc: int, m: int, cell: int = CELL) -> None:
        h, w = refs[0].shape
        hp, wp = hc * cell + 2 * m + 1, wc * cell + 2 * m + 1
        buf = np.empty((len(refs), hp, wp), np.uint8)
        for k, r in enumerate(refs):
            d = buf[k]
            d[m : m + h, m : m + w] = r
            d[:m, m : m + w] = r[0]
            d[m + h :, m : m + w] = r[-1]
            d[:, :m] = d[:, m : m + 1]
            d[:, m + w :] = d[:, m + w - 1 : m + w]
        self.flat = buf.ravel()
        self.wp, self.plane, self.m, self.cell = wp, hp * wp, m, cell

    @staticmethod
    def margin(*fields: np.ndarray) -> int:
        """Padding needed for quarter-pel vectors ``fields`` (+1 for interpolation/rounding)."""
        return max(int(np.abs(f).max(initial=0)) for f in fields) // 4 + 2

    def index(
        self, iy: np.ndarray, ix: np.ndarray, sel: np.ndarray | int | None = None, step: int = 1
    ) -> np.ndarray:
        """Flat index ``[n, hc*c, wc*c]`` (``c = cell // step``) of integer source positions.

        ``iy``/``ix``/``sel`` are per-cell ``[hc, wc]`` or ``[n, hc, wc]`` (several fields at once).
        """
        hc, wc = iy.shape[-2:]
        n = iy.size // (hc * wc)
        shift = iy * self.wp + ix
        if sel is not None:
            shift = shift + np.multiply(sel, self.plane, dtype=np.intp)
        shift = np.broadcast_to(shift, (n, hc, wc)).ravel()
        c = self.cell // step
        return shift.take(_pixel_cells(n, hc, wc, c)) + _pixel_origins(hc, wc, self.cell, self.wp, self.m, step)


def _predict(stack: _RefStack, mv: np.ndarray, sel: np.ndarray | int | None, h: int, w: int) -> np.ndarray:
    """Bilinear prediction(s) ``[..., h, w]`` for vectors ``mv`` ``[..., hc, wc, 2]`` from planes ``sel``."""
    hc, wc = mv.shape[-3:-1]
    lead = mv.shape[:-3]
    mx = mv[..., 0].astype(np.intp)
    my = mv[..., 1].astype(np.intp)
    idx = stack.index(my >> 2, mx >> 2, sel)
    cells = _pixel_cells(idx.shape[0], hc, wc, stack.cell)
    flat, wp = stack.flat, stack.wp
    a = flat.take(idx)
    b = flat[1:].take(idx)
    c = flat[wp:].take(idx)
    d = flat[wp + 1 :].take(idx)
    fx = (mx & 3).astype(np.int16).ravel().take(cells)
    fy = (my & 3).astype(np.int16).ravel().take(cells)
    gx, gy = 4 - fx, 4 - fy
    top = np.multiply(a, gx, dtype=np.int16)
    top += np.multiply(b, fx, dtype=np.int16)
    bot = np.multiply(c, gx, dtype=np.int16)
    bot += np.multiply(d, fx, dtype=np.int16)
    top *= gy
    bot *= fy
    top += bot
    top += 8
    top >>= 4
    return top.reshape(lead + (hc * stack.cell, wc * stack.cell))[..., :h, :w]


def predict(
    refs: Sequence[np.ndarray], mv: np.ndarray, sel: np.ndarray | None = None, cell: int = CELL
) -> np.ndarray:
    """Bilinear quarter-pel prediction from per-cell vectors ``mv`` ([Hc, Wc, 2], FFmpeg sense).

    ``refs`` are candidate reference planes ([H, W] uint8); ``sel`` ([Hc, Wc]) picks one
    per cell (default: the first). Returns int16 ``[H, W]`` (rounded like a codec).
    """
    h, w = refs[0].shape
    hc, wc = mv.shape[:2]
    stack = _RefStack(refs, hc, wc, _RefStack.margin(mv), cell)
    return _predict(stack, mv, sel.astype(np.intp) if (sel is not None and len(refs) > 1) else None, h, w)


def _candidate_sads(cur: np.ndarray, stack: _RefStack, mv: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """Per-cell SAD ``[J, hc, wc]`` of the integer-pel prediction from each plane in ``planes``.

    ``cur`` is the frame padded to whole cells; ``mv`` is ``[J, hc, wc, 2]`` (candidate ``j``
    uses vectors ``mv[j]``). SADs use every second pixel in both directions (2x2 per 4x4
    cell), summed in int16 (at most 4 * 255). Why batched: one gather for all candidates.
    """
    iy = (mv[..., 1].astype(np.intp) + 2) >> 2
    ix = (mv[..., 0].astype(np.intp) + 2) >> 2
    p = stack.flat.take(stack.index(iy, ix, planes[:, None, None], step=2))
    diff = np.abs(np.subtract(cur[::2, ::2], p, dtype=np.int16))  # [J, 2*hc, 2*wc]
    rows = diff[:, 0::2] + diff[:, 1::2]
    return rows[:, :, 0::2] + rows[:, :, 1::2]


def _pad_cells(img: np.ndarray, cell: int = CELL) -> np.ndarray:
    """``img`` edge-padded to whole cells."""
    h, w = img.shape
    hc, wc = grid_shape(h, w, cell)
    if (hc * cell, wc * cell) != (h, w):
        img = edge_pad(img, 0, hc * cell - h, 0, wc * cell - w)
    return img


@dataclass
class Compensation:
    """Result of motion compensation for one frame."""

    pred: np.ndarray  # int16 [H, W]
    mv: np.ndarray  # int16 [Hc, Wc, 2] motion direction (see reader docs), quarter-pel
    mv_ref: np.ndarray  # int8 [Hc, Wc] signed display distance to the reference; 0 = none


@dataclass
class _Direction:
    """One prediction direction of a bitstream field with its candidate reference frames."""

    vecs: np.ndarray  # int32 [Hc, Wc, 2]
    has: np.ndarray  # bool [Hc, Wc]
    cands: Sequence[tuple[int, np.ndarray]]
    sign: int
    first: int = 0  # plane of its first candidate in the shared reference stack


def _choose_planes(cur4: np.ndarray, stack: _RefStack, dirs: list[_Direction]) -> list[np.ndarray | int]:
    """Per direction, the stack plane each cell predicts from (lowest sub-sampled SAD; ties: nearest).

    All candidates of all directions are scored in one batched gather.
    """
    multi = [d for d in dirs if len(d.cands) > 1]
    chosen: dict[int, np.ndarray] = {}
    if multi:
        planes = np.concatenate([np.arange(d.first, d.first + len(d.cands)) for d in multi])
        vecs = np.stack([d.vecs for d in multi for _ in d.cands])
        sads = _candidate_sads(cur4, stack, vecs, planes)
        k = 0
        for d in multi:
            n = len(d.cands)
            chosen[id(d)] = np.argmin(sads[k : k + n], axis=0) + d.first
            k += n
    return [chosen.get(id(d), d.first) for d in dirs]


def compensate_bitstream(
    cur: np.ndarray,
    field: BitstreamField,
    past: Sequence[tuple[int, np.ndarray]],
    future: Sequence[tuple[int, np.ndarray]],
) -> Compensation:
    """Predict ``cur`` from bitstream vectors, choosing each cell's reference frame.

    ``past``/``future`` are ``(signed_distance, luma)`` candidates, nearest first (ties keep
    the first). Bi-predicted cells average both directions; the exported ``mv`` keeps the
    past vector for them. Cells without inter prediction (intra) are predicted at zero
    motion from the best-matching candidate, so their residual is the frame change there.
    Both directions share one reference stack and one batched prediction (fewer numpy
    calls per frame; edge padding makes the wider margin give identical values).
    """
    h, w = cur.shape
    hc, wc = grid_shape(h, w)
    mv = np.zeros((hc, wc, 2), np.int16)
    mv_ref = np.zeros((hc, wc), np.int8)
    dirs = [
        _Direction(vecs, has, cands, sign)
        for vecs, has, cands, sign in (
            (field.past, field.has_past, past, -1),
            (field.future, field.has_future, future, 1),
        )
        if cands and has.any()
    ]
    if not dirs:
        nearest = past[0][1] if past else (future[0][1] if future else cur)
        return Compensation(pred=nearest.astype(np.int16), mv=mv, mv_ref=mv_ref)
    first = 0
    for d in dirs:
        d.first, first = first, first + len(d.cands)
    refs = [ref for d in dirs for _, ref in d.cands]
    dists = np.asarray([dist for d in dirs for dist, _ in d.cands], np.int64)
    stack = _RefStack(refs, hc, wc, _RefStack.margin(*[d.vecs for d in dirs]))
    planes = _choose_planes(_pad_cells(cur), stack, dirs)
    sel = np.stack([np.broadcast_to(np.asarray(pl, np.intp), (hc, wc)) for pl in planes])
    preds = _predict(stack, np.stack([d.vecs for d in dirs]), sel, h, w)  # [D, h, w]
    for d, pl in zip(dirs, sel):
        use = d.has & (mv_ref == 0)
        mv[use] = (d.sign * d.vecs[use]).astype(np.int16)
        mv_ref[use] = np.clip(dists[pl[use]], -127, 127).astype(np.int8)

    # Cells without a vector in a direction were predicted there at zero motion, so a single
    # direction's prediction already covers intra cells (zero-motion, best-matching candidate).
    if len(dirs) == 1:
        return Compensation(pred=preds[0], mv=mv, mv_ref=mv_ref)
    hp, hf = field.has_past, field.has_future
    pred = np.where(cells_to_pixels(hf & ~hp)[:h, :w], preds[1], preds[0])
    both = hp & hf
    if both.any():
        avg = (preds[0].astype(np.int32) + preds[1] + 1) >> 1
        pred = np.where(cells_to_pixels(both)[:h, :w], avg, pred).astype(np.int16)
    return Compensation(pred=pred, mv=mv, mv_ref=mv_ref)


def compensate_estimated(cur: np.ndarray, ref: np.ndarray, dist: int, field: np.ndarray) -> Compensation:
    """Predict ``cur`` from one reference at signed distance ``dist`` with an estimated field."""
    pred = predict([ref], field)
    sign = -1 if dist < 0 else 1
    mv = (sign * field).astype(np.int16)
    mv_ref = np.full(field.shape[:2], np.clip(dist, -127, 127), np.int8)
    return Compensation(pred=pred, mv=mv, mv_ref=mv_ref)


def residual_from(cur: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Signed luma residual ``cur - pred`` as int16."""
    return np.subtract(cur, pred, dtype=np.int16)


__all__ = [
    "Compensation",
    "cells_to_pixels",
    "compensate_bitstream",
    "compensate_estimated",
    "predict",
    "residual_from",
]
