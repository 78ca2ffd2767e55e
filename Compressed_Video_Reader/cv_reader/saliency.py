"""Per-frame saliency: normalised MV energy, residual energy and their fusion.

Follows the upstream Stage-1 definitions (docs/formats.md#stage-1-scoring, docs/codec.md): each energy is divided by its
``pct``-th percentile within the frame and clipped to [0, 1]; the MV map is upsampled
from cells to pixels (nearest) and fused with the residual map. The per-pixel work runs
in compiled kernels (one pass per frame, no full-size temporaries; see ``kernels.py``).
"""

from __future__ import annotations

import numpy as np

from .camera import compensate_batch
from .kernels import jit

FUSE_MODES = ("weighted", "max", "sum", "geomean")
RES_FLOOR = 1.0  # residual percentile floor (grey levels): a clean frame stays near zero
MV_FLOOR = 0.25  # MV percentile floor (pixels): sub-quarter-pel "motion" is noise


@jit
def _pixel_values(r: np.ndarray, use_grad: bool, out: np.ndarray) -> int:
    """``out`` = |residual|, or the sum of its central differences (wrapping at the borders).

    Returns the largest value (the histogram size - 1).
    """
    h, w = r.shape
    vmax = 0
    for y in range(h):
        if use_grad:
            up, down = r[(y - 1) % h], r[(y + 1) % h]
            row = r[y]
            for x in range(w):
                left = row[w - 1] if x == 0 else row[x - 1]
                right = row[0] if x == w - 1 else row[x + 1]
                v = abs(np.int32(right) - np.int32(left)) + abs(np.int32(down[x]) - np.int32(up[x]))
                out[y, x] = v
                vmax = max(vmax, v)
        else:
            for x in range(w):
                v = abs(np.int32(r[y, x]))
                out[y, x] = v
                vmax = max(vmax, v)
    return vmax


@jit
def _energy_lut(vals: np.ndarray, vmax: int, pct: float, use_grad: bool) -> np.ndarray:
    """Lookup table value -> ``min(value / max(P_pct / scale, floor) / scale, 1)`` of one frame.

    ``scale`` is 2 for gradients (their energy is ``0.5 * (gx + gy)``). The percentile
    follows ``np.percentile``'s linear rule, read from a histogram of the small integers.
    """
    hist = np.zeros(vmax + 1, np.int64)
    for v in vals.ravel():
        hist[v] += 1
    n = vals.size
    pos = (n - 1) * pct / 100.0
    lo = int(np.floor(pos))
    hi = min(lo + 1, n - 1)
    v_lo = -1  # smallest value whose cumulative count exceeds lo (resp. hi)
    v_hi = -1
    cum = 0
    for v in range(vmax + 1):
        cum += hist[v]
        if v_lo < 0 and cum > lo:
            v_lo = v
        if cum > hi:
            v_hi = v
            break
    scale = 2.0 if use_grad else 1.0
    p = (v_lo + (v_hi - v_lo) * (pos - lo)) / scale
    a = np.float32(max(p, RES_FLOOR) * scale)
    lut = np.empty(vmax + 1, np.float32)
    for v in range(vmax + 1):
        lut[v] = min(np.float32(v) / a, np.float32(1.0))
    return lut


@jit
def _frame_energy(r: np.ndarray, pct: float, use_grad: bool, vals: np.ndarray) -> np.ndarray:
    """Per-pixel values of one frame (written to ``vals``) and their normalising lookup table."""
    vmax = _pixel_values(r, use_grad, vals)
    return _energy_lut(vals, vmax, pct, use_grad)


@jit
def _residual_energy_kernel(res: np.ndarray, pct: float, use_grad: bool, out: np.ndarray) -> None:
    vals = np.empty(res.shape[1:], np.int32)
    for b in range(res.shape[0]):
        lut = _frame_energy(res[b], pct, use_grad, vals)
        for y in range(vals.shape[0]):
            for x in range(vals.shape[1]):
                out[b, y, x] = lut[vals[y, x]]


def residual_energy(residual: np.ndarray, pct: float = 95.0, use_grad: bool = False) -> np.ndarray:
    """|residual| (or its gradient magnitude) / its ``pct`` percentile, clipped to [0, 1].

    Works on one frame ``[H, W]`` or a batch ``[B, H, W]`` (percentile per frame).
    """
    res = _as_batch(residual)
    out = np.empty(res.shape, np.float32)
    _residual_energy_kernel(res, float(pct), bool(use_grad), out)
    return out[0] if residual.ndim == 2 else out


def _as_batch(residual: np.ndarray) -> np.ndarray:
    """``[B, H, W]`` int16 view/copy of one residual frame or a batch."""
    if residual.ndim not in (2, 3):
        raise ValueError(f"residual must be [H, W] or [B, H, W], got {residual.shape}")
    res = np.ascontiguousarray(residual, dtype=np.int16)
    return res[None] if res.ndim == 2 else res


