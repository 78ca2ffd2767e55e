"""Motion-vector fields: from the bitstream (FFmpeg side data) or by block matching.

All fields live on a regular grid of ``CELL`` x ``CELL`` pixel cells (4 px, the
smallest H.264 partition), so bitstream and estimated vectors share one layout.
Internally vectors use FFmpeg's convention: ``(mx, my)`` in quarter-pel such that the
prediction for a pixel at ``p`` is read from ``p + m/4`` in the reference frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kernels import jit

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


@jit
def _stable_order(key):  # pragma: no cover - compiled
    """``np.argsort(key, kind="stable")`` of small non-negative integer keys, by counting (O(n + max key))."""
    n = key.shape[0]
    kmax = 0
    for i in range(n):
        kmax = max(kmax, key[i])
    if kmax > 4 * n + 65536:
        return np.argsort(key, kind="mergesort")
    start = np.zeros(kmax + 2, np.int64)
    for i in range(n):
        start[key[i] + 1] += 1
    for k in range(kmax + 1):
        start[k + 1] += start[k]
    order = np.empty(n, np.int64)
    for i in range(n):
        order[start[key[i]]] = i
        start[key[i]] += 1
    return order


@jit
def _paint_records(mvs, cell, past, has_past, future, has_future) -> None:  # pragma: no cover - compiled
    """Paint the ``AVMotionVector`` records ``mvs`` onto the cell grids (see :func:`field_from_side_data`).

    Blocks are painted in a stable order of (direction, height, width); cells outside the
    grid are clamped to its border.
    """
    n = mvs.shape[0]
    hp, wp = has_past.shape
    key = np.empty(n, np.int64)
    for i in range(n):
        cw, ch = max(mvs[i].w // cell, 1), max(mvs[i].h // cell, 1)
        key[i] = (4096 if mvs[i].source > 0 else 0) + ch * 64 + cw
    for i in _stable_order(key):
        r = mvs[i]
        if r.source == 0:
            continue
        field, has = (future, has_future) if r.source > 0 else (past, has_past)
        scale = max(np.float64(r.motion_scale), 1.0)
        vx = np.int32(np.rint(r.motion_x * 4.0 / scale))
        vy = np.int32(np.rint(r.motion_y * 4.0 / scale))
        bw, bh = np.int64(r.w), np.int64(r.h)
        cx0 = (np.int64(r.dst_x) - bw // 2) // cell
        cy0 = (np.int64(r.dst_y) - bh // 2) // cell
        for dy in range(max(bh // cell, 1)):
            y = min(max(cy0 + dy, 0), hp - 1)
            for dx in range(max(bw // cell, 1)):
                x = min(max(cx0 + dx, 0), wp - 1)
                field[y, x, 0] = vx
                field[y, x, 1] = vy
                has[y, x] = True


@jit
def _field_kernel(mvs, cell, hc0, wc0, hc, wc, sy, sx):  # pragma: no cover - compiled
    """Past/future vectors and masks of the records ``mvs`` on an ``hc`` x ``wc`` cell grid.

    The blocks are painted on the coded grid (``hc0`` x ``wc0`` cells, padded to whole
    16x16-pixel macroblocks so that blocks at the right/bottom edge fit); each output
    cell takes the coded cell under its centre, its vectors scaled by ``(sx, sy)`` and
    rounded. Equal grids at scale 1 give the coded grid itself.
    """
    mb = max(16 // cell, 1)  # cells per macroblock side
    hp, wp = -(-hc0 // mb) * mb, -(-wc0 // mb) * mb
    past = np.zeros((hp, wp, 2), np.int32)
    future = np.zeros((hp, wp, 2), np.int32)
    has_past = np.zeros((hp, wp), np.bool_)
    has_future = np.zeros((hp, wp), np.bool_)
    _paint_records(mvs, cell, past, has_past, future, has_future)
    if hc == hc0 and wc == wc0 and sy == 1.0 and sx == 1.0:
        return (
            past[:hc, :wc].copy(),
            has_past[:hc, :wc].copy(),
            future[:hc, :wc].copy(),
            has_future[:hc, :wc].copy(),
        )
    out_past = np.empty((hc, wc, 2), np.int32)
    out_future = np.empty((hc, wc, 2), np.int32)
    out_has_past = np.empty((hc, wc), np.bool_)
    out_has_future = np.empty((hc, wc), np.bool_)
    xs = np.empty(wc, np.int64)
    for j in range(wc):
        xs[j] = min(np.int64((j + 0.5) / sx), wc0 - 1)  # the coded cell under the output cell's centre
    for i in range(hc):
        y = min(np.int64((i + 0.5) / sy), hc0 - 1)
        for j in range(wc):
            x = xs[j]
            out_past[i, j, 0] = np.int32(np.rint(past[y, x, 0] * sx))
            out_past[i, j, 1] = np.int32(np.rint(past[y, x, 1] * sy))
            out_future[i, j, 0] = np.int32(np.rint(future[y, x, 0] * sx))
            out_future[i, j, 1] = np.int32(np.rint(future[y, x, 1] * sy))
            out_has_past[i, j] = has_past[y, x]
            out_has_future[i, j] = has_future[y, x]
    return out_past, out_has_past, out_future, out_has_future


def field_from_side_data(
    mvs: np.ndarray | None,
    height: int,
    width: int,
    cell: int = CELL,
    *,
    size: tuple[int, int] | None = None,
) -> BitstreamField:
    """Rasterise FFmpeg ``AVMotionVector`` records of a ``height`` x ``width`` frame onto the cell grid.

    ``mvs`` is the structured array from ``MotionVectors.to_ndarray()``; each record
    covers a ``w`` x ``h`` block centred at ``(dst_x, dst_y)``. Vectors are rescaled from
    ``1/motion_scale`` pel to quarter-pel. ``source < 0`` means a past reference, ``0``
    (no reference) is ignored. Blocks are painted grouped by direction and size (past
    before future, small before large), in record order within a group, so where blocks
    overlap the result does not depend on how the decoder ordered its records.

    ``size=(h, w)``: the frame is processed at that (smaller) size; the field is given on
    its cell grid instead, each cell taking the coded cell under its centre (nearest) with
    the vectors scaled to the new size.
    """
    hc0, wc0 = grid_shape(height, width, cell)
    if size is None or tuple(size) == (height, width):
        hc, wc, sy, sx = hc0, wc0, 1.0, 1.0
    else:
        hc, wc = grid_shape(size[0], size[1], cell)
        sy, sx = size[0] / height, size[1] / width
    if mvs is None or not len(mvs):
        z = np.zeros((hc, wc, 2), np.int32)
        return BitstreamField(z, np.zeros((hc, wc), bool), z.copy(), np.zeros((hc, wc), bool))
    return BitstreamField(*_field_kernel(mvs, cell, hc0, wc0, hc, wc, float(sy), float(sx)))


@jit
def _pool(img, f):  # pragma: no cover - compiled
    """Mean-pool an int16 image by an integer factor (dimensions divide), rounded half up."""
    if f == 1:
        return img
    h, w = img.shape
    out = np.empty((h // f, w // f), np.int16)
    n = f * f
    if f == 2:
        for y in range(h // 2):
            a, b = img[2 * y], img[2 * y + 1]
            for x in range(w // 2):
                out[y, x] = (np.int32(a[2 * x]) + a[2 * x + 1] + b[2 * x] + b[2 * x + 1] + 2) >> 2
        return out
    for y in range(h // f):
        for x in range(w // f):
            s = 0
            for dy in range(f):
                for dx in range(f):
                    s += img[y * f + dy, x * f + dx]
            out[y, x] = (s + n // 2) // n
    return out


@jit
def _padded_i16(img, hp, wp):  # pragma: no cover - compiled
    """``img`` edge-extended to ``hp`` x ``wp`` as int16."""
    h, w = img.shape
    out = np.empty((hp, wp), np.int16)
    for y in range(hp):
        src = img[min(y, h - 1)]
        row = out[y]
        for x in range(w):
            row[x] = src[x]
        for x in range(w, wp):
            row[x] = src[w - 1]
    return out


@jit(inline=True)
def _block_sad(cur, ref, y0, x0, vy, vx, bl) -> int:  # pragma: no cover - compiled
    """SAD of the ``bl``-square block of ``cur`` at (y0, x0) vs ``ref`` shifted by (vy, vx), edge-clamped."""
    h, w = ref.shape
    s = 0
    if 0 <= y0 + vy and y0 + vy + bl <= h and 0 <= x0 + vx and x0 + vx + bl <= w:
        for i in range(bl):  # window inside the frame: no clamping
            cy, ry = y0 + i, y0 + vy + i
            for j in range(bl):
                d = np.int32(cur[cy, x0 + j]) - np.int32(ref[ry, x0 + vx + j])
                s += d if d >= 0 else -d
        return s
    for i in range(bl):
        ry = min(max(y0 + i + vy, 0), h - 1)
        for j in range(bl):
            rx = min(max(x0 + j + vx, 0), w - 1)
            s += abs(np.int32(cur[y0 + i, x0 + j]) - np.int32(ref[ry, rx]))
    return s


@jit
def _full_search(cur, ref, nby, nbx, bl, r, lam, dy, dx) -> None:  # pragma: no cover - compiled
    """Exhaustive +-``r`` search per block; ties prefer short vectors, then smaller dy, then dx.

    Candidate by candidate over the whole frame (each block keeps its cheapest so far, so
    the order of candidates per block, and thus every tie, is that of a block-by-block
    search): per row of blocks, the absolute differences against a copy of ``ref``
    edge-extended by ``r`` (the clamped reads of :func:`_block_sad`, without a bounds check
    per pixel) are summed down each column in one contiguous pass, then across each block.
    """
    n = 2 * r + 1
    cands = np.empty((n * n, 2), np.int64)
    k = 0
    for length in range(2 * r + 1):
        for a in range(-r, r + 1):
            for b in range(-r, r + 1):
                if abs(a) + abs(b) == length:
                    cands[k, 0], cands[k, 1] = a, b
                    k += 1
    h, w = ref.shape
    ext = np.empty((h + 2 * r, w + 2 * r), np.int32)
    for y in range(h + 2 * r):
        src = ref[min(max(y - r, 0), h - 1)]
        for x in range(w + 2 * r):
            ext[y, x] = src[min(max(x - r, 0), w - 1)]
    cols = nbx * bl
    best = np.full((nby, nbx), np.inf)
    band = np.empty(cols, np.int32)  # per column: the absolute differences summed over a block row
    for c in range(n * n):
        a, b = cands[c, 0], cands[c, 1]
        pen = lam * (abs(a) + abs(b))
        for by in range(nby):
            band[:] = 0
            for y in range(by * bl, by * bl + bl):
                src = cur[y]
                shifted = ext[y + a + r, b + r : b + r + cols]
                for x in range(cols):
                    d = np.int32(src[x]) - shifted[x]
                    band[x] += d if d >= 0 else -d
            for bx in range(nbx):
                sad = np.int64(0)
                for x in range(bx * bl, bx * bl + bl):
                    sad += band[x]
                cost = sad + pen
                if cost < best[by, bx]:
                    best[by, bx] = cost
                    dy[by, bx], dx[by, bx] = a, b


@jit
def _best_of(cur, ref, nby, nbx, bl, lam, cy, cx, dy, dx) -> None:  # pragma: no cover - compiled
    """Per block, the candidate ``(cy[c], cx[c])`` with the lowest SAD + length penalty (first wins).

    A candidate equal to an earlier one of the same block is skipped (same cost, and ties
    keep the first anyway): neighbours usually share their vectors.
    """
    for by in range(nby):
        for bx in range(nbx):
            best = np.inf
            for c in range(cy.shape[0]):
                a, b = cy[c, by, bx], cx[c, by, bx]
                seen = False
                for e in range(c):
                    if cy[e, by, bx] == a and cx[e, by, bx] == b:
                        seen = True
                        break
                if seen:
                    continue
                cost = _block_sad(cur, ref, by * bl, bx * bl, a, b, bl) + lam * (abs(a) + abs(b))
                if cost < best:
                    best = cost
                    dy[by, bx], dx[by, bx] = a, b


@jit
def _refine(cur, ref, nby, nbx, bl, lam, dy, dx) -> None:  # pragma: no cover - compiled
    """Move each block's vector to the best of its 3x3 neighbourhood (centre first: ties keep it).

    Costs are rounded to float32, as the pyramid's reference implementation did.
    """
    for by in range(nby):
        for bx in range(nbx):
            vy, vx = dy[by, bx], dx[by, bx]
            best = np.float32(np.inf)
            pick_y, pick_x = vy, vx
            for t in range(9):
                k = 4 if t == 0 else (t - 1 if t <= 4 else t)
                a, b = vy + k // 3 - 1, vx + k % 3 - 1
                cost = np.float32(
                    np.float64(np.float32(_block_sad(cur, ref, by * bl, bx * bl, a, b, bl)))
                    + lam * (abs(a) + abs(b))
                )
                if cost < best:
                    best = cost
                    pick_y, pick_x = a, b
            dy[by, bx], dx[by, bx] = pick_y, pick_x


@jit
def _shifted(a, sy, sx):  # pragma: no cover - compiled
    """``a`` shifted by (sy, sx) blocks with edge replication (the neighbour's vector)."""
    h, w = a.shape
    out = np.empty_like(a)
    for y in range(h):
        for x in range(w):
            out[y, x] = a[min(max(y + sy, 0), h - 1), min(max(x + sx, 0), w - 1)]
    return out


@jit
def _match_blocks(cur, ref, b, work, levels, r, penalty):  # pragma: no cover - compiled
    """Coarse-to-fine block matching; returns per-block (dy, dx) in working-resolution pixels."""
    height, width = cur.shape
    hp = -(-height // b) * b
    wp = -(-width // b) * b
    nby, nbx = hp // b, wp // b
    pyr_c = [_pool(_padded_i16(cur, hp, wp), work)]
    pyr_r = [_pool(_padded_i16(ref, hp, wp), work)]
    for _ in range(levels):
        pyr_c.append(_pool(pyr_c[-1], 2))
        pyr_r.append(_pool(pyr_r[-1], 2))
    dy = np.zeros((nby, nbx), np.int64)
    dx = np.zeros((nby, nbx), np.int64)
    bl = (b // work) >> levels
    _full_search(pyr_c[levels], pyr_r[levels], nby, nbx, bl, r, penalty * bl * bl, dy, dx)
    for lvl in range(levels - 1, -1, -1):
        dy *= 2
        dx *= 2
        bl = (b // work) >> lvl
        lam = penalty * bl * bl
        if lvl == 0:
            # Predictive candidates fix blocks the coarse search got wrong (fine texture,
            # repetitive patterns): zero, the frame's median vector and the four neighbours.
            cy = np.empty((7, nby, nbx), np.int64)
            cx = np.empty((7, nby, nbx), np.int64)
            cy[0], cx[0] = dy, dx
            cy[1], cx[1] = 0, 0
            cy[2], cx[2] = int(np.median(dy)), int(np.median(dx))
            c = 3
            for sy, sx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                cy[c], cx[c] = _shifted(dy, sy, sx), _shifted(dx, sy, sx)
                c += 1
            _best_of(pyr_c[0], pyr_r[0], nby, nbx, bl, lam, cy, cx, dy, dx)
        _refine(pyr_c[lvl], pyr_r[lvl], nby, nbx, bl, lam, dy, dx)
    return dy, dx


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
    r = max(1, int(np.ceil(search_range / work / (1 << levels))))
    dy, dx = _match_blocks(
        np.ascontiguousarray(cur, np.uint8),
        np.ascontiguousarray(ref, np.uint8),
        b,
        work,
        levels,
        r,
        float(penalty),
    )
    # Blocks -> cells, working-resolution pixels -> full-resolution quarter-pel.
    per = b // CELL
    hc, wc = grid_shape(height, width)
    field = np.stack([dx, dy], axis=-1).astype(np.int32) * (4 * work)
    field = np.repeat(np.repeat(field, per, axis=0), per, axis=1)[:hc, :wc]
    return np.ascontiguousarray(field)


__all__ = ["CELL", "BitstreamField", "estimate_motion", "field_from_side_data", "grid_shape"]
