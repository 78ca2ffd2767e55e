"""Square-canvas geometry: resize the longer side to the canvas, centre-pad, patch grid.

Why: Stage 1 scores and Stage 2 packs patches on the same ``S`` x ``S`` canvas, so both
use this one definition (upstream ``square576`` mapping, DESIGN §4). Patch scores are the
integral of the energy over each patch of the area-resampled map, computed with two
small overlap matrices instead of materialising the resized map.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class CanvasGeometry:
    """Placement of an ``height`` x ``width`` (display-oriented) frame on the canvas."""

    height: int
    width: int
    size: int
    patch: int

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"bad frame size {self.width}x{self.height}")
        if self.patch <= 0 or self.size <= 0 or self.size % self.patch:
            raise ValueError(
                f"square_size {self.size} must be a positive multiple of patch_size {self.patch}"
            )

    @property
    def scale(self) -> float:
        return float(self.size) / float(max(self.height, self.width))

    @property
    def content_hw(self) -> tuple[int, int]:
        """(Hn, Wn): content size on the canvas."""
        return (max(1, int(round(self.height * self.scale))), max(1, int(round(self.width * self.scale))))

    @property
    def pad_top(self) -> int:
        return (self.size - self.content_hw[0]) // 2

    @property
    def pad_left(self) -> int:
        return (self.size - self.content_hw[1]) // 2

    @property
    def grid(self) -> int:
        """Patches per canvas side (hb == wb)."""
        return self.size // self.patch

    def pad_info(self) -> dict:
        """Upstream-compatible ``pad_info`` record."""
        hn, wn = self.content_hw
        return dict(
            scale=self.scale,
            Hn=hn,
            Wn=wn,
            pad_top=self.pad_top,
            pad_left=self.pad_left,
            pad_bottom=self.size - hn - self.pad_top,
            pad_right=self.size - wn - self.pad_left,
            out_size=self.size,
            H0=self.height,
            W0=self.width,
        )

    @cached_property
    def valid_mask(self) -> np.ndarray:
        """bool ``[grid, grid]``: patches lying entirely inside the content region."""
        hn, wn = self.content_hw
        edges = np.arange(self.grid) * self.patch
        rows = (edges >= self.pad_top) & (edges + self.patch <= self.pad_top + hn)
        cols = (edges >= self.pad_left) & (edges + self.patch <= self.pad_left + wn)
        return rows[:, None] & cols[None, :]

    def valid_ranges(self) -> dict:
        """Upstream ``valid_ranges``: bounding rows/cols of the content patch grid."""
        vm = self.valid_mask
        out = {"S_valid": int(vm.sum()), "hb_total": self.grid, "wb_total": self.grid}
        if vm.any():
            ys, xs = np.nonzero(vm)
            out.update(
                valid_h_start=int(ys.min()),
                valid_h_end=int(ys.max() + 1),
                valid_w_start=int(xs.min()),
                valid_w_end=int(xs.max() + 1),
            )
        return out

    def _bounds(self, eh: int, ew: int) -> tuple[np.ndarray, np.ndarray]:
        """Patch edges in the coordinates of an ``eh`` x ``ew`` map of the frame, clipped."""
        hn, wn = self.content_hw
        edges = np.arange(self.grid + 1, dtype=np.float64) * self.patch
        ry = np.clip((edges - self.pad_top) * eh / hn, 0, eh)
        rx = np.clip((edges - self.pad_left) * ew / wn, 0, ew)
        return ry, rx

    @staticmethod
    def _integrate(x: np.ndarray, bounds: np.ndarray, axis: int) -> np.ndarray:
        """Integral of ``x`` (piecewise constant along ``axis``) between consecutive ``bounds``.

        Whole samples inside an interval are summed with ``reduceat`` (no prefix-sum
        cancellation); the two partial samples at its ends are added with their fractions.
        """
        n = x.shape[axis]
        i = np.minimum(np.floor(bounds).astype(np.int64), n - 1)
        f = (bounds - i).astype(np.float32)
        i0, i1, f0, f1 = i[:-1], i[1:], f[:-1], f[1:]
        shape = [1] * x.ndim
        shape[axis] = -1

        def col(v: np.ndarray) -> np.ndarray:
            return v.reshape(shape)

        starts = np.minimum(i0 + 1, n - 1)
        pairs = np.stack([starts, np.maximum(i1, starts)], axis=1).ravel()
        mid = np.take(np.add.reduceat(x, pairs, axis=axis), np.arange(0, 2 * len(i0), 2), axis=axis)
        mid = np.where(col(i1 <= i0 + 1), np.float32(0), mid)
        x0, x1 = np.take(x, i0, axis=axis), np.take(x, i1, axis=axis)
        ends = col(1.0 - f0) * x0 + col(f1) * x1 + mid
        inner = col(f1 - f0) * x0
        return np.where(col(i0 == i1), inner, ends).astype(np.float32)

    def patch_scores(self, energy: np.ndarray) -> np.ndarray:
        """Sum of the canvas-mapped ``energy`` inside each patch -> ``[..., grid, grid]``.

        ``energy`` (``[..., h, w]``, any leading batch dims) covers the whole
        (display-oriented) frame at any resolution. The result is the exact area integral of
        the piecewise-constant map resized onto the canvas (no resized copy, no BLAS).
        """
        if energy.ndim < 2:
            raise ValueError(f"energy must be at least 2-D, got {energy.shape}")
        eh, ew = energy.shape[-2:]
        ry, rx = self._bounds(eh, ew)
        hn, wn = self.content_hw
        rows = self._integrate(energy.astype(np.float32, copy=False), ry, axis=energy.ndim - 2)
        out = self._integrate(rows, rx, axis=energy.ndim - 1)
        return (out * np.float32((hn / eh) * (wn / ew))).astype(np.float32)

    def place(self, content: np.ndarray) -> np.ndarray:
        """Centre-pad a resized ``[Hn, Wn, ...]`` image onto a black canvas."""
        hn, wn = self.content_hw
        if content.shape[:2] != (hn, wn):
            raise ValueError(f"content shape {content.shape[:2]} != {(hn, wn)}")
        out = np.zeros((self.size, self.size) + content.shape[2:], dtype=content.dtype)
        out[self.pad_top : self.pad_top + hn, self.pad_left : self.pad_left + wn] = content
        return out


def rotate_display(arr: np.ndarray, rotation: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Rotate a coded-orientation image to display orientation (``rotation`` CCW degrees)."""
    k = (int(round(rotation / 90.0))) % 4
    return np.rot90(arr, k=k, axes=axes) if k else arr


def display_hw(height: int, width: int, rotation: int) -> tuple[int, int]:
    """Frame size after applying the display rotation."""
    return (width, height) if (int(round(rotation / 90.0)) % 2) else (height, width)


__all__ = ["CanvasGeometry", "display_hw", "rotate_display"]
