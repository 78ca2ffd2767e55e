"""Stage 2 batch tool: ``--mode pack`` (mosaics, positions, JSONL) and ``--mode rewrite``.

``--mode pack``: per sample it reads the Stage-1 outputs, decodes only the T sampled
frames, maps them to the canvas exactly as Stage 1 did, packs the selected patches into N
mosaic JPEGs (``sample_<id>__<stem>__<hash>/<stem>_{i:03d}.jpg``) and
``positions_thw.npy``, and emits a JSONL record whose first ``<video>`` becomes N
``<image>`` tokens. Files are written atomically; a sample whose pack is complete
(``pack.json`` written last) is reused.

``--mode rewrite``: turns an annotation file into one whose video records point at packs
that ``--mode pack`` already wrote, without decoding anything. Why a second mode: pack
mode emits only the videos it packed, while a training mix needs whole annotation files,
whose image and text records sit beside the videos; rewrite keeps every record (the
non-video ones unchanged), and needs only the packs, not the videos or Stage-1 outputs.
It finds packs with the code pack mode uses to reuse them and emits the records pack
mode emits (:func:`_record`), so both modes give the same line for the same video.

Both modes keep the input order and replace the output JSONL atomically at the end. The
dataset is read by :class:`cv_reader.dataset.DatasetReader`, as in Stage 1 (same
formats, same row index for the shard key, bad records logged, skipped and counted).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import ExitStack
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .batch import (
    Stage1Index,
    open_dataset,
    resolve_video,
    shard_records,
)
from .dataset import DatasetReader, check_record
from .mosaic import LAYOUTS, pack_mosaics
from .pack import complete_pack, pack_dir
from .pipeline import LLAVA_CODEC, load_canvases
from .records import check_video_placeholders, rewrite_conversations
from .util import atomic_save_npy, atomic_write_bytes, atomic_write_json, load_npy, one_line, sweep_stale_tmp

_SHARED = dict(
    num_images=LLAVA_CODEC.keep_frames_equiv,
    square_size=LLAVA_CODEC.square_size,
    T=LLAVA_CODEC.sequence_length,
    patch=LLAVA_CODEC.patch_size,
)
#: Flag defaults ``--preset`` chooses from; ``llava`` packs what the model's codec inputs are.
PRESETS = {
    "upstream": dict(_SHARED, first_full=False, write_positions=False),
    "llava": dict(_SHARED, first_full=bool(LLAVA_CODEC.keep_first_full_frame), write_positions=True),
}


EPILOG = """\
--mode rewrite (no decoding): each record with a 'video' is replaced by the record
--mode pack emits for it, read from its complete pack under --out_image_root
(sample_<id>__<stem>__<hash>/pack.json and the files it lists); records without a
'video' (images, text only) are copied unchanged, all in input order. Used flags:
--input_dataset, --out_jsonl, --out_image_root, --num_images (only checked against the
packs), --skip_missing_packs, --fail_txt, --num_shards/--shard_id, --force_shard_out,
--max_samples, --log_every; the others are pack-mode flags and are ignored.

exit status:
  --mode pack     0 when the run completes, even if samples failed (see the failure log);
                  1 when it cannot start (the message says why), 2 for a bad command line.
  --mode rewrite  0 when every record was rewritten, copied or (--skip_missing_packs)
                  skipped; 1 when at least one record failed (the JSONL is still written
                  without it; the failure log names each one) or the run cannot start;
                  2 for a bad command line. A video without a complete pack fails unless
                  --skip_missing_packs; a pack without positions_thw.npy, or with another
                  mosaic count than --num_images, always fails. Bad records (malformed
                  lines, fields of the wrong type, a video record without conversations
                  or whose placeholders do not fit its pack) are logged with their
                  file:line, skipped and counted (bad_records=) and do not change the status.
