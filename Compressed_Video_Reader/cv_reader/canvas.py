"""Square-canvas geometry: resize the longer side to the canvas, centre-pad, patch grid.

Why: Stage 1 scores and Stage 2 packs patches on the same ``S`` x ``S`` canvas, so both
use this one definition (upstream ``square576`` mapping, docs/formats.md#canvas). Patch scores are the
integral of the energy over each patch of the area-resampled map, computed from the
frame-resolution map without materialising the resized one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .kernels import jit


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

    def patch_scores(self, energy: np.ndarray) -> np.ndarray:
        """Sum of the canvas-mapped ``energy`` inside each patch -> ``[..., grid, grid]``.

        ``energy`` (``[..., h, w]``, any leading batch dims) covers the whole
        (display-oriented) frame at any resolution. The result is the exact area integral of
        the piecewise-constant map resized onto the canvas (no resized copy).
        """
        if energy.ndim < 2:
            raise ValueError(f"energy must be at least 2-D, got {energy.shape}")
        eh, ew = energy.shape[-2:]
        ry, rx = self._bounds(eh, ew)
        hn, wn = self.content_hw
        batch = energy.reshape((-1, eh, ew))  # a view unless a rotated batch must be copied
        out = np.empty((batch.shape[0], self.grid, self.grid), np.float32)
        _patch_integrals(batch.astype(np.float32, copy=False), ry, rx, (hn / eh) * (wn / ew), out)
        return out.reshape(energy.shape[:-2] + (self.grid, self.grid))

    def place(self, content: np.ndarray) -> np.ndarray:
        """Centre-pad a resized ``[Hn, Wn, ...]`` image onto a black canvas."""
        hn, wn = self.content_hw
        if content.shape[:2] != (hn, wn):
            raise ValueError(f"content shape {content.shape[:2]} != {(hn, wn)}")
        out = np.zeros((self.size, self.size) + content.shape[2:], dtype=content.dtype)
        out[self.pad_top : self.pad_top + hn, self.pad_left : self.pad_left + wn] = content
        return out


@jit
def _interval_weights(bounds: np.ndarray, n: int, k: int) -> tuple[int, int, float, float]:
    """Samples ``i0..i1`` of a length-``n`` axis covered by interval ``k`` and their end fractions.

    Sample ``i`` spans ``[i, i + 1)``; interior samples count fully, sample ``i0`` with
    weight ``w0`` and ``i1`` with ``w1`` (one sample: ``w0`` is its whole weight).
    """
    b0, b1 = bounds[k], bounds[k + 1]
    i0 = min(int(np.floor(b0)), n - 1)
    i1 = min(int(np.floor(b1)), n - 1)
    f0, f1 = b0 - i0, b1 - i1
    if i0 == i1:
        return i0, i1, f1 - f0, 0.0
    return i0, i1, 1.0 - f0, f1


@jit
def _patch_integrals(
    energy: np.ndarray, ry: np.ndarray, rx: np.ndarray, scale: float, out: np.ndarray
) -> None:
    """``out[b, i, j]`` = ``scale`` x integral of ``energy[b]`` over rows ``[ry[i], ry[i+1])``
    and columns ``[rx[j], rx[j+1])``.

    Rows first (one band per patch row), then columns; float64 accumulation.
    """
    nb, h, w = energy.shape
    g = out.shape[1]
    band = np.empty(w, np.float64)
    for b in range(nb):
        for i in range(g):
            band[:] = 0.0
            y0, y1, wy0, wy1 = _interval_weights(ry, h, i)
            for y in range(y0, y1 + 1):
                wy = wy0 if y == y0 else (wy1 if y == y1 else 1.0)
                if wy != 0.0:
                    for x in range(w):
                        band[x] += wy * energy[b, y, x]
            for j in range(g):
                x0, x1, wx0, wx1 = _interval_weights(rx, w, j)
                acc = 0.0
                for x in range(x0, x1 + 1):
                    wx = wx0 if x == x0 else (wx1 if x == x1 else 1.0)
                    acc += wx * band[x]
                out[b, i, j] = np.float32(acc * scale)


def rotate_display(arr: np.ndarray, rotation: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Rotate a coded-orientation image to display orientation (``rotation`` CCW degrees)."""
    k = (int(round(rotation / 90.0))) % 4
    return np.rot90(arr, k=k, axes=axes) if k else arr


def display_hw(height: int, width: int, rotation: int) -> tuple[int, int]:
    """Frame size after applying the display rotation."""
    return (width, height) if (int(round(rotation / 90.0)) % 2) else (height, width)


__all__ = ["CanvasGeometry", "display_hw", "rotate_display"]
