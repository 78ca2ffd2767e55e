"""Read precomputed codec inputs (a Stage-2 pack: mosaic images + ``positions_thw.npy``).

Why here: the codec reader owns the pack format (``docs/formats.md``), so reading it back
and checking that mosaics and positions describe the same patches live next to the code
that writes them. Every problem raises :class:`CodecInputError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from .errors import CodecInputError, ImageReadError
from .images import check_regular_file, read_image
from .pipeline import LLAVA_CODEC, CodecPatches, Stage1Params


def load_mosaics(paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """``[N, S, S, 3]`` uint8 RGB from ``N`` square mosaic images of one size."""
    if isinstance(paths, (str, os.PathLike)):
        raise ValueError(f"mosaic paths must be a list of image paths, got a single path {paths!r}")
    if len(paths) == 0:
        raise ValueError("mosaic paths are empty: a codec input needs at least one mosaic image")
    arrays = []
    for path in paths:
        try:
            arrays.append(np.asarray(read_image(path, what="mosaic image"), dtype=np.uint8))
        except ImageReadError as exc:  # reported as what it is: a broken codec input
            raise CodecInputError(exc.path, exc.problem) from None
        height, width = arrays[-1].shape[:2]
        if height != width or arrays[-1].shape != arrays[0].shape:
            raise CodecInputError(
                path,
                f"mosaic is {width}x{height}; mosaics must be square and all the size of the first "
                f"({arrays[0].shape[1]}x{arrays[0].shape[0]})",
            )
    return np.stack(arrays)


def load_positions(path: str | os.PathLike) -> np.ndarray:
    """``positions_thw.npy`` as int32 ``[K, 3]``; never unpickles (object arrays are refused)."""
    check_regular_file(path, CodecInputError, "positions file")
    try:
        positions = np.load(path, allow_pickle=False)
    except ValueError as exc:  # object arrays need pickle
        raise CodecInputError(path, f"not a plain numeric .npy array ({exc})") from exc
    except OSError as exc:
        raise CodecInputError(path, f"not a .npy file ({exc})") from exc
    if not isinstance(positions, np.ndarray):
        raise CodecInputError(path, f"expected one .npy array, got {type(positions).__name__}")
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise CodecInputError(path, f"positions must have shape [K, 3], got {positions.shape}")
    if not np.issubdtype(positions.dtype, np.integer):
        raise CodecInputError(path, f"positions must be integers, got dtype {positions.dtype}")
    if positions.size and (positions.min() < 0 or positions.max() > np.iinfo(np.int32).max):
        raise CodecInputError(path, "positions must be non-negative int32 values")
    return positions.astype(np.int32)


def check_codec_inputs(
    mosaics: np.ndarray, positions: np.ndarray, params: Stage1Params = LLAVA_CODEC, where: str = "codec input"
) -> None:
    """Check that mosaics and positions describe the same patches under ``params``.

    Checked: the mosaic side equals ``square_size`` and is a multiple of ``patch_size``; K is
    ``N * grid**2`` under padding ``zero`` (at most that, a multiple of N, under ``exclude``);
    every ``(h, w)`` is on the canvas grid and every ``t`` below ``sequence_length``.
    """
    num, side = int(mosaics.shape[0]), int(mosaics.shape[1])
    patch = params.patch_size
    if side != params.square_size:
        raise CodecInputError(where, f"mosaics are {side}x{side}, expected square_size={params.square_size}")
    if side % patch:
        raise CodecInputError(where, f"mosaic side {side} is not a multiple of patch_size={patch}")
    grid = side // patch
    k = int(positions.shape[0])
    if params.padding_policy == "zero" and k != num * grid * grid:
        raise CodecInputError(
            where,
            f"positions has K={k} rows but {num} mosaics of {grid}x{grid} patches need K={num * grid * grid}",
        )
    if params.padding_policy == "exclude" and (k > num * grid * grid or k % num):
        raise CodecInputError(
            where, f"positions has K={k} rows, not a multiple of {num} mosaics within {grid}x{grid} each"
        )
    if k and positions[:, 1:].max() >= grid:
        raise CodecInputError(
            where, f"positions (h, w) must be < {grid} (the {side}px canvas in {patch}px patches)"
        )
    if k and positions[:, 0].max() >= params.sequence_length:
        raise CodecInputError(where, f"positions t must be < sequence_length={params.sequence_length}")


def read_pack(
    mosaic_paths: Sequence[str | os.PathLike],
    positions_path: str | os.PathLike,
    params: Stage1Params = LLAVA_CODEC,
) -> CodecPatches:
    """A Stage-2 pack as :class:`CodecPatches`, checked against ``params`` (:func:`check_codec_inputs`)."""
    mosaics = load_mosaics(mosaic_paths)
    positions = load_positions(positions_path)
    check_codec_inputs(mosaics, positions, params, where=str(positions_path))
    return CodecPatches(mosaics=mosaics, positions=positions)


__all__ = ["check_codec_inputs", "load_mosaics", "load_positions", "read_pack"]
