"""Read precomputed codec inputs (a Stage-2 pack: mosaic images + ``positions_thw.npy``).

Why here: the codec reader owns the pack format (``docs/formats.md``), so reading it back
and checking that mosaics and positions describe the same patches live next to the code
that writes them. Every problem raises :class:`CodecInputError` naming the file.

A pack is data: it is read at its **own** geometry, whatever configuration a caller encodes
videos with. Its canvas ``S`` is the mosaics' side, ``N`` their count, the patch grid
``S / P`` for the encoder's patch size ``P``, and ``K`` the rows of its positions. Its frame
count ``T`` is not recorded anywhere in the pack (``pack.json`` lists only the files, and
upstream's assets have no ``pack.json``; the Stage-1 ``meta.json`` that knows ``T`` stays
under ``--visidx_root``), so a pack is only known to span ``max(t) + 1`` frames: ``t`` is
checked non-negative, and below a bound only where the caller has one (the encoder's temporal
RoPE grid, ``llava.processing.media``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .batch import sample_stem
from .errors import CodecInputError, ImageReadError
from .images import check_regular_file, open_regular_file, read_image
from .pipeline import LLAVA_CODEC, CodecPatches, Stage1Params


@dataclass(frozen=True)
class PackGeometry:
    """What a pack's files say about it: ``N`` mosaics of ``S`` x ``S`` pixels cut in ``P`` px patches."""

    num_images: int
    square_size: int
    patch_size: int

    @property
    def grid(self) -> int:
        """Patches per canvas side (``S / P``)."""
        return self.square_size // self.patch_size

    @property
    def tokens(self) -> int:
        """``K`` under padding ``zero`` (every slot of every mosaic): ``N * (S / P)**2``."""
        return self.num_images * self.grid * self.grid

    def __str__(self) -> str:
        s, g = self.square_size, self.grid
        return f"{self.num_images} mosaics of {s}x{s} px ({g}x{g} patches of {self.patch_size} px)"


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


def check_pack(
    mosaics: np.ndarray,
    positions: np.ndarray,
    patch_size: int = LLAVA_CODEC.patch_size,
    padding_policy: str = "zero",
    where: str = "codec input",
) -> PackGeometry:
    """Check that a pack agrees with itself; returns its geometry.

    Checked, at the pack's own canvas: the mosaics are square and of one size (``[N, S, S, 3]``),
    ``S`` is a multiple of ``patch_size`` (the encoder's: it cuts the mosaics), K is ``N * grid**2``
    under padding ``zero`` (at most that, a multiple of N, under ``exclude``), every ``(h, w)`` is
    on the ``grid x grid`` patch grid and every ``t`` non-negative.
    """
    if padding_policy not in ("zero", "exclude"):
        raise ValueError(f"padding_policy must be 'zero' or 'exclude', got {padding_policy!r}")
    if mosaics.ndim != 4 or mosaics.shape[1] != mosaics.shape[2]:
        raise CodecInputError(where, f"mosaics must be [N, S, S, 3] (square, one size), got {mosaics.shape}")
    num, side = int(mosaics.shape[0]), int(mosaics.shape[1])
    if side % patch_size:
        raise CodecInputError(
            where, f"mosaic side {side} is not a multiple of the encoder's {patch_size}px patches "
            f"(patch_size={patch_size})"
        )
    geometry = PackGeometry(num, side, patch_size)
    grid, k = geometry.grid, int(positions.shape[0])
    if padding_policy == "zero" and k != geometry.tokens:
        raise CodecInputError(
            where,
            f"positions has K={k} rows but {num} mosaics of {grid}x{grid} patches need K={geometry.tokens}",
        )
    if padding_policy == "exclude" and (k > geometry.tokens or k % num):
        raise CodecInputError(
            where, f"positions has K={k} rows, not a multiple of {num} mosaics within {grid}x{grid} each"
        )
    if k and positions[:, 1:].max() >= grid:
        raise CodecInputError(
            where, f"positions (h, w) must be < {grid} (the {side}px canvas in {patch_size}px patches)"
        )
    if k and positions.min() < 0:
        raise CodecInputError(where, "positions must be non-negative")
    return geometry


