"""Frame sampling and global top-K patch selection (upstream Stage-1 semantics, docs/formats.md).

Why a separate module: selection is pure array logic shared by the in-memory path and
the Stage-1 CLI. Ties are broken stably (earlier frame, then raster order), so equal
inputs always give identical outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PADDING_POLICIES = ("exclude", "zero")
_PAD_SCORE = -1e-4  # padding allowed but ranked below any content
_EXCLUDED = -np.inf


def sample_frame_ids_uniform(num_frames: int, seq_len: int, start_offset: int = 0) -> list[int]:
    """``seq_len`` ids spread uniformly over ``[start_offset, num_frames-1]`` (repeats if short)."""
    if num_frames <= 0 or seq_len <= 0:
        return []
    start = int(start_offset)
    if start < 0 or start >= num_frames:
        start = 0
    return np.linspace(start, num_frames - 1, int(seq_len), dtype=int).tolist()


@dataclass
class TopK:
    thw: np.ndarray  # int32 [K, 3], mandatory patches first, then by descending score
    hb: int
    wb: int
    s_total: int
    s_valid: int

    @property
    def k(self) -> int:
        return int(self.thw.shape[0])


def _ranked(scores: np.ndarray, k: int) -> np.ndarray:
    """Flat indices of the ``k`` best scores, best first; ties keep the lower index (stable).

    Equals ``np.argsort(-scores, kind="stable")[:k]`` without sorting everything: a
    partition finds the k-th best value, then only the chosen indices are sorted.
    """
    neg = -scores.reshape(-1)
    if k <= 0:
        return np.zeros(0, np.int64)
    if k >= neg.size:
        return np.argsort(neg, kind="stable")
    kth = np.partition(neg, k - 1)[k - 1]
    better = np.flatnonzero(neg < kth)
    ties = np.flatnonzero(neg == kth)[: k - better.size]  # the lowest indices among equals
    chosen = np.sort(np.concatenate([better, ties]))
    return chosen[np.argsort(neg[chosen], kind="stable")]


def _to_thw(flat_idx: np.ndarray, s_total: int, wb: int) -> np.ndarray:
    t = flat_idx // s_total
    s = flat_idx % s_total
    return np.stack([t, s // wb, s % wb], axis=1).astype(np.int32)


def global_topk(
    scores: np.ndarray,
    valid_mask: np.ndarray,
    keep_frames_equiv: int = 8,
    padding_policy: str = "exclude",
    keep_uniform_first: bool = False,
    keep_first_full_frame: bool = False,
) -> TopK:
    """Select patches from ``scores`` ``[T, hb, wb]``.

    * ``exclude``: budget ``K = keep_frames_equiv * S_valid``; padding patches are never chosen.
    * ``zero``: budget ``K = keep_frames_equiv * S_total``; padding ranks below content.
    * ``keep_first_full_frame``: all ``S_total`` patches of t=0 first (raster order), then
      the remaining ``keep_frames_equiv - 1`` frames' worth from t >= 1 (``S_valid`` each under
      ``exclude``, ``S_total`` under ``zero``).
    * ``keep_uniform_first``: all content patches of t=0 first, the rest of the budget from t >= 1.
    """
    pol = (padding_policy or "exclude").lower()
    if pol not in PADDING_POLICIES:
        raise ValueError(f"unknown padding_policy {padding_policy!r}; choose one of {PADDING_POLICIES}")
    if scores.ndim != 3:
        raise ValueError(f"scores must be [T, hb, wb], got {scores.shape}")
    t_len, hb, wb = scores.shape
    if valid_mask.shape != (hb, wb):
        raise ValueError(f"valid_mask {valid_mask.shape} != grid {(hb, wb)}")
    s_total = hb * wb
    s_valid = int(valid_mask.sum())
    per_frame = s_valid if pol == "exclude" else s_total
    sc = scores.astype(np.float64).copy()
    sc[:, ~valid_mask] = _EXCLUDED if pol == "exclude" else _PAD_SCORE
    empty = np.zeros((0, 3), np.int32)
    if t_len == 0 or per_frame == 0:
        return TopK(empty, hb, wb, s_total, s_valid)

    mandatory = empty
    if keep_first_full_frame:
        hh, ww = np.divmod(np.arange(s_total), wb)
        mandatory = np.stack([np.zeros(s_total, int), hh, ww], axis=1).astype(np.int32)
        budget = s_total + max(int(keep_frames_equiv) - 1, 0) * per_frame
    elif keep_uniform_first:
        hh, ww = np.nonzero(valid_mask)
        mandatory = np.stack([np.zeros(hh.size, int), hh, ww], axis=1).astype(np.int32)
        budget = int(keep_frames_equiv) * per_frame
    else:
        budget = int(keep_frames_equiv) * per_frame
    if budget <= mandatory.shape[0]:
        return TopK(mandatory[:budget], hb, wb, s_total, s_valid)
    if mandatory.shape[0]:
        sc[0] = _EXCLUDED
    available = int(np.isfinite(sc).sum())
    k_rem = min(budget - mandatory.shape[0], available)
    rest = _to_thw(_ranked(sc, k_rem), s_total, wb)
    return TopK(np.concatenate([mandatory, rest]).astype(np.int32), hb, wb, s_total, s_valid)


__all__ = ["PADDING_POLICIES", "TopK", "global_topk", "sample_frame_ids_uniform"]
