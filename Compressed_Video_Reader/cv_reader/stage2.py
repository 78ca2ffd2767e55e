"""Stage 2 batch tool (``--mode pack``): mosaics, positions and the training JSONL.

Per sample it reads the Stage-1 outputs, decodes only the T sampled frames, maps them to
the canvas exactly as Stage 1 did, packs the selected patches into N mosaic JPEGs
(``sample_<id>__<stem>__<hash>/<stem>_{i:03d}.jpg``) and ``positions_thw.npy``, and
emits a JSONL record whose first ``<video>`` becomes N ``<image>`` tokens. Files are
written atomically; a sample whose pack is complete (``pack.json`` written last) is
reused. The JSONL keeps the input order and is itself replaced atomically at the end.
The dataset is read by :class:`cv_reader.dataset.DatasetReader`, as in Stage 1 (same
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
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .batch import (
    Stage1Index,
    atomic_save_npy,
    atomic_write_bytes,
    atomic_write_json,
    load_npy,
    one_line,
    open_dataset,
    resolve_video,
    sample_stem,
    shard_key,
    shard_of,
    sweep_stale_tmp,
)
from .dataset import DatasetReader
from .mosaic import LAYOUTS, pack_mosaics
from .pipeline import LLAVA_CODEC, load_canvases

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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="stage2", description="Stage 2: pack codec patches into mosaics + JSONL"
    )
    ap.add_argument("--mode", default="pack", choices=["pack"])
    ap.add_argument(
        "--input_dataset",
        required=True,
        help="dataset as for Stage 1 (.jsonl, .json array, brace list, .yaml mixture) with id, video, "
        "conversations",
    )
    ap.add_argument("--out_jsonl", required=True)
    ap.add_argument("--visidx_root", required=True, help="Stage-1 output directory")
    ap.add_argument("--out_image_root", required=True, help="where the mosaics go")
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
    ap.add_argument("--num_images", type=int, default=None, help="mosaics per video (default 8)")
    ap.add_argument("--square_size", type=int, default=None, help="canvas side of the Stage-1 run (default 576)")
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
    ap.add_argument("--skip_missing", action="store_true", help="skip samples without Stage-1 outputs")
    ap.add_argument("--jpeg_quality", type=int, default=95)
    ap.add_argument("--num_workers", type=int, default=1)
    ap.add_argument("--maxtasks_per_child", type=int, default=2000)
    ap.add_argument("--max_samples", type=int, default=0)
    ap.add_argument("--log_every", type=int, default=200)
    ap.add_argument("--num_shards", type=int, default=1)
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


def rewrite_conversations(convs: list, num_images: int) -> list:
    """Replace the first ``<video>`` of the first human turn by ``num_images`` ``<image>`` lines."""
    if not isinstance(convs, list):
        return convs
    tokens = "\n".join(["<image>"] * int(num_images))
    out, done = [], False
    for turn in convs:
        if (
            not done
            and isinstance(turn, dict)
            and turn.get("from") == "human"
            and isinstance(turn.get("value"), str)
        ):
            turn = dict(turn)
            v = turn["value"]
            if "<video>" in v:
                turn["value"] = v.replace("<video>", tokens, 1)
            elif "<image>" not in v:
                turn["value"] = tokens + "\n" + v
            done = True
        out.append(turn)
    return out


def _jpeg(img: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def pack_sample(task: tuple) -> tuple:
    """Worker: pack one sample. Returns (status, payload) with status ok | skip | fail."""
    item, opts, meta_hit = task
    sid, video = str(item.get("id")), str(item.get("video"))
    try:
        vp = Path(video)
        sample_dir = Path(opts["out_image_root"]) / sample_stem(sid, video)
        n = int(opts["num_images"])
        marker = sample_dir / "pack.json"
        if marker.is_file() and not opts["overwrite"]:
            rec = json.loads(marker.read_text(encoding="utf-8"))
            if all(os.path.isfile(p) for p in rec.get("image", [])) and (
                not opts["write_positions"] or os.path.isfile(rec.get("positions_thw", ""))
            ):
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
    except Exception as exc:  # noqa: BLE001 - a batch tool logs and goes on
        return (
            "fail",
            f"{sid}\t{video}\t{one_line(f'{type(exc).__name__}: {exc}')}",
            traceback.format_exc(limit=3),
        )


def _record(item: dict, pack: dict, n: int) -> str:
    out = {k: v for k, v in item.items() if k not in ("video", "_row_idx", "image", "positions_thw")}
    out["id"] = item.get("id")
    out["conversations"] = rewrite_conversations(item.get("conversations", []), n)
    out["image"] = pack["image"]
    if "positions_thw" in pack:
        out["positions_thw"] = pack["positions_thw"]
    return json.dumps(out, ensure_ascii=False)


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
    for record in reader:
        stats["seen"] += 1
        stats["bad_records"] = reader.bad_records
        item = record.data
        sid, video = item.get("id"), item.get("video")
        if sid is None or not video:
            stats["skip"] += 1
            continue
        try:
            row = int(item.get("_row_idx", record.index))
        except (TypeError, ValueError):
            row = record.index
        if shard_of(shard_key(video, sid, row), args.num_shards) != args.shard_id:
            stats["shard_skip"] += 1
            continue
        if args.max_samples > 0 and stats["picked"] >= args.max_samples:
            return
        stats["picked"] += 1
        yield (item, opts, index.find(sid, video))


def run(args: argparse.Namespace) -> dict:
    args = apply_preset(args)
    args.num_shards = max(1, args.num_shards)
    if not 0 <= args.shard_id < args.num_shards:
        raise SystemExit(f"--shard_id {args.shard_id} must be in [0, {args.num_shards})")
    reader = open_dataset(args.input_dataset, "stage2")
    out_jsonl = Path(args.out_jsonl)
    if args.num_shards > 1 or args.force_shard_out:
        out_jsonl = Path(f"{out_jsonl}.shard{args.shard_id:02d}of{args.num_shards:02d}.jsonl")
    fail_path = Path(args.fail_txt or f"{out_jsonl}.fail.txt")
    for d in (out_jsonl.parent, fail_path.parent, Path(args.out_image_root)):
        d.mkdir(parents=True, exist_ok=True)
    stats = dict(seen=0, picked=0, skip=0, shard_skip=0, ok=0, fail=0, bad_records=0)
    stats["stale_tmp_removed"] = sweep_stale_tmp(args.out_image_root) + sweep_stale_tmp(
        out_jsonl.parent, recursive=False, prefix=out_jsonl.name
    )
    if stats["stale_tmp_removed"]:
        print(
            f"[stage2] removed {stats['stale_tmp_removed']} temp file(s) left by an interrupted run",
            flush=True,
        )
    t0 = time.perf_counter()
    tmp_jsonl = Path(f"{out_jsonl}.tmp{os.getpid()}")
    nw = max(1, int(args.num_workers))
    try:
        with (
            open(tmp_jsonl, "w", encoding="utf-8") as fw,
            open(fail_path, "a", encoding="utf-8") as ff,
            logging_redirect_tqdm(),  # bad-record warnings print above the progress bar
            tqdm(desc="stage2 pack", unit="video", file=sys.stderr, mininterval=1.0) as bar,
        ):

            def handle(ret: tuple) -> None:
                if ret[0] == "ok":
                    stats["ok"] += 1
                    fw.write(ret[1] + "\n")
                elif ret[0] == "skip":
                    stats["skip"] += 1
                else:
                    stats["fail"] += 1
                    ff.write(ret[1] + "\n")
                    ff.flush()
                bar.update(1)
                n = stats["ok"] + stats["fail"]
                if args.log_every > 0 and n and n % args.log_every == 0:
                    bar.write(_line(stats, t0))

            tasks = _tasks(args, stats, reader)
            if nw <= 1:
                for task in tasks:
                    handle(pack_sample(task))
            else:
                mt = args.maxtasks_per_child if args.maxtasks_per_child > 0 else None
                with get_context("spawn").Pool(processes=nw, maxtasksperchild=mt) as pool:
                    for ret in pool.imap(pack_sample, tasks, chunksize=1):  # ordered: stable JSONL
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
    return stats


def _line(stats: dict, t0: float, done: bool = False) -> str:
    el = time.perf_counter() - t0
    n = stats["ok"] + stats["fail"] + stats["skip"]
    head = "[stage2] DONE" if done else "[stage2]"
    return (
        f"{head} seen={stats['seen']} picked={stats['picked']} ok={stats['ok']} fail={stats['fail']} "
        f"skip={stats['skip']} shard_skip={stats['shard_skip']} bad_records={stats['bad_records']} "
        f"elapsed={el:.1f}s avg={el / max(n, 1):.3f}s/video"
    )


def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
