"""``cv_reader VIDEO OUT``: inspect what the codec reader sees in one video.

Writes into OUT:
  frames/frame_XXXXXX.npz   luma, mv, mv_ref, residual of each sampled frame (+ .json with its metadata)
  selection.png             the sampled frames on the canvas, selected patches bright and outlined
  positions_thw.npy, frame_ids.npy, meta.json   the Stage-1 selection
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .errors import VideoReadError
from .pipeline import LLAVA_CODEC, Selection, Stage1Params, select_patches, stage1_meta
from .reader import FrameRecord
from .util import atomic_save_npy, atomic_write_bytes, atomic_write_json


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="cv_reader", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("video")
    ap.add_argument("out", help="output directory")
    ap.add_argument("--no_arrays", action="store_true", help="skip the per-frame .npz dumps")
    ap.add_argument("--thumb", type=int, default=192, help="side of each frame tile in selection.png")
    ap.add_argument("--columns", type=int, default=8)
    d = LLAVA_CODEC
    for f in fields(Stage1Params):
        val = getattr(d, f.name)
        if isinstance(val, bool):
            ap.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=val)
        elif f.name == "analysis_max_side":
            ap.add_argument(
                f"--{f.name}", type=int, default=val or 0, help="analysis resolution (0 = coded size)"
            )
        else:
            ap.add_argument(f"--{f.name}", type=type(val), default=val)
    return ap


def _dump(out: Path):
    frames_dir = out / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)

    def on_record(rec: FrameRecord) -> None:
        buf = io.BytesIO()
        np.savez_compressed(buf, luma=rec.luma, mv=rec.mv, mv_ref=rec.mv_ref, residual=rec.residual)
        atomic_write_bytes(frames_dir / f"frame_{rec.index:06d}.npz", buf.getvalue())
        atomic_write_json(
            frames_dir / f"frame_{rec.index:06d}.json",
            dict(
                index=rec.index,
                timestamp=rec.timestamp,
                pict_type=rec.pict_type,
                mv_source=rec.mv_source,
                rotation=rec.rotation,
                scale=rec.scale,
                mv_units="quarter-pel, direction of motion",
                mv_cell=4,
                intra_cells=int(rec.mv_mask.sum()),
            ),
        )

    return on_record


def render_selection(sel: Selection, thumb: int = 192, columns: int = 8) -> Image.Image:
    """Grid of canvas frames: selected patches bright with a red outline, the rest dimmed."""
    assert sel.canvases is not None
    t_len, size = sel.canvases.shape[:2]
    p = sel.geometry.patch
    grid = size // p
    mask = np.zeros((t_len, grid, grid), bool)
    mask[sel.thw[:, 0], sel.thw[:, 1], sel.thw[:, 2]] = True
    cols = max(1, min(columns, t_len))
    rows = -(-t_len // cols)
    sheet = Image.new("RGB", (cols * thumb, rows * (thumb + 14)), (32, 32, 32))
    draw = ImageDraw.Draw(sheet)
    for t in range(t_len):
        m = np.repeat(np.repeat(mask[t], p, 0), p, 1)[..., None]
        img = np.where(m, sel.canvases[t], (sel.canvases[t] * 0.3).astype(np.uint8))
        tile = Image.fromarray(img)
        tdraw = ImageDraw.Draw(tile)
        for h, w in zip(*np.nonzero(mask[t])):
            tdraw.rectangle([w * p, h * p, w * p + p - 1, h * p + p - 1], outline=(255, 40, 40))
        tile = tile.resize((thumb, thumb), Image.BILINEAR)
        x, y = (t % cols) * thumb, (t // cols) * (thumb + 14)
        sheet.paste(tile, (x, y + 14))
        draw.text(
            (x + 2, y + 1),
            f"t={t} frame={int(sel.frame_ids[t])} k={int(mask[t].sum())}",
            fill=(230, 230, 230),
        )
    return sheet


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kw = {f.name: getattr(args, f.name) for f in fields(Stage1Params)}
    kw["analysis_max_side"] = kw["analysis_max_side"] or None
    try:
        params = Stage1Params(**kw)
    except ValueError as exc:
        print(f"cv_reader: error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        sel = select_patches(
            args.video, params, with_canvases=True, on_record=None if args.no_arrays else _dump(out)
        )
    except VideoReadError as exc:
        print(f"cv_reader: error: {exc}", file=sys.stderr)
        return 1
    atomic_save_npy(out / "positions_thw.npy", sel.thw)
    atomic_save_npy(out / "frame_ids.npy", sel.frame_ids)
    atomic_write_json(out / "meta.json", stage1_meta(sel, params))
    buf = io.BytesIO()
    render_selection(sel, args.thumb, args.columns).save(buf, format="PNG")
    atomic_write_bytes(out / "selection.png", buf.getvalue())
    counts = json.dumps({s: sel.mv_sources.count(s) for s in sorted(set(sel.mv_sources))})
    print(
        f"{args.video}: {sel.index.codec} {sel.index.width}x{sel.index.height}, "
        f"{sel.index.num_frames} frames; "
        f"T={len(sel.frame_ids)} K={sel.k} mv_source={counts} -> {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
