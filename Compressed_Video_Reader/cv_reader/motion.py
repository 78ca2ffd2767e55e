"""Motion-vector fields: from the bitstream (FFmpeg side data) or by block matching.

All fields live on a regular grid of ``CELL`` x ``CELL`` pixel cells (4 px, the
smallest H.264 partition), so bitstream and estimated vectors share one layout.
Internally vectors use FFmpeg's convention: ``(mx, my)`` in quarter-pel such that the
prediction for a pixel at ``p`` is read from ``p + m/4`` in the reference frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

CELL = 4


def grid_shape(height: int, width: int, cell: int = CELL) -> tuple[int, int]:
    """Number of cell rows and columns covering a ``height`` x ``width`` frame."""
    return -(-height // cell), -(-width // cell)


@dataclass
class BitstreamField:
    """Per-cell bitstream vectors split by prediction direction (FFmpeg convention, qpel)."""

    past: np.ndarray  # int32 [Hc, Wc, 2]
    has_past: np.ndarray  # bool [Hc, Wc]
    future: np.ndarray  # int32 [Hc, Wc, 2]
    has_future: np.ndarray  # bool [Hc, Wc]

    @property
    def empty(self) -> bool:
        return not (self.has_past.any() or self.has_future.any())


def field_from_side_data(mvs: np.ndarray | None, height: int, width: int, cell: int = CELL) -> BitstreamField:
    """Rasterise FFmpeg ``AVMotionVector`` records onto the cell grid (vectorised).

    ``mvs`` is the structured array from ``MotionVectors.to_ndarray()``; each record
    covers a ``w`` x ``h`` block centred at ``(dst_x, dst_y)``. Vectors are rescaled from
    ``1/motion_scale`` pel to quarter-pel. ``source < 0`` means a past reference.
    """
    hc, wc = grid_shape(height, width, cell)
    # Work on a grid padded to whole 16x16-pixel macroblocks so aligned blocks can be painted
    # through a reshaped view (one subarray copy per block); crop at the end.
    hp, wp = -(-hc // 4) * 4, -(-wc // 4) * 4
    past = np.zeros((hp, wp, 2), np.int32)
    future = np.zeros((hp, wp, 2), np.int32)
    has_past = np.zeros((hp, wp), bool)
    has_future = np.zeros((hp, wp), bool)
    if mvs is None or len(mvs) == 0:
        return BitstreamField(past[:hc, :wc], has_past[:hc, :wc], future[:hc, :wc], has_future[:hc, :wc])
    w = mvs["w"].astype(np.int64)
    h = mvs["h"].astype(np.int64)
    cx0 = (mvs["dst_x"].astype(np.int64) - w // 2) // cell
    cy0 = (mvs["dst_y"].astype(np.int64) - h // 2) // cell
    scale = np.maximum(mvs["motion_scale"].astype(np.float64), 1.0)
    vec = np.stack(
        [np.rint(mvs["motion_x"] * 4.0 / scale), np.rint(mvs["motion_y"] * 4.0 / scale)], axis=-1
    ).astype(np.int32)
    src = mvs["source"]
    cw = np.maximum(w // cell, 1)
    ch = np.maximum(h // cell, 1)
    key = np.where(src > 0, 1 << 12, 0) + ch * 64 + cw
    key[src == 0] = -1
    for k in np.unique(key):
        if k < 0:
            continue
        g = np.flatnonzero(key == k)
        gh, gw = int(k % (1 << 12)) // 64, int(k % 64)
        field, has = (future, has_future) if k >= (1 << 12) else (past, has_past)
        y0, x0, v = cy0[g], cx0[g], vec[g]
        inside = (y0 >= 0) & (x0 >= 0) & (y0 + gh <= hp) & (x0 + gw <= wp)
        if hp % gh == 0 and wp % gw == 0 and inside.all() and not ((y0 % gh).any() or (x0 % gw).any()):
            fv = field.reshape(hp // gh, gh, wp // gw, gw, 2)
            hv = has.reshape(hp // gh, gh, wp // gw, gw)
            fv[y0 // gh, :, x0 // gw, :] = v[:, None, None, :]
            hv[y0 // gh, :, x0 // gw, :] = True
            continue
        ys = np.minimum(np.maximum(y0[:, None, None] + np.arange(gh)[None, :, None], 0), hp - 1)
        xs = np.minimum(np.maximum(x0[:, None, None] + np.arange(gw)[None, None, :], 0), wp - 1)
        field[ys, xs] = v[:, None, None, :]
        has[ys, xs] = True
    return BitstreamField(past[:hc, :wc], has_past[:hc, :wc], future[:hc, :wc], has_future[:hc, :wc])


def edge_pad(img: np.ndarray, top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """``np.pad(img, ..., mode="edge")`` for 2-D arrays without its per-call overhead."""
    h, w = img.shape
    out = np.empty((h + top + bottom, w + left + right), img.dtype)
    out[top : top + h, left : left + w] = img
    out[:top, left : left + w] = img[0]
    out[top + h :, left : left + w] = img[-1]
    out[:, :left] = out[:, left : left + 1]
    out[:, left + w :] = out[:, left + w - 1 : left + w]
    return out


def _pool(img: np.ndarray, f: int) -> np.ndarray:
    """Mean-pool an int16 image by an integer factor (dimensions must divide), rounded."""
    if f == 1:
        return img
    h, w = img.shape
    # f*f strided adds beat a two-axis reduction over tiny axes (same integer sums).
    s = np.zeros((h // f, w // f), np.int32)
    for dy in range(f):
        for dx in range(f):
            s += img[dy::f, dx::f]
    s += (f * f) // 2
    if f & (f - 1) == 0:  # power of two: shift == floor division for non-negative sums
        s >>= (f * f).bit_length() - 1
    else:
        s //= f * f
    return s.astype(np.int16)


def _pad_to(img: np.ndarray, h: int, w: int) -> np.ndarray:
    ph, pw = h - img.shape[0], w - img.shape[1]
    if ph == 0 and pw == 0:
        return img
    return edge_pad(img, 0, ph, 0, pw)


def _block_abs_sums(diff: np.ndarray) -> np.ndarray:
    """Sum of a non-negative int16 ``[..., b, b]`` array over its last two axes, as int32.

    Why: this reduction dominates block matching. Summing in uint16 (exact while
    ``b * b * 255`` fits) over one contiguous axis is about twice as fast as an int32
    reduction over two axes; the integer result is identical.
    """
    b2 = diff.shape[-1] * diff.shape[-2]
    flat = diff.reshape(diff.shape[:-2] + (b2,))
    if b2 * 255 <= np.iinfo(np.uint16).max:
        return flat.view(np.uint16).sum(axis=-1, dtype=np.uint16).astype(np.int32)
    return flat.sum(axis=-1, dtype=np.int32)


def _block_sad(
    cur_blocks: np.ndarray, ref_pad: np.ndarray, oy: np.ndarray, ox: np.ndarray, b: int
) -> np.ndarray:
    """SAD of each block against the ``b`` x ``b`` window of ``ref_pad`` at (oy, ox).

    ``oy``/``ox`` may carry leading candidate axes: all windows are gathered in one call.
    """
    win = sliding_window_view(ref_pad, (b, b))[oy, ox]  # [..., nby, nbx, b, b]
    np.subtract(win, cur_blocks, out=win)
    return _block_abs_sums(np.abs(win, out=win))


def _shift(a: np.ndarray, sy: int, sx: int) -> np.ndarray:
    """``a`` shifted by (sy, sx) blocks with edge replication (neighbour's vector)."""
    p = edge_pad(a, 1, 1, 1, 1)  # np.pad(mode="edge") has ~20 us of per-call overhead
    h, w = a.shape
    return p[1 + sy : 1 + sy + h, 1 + sx : 1 + sx + w]


class _LevelMatcher:
    """Evaluates per-block candidate vectors on one pyramid level (vectorised over blocks)."""

    def __init__(
        self, cur: np.ndarray, ref: np.ndarray, nby: int, nbx: int, bl: int, penalty: float, margin: int
    ) -> None:
        self.bl = bl
        self.m = margin
        self.lim = margin - 1
        self.rpad = edge_pad(ref, margin, margin, margin, margin)
        # contiguous once: every candidate's difference reads it
        self.cur_blocks = np.ascontiguousarray(cur.reshape(nby, bl, nbx, bl).transpose(0, 2, 1, 3))
        self.by = np.arange(nby)[:, None] * bl + margin
        self.bx = np.arange(nbx)[None, :] * bl + margin
        self.lam = penalty * bl * bl

    def refine(self, vy: np.ndarray, vx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Best of the 3x3 neighbourhood of (vy, vx) per block, from one gathered window."""
        lim = self.lim - 1
        vy = np.minimum(np.maximum(vy, -lim), lim)
        vx = np.minimum(np.maximum(vx, -lim), lim)
        b = self.bl
        win = sliding_window_view(self.rpad, (b + 2, b + 2))[self.by + vy - 1, self.bx + vx - 1]
        diff = np.empty((9,) + self.cur_blocks.shape, np.int16)
        for k in range(9):
            ey, ex = divmod(k, 3)
            np.subtract(win[:, :, ey : ey + b, ex : ex + b], self.cur_blocks, out=diff[k])
        sums = _block_abs_sums(np.abs(diff, out=diff))  # [9, nby, nbx]
        sad = np.moveaxis(sums, 0, -1).reshape(vy.shape + (3, 3)).astype(np.float32)
        e = np.arange(-1, 2)
        sad += self.lam * (
            np.abs(vy[..., None, None] + e[:, None]) + np.abs(vx[..., None, None] + e[None, :])
        )
        # centre first, so ties keep the current vector
        order = np.asarray([4, 0, 1, 2, 3, 5, 6, 7, 8])
        flat = sad.reshape(sad.shape[:2] + (9,))[..., order]
        k = order[np.argmin(flat, axis=-1)]
        return vy + k // 3 - 1, vx + k % 3 - 1

    def best(self, cands: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """Per block, the candidate (vy, vx) with the lowest SAD + length penalty (first wins ties)."""
        cy = np.clip(np.stack([c[0] for c in cands]), -self.lim, self.lim)  # [C, nby, nbx]
        cx = np.clip(np.stack([c[1] for c in cands]), -self.lim, self.lim)
        costs = _block_sad(self.cur_blocks, self.rpad, self.by + cy, self.bx + cx, self.bl)
        costs = costs + self.lam * (np.abs(cy) + np.abs(cx))
        pick = np.argmin(costs, axis=0)[None]
        return np.take_along_axis(cy, pick, 0)[0], np.take_along_axis(cx, pick, 0)[0]


def estimate_motion(
    cur: np.ndarray,
    ref: np.ndarray,
    block_size: int = 16,
    search_range: int = 16,
    max_side: int = 640,
    penalty: float = 0.02,
) -> np.ndarray:
    """Estimate per-cell motion of ``cur`` against ``ref`` by coarse-to-fine block matching.

    Returns int32 ``[Hc, Wc, 2]`` quarter-pel vectors in FFmpeg convention (integer-pel
    precision). Frames larger than ``max_side`` are matched at a reduced working
    resolution (power-of-two pooling). A full search of +-``search_range`` px runs on the
    coarsest pyramid level; each finer level refines by +-1 px. ``penalty`` (per pixel of
    displacement and per block pixel) breaks near-ties toward short vectors so flat or
    static regions get zero motion.
    """
    if cur.shape != ref.shape:
        raise ValueError(f"frame shapes differ: {cur.shape} vs {ref.shape}")
    height, width = cur.shape
    b = int(block_size)
    if b < CELL or b % CELL:
        raise ValueError(f"block_size must be a positive multiple of {CELL}, got {block_size}")
    work = 1
    while max(height, width) / work > max_side and b // work > CELL:
        work *= 2
    levels = 0  # coarse levels may use blocks down to 2 px; the output grid stays at CELL
    while (b // work) >> (levels + 1) >= 2 and (search_range / work) / (1 << (levels + 1)) >= 1:
        levels += 1
    hp = -(-height // b) * b
    wp = -(-width // b) * b
    nby, nbx = hp // b, wp // b
    cur_f = _pool(_pad_to(cur, hp, wp).astype(np.int16), work)
    ref_f = _pool(_pad_to(ref, hp, wp).astype(np.int16), work)
    pyr_c = [cur_f]
    pyr_r = [ref_f]
    for _ in range(levels):
        pyr_c.append(_pool(pyr_c[-1], 2))
        pyr_r.append(_pool(pyr_r[-1], 2))

    # Full search on the coarsest level via whole-frame shifts.
    bl = b // work >> levels
    r = max(1, int(np.ceil(search_range / work / (1 << levels))))
    cc, rc = pyr_c[-1], pyr_r[-1]
    hl, wl = cc.shape
    rpad = edge_pad(rc, r, r, r, r)
    # All (2r+1)^2 shifted copies as one strided view: one |diff| and one block sum.
    shifted = sliding_window_view(rpad, (hl, wl))  # [2r+1, 2r+1, hl, wl]
    sad = np.abs(shifted - cc).reshape(2 * r + 1, 2 * r + 1, nby, bl, nbx, bl).sum(axis=5, dtype=np.int32)
    sad = sad.sum(axis=3).astype(np.float32)
    d = np.arange(-r, r + 1)
    lam = penalty * bl * bl
    cost = sad + (lam * (np.abs(d)[:, None] + np.abs(d)[None, :]))[:, :, None, None]
    # zero vector first, then by length: ties prefer short vectors (stable, deterministic)
    order = sorted((abs(a) + abs(b), a, b) for a in d for b in d)
    oy = np.asarray([o[1] for o in order]) + r
    ox = np.asarray([o[2] for o in order]) + r
    best = np.argmin(cost[oy, ox], axis=0)
    dy_, dx_ = oy[best] - r, ox[best] - r

    # Refine level by level with +-1 px around the doubled coarse vector.
    for lvl in range(levels - 1, -1, -1):
        dy_, dx_ = dy_ * 2, dx_ * 2
        matcher = _LevelMatcher(
            pyr_c[lvl],
            pyr_r[lvl],
            nby,
            nbx,
            b // work >> lvl,
            penalty,
            int(max(np.abs(dy_).max(), np.abs(dx_).max())) + 3,
        )
        if lvl == 0:
            # Predictive candidates fix blocks the coarse search got wrong (fine texture,
            # repetitive patterns): zero, the frame's median vector and the four neighbours.
            my, mx = int(np.median(dy_)), int(np.median(dx_))
            cands = [
                (dy_, dx_),
                (np.zeros_like(dy_), np.zeros_like(dx_)),
                (np.full_like(dy_, my), np.full_like(dx_, mx)),
            ]
            for sy, sx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                cands.append((_shift(dy_, sy, sx), _shift(dx_, sy, sx)))
            dy_, dx_ = matcher.best(cands)
        dy_, dx_ = matcher.refine(dy_, dx_)
    # Blocks -> cells, working-resolution pixels -> full-resolution quarter-pel.
    per = b // CELL
    hc, wc = grid_shape(height, width)
    field = np.stack([dx_, dy_], axis=-1).astype(np.int32) * (4 * work)
    field = np.repeat(np.repeat(field, per, axis=0), per, axis=1)[:hc, :wc]
    return np.ascontiguousarray(field)


__all__ = ["edge_pad", "CELL", "BitstreamField", "estimate_motion", "field_from_side_data", "grid_shape"]
