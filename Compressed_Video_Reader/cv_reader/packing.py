"""Stage 2's library: pack one video record, or point one record at its existing pack.

:func:`pack_sample` reads a sample's Stage-1 outputs, decodes only its T sampled frames,
maps them to the canvas as Stage 1 did, packs the selected patches into N mosaic JPEGs
(``sample_<id>__<stem>__<hash>/<stem>_{i:03d}.jpg``) and ``positions_thw.npy``, and writes
``pack.json`` last (the mark of a complete pack, :func:`cv_reader.pack.complete_pack`).
:func:`rewrite_record` decodes nothing: it finds the pack that :func:`pack_sample` wrote
for a record. Both return the same JSONL line for the same record (:func:`pack_record`),
so the two modes of the command line (:mod:`cv_reader.stage2`) agree.

Each returns ``(status, payload[, traceback])`` and never raises for one record's problem,
so a batch tool logs it and goes on: ``ok`` (payload: the JSONL line), ``skip`` / ``fail``
(payload: the failure-log line ``id<TAB>video<TAB>reason (file:line)``), and for
:func:`rewrite_record` ``bad`` (the record, not the pack, is wrong: a bad record).
"""

from __future__ import annotations

import io
import json
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .batch import resolve_video
from .mosaic import pack_mosaics
from .pack import complete_pack, pack_dir
from .pipeline import load_canvases
from .records import check_video_placeholders, rewrite_conversations
from .util import atomic_save_npy, atomic_write_bytes, atomic_write_json, load_npy, one_line


@dataclass(frozen=True)
class PackOptions:
    """How :func:`pack_sample` packs (the pack-mode flags of ``stage2``, same names)."""

    out_image_root: str
    visidx_root: str
    num_images: int
    square_size: int
    T: int
    patch: int
    layout: str = "time_spatial"
    first_full: bool = False
    write_positions: bool = False
    video_folder: str = ""
    skip_missing: bool = False
    jpeg_quality: int = 95
    overwrite: bool = False
    threads: int = 1


@dataclass(frozen=True)
class RewriteOptions:
    """Where :func:`rewrite_record` finds packs and what it accepts (``num_images`` None: any count)."""

    out_image_root: str
    num_images: int | None = None
    skip_missing_packs: bool = False


def pack_record(item: dict, pack: dict, n: int) -> str:
    """The JSONL line of a packed video record (both modes): ``video`` replaced by the pack.

    The record's fields and placeholders were checked (``check_record``,
    :func:`~cv_reader.records.check_video_placeholders`); a record without conversations
    (``--packs_only``) keeps none.
    """
    out = {k: v for k, v in item.items() if k not in ("video", "_row_idx", "image", "positions_thw")}
    out["id"] = item.get("id")
    if item.get("conversations") is not None:
        out["conversations"] = rewrite_conversations(item["conversations"], n)
    out["image"] = pack["image"]
    if "positions_thw" in pack:
        out["positions_thw"] = pack["positions_thw"]
    return json.dumps(out, ensure_ascii=False)


