"""The ``cv_reader VIDEO OUT`` inspection command."""

from __future__ import annotations

import json

import cv_reader as cv
import numpy as np
from cv_reader import cli
from PIL import Image


def test_cli_dumps_arrays_and_selection_png(hevc_pan, tmp_path, capsys):
    out = tmp_path / "inspect"
    rc = cli.main(
        [
            hevc_pan.path,
            str(out),
            "--sequence_length",
            "8",
            "--square_size",
            "192",
            "--keep_frames_equiv",
            "2",
            "--mv_compensate",
            "affine",
            "--thumb",
            "96",
            "--columns",
            "4",
        ]
    )
    assert rc == 0
    fids = np.load(out / "frame_ids.npy", allow_pickle=False)
    pos = np.load(out / "positions_thw.npy", allow_pickle=False)
    meta = json.loads((out / "meta.json").read_text())
    assert fids.tolist() == np.linspace(0, 47, 8, dtype=int).tolist()
    assert pos.shape == (meta["K"], 3) and meta["params"]["mv_compensate"] == "affine"
    recs = {r.index: r for r in cv.read_video(hevc_pan.path, fids)}
    for f in fids:
        z = np.load(out / "frames" / f"frame_{f:06d}.npz", allow_pickle=False)
        info = json.loads((out / "frames" / f"frame_{f:06d}.json").read_text())
        assert info["mv_source"] == "estimated" and info["pict_type"] == recs[f].pict_type
        assert np.array_equal(z["mv"], recs[f].mv) and np.array_equal(z["residual"], recs[f].residual)
        assert np.array_equal(z["luma"], recs[f].luma) and np.array_equal(z["mv_ref"], recs[f].mv_ref)
    png = Image.open(out / "selection.png")
    assert png.size == (4 * 96, 2 * (96 + 14))
    arr = np.asarray(png.convert("RGB")).astype(int)
    assert (arr[..., 0] > arr[..., 1] + 100).any()  # red outlines of selected patches
    assert "K=" in capsys.readouterr().out


def test_cli_bad_input_exit_code(tmp_path, capsys):
    rc = cli.main([str(tmp_path / "nope.mp4"), str(tmp_path / "o")])
    assert rc == 1 and "file not found" in capsys.readouterr().err
