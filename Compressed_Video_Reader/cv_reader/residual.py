"""Motion-compensated prediction and residuals on the luma plane.

Why: stock FFmpeg exports no residuals, so the reader rebuilds them as
``current - prediction``, where the prediction is the reference frame warped by the
per-cell motion field (bilinear quarter-pel interpolation with integer rounding; reads
outside the frame take the nearest edge pixel, like a codec's padded reference).
Bitstream vectors only say "past" or "future"; which decoded frame they point into is
resolved per 4x4 cell by picking, among the candidate reference frames, the one whose
integer-pel prediction of the cell has the lowest SAD.

The per-pixel work runs in compiled kernels (:mod:`.kernels`): one pass over the cells
of a frame does the reference choice, the prediction and the vector bookkeeping, with
no temporary full-frame arrays and with the GIL released (the decode thread keeps going).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .kernels import jit
from .motion import CELL, BitstreamField, grid_shape


@jit(inline=True)
def _clamp(v: int, hi: int) -> int:
    return 0 if v < 0 else (hi if v > hi else v)


@jit(inline=True)
def _predict_cell(refs, k, mx, my, y0, x0, out) -> None:  # pragma: no cover - compiled
    """Bilinear quarter-pel prediction of the 4x4 cell at (y0, x0) from ``refs[k]`` into ``out``."""
    h, w = refs.shape[1], refs.shape[2]
    fx, fy = mx & 3, my & 3
    ix, iy = x0 + (mx >> 2), y0 + (my >> 2)
    gx, gy = 4 - fx, 4 - fy
    if fx == 0 and fy == 0 and 0 <= iy and iy + CELL <= h and 0 <= ix and ix + CELL <= w:
        for yy in range(CELL):  # whole-pixel vector, source inside: the weights reduce to a copy
            for xx in range(CELL):
                out[yy, xx] = refs[k, iy + yy, ix + xx]
        return
    if 0 <= iy and iy + CELL < h and 0 <= ix and ix + CELL < w:  # 5x5 source window inside
        for yy in range(CELL):
            ra = refs[k, iy + yy, ix : ix + CELL + 1]
            rb = refs[k, iy + yy + 1, ix : ix + CELL + 1]
            for xx in range(CELL):
                top = np.int32(ra[xx]) * gx + np.int32(ra[xx + 1]) * fx
                bot = np.int32(rb[xx]) * gx + np.int32(rb[xx + 1]) * fx
                out[yy, xx] = (top * gy + bot * fy + 8) >> 4
        return
    for yy in range(CELL):
        ya, yb = _clamp(iy + yy, h - 1), _clamp(iy + yy + 1, h - 1)
        for xx in range(CELL):
            xa, xb = _clamp(ix + xx, w - 1), _clamp(ix + xx + 1, w - 1)
            top = np.int32(refs[k, ya, xa]) * gx + np.int32(refs[k, ya, xb]) * fx
            bot = np.int32(refs[k, yb, xa]) * gx + np.int32(refs[k, yb, xb]) * fx
            out[yy, xx] = (top * gy + bot * fy + 8) >> 4


@jit(inline=True)
def _best_candidate(cur, refs, lo, hi, mx, my, y0, x0) -> int:  # pragma: no cover - compiled
    """Plane in ``[lo, hi)`` whose integer-pel prediction of the cell has the lowest SAD (first wins ties).

    The SAD covers all 16 pixels of the cell: among the 5-10 candidates a frame has with
    x264's references, a 2x2 sample let grain pick wrong planes (``preset=fast`` B-frames:
    per-frame p95 cell SAD 67 vs 37 with the full cell); the exact quarter-pel SAD would
    lower P-frames' by a further 3-14% for twice the kernel time.

    Most cells and their moved copies lie inside the frame: those skip the edge clamping
    (the same pixels, so the same SADs; the kernel about 10% faster with the up to a dozen
    candidates x264's references give a frame).
    """
    h, w = cur.shape
    iy, ix = (my + 2) >> 2, (mx + 2) >> 2
    best, pick = -1, lo
    ry0, rx0 = y0 + iy, x0 + ix
    if y0 + CELL <= h and x0 + CELL <= w and 0 <= ry0 and ry0 + CELL <= h and 0 <= rx0 and rx0 + CELL <= w:
        for c in range(lo, hi):
            sad = 0
            for sy in range(CELL):
                for sx in range(CELL):
                    sad += abs(np.int32(cur[y0 + sy, x0 + sx]) - np.int32(refs[c, ry0 + sy, rx0 + sx]))
                if best >= 0 and sad >= best:
                    break  # cannot win any more (ties keep the earlier candidate)
            if best < 0 or sad < best:
                best, pick = sad, c
        return pick
    for c in range(lo, hi):
        sad = 0
        for sy in range(CELL):
            py = min(y0 + sy, h - 1)
            ry = _clamp(y0 + sy + iy, h - 1)
            for sx in range(CELL):
                px = min(x0 + sx, w - 1)
                rx = _clamp(x0 + sx + ix, w - 1)
                sad += abs(np.int32(cur[py, px]) - np.int32(refs[c, ry, rx]))
            if best >= 0 and sad >= best:
                break  # cannot win any more (ties keep the earlier candidate)
        if best < 0 or sad < best:
            best, pick = sad, c
    return pick


@jit
def _compensate_kernel(
    cur, refs, past, has_past, future, has_future, n_past, n_future, dists, pred, mv, mv_ref
) -> None:  # pragma: no cover - compiled
    """Predict ``cur`` cell by cell from the past and/or future direction (see :func:`compensate_bitstream`).

    ``refs[:n_past]`` are the past candidates, ``refs[n_past:n_past + n_future]`` the future
    ones (a direction with no candidates is unused); ``dists`` is each plane's signed
    display distance. Writes ``pred`` ``[h, w]``, ``mv`` and ``mv_ref`` (zeroed by the caller).
    """
    h, w = cur.shape
    hc, wc = mv_ref.shape
    cells = np.empty((2, CELL, CELL), np.int32)
    both = n_past > 0 and n_future > 0
    for cy in range(hc):
        for cx in range(wc):
            y0, x0 = cy * CELL, cx * CELL
            # One direction covers every cell (cells without a vector use zero motion from the
            # best-matching candidate). Two: future-only cells take the future prediction,
            # bi-predicted cells the rounded average, all others the past one. A direction
            # whose prediction is not used has no vector here either: it is skipped.
            src = 0 if n_past > 0 else 1
            if both:
                hp, hf = has_past[cy, cx], has_future[cy, cx]
                src = 2 if (hp and hf) else (1 if hf else 0)
            for d in range(2):
                if src != 2 and d != src:
                    continue
                if d == 0:
                    lo, hi, sign, has = 0, n_past, -1, has_past[cy, cx]
                    mx, my = np.int64(past[cy, cx, 0]), np.int64(past[cy, cx, 1])
                else:
                    lo, hi, sign, has = n_past, n_past + n_future, 1, has_future[cy, cx]
                    mx, my = np.int64(future[cy, cx, 0]), np.int64(future[cy, cx, 1])
                k = lo if hi - lo == 1 else _best_candidate(cur, refs, lo, hi, mx, my, y0, x0)
                if has and mv_ref[cy, cx] == 0:
                    mv[cy, cx, 0] = sign * mx
                    mv[cy, cx, 1] = sign * my
                    mv_ref[cy, cx] = max(-127, min(127, dists[k]))
                _predict_cell(refs, k, mx, my, y0, x0, cells[d])
            for yy in range(min(CELL, h - y0)):
                for xx in range(min(CELL, w - x0)):
                    if src == 2:
                        pred[y0 + yy, x0 + xx] = (cells[0, yy, xx] + cells[1, yy, xx] + 1) >> 1
                    else:
                        pred[y0 + yy, x0 + xx] = cells[src, yy, xx]


@jit
def _predict_kernel(refs, vecs, sel, pred) -> None:  # pragma: no cover - compiled
    """Prediction ``[h, w]`` from per-cell vectors ``vecs`` ``[hc, wc, 2]`` and planes ``sel``."""
    h, w = pred.shape
    hc, wc = sel.shape
    cell = np.empty((CELL, CELL), np.int32)
    for cy in range(hc):
        for cx in range(wc):
            y0, x0 = cy * CELL, cx * CELL
            _predict_cell(
                refs, sel[cy, cx], np.int64(vecs[cy, cx, 0]), np.int64(vecs[cy, cx, 1]), y0, x0, cell
            )
            for yy in range(min(CELL, h - y0)):
                for xx in range(min(CELL, w - x0)):
                    pred[y0 + yy, x0 + xx] = cell[yy, xx]


def _stack(refs: Sequence[np.ndarray]) -> np.ndarray:
    if len(refs) == 1:
        return np.ascontiguousarray(refs[0], np.uint8)[None]
    return np.stack([np.asarray(r, np.uint8) for r in refs])


def predict(
    refs: Sequence[np.ndarray], mv: np.ndarray, sel: np.ndarray | None = None, cell: int = CELL
) -> np.ndarray:
    """Bilinear quarter-pel prediction from per-cell vectors ``mv`` ([Hc, Wc, 2], FFmpeg sense).

    ``refs`` are candidate reference planes ([H, W] uint8); ``sel`` ([Hc, Wc]) picks one
    per cell (default: the first). Returns int16 ``[H, W]`` (rounded like a codec).
    """
    if cell != CELL:
        raise ValueError(f"only {CELL}x{CELL} cells are supported, got {cell}")
    stack = _stack(refs)
    h, w = stack.shape[1:]
    hc, wc = grid_shape(h, w)
    if mv.shape != (hc, wc, 2):
        raise ValueError(f"vector field shape {mv.shape} does not match a {h}x{w} frame ({hc}x{wc} cells)")
    planes = np.zeros((hc, wc), np.int64) if sel is None else np.asarray(sel, np.int64)
    if planes.size and (planes.min() < 0 or planes.max() >= len(stack)):
        raise ValueError(f"sel holds plane indices outside [0, {len(stack)})")
    pred = np.empty((h, w), np.int16)
    _predict_kernel(stack, np.ascontiguousarray(mv, np.int32), planes, pred)
    return pred


@dataclass
class Compensation:
    """Result of motion compensation for one frame."""

    pred: np.ndarray  # int16 [H, W]
    mv: np.ndarray  # int16 [Hc, Wc, 2] motion direction (see reader docs), quarter-pel
    mv_ref: np.ndarray  # int8 [Hc, Wc] signed display distance to the reference; 0 = none


def _compensate(
    cur: np.ndarray,
    field: BitstreamField,
    past: Sequence[tuple[int, np.ndarray]],
    future: Sequence[tuple[int, np.ndarray]],
) -> Compensation:
    """Run the kernel; a direction takes part when it has candidates (empty list = unused)."""
    h, w = cur.shape
    hc, wc = grid_shape(h, w)
    cands = [*past, *future]
    mv = np.zeros((hc, wc, 2), np.int16)
    mv_ref = np.zeros((hc, wc), np.int8)
    pred = np.empty((h, w), np.int16)
    _compensate_kernel(
        cur,
        _stack([ref for _, ref in cands]),
        field.past,
        field.has_past,
        field.future,
        field.has_future,
        len(past),
        len(future),
        np.asarray([dist for dist, _ in cands], np.int64),
        pred,
        mv,
        mv_ref,
    )
    return Compensation(pred=pred, mv=mv, mv_ref=mv_ref)


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
    use_past = bool(past) and bool(field.has_past.any())
    use_future = bool(future) and bool(field.has_future.any())
    if not (use_past or use_future):
        hc, wc = grid_shape(*cur.shape)
        nearest = past[0][1] if past else (future[0][1] if future else cur)
        return Compensation(
            pred=nearest.astype(np.int16),
            mv=np.zeros((hc, wc, 2), np.int16),
            mv_ref=np.zeros((hc, wc), np.int8),
        )
    return _compensate(cur, field, past if use_past else [], future if use_future else [])


def compensate_estimated(cur: np.ndarray, ref: np.ndarray, dist: int, field: np.ndarray) -> Compensation:
    """Predict ``cur`` from one reference at signed distance ``dist`` with an estimated field."""
    field = np.ascontiguousarray(field, np.int32)
    everywhere = np.ones(field.shape[:2], bool)
    f = BitstreamField(field, everywhere, field, everywhere)
    one = [(int(dist), ref)]
    return _compensate(cur, f, one if dist < 0 else [], one if dist > 0 else [])


def residual_from(cur: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Signed luma residual ``cur - pred`` as int16."""
    return np.subtract(cur, pred, dtype=np.int16)


__all__ = [
    "Compensation",
    "compensate_bitstream",
    "compensate_estimated",
    "predict",
    "residual_from",
]
