"""Stage 2's command line: ``--mode pack`` (mosaics, positions, JSONL) and ``--mode rewrite``.

``--mode pack`` packs each video record of the dataset (:func:`cv_reader.packing.pack_sample`:
the T sampled frames decoded, the selected patches packed into N mosaic JPEGs and
``positions_thw.npy``) and emits a JSONL record whose first ``<video>`` becomes N ``<image>``
tokens. A sample whose pack is complete (``pack.json`` written last) is reused.

``--mode rewrite`` turns an annotation file into one whose video records point at packs that
``--mode pack`` already wrote, without decoding anything (:func:`cv_reader.packing.rewrite_record`).
Why a second mode: pack mode emits only the videos it packed, while a training mix needs whole
annotation files, whose image and text records sit beside the videos; rewrite keeps every
record (the non-video ones unchanged) and needs only the packs, not the videos or Stage-1
outputs. Both modes emit the same line for the same video.

This module holds the flags, the per-record checks and the run loop; the dataset is read and
sharded as in Stage 1 (:func:`cv_reader.batch.shard_records`: same formats, same shard key, bad
records logged, skipped and counted), and the counters, logs and status line are
:class:`cv_reader.batch.BatchRun`'s. Both modes keep the input order and replace the output
JSONL atomically at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import fields
from multiprocessing import get_context
from pathlib import Path

from .batch import BatchRun, Stage1Index, open_dataset, shard_records, shard_tag, sweep_interrupted
from .dataset import DatasetReader, check_record
from .mosaic import LAYOUTS
from .packing import PackOptions, RewriteOptions, pack_sample, rewrite_record
from .pipeline import LLAVA_CODEC
from .records import check_video_placeholders

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


def _options(kind: type, args: argparse.Namespace):
    """``PackOptions`` / ``RewriteOptions`` from the flags of the same names."""
    return kind(**{f.name: getattr(args, f.name) for f in fields(kind)})


def _tasks(args: argparse.Namespace, stats: dict, reader: DatasetReader) -> Iterator[tuple]:
    index = Stage1Index(args.visidx_root, args.T, args.square_size, args.patch, recursive=True)
    opts = _options(PackOptions, args)
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
    opts = _options(RewriteOptions, args)
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
    tag = shard_tag(args.num_shards, args.shard_id, "stage2")
    args.num_shards = max(1, args.num_shards)
    reader = open_dataset(args.input_dataset, "stage2")
    out_jsonl = Path(args.out_jsonl)
    if args.num_shards > 1 or args.force_shard_out:
        out_jsonl = Path(f"{out_jsonl}.{tag}.jsonl")
    fail_path = Path(args.fail_txt or f"{out_jsonl}.fail.txt")
    out_jsonl.parent.mkdir(parents=True, exist_ok=True)
    stats = dict.fromkeys(("seen", "picked", "skip", "shard_skip", "ok", "fail", "bad_records"), 0)
    stale = [(out_jsonl.parent, {"recursive": False, "prefix": out_jsonl.name})]
    if rewrite:
        stats["passthrough"] = 0
    else:  # rewrite writes no pack files
        Path(args.out_image_root).mkdir(parents=True, exist_ok=True)
        stale.append((Path(args.out_image_root), {}))
    stats["stale_tmp_removed"] = sweep_interrupted("stage2", *stale)
    tmp_jsonl = Path(f"{out_jsonl}.tmp{os.getpid()}")
    nw = max(1, int(args.num_workers))
    unit = "record" if rewrite else "video"
    try:
        with (
            open(tmp_jsonl, "w", encoding="utf-8") as out,
            BatchRun("stage2", tag, unit, stats, {"fail": fail_path}, args.log_every) as batch,
        ):
            if rewrite:
                results = _rewrite_results(args, stats, reader)
            elif nw <= 1:
                results = map(pack_sample, _tasks(args, stats, reader))
            else:
                mt = args.maxtasks_per_child if args.maxtasks_per_child > 0 else None
                pool = batch.enter_context(get_context("spawn").Pool(processes=nw, maxtasksperchild=mt))
                results = pool.imap(pack_sample, _tasks(args, stats, reader), chunksize=1)  # ordered
            for status, payload, *_traceback in results:
                if status in ("ok", "pass"):
                    out.write(payload + "\n")
                batch.outcome("passthrough" if status == "pass" else status, payload if status == "fail" else None)
        os.replace(tmp_jsonl, out_jsonl)
    finally:
        if tmp_jsonl.exists():
            tmp_jsonl.unlink()
    lines = [f"wrote {out_jsonl}  failures: {fail_path}"]
    if rewrite and stats["fail"]:
        lines.append(f"{stats['fail']} record(s) failed, listed in {fail_path}: exit status 1")
    batch.summary(reader, *lines)
    return stats


def exit_status(args: argparse.Namespace, stats: dict) -> int:
    """0, or 1 for a rewrite run in which a record failed (``--help`` documents both modes).

    Why only rewrite: a pack run's failures are videos that cannot be decoded, which a
    large batch always has, and its callers rely on status 0. A rewrite failure means the
    annotation file and the packs disagree (a pack missing, made with other flags), which
    a pipeline must notice before it trains on the output.
    """
    return 1 if getattr(args, "mode", "pack") == "rewrite" and stats["fail"] else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_status(args, run(args))


if __name__ == "__main__":
    sys.exit(main())
