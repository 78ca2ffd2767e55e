"""Per-frame saliency: normalised MV energy, residual energy and their fusion.

Follows the upstream Stage-1 definitions (DESIGN §4): each energy is divided by its
``pct``-th percentile within the frame and clipped to [0, 1]; the MV map is upsampled
from cells to pixels (nearest) and fused with the residual map.
"""

from __future__ import annotations

import numpy as np

from .camera import compensate_batch

FUSE_MODES = ("weighted", "max", "sum", "geomean")
RES_FLOOR = 1.0  # residual percentile floor (grey levels): a clean frame stays near zero
MV_FLOOR = 0.25  # MV percentile floor (pixels): sub-quarter-pel "motion" is noise


def percentile_small_int(values: np.ndarray, pct: float) -> float:
    """``np.percentile`` (linear) of a non-negative integer array, via a histogram (fast)."""
    flat = values.ravel()
    n = flat.size
    if n == 0:
        return 0.0
    hist = np.bincount(flat)
    cum = np.cumsum(hist)
    pos = (n - 1) * float(pct) / 100.0
    lo = int(np.floor(pos))
    hi = min(lo + 1, n - 1)
    v_lo = int(np.searchsorted(cum, lo, side="right"))
    v_hi = int(np.searchsorted(cum, hi, side="right"))
    return v_lo + (v_hi - v_lo) * (pos - lo)


def _normalise_by_percentile(vals: np.ndarray, pct: float, floor: float, scale: float = 1.0) -> np.ndarray:
    """Per-frame ``clip(v / max(P_pct(v) / scale, floor) / scale, 0, 1)`` of small non-negative ints.

    ``vals`` is ``[B, ...]`` integral; the percentile (``np.percentile`` linear rule) comes
    from one batched histogram, and the division is a per-frame lookup table.
    """
    b = vals.shape[0]
    flat = vals.reshape(b, -1).astype(np.intp)  # always a fresh copy: modified in place below
    n = flat.shape[1]
    m = int(flat.max(initial=0)) + 1
    flat += (np.arange(b) * m)[:, None]  # per-frame bins: one bincount and one lookup for the batch
    hist = np.bincount(flat.ravel(), minlength=b * m).reshape(b, m)
    cum = np.cumsum(hist, axis=1)
    pos = (n - 1) * float(pct) / 100.0
    lo = int(np.floor(pos))
    hi = min(lo + 1, n - 1)
    v_lo = (cum <= lo).sum(axis=1)
    v_hi = (cum <= hi).sum(axis=1)
    p = (v_lo + (v_hi - v_lo) * (pos - lo)) / scale
    a = np.maximum(p, floor) * scale
    lut = np.minimum(np.arange(m, dtype=np.float32)[None, :] / a[:, None].astype(np.float32), 1.0)
    return lut.ravel().take(flat).reshape(vals.shape)  # lut is float32 already


def residual_energy(residual: np.ndarray, pct: float = 95.0, use_grad: bool = False) -> np.ndarray:
    """|residual| (or its gradient magnitude) / its ``pct`` percentile, clipped to [0, 1].

    Works on one frame ``[H, W]`` or a batch ``[B, H, W]`` (percentile per frame).
    """
    single = residual.ndim == 2
    r = residual[None] if single else residual
    if use_grad:
        ri = r.astype(np.int32)
        gx = np.abs(np.roll(ri, -1, axis=2) - np.roll(ri, 1, axis=2))
        gy = np.abs(np.roll(ri, -1, axis=1) - np.roll(ri, 1, axis=1))
        out = _normalise_by_percentile(gx + gy, pct, RES_FLOOR, scale=2.0)  # 0.5 * (gx + gy)
    else:
        out = _normalise_by_percentile(np.abs(r.astype(np.int32)), pct, RES_FLOOR)
    return out[0] if single else out


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


def fuse(
    norm_mv: np.ndarray, norm_res: np.ndarray, mode: str = "weighted", w_mv: float = 1.0, w_res: float = 1.0
) -> np.ndarray:
    """Combine the two normalised energies into one map in [0, 1]."""
    mode = (mode or "weighted").lower()
    if mode == "max":
        out = np.maximum(norm_mv, norm_res)
    elif mode == "sum":
        out = np.minimum(norm_mv + norm_res, np.float32(1.0))
    elif mode == "geomean":
        out = np.sqrt(norm_mv * norm_res)
    elif mode == "weighted":
        denom = float(w_mv + w_res) or 1.0
        out = np.float32(w_mv / denom) * norm_mv + np.float32(w_res / denom) * norm_res
    else:
        raise ValueError(f"unknown fuse_mode {mode!r}; choose one of {FUSE_MODES}")
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


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
    """Fused per-pixel energy ``[H, W]`` of one frame, or ``[B, H, W]`` of a batch."""
    h, w = residual.shape[-2:]
    m = upsample_cells(mv_energy(mv, mv_ref, mv_unit_div, mv_pct, mv_compensate), h, w)
    r = residual_energy(residual, res_pct, res_use_grad)
    return fuse(m, r, fuse_mode, w_mv, w_res)


__all__ = [
    "FUSE_MODES",
    "fuse",
    "fused_energy",
    "mv_energy",
    "percentile_small_int",
    "residual_energy",
    "upsample_cells",
]
