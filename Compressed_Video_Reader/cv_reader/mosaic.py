"""Pack selected patches into mosaic images plus their ``(t, h, w)`` positions (Stage 2).

Layout ``time_spatial`` (default, docs/formats.md#mosaics): patches sorted by ``(t, h, w)`` fill the
mosaics' raster slots in order (the full ``grid x grid`` slots under padding ``zero``;
only the content sub-grid at its canvas offset under ``exclude``). With ``first_full``
mosaic 0 is canvas frame t=0 complete. Layout ``spatial`` puts each patch back at its
own ``(h, w)``. Pure numpy: patches are moved with one fancy-index copy.
"""

from __future__ import annotations

import numpy as np

LAYOUTS = ("time_spatial", "spatial")


def sort_thw(thw: np.ndarray) -> np.ndarray:
    """Rows of ``thw`` ordered by (t, h, w)."""
    order = np.lexsort((thw[:, 2], thw[:, 1], thw[:, 0]))
    return thw[order]


def pack_mosaics(
    canvases: np.ndarray,
    thw: np.ndarray,
    patch: int,
    num_images: int = 8,
    padding_policy: str = "zero",
    valid_ranges: dict | None = None,
    layout: str = "time_spatial",
    first_full: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(mosaics [N, S, S, 3] uint8, positions [K, 3] int32)``.

    ``canvases`` is ``[T, S, S, 3]`` (the sampled frames on the canvas), ``thw`` the
    Stage-1 selection. ``positions[j]`` is the source ``(t, h, w)`` of the j-th filled
    slot, mosaic by mosaic in raster order.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    if thw.ndim != 2 or thw.shape[1] != 3:
        raise ValueError(f"positions must be [K, 3], got {thw.shape}")
    t_len, size = canvases.shape[0], canvases.shape[1]
    if size % patch:
        raise ValueError(f"canvas {size} not a multiple of patch {patch}")
    grid = size // patch
    if thw.size and (thw[:, 0].max() >= t_len or thw.min() < 0 or thw[:, 1:].max() >= grid):
        raise ValueError("selection refers to frames or patches outside the canvas stack")
    n = int(num_images)
    thw = sort_thw(thw.astype(np.int64))
    mosaics = np.zeros((n, size, size, 3), np.uint8)
    pos_parts: list[np.ndarray] = []
    start = 0
    if first_full:
        hh, ww = np.divmod(np.arange(grid * grid), grid)
        full0 = np.stack([np.zeros_like(hh), hh, ww], axis=1)
        if thw.shape[0] < full0.shape[0] or not np.array_equal(thw[: full0.shape[0]], full0):
            raise ValueError(
                "first_full needs a selection that keeps frame t=0 complete "
                "(run Stage 1 with keep_first_full_frame)"
            )
        mosaics[0] = canvases[0]
        pos_parts.append(full0)
        thw = thw[full0.shape[0] :]
        start = 1
    slots_n = n - start
    src = canvases.reshape(t_len, grid, patch, grid, patch, 3)
    dst = mosaics.reshape(n, grid, patch, grid, patch, 3)
    if layout == "spatial":
        per = -(-thw.shape[0] // max(slots_n, 1)) if slots_n else 0
        m = start + np.arange(thw.shape[0]) // max(per, 1)
        sh, sw = thw[:, 1], thw[:, 2]
    else:
        if (padding_policy or "zero").lower() == "zero":
            rows0, cols0, vh, vw = 0, 0, grid, grid
        else:
            vr = valid_ranges or {}
            rows0, cols0 = int(vr.get("valid_h_start", 0)), int(vr.get("valid_w_start", 0))
            vh = int(vr.get("valid_h_end", 0)) - rows0
            vw = int(vr.get("valid_w_end", 0)) - cols0
            if vh <= 0 or vw <= 0:
                raise ValueError(f"bad valid_ranges {vr}")
        per = vh * vw
        if thw.shape[0] != per * slots_n:
            raise ValueError(
                f"selection has {thw.shape[0]} patches but {slots_n} mosaics x {per} slots "
                f"are needed (check Stage-1 K / num_images / padding policy)"
            )
        j = np.arange(thw.shape[0])
        m = start + j // per
        r, c = np.divmod(j % per, vw)
        sh, sw = rows0 + r, cols0 + c
    if thw.shape[0]:
        dst[m, sh, :, sw, :] = src[thw[:, 0], thw[:, 1], :, thw[:, 2], :]
    pos_parts.append(thw)
    positions = np.concatenate(pos_parts).astype(np.int32) if pos_parts else np.zeros((0, 3), np.int32)
    return mosaics, positions


__all__ = ["LAYOUTS", "pack_mosaics", "sort_thw"]