def check_codec_inputs(
    mosaics: np.ndarray, positions: np.ndarray, params: Stage1Params = LLAVA_CODEC, where: str = "codec input"
) -> None:
    """Check that mosaics and positions describe the same patches *and* match the configuration ``params``.

    For inputs that must be what ``params`` computes (e.g. a test of ``codec_patchify``): the pack's own
    checks (:func:`check_pack`, with ``params.patch_size`` and ``params.padding_policy``), then its side
    equals ``square_size`` and every ``t`` is below ``sequence_length``. Reading a pack as model input
    uses :func:`read_pack`, which checks the pack against itself only.
    """
    geometry = check_pack(mosaics, positions, params.patch_size, params.padding_policy, where)
    if geometry.square_size != params.square_size:
        side = geometry.square_size
        raise CodecInputError(where, f"mosaics are {side}x{side}, expected square_size={params.square_size}")
    if len(positions) and positions[:, 0].max() >= params.sequence_length:
        raise CodecInputError(where, f"positions t must be < sequence_length={params.sequence_length}")


def read_pack(
    mosaic_paths: Sequence[str | os.PathLike],
    positions_path: str | os.PathLike,
    patch_size: int = LLAVA_CODEC.patch_size,
    padding_policy: str = "zero",
) -> CodecPatches:
    """A Stage-2 pack as :class:`CodecPatches`, read at its own geometry and checked against itself
    (:func:`check_pack`; ``patch_size`` is the encoder's). ``meta`` holds the geometry: ``num_images``,
    ``square_size``, ``patch_size`` and ``frames``, the frames its positions span (``max(t) + 1``)."""
    if isinstance(patch_size, Stage1Params):
        raise TypeError(
            "read_pack reads a pack at its own canvas, frames and mosaics; pass the encoder's patch size "
            "(patch_size=params.patch_size), not a codec configuration"
        )
    mosaics = load_mosaics(mosaic_paths)
    positions = load_positions(positions_path)
    geometry = check_pack(mosaics, positions, patch_size, padding_policy, where=str(positions_path))
    frames = int(positions[:, 0].max()) + 1 if len(positions) else 0
    meta = {"num_images": geometry.num_images, "square_size": geometry.square_size, "patch_size": patch_size,
            "frames": frames, "padding_policy": padding_policy}
    return CodecPatches(mosaics=mosaics, positions=positions, meta=meta)


def pack_geometry(
    mosaic_paths: Sequence[str | os.PathLike], patch_size: int = LLAVA_CODEC.patch_size
) -> PackGeometry:
    """A pack's geometry from its file list and the first mosaic's header (no decoding): what a dataset
    needs to count a pack's tokens before reading it. The full checks run when the pack is read."""
    if isinstance(mosaic_paths, (str, os.PathLike)) or not mosaic_paths:
        raise ValueError("mosaic paths must be a non-empty list of image paths")
    with open_regular_file(mosaic_paths[0], CodecInputError, "mosaic image") as handle:
        try:
            side = Image.open(handle).size[0]
        except (OSError, ValueError, SyntaxError) as exc:
            raise CodecInputError(mosaic_paths[0], f"cannot read mosaic image ({exc})") from None
    return PackGeometry(len(mosaic_paths), int(side), int(patch_size))


def pack_dir(out_image_root: str | os.PathLike, sample_id, video: str) -> Path:
    """The directory ``--mode pack`` writes a record's pack to (``sample_<id>__<stem>__<hash>``)."""
    return Path(out_image_root) / sample_stem(str(sample_id), str(video))


def complete_pack(sample_dir: Path) -> tuple[dict | None, str]:
    """``(pack.json contents, "")`` if the pack in ``sample_dir`` is complete, else ``(None, why)``.

    Why one function: pack mode decides with it whether a pack can be reused and rewrite
    mode whether a record can point at it, so both agree on what a finished pack is:
    ``pack.json`` (written last) exists, lists at least one mosaic, and every file it
    lists exists. Listed paths are used as written (``--out_image_root`` joined with the
    file names when the pack was made), exactly as they go into the JSONL.
    """
    marker = sample_dir / "pack.json"
    if not marker.is_file():
        return None, f"{marker} not found"
    try:
        pack = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{marker} is unreadable ({type(exc).__name__}: {exc})"
    images = pack.get("image") if isinstance(pack, dict) else None
    if not isinstance(images, list) or not images or not all(isinstance(p, str) for p in images):
        return None, f"{marker} has no list of mosaic paths under 'image'"
    missing = [p for p in images if not os.path.isfile(p)]
    if missing:
        return None, f"{len(missing)} of {len(images)} mosaics in {marker} are missing, e.g. {missing[0]}"
    positions = pack.get("positions_thw")
    if positions is not None and not (isinstance(positions, str) and os.path.isfile(positions)):
        return None, f"the positions file {marker} lists is missing: {positions}"
    return pack, ""


__all__ = [
    "PackGeometry",
    "check_codec_inputs",
    "check_pack",
    "complete_pack",
    "pack_dir",
    "load_mosaics",
    "load_positions",
    "pack_geometry",
    "read_pack",
]