"""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="stage2",
        description="Stage 2: pack codec patches into mosaics + JSONL (--mode pack), or point an "
        "annotation file's video records at existing packs (--mode rewrite)",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--mode",
        default="pack",
        choices=["pack", "rewrite"],
        help="pack: decode and write packs + JSONL; rewrite: JSONL from existing packs, no decoding",
    )
    ap.add_argument(
        "--input_dataset",
        required=True,
        help="dataset as for Stage 1 (.jsonl, .json array, brace list, .yaml mixture) with id, video, "
        "conversations (rewrite: any records; those without video are copied)",
    )
    ap.add_argument("--out_jsonl", required=True)
    ap.add_argument("--visidx_root", default=None, help="Stage-1 output directory (pack mode, required)")
    ap.add_argument(
        "--out_image_root",
        required=True,
        help="where the packs go (pack) or are (rewrite: the --out_image_root pack mode was given)",
    )
    ap.add_argument("--video_folder", default="", help="prefix for relative video paths")
    ap.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="upstream",
        help="defaults of --num_images/--square_size/--T/--patch/--first_full/--write_positions: "
        "'upstream' (no full first frame, no positions file) or 'llava' (the packs the model trains on: "
        "frame t=0 complete in mosaic 0, positions_thw.npy written; docs/formats.md#configurations). "
        "Flags given explicitly win.",
    )
    ap.add_argument(
        "--num_images",
        type=int,
        default=None,
        help="mosaics per video (pack: default 8; rewrite: if given, a pack with another count fails)",
    )
    ap.add_argument(
        "--square_size", type=int, default=None, help="canvas side of the Stage-1 run (default 576)"
    )
    ap.add_argument("--T", type=int, default=None, help="frames of the Stage-1 run (default 64)")
    ap.add_argument("--patch", type=int, default=None, help="patch size of the Stage-1 run (default 16)")
    ap.add_argument("--layout", default="time_spatial", choices=list(LAYOUTS))
    ap.add_argument(
        "--first_full",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mosaic 0 is frame t=0 complete (default: upstream no, llava yes)",
    )
    ap.add_argument(
        "--write_positions",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write positions_thw.npy, link it in the JSONL (default: upstream no, llava yes)",
    )
    ap.add_argument("--skip_missing", action="store_true", help="pack: skip samples without Stage-1 outputs")
    ap.add_argument(
        "--packs_only",
        action="store_true",
        help="pack: the packs are the product (e.g. a benchmark's videos): records need no conversations, "
        "and the JSONL lists each pack with the record's other fields",
    )
    ap.add_argument(
        "--skip_missing_packs",
        action="store_true",
        help="rewrite: leave video records without a complete pack out of the JSONL, counted skip= "
        "(default: they fail, are logged and make the exit status 1)",
    )
    ap.add_argument("--jpeg_quality", type=int, default=95)
    ap.add_argument("--num_workers", type=int, default=1)
    ap.add_argument("--maxtasks_per_child", type=int, default=2000)
    ap.add_argument("--max_samples", type=int, default=0, help="stop after this many records of the shard")
    ap.add_argument("--log_every", type=int, default=200)
    ap.add_argument(
        "--num_shards",
        type=int,
        default=1,
        help="shard by the Stage-1 key (video|id|row); rewrite also shards the records it copies, so "
        "the shard outputs together hold every record once",
    )
    ap.add_argument("--shard_id", type=int, default=0)
    ap.add_argument(
        "--force_shard_out", action="store_true", help="always write <out_jsonl>.shardXXofYY.jsonl"
    )
    ap.add_argument("--fail_txt", default="", help="failure log (default: <out_jsonl>.fail.txt)")
    ap.add_argument("--overwrite", action="store_true", help="re-pack samples whose pack already exists")
    ap.add_argument("--threads", type=int, default=1, help="decoder threads per worker (0 = FFmpeg default)")
    return ap


def apply_preset(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the flags left unset (None) from ``--preset``."""
    for name, value in PRESETS[getattr(args, "preset", "upstream")].items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    return args


#: Why pack mode skips a video record without conversations (a bad record, unless --packs_only).
NO_CONVERSATIONS = "'conversations' is missing (a training record needs them; --packs_only packs without)"


