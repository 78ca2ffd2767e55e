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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .motion import CELL, BitstreamField, edge_pad, grid_shape


def cells_to_pixels(a: np.ndarray, cell: int = CELL) -> np.ndarray:
    """Nearest upsample ``[Hc, Wc]`` -> ``[Hc*cell, Wc*cell]`` (no cropping)."""
    hc, wc = a.shape
    return np.broadcast_to(a[:, None, :, None], (hc, cell, wc, cell)).reshape(hc * cell, wc * cell)


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
        self, iy: np.ndarray, ix: np.ndarray, sel: np.ndarray | None = None, step: int = 1
    ) -> np.ndarray:
        """Flat index ``[hc, c, wc, c]`` (``c = cell // step``) of integer source positions."""
        hc, wc = iy.shape
        c, m, wp = self.cell, self.m, self.wp
        cb = (np.arange(hc)[:, None] * c + iy + m) * wp + np.arange(wc)[None, :] * c + ix + m
        if sel is not None:
            cb = cb + sel * self.plane
        r = np.arange(0, c, step)
        off = r[:, None] * wp + r[None, :]
        return cb[:, None, :, None] + off[None, :, None, :]


def _predict(stack: _RefStack, mv: np.ndarray, sel: np.ndarray | None, h: int, w: int) -> np.ndarray:
    hc, wc = mv.shape[:2]
    mx = mv[..., 0].astype(np.intp)
    my = mv[..., 1].astype(np.intp)
    idx = stack.index(my >> 2, mx >> 2, sel)
    flat, wp = stack.flat, stack.wp
    a = flat.take(idx)
    b = flat[1:].take(idx)
    c = flat[wp:].take(idx)
    d = flat[wp + 1 :].take(idx)
    fx = (mx & 3).astype(np.int16)[:, None, :, None]
    fy = (my & 3).astype(np.int16)[:, None, :, None]
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
    return top.reshape(hc * stack.cell, wc * stack.cell)[:h, :w]


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


def _sub_sad(cur4: np.ndarray, stack: _RefStack, k: int, mv: np.ndarray, step: int = 2) -> np.ndarray:
    """Per-cell SAD of the integer-pel prediction from candidate ``k``, on a pixel subsample."""
    iy = (mv[..., 1].astype(np.intp) + 2) >> 2
    ix = (mv[..., 0].astype(np.intp) + 2) >> 2
    p = stack.flat[k * stack.plane :].take(stack.index(iy, ix, step=step))
    sub = cur4[:, ::step, :, ::step]
    return np.abs(np.subtract(sub, p, dtype=np.int16)).sum(axis=(1, 3), dtype=np.int32)


def _pad_cells(img: np.ndarray, cell: int = CELL) -> np.ndarray:
    """``img`` edge-padded to whole cells, viewed as ``[hc, cell, wc, cell]``."""
    h, w = img.shape
    hc, wc = grid_shape(h, w, cell)
    if (hc * cell, wc * cell) != (h, w):
        img = edge_pad(img, 0, hc * cell - h, 0, wc * cell - w)
    return img.reshape(hc, cell, wc, cell)


@dataclass
class Compensation:
    """Result of motion compensation for one frame."""

    pred: np.ndarray  # int16 [H, W]
    mv: np.ndarray  # int16 [Hc, Wc, 2] motion direction (see reader docs), quarter-pel
    mv_ref: np.ndarray  # int8 [Hc, Wc] signed display distance to the reference; 0 = none


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
    """
    h, w = cur.shape
    hc, wc = grid_shape(h, w)
    cur_pad = _pad_cells(cur)
    mv = np.zeros((hc, wc, 2), np.int16)
    mv_ref = np.zeros((hc, wc), np.int8)
    preds: dict[str, np.ndarray] = {}
    for name, vecs, has, cands, sign in (
        ("past", field.past, field.has_past, past, -1),
        ("future", field.future, field.has_future, future, 1),
    ):
        if not has.any() or not cands:
            continue
        stack = _RefStack([ref for _, ref in cands], hc, wc, _RefStack.margin(vecs))
        sel = None
        if len(cands) > 1:
            sads = np.stack([_sub_sad(cur_pad, stack, k, vecs) for k in range(len(cands))])
            sel = np.argmin(sads, axis=0)
        dists = np.asarray([d for d, _ in cands], np.int64)[sel if sel is not None else 0]
        if np.ndim(dists) == 0:
            dists = np.full((hc, wc), int(dists), np.int64)
        preds[name] = _predict(stack, vecs, sel, h, w)
        use = has & (mv_ref == 0)
        mv[use] = (sign * vecs[use]).astype(np.int16)
        mv_ref[use] = np.clip(dists[use], -127, 127).astype(np.int8)

    def pix(mask: np.ndarray) -> np.ndarray:
        return cells_to_pixels(mask)[:h, :w]

    # Cells without a vector in a direction were predicted there at zero motion, so a single
    # direction's prediction already covers intra cells (zero-motion, best-matching candidate).
    if "past" in preds and "future" in preds:
        hp, hf = field.has_past, field.has_future
        pred = np.where(pix(hf & ~hp), preds["future"], preds["past"])
        both = hp & hf
        if both.any():
            avg = (preds["past"].astype(np.int32) + preds["future"] + 1) >> 1
            pred = np.where(pix(both), avg, pred).astype(np.int16)
    elif preds:
        pred = next(iter(preds.values()))
    else:
        nearest = past[0][1] if past else (future[0][1] if future else cur)
        pred = nearest.astype(np.int16)
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
