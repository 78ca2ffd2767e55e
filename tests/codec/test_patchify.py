"""codec_patchify / select_patches on real H.264 and HEVC files: where patches go, mosaic pixels."""

from __future__ import annotations

import cv_reader as cv
import numpy as np
import pytest
from codec_helpers import decode_all_rgb, on_path_fraction

# Small canvas == frame width: no resize, so canvas pixels equal decoded pixels.
SMALL = dict(sequence_length=16, keep_frames_equiv=2, square_size=192, patch_size=16)


@pytest.mark.parametrize("fixture", ["h264_static", "hevc_static"])
@pytest.mark.parametrize("analysis_max_side", [None, 96])
def test_selected_patches_follow_the_object(request, fixture, analysis_max_side):
    vid = request.getfixturevalue(fixture)
    res = cv.codec_patchify(vid.path, analysis_max_side=analysis_max_side, **SMALL)
    geo = cv.CanvasGeometry(vid.height, vid.width, 192, 16)
    assert on_path_fraction(res.positions, res.frame_ids, vid.boxes, geo) >= 0.8


@pytest.mark.parametrize("fixture", ["h264_pan", "hevc_pan"])
@pytest.mark.parametrize("mode", ["similarity", "affine"])
def test_camera_pan_background_not_chosen(request, fixture, mode):
    vid = request.getfixturevalue(fixture)
    res = cv.codec_patchify(vid.path, mv_compensate=mode, **SMALL)
    geo = cv.CanvasGeometry(vid.height, vid.width, 192, 16)
    assert on_path_fraction(res.positions, res.frame_ids, vid.boxes, geo) >= 0.8
    assert res.meta["params"]["mv_compensate"] == mode


def test_mosaic_pixels_equal_source_patches(h264_static):
    res = cv.codec_patchify(h264_static.path, **SMALL)
    frames = decode_all_rgb(h264_static.path)
    geo = cv.CanvasGeometry(144, 192, 192, 16)
    grid = geo.grid
    assert res.mosaics.shape == (2, 192, 192, 3) and res.mosaics.dtype == np.uint8
    assert res.positions.shape == (2 * grid * grid, 3) and res.positions.dtype == np.int32
    for j, (t, h, w) in enumerate(res.positions):
        m, s = divmod(j, grid * grid)
        r, c = divmod(s, grid)
        got = res.mosaics[m, r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16]
        canvas = geo.place(frames[res.frame_ids[t]])
        assert np.array_equal(got, canvas[h * 16 : (h + 1) * 16, w * 16 : (w + 1) * 16]), (j, t, h, w)


def test_keep_first_full_frame_gives_frame0_complete(hevc_static):
    res = cv.codec_patchify(hevc_static.path, **SMALL)
    frame0 = cv.CanvasGeometry(144, 192, 192, 16).place(decode_all_rgb(hevc_static.path)[0])
    assert np.array_equal(res.mosaics[0], frame0)
    hh, ww = np.divmod(np.arange(144), 12)
    assert np.array_equal(res.positions[:144], np.stack([np.zeros(144), hh, ww], 1))
    assert (res.positions[144:, 0] >= 1).all()


def test_exclude_policy_never_selects_padding(h264_pan):
    res = cv.codec_patchify(h264_pan.path, padding_policy="exclude", keep_first_full_frame=False, **SMALL)
    vm = cv.CanvasGeometry(144, 192, 192, 16).valid_mask
    assert vm[res.positions[:, 1], res.positions[:, 2]].all()
    assert res.positions.shape[0] == 2 * int(vm.sum())


def test_defaults_are_the_llava_config(h264_static):
    res = cv.codec_patchify(h264_static.path, sequence_length=8)
    assert res.mosaics.shape == (8, 576, 576, 3)
    assert res.positions.shape == (8 * 36 * 36, 3)
    assert res.meta["padding_policy"] == "zero" and res.meta["keep_first_full_frame"]
    assert res.meta["params"]["mv_compensate"] == "median"
    assert res.frame_ids.tolist() == np.linspace(0, 47, 8, dtype=int).tolist()


def test_deterministic(hevc_pan):
    a = cv.codec_patchify(hevc_pan.path, **SMALL)
    b = cv.codec_patchify(hevc_pan.path, **SMALL)
    assert np.array_equal(a.positions, b.positions) and np.array_equal(a.mosaics, b.mosaics)


def test_stage1_selection_parameters(h264_static):
    base = dict(sequence_length=8, square_size=192, patch_size=16, keep_frames_equiv=2)
    for fm in ("weighted", "max", "sum", "geomean"):
        sel = cv.select_patches(h264_static.path, cv.Stage1Params(fuse_mode=fm, **base))
        assert sel.k == 2 * int(sel.geometry.valid_mask.sum())
    off = cv.select_patches(h264_static.path, cv.Stage1Params(sample_start_offset=10, **base))
    assert off.frame_ids[0] == 10 and off.frame_ids[-1] == 47
    grad = cv.select_patches(h264_static.path, cv.Stage1Params(res_use_grad=True, **base))
    assert grad.scores.shape == (8, 12, 12)
    with pytest.raises(ValueError):
        cv.Stage1Params(fuse_mode="median")
    with pytest.raises(TypeError):
        cv.codec_patchify(h264_static.path, not_a_param=1)