def mv_energy(
    mv: np.ndarray,
    mv_ref: np.ndarray,
    mv_unit_div: float = 4.0,
    pct: float = 95.0,
    compensate_mode: str = "median",
) -> np.ndarray:
    """Per-cell MV energy in [0, 1] after camera-motion compensation.

    Vectors are divided by ``mv_unit_div`` (quarter-pel -> pixels) and by the distance to
    their reference frame (motion per frame interval). Cells without inter prediction
    take no part in the global-motion fit and get zero MV energy. One frame
    (``[Hc, Wc, 2]``) or a batch (``[B, Hc, Wc, 2]``).
    """
    single = mv.ndim == 3
    mv_b, ref_b = (mv[None], mv_ref[None]) if single else (mv, mv_ref)
    valid = ref_b != 0
    dist = np.where(valid, np.abs(ref_b.astype(np.float32)), np.float32(1.0))
    vec = mv_b.astype(np.float32) / np.float32(mv_unit_div) / dist[..., None]
    vec = compensate_batch(vec, valid, compensate_mode)
    mag = np.hypot(vec[..., 0], vec[..., 1])
    mag[~valid] = 0.0
    a = np.maximum(np.percentile(mag.reshape(mag.shape[0], -1), pct, axis=1), MV_FLOOR).astype(np.float32)
    out = np.minimum(mag / a[:, None, None], np.float32(1.0)).astype(np.float32)
    return out[0] if single else out


def upsample_cells(cells: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest upsample of a per-cell map (``[..., Hc, Wc]``) to ``[..., height, width]`` pixels."""
    hc, wc = cells.shape[-2:]
    fy, fx = -(-height // hc), -(-width // wc)
    return np.repeat(np.repeat(cells, fy, axis=-2), fx, axis=-1)[..., :height, :width]


_FUSE_CODES = {mode: i for i, mode in enumerate(FUSE_MODES)}


def _fuse_args(mode: str, w_mv: float, w_res: float) -> tuple[int, np.float32, np.float32]:
    """Kernel code of ``mode`` and the normalised weights of the weighted mode."""
    key = (mode or "weighted").lower()
    if key not in _FUSE_CODES:
        raise ValueError(f"unknown fuse_mode {mode!r}; choose one of {FUSE_MODES}")
    denom = float(w_mv + w_res) or 1.0
    return _FUSE_CODES[key], np.float32(w_mv / denom), np.float32(w_res / denom)


@jit
def _fuse_value(m: np.float32, r: np.float32, code: int, a: np.float32, b: np.float32) -> np.float32:
    """One fused value in [0, 1]; ``code`` indexes FUSE_MODES."""
    if code == 0:
        v = a * m + b * r
    elif code == 1:
        v = max(m, r)
    elif code == 2:
        v = min(m + r, np.float32(1.0))
    else:
        v = np.float32(np.sqrt(m * r))
    return min(max(v, np.float32(0.0)), np.float32(1.0))


@jit
def _fuse_kernel(
    m: np.ndarray, r: np.ndarray, code: int, a: np.float32, b: np.float32, out: np.ndarray
) -> None:
    for i in range(out.size):
        out[i] = _fuse_value(m[i], r[i], code, a, b)


def fuse(
    norm_mv: np.ndarray, norm_res: np.ndarray, mode: str = "weighted", w_mv: float = 1.0, w_res: float = 1.0
) -> np.ndarray:
    """Combine two normalised energy maps (same shape) into one map in [0, 1]."""
    code, a, b = _fuse_args(mode, w_mv, w_res)
    m, r = np.broadcast_arrays(np.asarray(norm_mv, np.float32), np.asarray(norm_res, np.float32))
    out = np.empty(m.shape, np.float32)
    _fuse_kernel(
        np.ascontiguousarray(m).ravel(), np.ascontiguousarray(r).ravel(), code, a, b, out.reshape(-1)
    )
    return out


@jit
def _fused_energy_kernel(
    res: np.ndarray,
    mv_cells: np.ndarray,
    pct: float,
    use_grad: bool,
    code: int,
    a: np.float32,
    b: np.float32,
    out: np.ndarray,
) -> None:
    """Residual energy of each pixel fused with the MV energy of its cell (nearest upsample)."""
    h, w = res.shape[1:]
    hc, wc = mv_cells.shape[1:]
    fy, fx = -(-h // hc), -(-w // wc)
    cell_x = np.arange(w) // fx
    vals = np.empty((h, w), np.int32)
    for i in range(res.shape[0]):
        lut = _frame_energy(res[i], pct, use_grad, vals)
        for y in range(h):
            cells = mv_cells[i, y // fy]
            for x in range(w):
                out[i, y, x] = _fuse_value(cells[cell_x[x]], lut[vals[y, x]], code, a, b)


def fused_energy(
    mv: np.ndarray,
    mv_ref: np.ndarray,
    residual: np.ndarray,
    *,
    mv_unit_div: float = 4.0,
    mv_pct: float = 95.0,
    res_pct: float = 95.0,
    fuse_mode: str = "weighted",
    w_mv: float = 1.0,
    w_res: float = 1.0,
    mv_compensate: str = "median",
    res_use_grad: bool = False,
) -> np.ndarray:
    """Fused per-pixel energy ``[H, W]`` of one frame, or ``[B, H, W]`` of a batch.

    Equals ``fuse(upsample_cells(mv_energy(...)), residual_energy(...))`` in one pass,
    without the full-size intermediate maps.
    """
    code, a, b = _fuse_args(fuse_mode, w_mv, w_res)
    res = _as_batch(residual)
    cells = mv_energy(mv, mv_ref, mv_unit_div, mv_pct, mv_compensate)
    cells = cells[None] if cells.ndim == 2 else cells
    if cells.shape[0] != res.shape[0]:
        raise ValueError(f"{cells.shape[0]} MV fields for {res.shape[0]} residual frames")
    out = np.empty(res.shape, np.float32)
    _fused_energy_kernel(
        res, np.ascontiguousarray(cells), float(res_pct), bool(res_use_grad), code, a, b, out
    )
    return out[0] if residual.ndim == 2 else out


__all__ = [
    "FUSE_MODES",
    "fuse",
    "fused_energy",
    "mv_energy",
    "residual_energy",
    "upsample_cells",
]
