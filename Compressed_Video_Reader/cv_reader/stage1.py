"""Stage 1 batch tool: per video, choose the codec patches and write their indices.

Outputs per sample (upstream names, docs/formats.md#stage-1-outputs), written atomically with ``meta.json`` last:
``<prefix>_T{T}_square{S}_p{P}_K{K}.visidx_thw.npy`` (int32 [K, 3]), ``.frame_ids.npy``
(int32 [T]) and ``.meta.json``. A sample whose three files exist is skipped (resume).
Failures go to the per-shard failure log, unsupported codecs to their own log; the run
goes on with the other samples and ends with a summary. The dataset is read by
:class:`cv_reader.dataset.DatasetReader` (JSONL, JSON array, brace list, YAML mixture): a
malformed record, or one with a field of the wrong type (``check_record``), is logged with
its ``file:line`` and id, skipped and counted (``bad_records``).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Iterator
from dataclasses import asdict, fields
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from .batch import (
    BatchRun,
    Stage1Index,
    open_dataset,
    resolve_video,
    shard_records,
    shard_tag,
    stage1_prefix,
    stage1_suffix,
    sweep_interrupted,
)
from .camera import MODES as MV_COMPENSATE_MODES
from .dataset import DatasetReader, check_record
from .decode import build_index
from .errors import UnsupportedCodecError
from .pipeline import LLAVA_CODEC, Stage1Params, select_patches, stage1_meta
from .saliency import FUSE_MODES
from .util import atomic_save_npy, atomic_write_json, one_line

#: Parameter sets ``--preset`` chooses from: the upstream CLI's defaults (the default) and the
#: LLaVA codec configuration that the model's codec inputs use.
PRESETS = {"upstream": Stage1Params(), "llava": LLAVA_CODEC}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="stage1",
        description="Stage 1: codec-style patch selection (visidx_thw.npy, frame_ids.npy, meta.json)",
    )
    ap.add_argument(
        "--dataset_path",
        required=True,
        help="dataset: .jsonl, .json (array), a brace list dir/{a,b}.jsonl or a .yaml mixture; "
        "records with id, video",
    )
    ap.add_argument("--out_root", required=True, help="output directory")
    ap.add_argument("--video_folder", default="", help="prefix for relative video paths (default: as given)")
    ap.add_argument("--num_shards", type=int, default=1)
    ap.add_argument("--shard_id", type=int, default=0)
    ap.add_argument(
        "--max_samples", type=int, default=0, help="stop after this many samples of this shard (0 = all)"
    )
    ap.add_argument("--log_every", type=int, default=1000)
    ap.add_argument("--num_workers", type=int, default=8)
    ap.add_argument("--maxtasks_per_child", type=int, default=2000)
    ap.add_argument("--check_codec", action="store_true", help="only accept --allowed_codecs")
    ap.add_argument("--allowed_codecs", default="h264,hevc,h265,avc1")
    ap.add_argument(
        "--fail_txt", default="", help="failure log (default: out_root/stage1_failed.shardXXofYY.txt)"
    )
    ap.add_argument(
        "--unsupported_txt", default="", help="unsupported-codec log (default next to the failure log)"
    )
    ap.add_argument("--overwrite", action="store_true", help="recompute samples whose outputs already exist")
    ap.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="upstream",
        help="defaults of the selection parameters below: 'upstream' (the upstream Stage-1 CLI: padding "
        "exclude, no full first frame) or 'llava' (the codec configuration of the model's inputs: padding "
        "zero, frame t=0 complete; docs/formats.md#configurations). Flags given explicitly win.",
    )
    up, llava = PRESETS["upstream"], PRESETS["llava"]

    def param(name: str, kind=None, **kw) -> None:
        a, b = getattr(up, name), getattr(llava, name)
        shown = f"{a}" if a == b else f"upstream {a}, llava {b}"
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = kind or type(a)
        kw["help"] = (kw.get("help", "") + f" (default: {shown})").strip()
        ap.add_argument(f"--{name}", default=None, **kw)

    param("sequence_length", int, help="frames sampled uniformly (T)")
    param("sample_start_offset", int)
    param("patch_size", int)
    param("square_size", int, help="canvas side in pixels")
    param("keep_frames_equiv", int, help="patch budget in frames (K = this x patches per frame)")
    param("padding_policy", str, choices=["exclude", "zero"])
    param("keep_uniform_first", bool)
    param("keep_first_full_frame", bool)
    param("mv_unit_div", float)
    param("mv_pct", float)
    param("res_pct", float)
    param("fuse_mode", str, choices=list(FUSE_MODES))
    param("w_mv", float)
    param("w_res", float)
    param("mv_compensate", str, choices=list(MV_COMPENSATE_MODES))
    param("res_use_grad", bool)
    param("block_size", int, help="block-matching block size (px)")
    param("search_range", int, help="block-matching search range (px)")
    param("analysis_max_side", int, help="analyse frames downscaled to this longer side (0 = coded size)")
    ap.add_argument("--threads", type=int, default=1, help="decoder threads per worker (0 = FFmpeg default)")
    return ap


def params_from_args(args: argparse.Namespace) -> Stage1Params:
    """The preset's parameters, with every flag given on the command line applied on top."""
    given = {f.name: getattr(args, f.name) for f in fields(Stage1Params) if getattr(args, f.name, None) is not None}
    if given.get("analysis_max_side") == 0:
        given["analysis_max_side"] = None
    return PRESETS[getattr(args, "preset", "upstream")].replace(**given)


