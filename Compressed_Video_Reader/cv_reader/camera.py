"""Camera-motion compensation: remove the global motion from a motion-vector field.

Why: under a camera pan every block moves, so raw MV magnitude would select the static
background. ``median``/``mean`` subtract one translation; ``similarity`` (translation,
rotation, zoom) and ``affine`` fit a global model to the field by iteratively
re-weighted least squares that drops outliers (the moving objects) and subtract it.
"""

from __future__ import annotations

import numpy as np

MODES = ("none", "median", "mean", "similarity", "affine")
_MAX_FIT_SAMPLES = 8192


def _design(x: np.ndarray, y: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Design matrices (for vx and vy stacked) of the global model at points (x, y)."""
    one, zero = np.ones_like(x), np.zeros_like(x)
    if mode == "similarity":  # vx = a x - b y + tx ; vy = b x + a y + ty
        ax = np.stack([x, -y, one, zero], axis=1)
        ay = np.stack([y, x, zero, one], axis=1)
    else:  # affine: vx = a x + b y + c ; vy = d x + e y + f
        ax = np.stack([x, y, one, zero, zero, zero], axis=1)
        ay = np.stack([zero, zero, zero, x, y, one], axis=1)
    return ax, ay


def fit_global_motion(vec: np.ndarray, valid: np.ndarray, mode: str, iterations: int = 4) -> np.ndarray:
    """Fit ``mode`` to the vectors ``vec`` ([Hc, Wc, 2] float, pixels) at valid cells.

    Returns the model's field ``[Hc, Wc, 2]``. Robust: after each least-squares fit,
    cells whose residual exceeds ``max(3 * 1.4826 * MAD, 0.5 px)`` are dropped.
    """
    hc, wc = valid.shape
    gy, gx = np.mgrid[0:hc, 0:wc].astype(np.float64)
    norm = float(max(hc, wc))
    xs = (gx - (wc - 1) / 2.0) / norm
    ys = (gy - (hc - 1) / 2.0) / norm
    idx = np.flatnonzero(valid.ravel())
    if idx.size < 3:
        return np.zeros_like(vec, dtype=np.float64)
    if idx.size > _MAX_FIT_SAMPLES:  # deterministic stride subsample
        idx = idx[:: int(np.ceil(idx.size / _MAX_FIT_SAMPLES))]
    x, y = xs.ravel()[idx], ys.ravel()[idx]
    vx = vec[..., 0].ravel()[idx].astype(np.float64)
    vy = vec[..., 1].ravel()[idx].astype(np.float64)
    ax, ay = _design(x, y, mode)
    a = np.concatenate([ax, ay])
    b = np.concatenate([vx, vy])
    inl = np.ones(idx.size, bool)
    params = np.zeros(a.shape[1])
    for _ in range(iterations):
        w2 = np.concatenate([inl, inl])
        if w2.sum() < a.shape[1]:
            break
        params, *_ = np.linalg.lstsq(a[w2], b[w2], rcond=None)
        r = np.hypot(ax @ params - vx, ay @ params - vy)
        mad = np.median(np.abs(r[inl] - np.median(r[inl])))
        thr = max(3.0 * 1.4826 * mad + np.median(r[inl]), 0.5)
        new = r <= thr
        if np.array_equal(new, inl):
            break
        inl = new
    fx, fy = _design(xs.ravel(), ys.ravel(), mode)
    return np.stack([fx @ params, fy @ params], axis=-1).reshape(hc, wc, 2)


def _masked_medians(vec: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``np.median(vec[b][valid[b]], axis=0)`` for every frame ``b`` (float32, NaN when none valid).

    One sort of the whole batch with invalid cells pushed to the end; the median is the
    float32 mean of the two middle values (equal for odd counts), as numpy's median gives.
    """
    nb = vec.shape[0]
    keys = np.where(valid[:, None], np.moveaxis(vec, -1, 1), np.float32(np.inf)).reshape(nb, 2, -1)
    keys.sort(axis=2)
    n = valid.reshape(nb, -1).sum(axis=1)
    lo, hi = np.maximum((n - 1) // 2, 0), n // 2
    rows = np.arange(nb)
    med = (keys[rows, :, lo] + keys[rows, :, hi]) / np.float32(2.0)
    med[n == 0] = np.nan
    return med


def compensate_batch(vec: np.ndarray, valid: np.ndarray, mode: str = "median") -> np.ndarray:
    """:func:`compensate` for a batch ``[B, Hc, Wc, 2]`` (the median of every frame in one call)."""
    mode = (mode or "none").lower()
    if mode == "median":
        vec = vec.astype(np.float32)
        med = _masked_medians(vec, valid)
        return vec - np.nan_to_num(med, nan=0.0)[:, None, None, :]
    return np.stack([compensate(vec[i], valid[i], mode) for i in range(vec.shape[0])])


def compensate(vec: np.ndarray, valid: np.ndarray, mode: str = "median") -> np.ndarray:
    """Return ``vec`` minus the global motion estimated on ``valid`` cells."""
    mode = (mode or "none").lower()
    if mode not in MODES:
        raise ValueError(f"unknown mv_compensate {mode!r}; choose one of {MODES}")
    vec = vec.astype(np.float32)
    if mode == "none" or not valid.any():
        return vec
    if mode == "median":
        return compensate_batch(vec[None], valid[None], mode)[0]
    if mode == "mean":
        return vec - vec[valid].mean(axis=0).astype(np.float32)
    return (vec - fit_global_motion(vec, valid, mode)).astype(np.float32)


__all__ = ["MODES", "compensate", "compensate_batch", "fit_global_motion"]