def _jpeg(img: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def write_pack(sample_dir: Path, stem: str, mosaics: np.ndarray, positions: np.ndarray | None,
               jpeg_quality: int = 95) -> dict:
    """Write a pack's files atomically, ``pack.json`` last; returns what ``pack.json`` lists."""
    sample_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, mosaic in enumerate(mosaics):
        path = sample_dir / f"{stem}_{i:03d}.jpg"
        atomic_write_bytes(path, _jpeg(mosaic, jpeg_quality))
        paths.append(str(path))
    pack: dict = {"image": paths}
    if positions is not None:
        pos_path = sample_dir / "positions_thw.npy"
        atomic_save_npy(pos_path, positions.astype(np.int32))
        pack["positions_thw"] = str(pos_path)
    atomic_write_json(sample_dir / "pack.json", pack)  # last: marks the pack complete
    return pack


def pack_sample(task: tuple[dict, str, PackOptions, str | None]) -> tuple:
    """Pack one record: ``task`` is ``(record, where, options, Stage-1 meta path or None)``.

    A complete pack is reused unless ``overwrite`` (or it lacks the positions asked for).
    """
    item, where, opts, meta_hit = task
    sid, video = str(item.get("id")), str(item.get("video"))
    try:
        sample_dir = pack_dir(opts.out_image_root, sid, video)
        n = int(opts.num_images)
        if not opts.overwrite:
            pack, _ = complete_pack(sample_dir)
            if pack is not None and (not opts.write_positions or "positions_thw" in pack):
                return ("ok", pack_record(item, pack, n))
        if not meta_hit:
            if opts.skip_missing:
                return ("skip", f"{sid}\t{video}\tno Stage-1 outputs")
            raise FileNotFoundError(f"no Stage-1 outputs for id={sid} video={video} in {opts.visidx_root}")
        meta = json.loads(Path(meta_hit).read_text(encoding="utf-8"))
        base = meta_hit[: -len(".meta.json")]
        thw = load_npy(base + ".visidx_thw.npy").astype(np.int32)
        frame_ids = load_npy(base + ".frame_ids.npy").astype(np.int64)
        square, patch = int(meta.get("square_size", opts.square_size)), int(meta.get("patch", opts.patch))
        canvases = load_canvases(
            resolve_video(video, opts.video_folder), frame_ids, square, patch, threads=opts.threads
        )
        mosaics, positions = pack_mosaics(
            canvases,
            thw,
            patch,
            n,
            str(meta.get("padding_policy", "exclude")),
            meta.get("valid_ranges"),
            opts.layout,
            first_full=opts.first_full,
        )
        pack = write_pack(sample_dir, Path(video).stem, mosaics[:n],
                          positions if opts.write_positions else None, opts.jpeg_quality)
        return ("ok", pack_record(item, pack, n))
    except Exception as exc:  # noqa: BLE001 - a batch tool logs and goes on (a MediaError: this record only)
        return (
            "fail",
            f"{sid}\t{video}\t{one_line(f'{type(exc).__name__}: {exc}')} ({where})",
            traceback.format_exc(limit=3),
        )


def rewrite_record(item: dict, where: str, opts: RewriteOptions) -> tuple:
    """Point one record with a ``video`` at its pack, decoding nothing.

    ``ok``: the line :func:`pack_sample` emits for this record. A missing or incomplete
    pack is ``skip`` with ``skip_missing_packs``, else ``fail``; a pack without positions
    or with another mosaic count than ``num_images`` always fails, because re-packing, not
    leaving the video out, is the fix. ``bad``: conversations that do not fit the pack's
    mosaic count.
    """
    sid, video = item.get("id"), str(item.get("video"))

    def failed(reason: str, status: str = "fail") -> tuple:
        return (status, f"{sid}\t{video}\t{one_line(reason)} ({where})")

    def missing(reason: str) -> tuple:
        if opts.skip_missing_packs:
            return failed(reason, "skip")
        return failed(f"{reason}; run --mode pack for it, or pass --skip_missing_packs to leave it out")

    try:
        if sid is None:
            return missing("no pack: the record has a video but no id (--mode pack skips such records)")
        sample_dir = pack_dir(opts.out_image_root, sid, video)
        pack, problem = complete_pack(sample_dir)
        if pack is None:
            return missing(f"no complete pack: {problem}")
        n = len(pack["image"])
        if "positions_thw" not in pack:
            return failed(
                f"the pack {sample_dir} has no positions_thw.npy (it was packed without --write_positions); "
                "re-pack with --mode pack --write_positions (or --preset llava), which redoes such packs"
            )
        if opts.num_images is not None and n != opts.num_images:
            return failed(
                f"the pack {sample_dir} has {n} mosaics, not --num_images {opts.num_images}; re-pack with "
                f"--num_images {opts.num_images} --overwrite (after Stage 1 with --keep_frames_equiv "
                f"{opts.num_images}) or leave out --num_images"
            )
        try:
            check_video_placeholders(item["conversations"], n)
        except ValueError as exc:
            return ("bad", str(exc))
        return ("ok", pack_record(item, pack, n))
    except Exception as exc:  # noqa: BLE001 - a batch tool logs and goes on
        return failed(f"{type(exc).__name__}: {exc}") + (traceback.format_exc(limit=3),)


__all__ = ["PackOptions", "RewriteOptions", "pack_record", "pack_sample", "rewrite_record", "write_pack"]