def _jpeg(img: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def pack_sample(task: tuple) -> tuple:
    """Worker: pack one sample. Returns (status, payload) with status ok (payload: the JSONL line) |
    skip | fail (the reason ends with the record's ``file:line``, ``where``)."""
    item, where, opts, meta_hit = task
    sid, video = str(item.get("id")), str(item.get("video"))
    try:
        vp = Path(video)
        sample_dir = pack_dir(opts["out_image_root"], sid, video)
        n = int(opts["num_images"])
        marker = sample_dir / "pack.json"
        if not opts["overwrite"]:
            rec, _ = complete_pack(sample_dir)
            if rec is not None and (not opts["write_positions"] or "positions_thw" in rec):
                return ("ok", _record(item, rec, n))
        meta_path = Path(meta_hit) if meta_hit else None
        if meta_path is None:
            if opts["skip_missing"]:
                return ("skip", f"{sid}\t{video}\tno Stage-1 outputs")
            raise FileNotFoundError(f"no Stage-1 outputs for id={sid} video={video} in {opts['visidx_root']}")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        base = str(meta_path)[: -len(".meta.json")]
        thw = load_npy(base + ".visidx_thw.npy").astype(np.int32)
        frame_ids = load_npy(base + ".frame_ids.npy").astype(np.int64)
        square, patch = (
            int(meta.get("square_size", opts["square_size"])),
            int(meta.get("patch", opts["patch"])),
        )
        canvases = load_canvases(
            resolve_video(video, opts["video_folder"]), frame_ids, square, patch, threads=opts["threads"]
        )
        mosaics, positions = pack_mosaics(
            canvases,
            thw,
            patch,
            n,
            str(meta.get("padding_policy", "exclude")),
            meta.get("valid_ranges"),
            opts["layout"],
            first_full=opts["first_full"],
        )
        sample_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in range(n):
            p = sample_dir / f"{vp.stem}_{i:03d}.jpg"
            atomic_write_bytes(p, _jpeg(mosaics[i], opts["jpeg_quality"]))
            paths.append(str(p))
        rec = {"image": paths}
        if opts["write_positions"]:
            pos_path = sample_dir / "positions_thw.npy"
            atomic_save_npy(pos_path, positions.astype(np.int32))
            rec["positions_thw"] = str(pos_path)
        atomic_write_json(marker, rec)  # last: marks the pack complete
        return ("ok", _record(item, rec, n))
    except Exception as exc:  # noqa: BLE001 - a batch tool logs and goes on (a MediaError: this record only)
        return (
            "fail",
            f"{sid}\t{video}\t{one_line(f'{type(exc).__name__}: {exc}')} ({where})",
            traceback.format_exc(limit=3),
        )


def _record(item: dict, pack: dict, n: int) -> str:
    """The JSONL line of a packed video record (both modes): ``video`` replaced by the pack.

    The record's fields and placeholders were checked (``check_record``,
    :func:`check_video_placeholders`); a record without conversations (``--packs_only``) keeps none.
    """
    out = {k: v for k, v in item.items() if k not in ("video", "_row_idx", "image", "positions_thw")}
    out["id"] = item.get("id")
    if item.get("conversations") is not None:
        out["conversations"] = rewrite_conversations(item["conversations"], n)
    out["image"] = pack["image"]
    if "positions_thw" in pack:
        out["positions_thw"] = pack["positions_thw"]
    return json.dumps(out, ensure_ascii=False)


def rewrite_record(item: dict, where: str, opts: dict) -> tuple:
    """``--mode rewrite`` of one record with a ``video``: ``(status, payload)`` like :func:`pack_sample`.

    ``ok``: the line pack mode emits for this record. ``skip`` (only with
    ``skip_missing_packs``) and ``fail``: the failure-log line ``id<TAB>video<TAB>reason``,
    the reason ending with the record's ``file:line``. A missing or incomplete pack is
    skippable; a pack without positions or with another mosaic count than
    ``num_images`` always fails, because re-packing, not leaving the video out, is the fix.
    ``bad``: the problem of a record whose conversations do not fit the pack's mosaic count
    (a bad record, not a failure: the record, not the pack, is wrong).
    """
    sid, video = item.get("id"), str(item.get("video"))

    def failed(reason: str, status: str = "fail") -> tuple:
        return (status, f"{sid}\t{video}\t{one_line(reason)} ({where})")

    def missing(reason: str) -> tuple:
        if opts["skip_missing_packs"]:
            return failed(reason, "skip")
        return failed(f"{reason}; run --mode pack for it, or pass --skip_missing_packs to leave it out")

    try:
        if sid is None:
            return missing("no pack: the record has a video but no id (--mode pack skips such records)")
        sample_dir = pack_dir(opts["out_image_root"], sid, video)
        pack, problem = complete_pack(sample_dir)
        if pack is None:
            return missing(f"no complete pack: {problem}")
        n = len(pack["image"])
        if "positions_thw" not in pack:
            return failed(
                f"the pack {sample_dir} has no positions_thw.npy (it was packed without --write_positions); "
                "re-pack with --mode pack --write_positions (or --preset llava), which redoes such packs"
            )
        if opts["num_images"] is not None and n != opts["num_images"]:
            return failed(
                f"the pack {sample_dir} has {n} mosaics, not --num_images {opts['num_images']}; re-pack with "
                f"--num_images {opts['num_images']} --overwrite (after Stage 1 with --keep_frames_equiv "
                f"{opts['num_images']}) or leave out --num_images"
            )
        try:
            check_video_placeholders(item["conversations"], n)
        except ValueError as exc:
            return ("bad", str(exc))
        return ("ok", _record(item, pack, n))
    except Exception as exc:  # noqa: BLE001 - a batch tool logs and goes on
        return failed(f"{type(exc).__name__}: {exc}") + (traceback.format_exc(limit=3),)


def _tasks(args: argparse.Namespace, stats: dict, reader: DatasetReader) -> Iterator[tuple]:
    index = Stage1Index(args.visidx_root, args.T, args.square_size, args.patch, recursive=True)
    opts = dict(
        out_image_root=args.out_image_root,
        visidx_root=args.visidx_root,
        video_folder=args.video_folder,
        num_images=args.num_images,
        square_size=args.square_size,
        T=args.T,
        patch=args.patch,
        layout=args.layout,
        first_full=args.first_full,
        write_positions=args.write_positions,
        skip_missing=args.skip_missing,
        jpeg_quality=args.jpeg_quality,
        overwrite=args.overwrite,
        threads=args.threads,
    )
    for record, _ in shard_records(reader, stats, args.num_shards, args.shard_id, args.max_samples):
        item = record.data
        sid, video = item["id"], item["video"]
        try:
            check_record(item)
            if item.get("conversations") is not None:
                check_video_placeholders(item["conversations"], args.num_images)
        except ValueError as exc:
            reader.reject(record, str(exc))
            continue
        if item.get("conversations") is None and not args.packs_only:
            reader.reject(record, NO_CONVERSATIONS)
            continue
        stats["picked"] += 1
        yield (item, record.where, opts, index.find(sid, video))


def _rewrite_results(args: argparse.Namespace, stats: dict, reader: DatasetReader) -> Iterator[tuple]:
    """``--mode rewrite``: one ``(status, payload)`` per record of this shard, in input order.

    Records without a ``video`` come back as ``("pass", their JSON line)``. Every record
    is sharded (video records by pack mode's key, the others by the same key with an
    empty video), so the outputs of all shards hold each record exactly once. Bad records
    (a field of the wrong type; a video record without conversations or whose placeholders
    do not fit its pack) are rejected through the reader: logged, counted, left out.
    """
    opts = dict(
        out_image_root=args.out_image_root,
        num_images=args.num_images,
        skip_missing_packs=args.skip_missing_packs,
    )
    for record, _ in shard_records(reader, stats, args.num_shards, args.shard_id, args.max_samples,
                                   need_video=False):  # every record is sharded, video or not
        item = record.data
        video = item.get("video")
        try:  # a video record's placeholders are checked against its pack (rewrite_record)
            check_record(item, required=() if video is None else ("conversations",))
        except ValueError as exc:
            reader.reject(record, str(exc))
            continue
        stats["picked"] += 1
        if video is None:
            yield ("pass", json.dumps(item, ensure_ascii=False))
            continue
        result = rewrite_record(item, record.where, opts)
        if result[0] == "bad":
            reader.reject(record, result[1])
        else:
            yield result


def _check_mode_args(args: argparse.Namespace) -> None:
    """Stop before any work when a flag cannot work with ``--mode`` (message names the flag)."""
    if args.mode == "rewrite":
        if not os.path.isdir(args.out_image_root):
            raise SystemExit(
                f"[stage2] --out_image_root {args.out_image_root} is not a directory: --mode rewrite reads "
                "the packs that --mode pack wrote there"
            )
        return
    if not args.visidx_root:
        raise SystemExit("[stage2] --mode pack needs --visidx_root (the Stage-1 output directory)")
    if args.skip_missing_packs:
        raise SystemExit(
            "[stage2] --skip_missing_packs is a --mode rewrite flag; pack mode skips samples without "
            "Stage-1 outputs with --skip_missing"
        )


def run(args: argparse.Namespace) -> dict:
    """Run one mode over one shard; returns the counters of the closing summary line."""
    args.mode = getattr(args, "mode", "pack")
    args.skip_missing_packs = getattr(args, "skip_missing_packs", False)
    rewrite = args.mode == "rewrite"
    if not rewrite:
        args = apply_preset(args)
    _check_mode_args(args)
    args.num_shards = max(1, args.num_shards)
    if not 0 <= args.shard_id < args.num_shards:
        raise SystemExit(f"--shard_id {args.shard_id} must be in [0, {args.num_shards})")
    reader = open_dataset(args.input_dataset, "stage2")
    out_jsonl = Path(args.out_jsonl)
    if args.num_shards > 1 or args.force_shard_out:
        out_jsonl = Path(f"{out_jsonl}.shard{args.shard_id:02d}of{args.num_shards:02d}.jsonl")
    fail_path = Path(args.fail_txt or f"{out_jsonl}.fail.txt")
    for d in (out_jsonl.parent, fail_path.parent) + (() if rewrite else (Path(args.out_image_root),)):
        d.mkdir(parents=True, exist_ok=True)
    stats = dict(seen=0, picked=0, skip=0, shard_skip=0, ok=0, fail=0, bad_records=0)
    if rewrite:
        stats["passthrough"] = 0
    stats["stale_tmp_removed"] = sweep_stale_tmp(out_jsonl.parent, recursive=False, prefix=out_jsonl.name)
    if not rewrite:  # rewrite writes no pack files
        stats["stale_tmp_removed"] += sweep_stale_tmp(args.out_image_root)
    if stats["stale_tmp_removed"]:
        print(
            f"[stage2] removed {stats['stale_tmp_removed']} temp file(s) left by an interrupted run",
            flush=True,
        )
    t0 = time.perf_counter()
    tmp_jsonl = Path(f"{out_jsonl}.tmp{os.getpid()}")
    nw = max(1, int(args.num_workers))
    try:
        with ExitStack() as stack:
            fw = stack.enter_context(open(tmp_jsonl, "w", encoding="utf-8"))
            ff = stack.enter_context(open(fail_path, "a", encoding="utf-8"))
            stack.enter_context(logging_redirect_tqdm())  # bad-record warnings print above the progress bar
            bar = stack.enter_context(
                tqdm(
                    desc=f"stage2 {args.mode}",
                    unit="record" if rewrite else "video",
                    file=sys.stderr,
                    mininterval=1.0,
                )
            )

            def handle(ret: tuple) -> None:
                if ret[0] in ("ok", "pass"):
                    stats["ok" if ret[0] == "ok" else "passthrough"] += 1
                    fw.write(ret[1] + "\n")
                elif ret[0] == "skip":
                    stats["skip"] += 1
                else:
                    stats["fail"] += 1
                    ff.write(ret[1] + "\n")
                    ff.flush()
                bar.update(1)
                n = stats["ok"] + stats["fail"] + stats.get("passthrough", 0)
                if args.log_every > 0 and n and n % args.log_every == 0:
                    bar.write(_line(stats, t0))

            if rewrite:
                results = _rewrite_results(args, stats, reader)
            elif nw <= 1:
                results = map(pack_sample, _tasks(args, stats, reader))
            else:
                mt = args.maxtasks_per_child if args.maxtasks_per_child > 0 else None
                pool = stack.enter_context(get_context("spawn").Pool(processes=nw, maxtasksperchild=mt))
                results = pool.imap(pack_sample, _tasks(args, stats, reader), chunksize=1)  # ordered
            for ret in results:
                handle(ret)
        os.replace(tmp_jsonl, out_jsonl)
    finally:
        if tmp_jsonl.exists():
            tmp_jsonl.unlink()
    stats["bad_records"] = reader.bad_records
    print(_line(stats, t0, done=True), flush=True)
    for line in reader.summary_lines():
        print(f"[stage2] {line}", flush=True)
    print(f"[stage2] wrote {out_jsonl}  failures: {fail_path}", flush=True)
    if rewrite and stats["fail"]:
        print(f"[stage2] {stats['fail']} record(s) failed, listed in {fail_path}: exit status 1", flush=True)
    return stats


def exit_status(args: argparse.Namespace, stats: dict) -> int:
    """0, or 1 for a rewrite run in which a record failed (``--help`` documents both modes).

    Why only rewrite: a pack run's failures are videos that cannot be decoded, which a
    large batch always has, and its callers rely on status 0. A rewrite failure means the
    annotation file and the packs disagree (a pack missing, made with other flags), which
    a pipeline must notice before it trains on the output.
    """
    return 1 if getattr(args, "mode", "pack") == "rewrite" and stats["fail"] else 0


def _line(stats: dict, t0: float, done: bool = False) -> str:
    el = time.perf_counter() - t0
    n = stats["ok"] + stats["fail"] + stats["skip"] + stats.get("passthrough", 0)
    head = "[stage2] DONE" if done else "[stage2]"
    passthrough = f"passthrough={stats['passthrough']} " if "passthrough" in stats else ""
    return (
        f"{head} seen={stats['seen']} picked={stats['picked']} ok={stats['ok']} fail={stats['fail']} "
        f"skip={stats['skip']} {passthrough}shard_skip={stats['shard_skip']} "
        f"bad_records={stats['bad_records']} elapsed={el:.1f}s "
        f"avg={el / max(n, 1):.3f}s/{'record' if passthrough else 'video'}"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_status(args, run(args))


if __name__ == "__main__":
    sys.exit(main())