def process_sample(task: tuple) -> tuple:
    """Worker: compute and write one sample. Returns (status, sample_id, video, detail); a
    failure's detail ends with the record's ``file:line`` (``where``)."""
    sample_id, video, path, out_root, key, pdict, allowed, where = task
    try:
        p = Stage1Params(**pdict)
        index = build_index(path, allowed, keep_open=True)
        sel = select_patches(path, p, index=index)
        prefix = stage1_prefix(out_root, sample_id, video, key)
        base = str(prefix) + stage1_suffix(p.sequence_length, p.square_size, p.patch_size, sel.k)
        atomic_save_npy(base + ".visidx_thw.npy", sel.thw.astype(np.int32))
        atomic_save_npy(base + ".frame_ids.npy", sel.frame_ids.astype(np.int32))
        meta = stage1_meta(sel, p, sample_id=sample_id, sample_key=key)
        meta["video"] = str(video)
        atomic_write_json(base + ".meta.json", meta)  # last: marks the sample complete
        return ("ok", sample_id, video, sel.k)
    except UnsupportedCodecError as exc:
        return ("unsupported", sample_id, video, exc.codec, one_line(exc))
    except Exception as exc:  # noqa: BLE001 - a batch tool logs and goes on (a MediaError: this record only)
        tb = traceback.format_exc(limit=3)
        return ("fail", sample_id, video, one_line(f"{type(exc).__name__}: {exc}") + f" ({where})", tb)


def _tasks(
    args: argparse.Namespace, p: Stage1Params, stats: dict, reader: DatasetReader
) -> Iterator[tuple]:
    allowed = [c for c in args.allowed_codecs.split(",") if c.strip()] if args.check_codec else None
    pdict = asdict(p)
    done = Stage1Index(args.out_root, p.sequence_length, p.square_size, p.patch_size)
    for record, key in shard_records(reader, stats, args.num_shards, args.shard_id, args.max_samples):
        item = record.data
        sid, video = item["id"], item["video"]
        try:
            check_record(item)
        except ValueError as exc:
            reader.reject(record, str(exc))
            continue
        stats["picked"] += 1
        prefix = stage1_prefix(args.out_root, sid, video, key)
        if not args.overwrite and done.complete(prefix):
            stats["resumed"] += 1
            continue
        yield (
            str(sid),
            str(video),
            resolve_video(str(video), args.video_folder),
            args.out_root,
            key,
            pdict,
            allowed,
            record.where,
        )


def run(args: argparse.Namespace) -> dict:
    """Process the dataset; returns the summary counters."""
    tag = shard_tag(args.num_shards, args.shard_id, "stage1")
    args.num_shards = max(1, args.num_shards)
    p = params_from_args(args)
    reader = open_dataset(args.dataset_path, "stage1")
    out_root = Path(args.out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    fail_path = Path(args.fail_txt or out_root / f"stage1_failed.{tag}.txt")
    unsup_path = Path(args.unsupported_txt or fail_path.parent / f"stage1_unsupported_codec.{tag}.txt")
    stats = dict.fromkeys(("seen", "picked", "skip", "shard_skip", "resumed", "ok", "fail", "unsupported",
                           "bad_records"), 0)
    stats["stale_tmp_removed"] = sweep_interrupted("stage1", (out_root, {}))
    nw = max(1, int(args.num_workers))
    logs = {"fail": fail_path, "unsupported": unsup_path}
    with BatchRun("stage1", tag, "video", stats, logs, args.log_every) as batch:
        tasks = _tasks(args, p, stats, reader)
        if nw <= 1:
            results = map(process_sample, tasks)
        else:
            mt = args.maxtasks_per_child if args.maxtasks_per_child > 0 else None
            pool = batch.enter_context(get_context("spawn").Pool(processes=nw, maxtasksperchild=mt))
            results = pool.imap_unordered(process_sample, tasks, chunksize=1)
        for ret in results:
            status = ret[0]
            batch.outcome(status, None if status == "ok" else f"{ret[1]}\t{ret[2]}\t{ret[3]}")
    batch.summary(reader, f"outputs: {out_root}  failures: {fail_path}  unsupported: {unsup_path}")
    return stats


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
