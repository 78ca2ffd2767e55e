"""read_video: bitstream / estimated motion vectors, residuals, seeking, determinism."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import av
import cv_reader as cv
import numpy as np
import pytest
from codec_helpers import OBJ_SPEED, decode_all_rgb
from cv_reader.decode import FrameSource, build_index
from cv_reader.motion import estimate_motion, field_from_side_data
from cv_reader.residual import predict


def _object_cells(rec, box, inset=2):
    x0, y0, x1, y1 = box
    sl = (slice(y0 // 4 + inset, y1 // 4 - inset), slice(x0 // 4 + inset, x1 // 4 - inset))
    return rec.mv[sl], rec.mv_ref[sl]


def _background_mask(rec, box, grow=2):
    x0, y0, x1, y1 = box
    m = np.ones(rec.mv_ref.shape, bool)
    m[max(y0 // 4 - grow, 0) : y1 // 4 + grow, max(x0 // 4 - grow, 0) : x1 // 4 + grow] = False
    return m


@pytest.fixture(scope="module")
def h264_records(h264_static):
    return list(cv.read_video(h264_static.path))


def test_records_layout_and_order(h264_static, h264_records):
    recs = h264_records
    assert [r.index for r in recs] == list(range(h264_static.frames))
    ts = [r.timestamp for r in recs]
    assert all(b > a for a, b in zip(ts, ts[1:]))
    r = recs[5]
    assert r.luma.shape == (144, 192) and r.luma.dtype == np.uint8
    assert r.mv.shape == (36, 48, 2) and r.mv.dtype == np.int16
    assert r.mv_ref.shape == (36, 48) and r.mv_mask.dtype == bool
    assert r.residual.shape == (144, 192) and r.residual.dtype == np.int16
    types = {x.pict_type for x in recs}
    assert {"I", "P", "B"} <= types  # x264 with B-frames
    assert recs[0].pict_type == "I" and recs[24].pict_type == "I"  # keyint 24
    # luma matches an independent PyAV decode (BT.601 luma of the RGB within rounding)
    rgb = decode_all_rgb(h264_static.path)[5].astype(np.float32)
    y = 16 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255
    assert np.abs(y - r.luma).mean() < 2.0


def test_h264_bitstream_mvs_point_along_motion(h264_static, h264_records):
    inter = [r for r in h264_records if r.pict_type in ("P", "B")]
    assert inter and all(r.mv_source == "bitstream" for r in inter)
    per_frame = []
    for r in inter:
        mv, ref = _object_cells(r, h264_static.boxes[r.index])
        ok = ref != 0
        if ok.sum() < 4:
            continue
        per_frame.append(np.median(mv[ok][:, 0] / np.abs(ref[ok])))
        assert np.abs(np.median(mv[ok][:, 1])) <= 2  # no vertical motion
    # object moves right by OBJ_SPEED px/frame = 4*OBJ_SPEED quarter-pel per frame interval
    assert len(per_frame) >= 20
    assert np.median(per_frame) == pytest.approx(4 * OBJ_SPEED, abs=2)
    assert np.mean(np.asarray(per_frame) > 0) > 0.9
    # B-frames use future references somewhere, and reference distances are resolved
    assert any((r.mv_ref > 0).any() for r in inter if r.pict_type == "B")
    # static background: vectors ~0 and a small residual (good prediction)
    r = inter[len(inter) // 2]
    bg = _background_mask(r, h264_static.boxes[r.index]) & (r.mv_ref != 0)
    assert np.abs(r.mv[bg]).mean() < 1.0
    assert np.abs(r.residual).mean() < 6


def test_intra_frames_get_estimated_vectors(h264_records):
    i_frames = [r for r in h264_records if r.pict_type == "I"]
    assert i_frames and all(r.mv_source == "estimated" for r in i_frames)
    assert i_frames[0].mv_ref.max() == 1  # the first frame is matched against the next one


@pytest.mark.parametrize("fixture", ["hevc_static", "hevc_pan"])
def test_hevc_vectors_are_estimated_and_follow_motion(request, fixture):
    vid = request.getfixturevalue(fixture)
    recs = list(cv.read_video(vid.path, range(1, 40, 3)))
    assert all(r.mv_source == "estimated" for r in recs)
    for r in recs:
        mv, ref = _object_cells(r, vid.boxes[r.index])
        assert (ref == -1).all()  # previous frame
        assert np.median(mv[..., 0]) == 4 * OBJ_SPEED
        assert np.median(mv[..., 1]) == 0
        bg = _background_mask(r, vid.boxes[r.index])
        assert np.median(r.mv[bg][:, 0]) == -4 * vid.pan  # camera pan moves background left


def test_residual_is_current_minus_prediction(hevc_static):
    recs = list(cv.read_video(hevc_static.path, [9, 10]))
    prev, cur = recs
    # estimated vectors are in "motion" sense; FFmpeg sense (where to read from) is the negation
    pred = predict([prev.luma], (-cur.mv).astype(np.int32))
    assert np.array_equal(cur.residual, cur.luma.astype(np.int16) - pred.astype(np.int16))
    assert np.abs(cur.residual).mean() < np.abs(cur.luma.astype(np.int16) - prev.luma).mean() / 2


def _bilinear_reference(ref: np.ndarray, mv: np.ndarray) -> np.ndarray:
    """Quarter-pel bilinear prediction written out directly (edge-extended reference)."""
    h, w = ref.shape
    m = int(np.abs(mv).max()) // 4 + 3
    pad = np.pad(ref.astype(np.int32), m, mode="edge")
    ys, xs = np.mgrid[0:h, 0:w]
    v = np.repeat(np.repeat(mv, 4, 0), 4, 1)[:h, :w]
    mx, my = v[..., 0], v[..., 1]
    y, x = ys + (my >> 2) + m, xs + (mx >> 2) + m
    fx, fy = mx & 3, my & 3
    top = pad[y, x] * (4 - fx) + pad[y, x + 1] * fx
    bot = pad[y + 1, x] * (4 - fx) + pad[y + 1, x + 1] * fx
    return ((top * (4 - fy) + bot * fy + 8) >> 4).astype(np.int16)


def test_prediction_kernel_matches_bilinear_formula():
    rng = np.random.default_rng(7)
    ref = rng.integers(0, 256, (37, 45), dtype=np.uint8)  # not a multiple of the 4x4 cell
    mv = rng.integers(-70, 71, (10, 12, 2)).astype(np.int32)  # many vectors leave the frame
    mv[2:5, 3:7] = rng.integers(-6, 7, (3, 4, 2))  # and some stay well inside
    assert np.array_equal(predict([ref], mv), _bilinear_reference(ref, mv))
    # per-cell plane selection
    other = rng.integers(0, 256, ref.shape, dtype=np.uint8)
    sel = rng.integers(0, 2, (10, 12))
    both = np.where(
        np.repeat(np.repeat(sel, 4, 0), 4, 1)[:37, :45] == 1,
        _bilinear_reference(other, mv),
        _bilinear_reference(ref, mv),
    )
    assert np.array_equal(predict([ref, other], mv, sel), both)
    with pytest.raises(ValueError, match="shape"):
        predict([ref], mv[:-1])


def test_bitstream_compensation_picks_matching_reference_and_averages_bipred():
    from cv_reader.motion import BitstreamField
    from cv_reader.residual import compensate_bitstream

    rng = np.random.default_rng(11)
    h, w = 32, 48
    cur = rng.integers(0, 256, (h, w), dtype=np.uint8)
    noise = rng.integers(0, 256, (h, w), dtype=np.uint8)
    zero = np.zeros((h // 4, w // 4, 2), np.int32)
    yes, no = np.ones((h // 4, w // 4), bool), np.zeros((h // 4, w // 4), bool)
    # past only, two candidates: every cell must pick the copy of the frame (distance -3)
    comp = compensate_bitstream(cur, BitstreamField(zero, yes, zero, no), [(-1, noise), (-3, cur)], [])
    assert (comp.mv_ref == -3).all() and np.array_equal(comp.pred, cur.astype(np.int16))
    # bi-prediction averages the two directions with rounding; future-only cells use the future
    fut = rng.integers(0, 256, (h, w), dtype=np.uint8)
    has_p = yes.copy()
    has_p[:, :3] = False
    comp = compensate_bitstream(cur, BitstreamField(zero, has_p, zero, yes), [(-1, noise)], [(2, fut)])
    avg = (noise.astype(np.int16) + fut + 1) >> 1
    assert np.array_equal(comp.pred[:, 12:], avg[:, 12:])
    assert np.array_equal(comp.pred[:, :12], fut[:, :12].astype(np.int16))
    assert (comp.mv_ref[:, 3:] == -1).all() and (comp.mv_ref[:, :3] == 2).all()


def test_subset_read_matches_full_read(h264_static, h264_records):
    ids = [0, 7, 23, 24, 25, 41, 47]
    sub = list(cv.read_video(h264_static.path, ids + [7]))
    assert [r.index for r in sub] == ids  # sorted, duplicates once
    for r in sub:
        full = h264_records[r.index]
        assert r.pict_type == full.pict_type and r.mv_source == full.mv_source
        assert np.array_equal(r.luma, full.luma)
        assert np.array_equal(r.mv, full.mv) and np.array_equal(r.mv_ref, full.mv_ref)
        assert np.array_equal(r.residual, full.residual)


def _decode_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "cv_reader-decode"]


def test_without_residual_and_streaming(h264_static):
    it = cv.read_video(h264_static.path, [3, 30], with_residual=False)
    assert not _decode_threads()  # nothing is decoded before the first record is asked for
    first = next(it)
    assert first.index == 3 and first.residual is None
    it.close()  # stopping early must not hang either decode thread
    assert not _decode_threads()


def test_two_decoders_give_the_same_records_as_one(h264_static, h264_records):
    """Vector export decodes single-threaded, so GOP segments are split over two decoders."""
    from cv_reader.reader import _split_point

    idx = build_index(h264_static.path)
    ids = list(range(2, 48, 3))
    split = _split_point(idx, ids)
    assert split and ids[split] >= 24 and ids[split - 1] < 24  # the split falls on the keyframe
    both = list(cv.read_video(h264_static.path, ids, rgb_size=(64, 48)))
    serial = list(cv.read_video(h264_static.path, ids, rgb_size=(64, 48), background=False))
    assert [r.index for r in both] == ids == [r.index for r in serial]
    for a, b in zip(both, serial):
        for name in ("luma", "mv", "mv_ref", "residual", "rgb"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=f"{name} of {a.index}")
        np.testing.assert_array_equal(a.residual, h264_records[a.index].residual)
    assert _split_point(idx, [1, 2, 20, 25]) == 0  # the first segment holds nearly all the work


def _records_from_a_fresh_container(path: str, ids) -> list:
    from cv_reader import decode

    spare = decode._take_spare(os.fspath(path))  # a container an earlier read left
    if spare is not None:
        spare.close()
    return list(cv.read_video(path, ids, index=build_index(path)))


@pytest.mark.parametrize("fixture", ["h264_static", "hevc_pan"])
def test_the_decoder_reuses_the_indexed_container_and_reads_the_same(request, fixture, tmp_path):
    """Stage 1 indexes a video, then decodes it: the decoder takes over the index's container
    (rewound to the first frame) instead of opening the file again, with the same records."""
    from cv_reader import decode

    video = request.getfixturevalue(fixture)
    for ids in (None, [30, 31, 40]):  # from the first frame; only the second GOP segment (a seek)
        want = _records_from_a_fresh_container(video.path, ids)
        idx = build_index(video.path, keep_open=True)
        assert decode._spare is not None and decode._spare[0][0] == idx.path
        got = list(cv.read_video(video.path, ids, index=idx))
        assert decode._spare is None  # the decoder took it
        assert [r.index for r in got] == [r.index for r in want]
        for a, b in zip(got, want):
            for name in ("luma", "mv", "mv_ref", "residual"):
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    # A file that changed since it was indexed is opened again; one never decoded is closed
    # when the next is kept; containers whose seeks are not exact are not kept.
    copy = tmp_path / "copy.mp4"
    copy.write_bytes(Path(video.path).read_bytes())
    build_index(copy, keep_open=True)
    kept = decode._spare[1]
    os.utime(copy, ns=(1, 1))
    assert decode._take_spare(str(copy)) is None and decode._spare is None
    assert len(kept.streams) == 0  # closed
    build_index(copy, keep_open=True)
    kept = decode._spare[1]
    build_index(video.path, keep_open=True)
    assert decode._spare[0][0] == video.path and len(kept.streams) == 0
    ts = tmp_path / "clip.ts"
    with av.open(video.path) as src, av.open(str(ts), "w", format="mpegts") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for pkt in src.demux(src.streams.video[0]):
            if pkt.dts is not None:
                pkt.stream = out
                dst.mux(pkt)
    build_index(ts, keep_open=True)
    assert decode._spare[0][0] == video.path  # the MPEG-TS container was closed, not kept


def test_seek_decodes_only_needed_segment(h264_static):
    idx = build_index(h264_static.path)
    assert idx.keyframes.tolist() == [0, 24]
    src = FrameSource(idx, [46, 47], export_mvs=True)
    got = [i for i, _ in src.frames()]
    assert src.seeks == 1 and 46 in got and 47 in got
    assert min(got) >= 24  # the first GOP was never decoded
    assert src.decoded < 24


def test_reduced_resolution_processing(h264_static):
    full = next(cv.read_video(h264_static.path, [10]))
    half = next(cv.read_video(h264_static.path, [10], max_side=96))
    assert half.luma.shape == (72, 96) and half.mv.shape == (18, 24, 2)
    assert half.scale == pytest.approx(0.5)
    # vectors are rescaled with the frame
    mv_f, ref_f = _object_cells(full, h264_static.boxes[10])
    x0, y0, x1, y1 = np.asarray(h264_static.boxes[10]) // 2
    mv_h = half.mv[y0 // 4 + 1 : y1 // 4 - 1, x0 // 4 + 1 : x1 // 4 - 1]
    assert np.median(mv_h[..., 0]) == pytest.approx(np.median(mv_f[..., 0]) / 2, abs=2)


def test_block_matching_recovers_known_shift():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (100, 140)).astype(np.uint8)
    base = np.repeat(np.repeat(base, 2, 0), 2, 1)  # 200x280 texture
    ref = base[20:164, 30:222]
    cur = base[20 + 2 : 164 + 2, 30 - 3 : 222 - 3]  # content moved by (+3, -2) px
    f = estimate_motion(cur, ref, block_size=16, search_range=8)
    inner = f[4:-4, 4:-4]
    # FFmpeg sense: the prediction is read from p + m/4 in the reference
    assert (inner[..., 0] == -12).mean() > 0.95 and (inner[..., 1] == 8).mean() > 0.95
    with pytest.raises(ValueError):
        estimate_motion(cur, ref[:-1])


def _full_search_by_block(cur, ref, bl, r, lam):
    """The exhaustive search, block by block: candidates by length, then dy, then dx; the first wins ties."""
    h, w = ref.shape
    shifts = [(a, b) for a in range(-r, r + 1) for b in range(-r, r + 1)]
    cands = sorted(shifts, key=lambda v: abs(v[0]) + abs(v[1]))  # stable: dy, then dx within a length
    nby, nbx = cur.shape[0] // bl, cur.shape[1] // bl
    dy, dx = np.zeros((nby, nbx), np.int64), np.zeros((nby, nbx), np.int64)
    for by in range(nby):
        for bx in range(nbx):
            ys, xs = np.arange(by * bl, by * bl + bl), np.arange(bx * bl, bx * bl + bl)
            block = cur[np.ix_(ys, xs)].astype(np.int64)
            best = np.inf
            for a, b in cands:
                moved = ref[np.ix_(np.clip(ys + a, 0, h - 1), np.clip(xs + b, 0, w - 1))]
                cost = int(np.abs(block - moved).sum()) + lam * (abs(a) + abs(b))
                if cost < best:
                    best, dy[by, bx], dx[by, bx] = cost, a, b
    return dy, dx


@pytest.mark.parametrize("bl,r", [(2, 2), (4, 3), (8, 1)])
def test_full_search_equals_the_block_by_block_search(bl, r):
    """The frame-wide kernel (candidate by candidate, against an edge-extended copy) picks
    exactly what a block-by-block search picks, ties and frame edges included."""
    from cv_reader.motion import _full_search

    rng = np.random.default_rng(bl * 10 + r)
    h, w = 6 * bl, 5 * bl
    ref = rng.integers(0, 256, (h, w)).astype(np.int16)
    ref[: h // 2, : w // 2] = 90  # a flat corner: every candidate ties there
    cur = np.roll(ref, (1, -2), axis=(0, 1))
    cur[-bl:] = rng.integers(0, 4, (bl, w))  # a nearly flat strip: near-ties decided by the penalty
    for lam in (0.0, 0.02 * bl * bl):
        dy, dx = np.zeros((6, 5), np.int64), np.zeros((6, 5), np.int64)
        _full_search(cur, ref, 6, 5, bl, r, lam, dy, dx)
        want_dy, want_dx = _full_search_by_block(cur, ref, bl, r, lam)
        assert np.array_equal(dy, want_dy) and np.array_equal(dx, want_dx)


def test_stable_order_equals_a_stable_argsort():
    from cv_reader.motion import _stable_order

    rng = np.random.default_rng(5)
    for keys in (
        rng.integers(0, 4400, 3000),  # the direction / block-size keys of a frame's vectors
        rng.choice([65, 130, 260, 4161, 4226], 500),
        np.array([7]),
        rng.integers(0, 10**9, 50),  # keys too large to count: falls back to a merge sort
    ):
        keys = keys.astype(np.int64)
        assert np.array_equal(_stable_order(keys), np.argsort(keys, kind="stable"))


def _motion_vector_dtype(align=False):
    """The record layout of FFmpeg's exported motion vectors (``AVMotionVector``)."""
    return np.dtype(
        [
            ("source", "<i4"),
            ("w", "u1"),
            ("h", "u1"),
            ("src_x", "<i2"),
            ("src_y", "<i2"),
            ("dst_x", "<i2"),
            ("dst_y", "<i2"),
            ("flags", "<u8"),
            ("motion_x", "<i4"),
            ("motion_y", "<i4"),
            ("motion_scale", "<u2"),
        ],
        align=align,
    )


def test_side_data_rasterisation():
    mvs = np.array(
        [(-1, 16, 16, 0, 0, 8, 8, 0, -8, 4, 4), (1, 8, 8, 0, 0, 20, 4, 0, 2, 0, 2)],
        dtype=_motion_vector_dtype(),
    )
    f = field_from_side_data(mvs, 16, 32)
    assert f.has_past[:4, :4].all() and not f.has_past[:, 4:].any()
    assert (f.past[:4, :4] == [-8, 4]).all()
    # an 8x8 block centred at (20, 4), half-pel scale -> quarter-pel 4
    assert f.has_future[0:2, 4:6].all() and (f.future[0:2, 4:6] == [4, 0]).all()
    assert f.has_future.sum() == 4


def test_side_data_field_at_a_reduced_size_samples_the_coded_field():
    """``size=``: each cell of the smaller grid is the coded cell under its centre, vectors scaled and rounded."""
    rng = np.random.default_rng(5)
    n = 300
    mvs = np.zeros(n, dtype=_motion_vector_dtype(align=True))
    mvs["source"] = rng.choice([-1, 0, 1], n)
    mvs["w"], mvs["h"] = rng.choice([4, 8, 16], n), rng.choice([4, 8, 16], n)
    mvs["dst_x"], mvs["dst_y"] = rng.integers(0, 100, n), rng.integers(0, 72, n)
    mvs["motion_x"], mvs["motion_y"] = rng.integers(-40, 40, n), rng.integers(-40, 40, n)
    mvs["motion_scale"] = rng.choice([1, 2, 4], n)
    coded = field_from_side_data(mvs, 72, 100)
    assert coded.has_past.any() and coded.has_future.any()
    same = field_from_side_data(mvs, 72, 100, size=(72, 100))
    for a, b in zip(
        (coded.past, coded.has_past, coded.future, coded.has_future),
        (same.past, same.has_past, same.future, same.has_future),
        strict=True,
    ):
        assert np.array_equal(a, b)
    h, w = 33, 46
    small = field_from_side_data(mvs, 72, 100, size=(h, w))
    sy, sx = h / 72, w / 100
    ys = np.minimum(((np.arange(-(-h // 4)) * 4 + 2) / sy / 4).astype(int), coded.past.shape[0] - 1)
    xs = np.minimum(((np.arange(-(-w // 4)) * 4 + 2) / sx / 4).astype(int), coded.past.shape[1] - 1)
    for vec, has, got_vec, got_has in (
        (coded.past, coded.has_past, small.past, small.has_past),
        (coded.future, coded.has_future, small.future, small.has_future),
    ):
        picked = vec[ys][:, xs]
        want = np.stack([np.rint(picked[..., 0] * sx), np.rint(picked[..., 1] * sy)], axis=-1).astype(
            np.int32
        )
        assert got_vec.shape == (9, 12, 2) and np.array_equal(got_vec, want)
        assert np.array_equal(got_has, has[ys][:, xs])


def test_camera_compensation_models():
    from cv_reader.camera import compensate

    hc, wc = 30, 40
    gy, gx = np.mgrid[0:hc, 0:wc].astype(np.float32)
    # zoom + rotation + translation about the centre
    xc, yc = gx - (wc - 1) / 2, gy - (hc - 1) / 2
    a, b = 0.03, 0.02
    field = np.stack([a * xc - b * yc + 1.5, b * xc + a * yc - 0.5], axis=-1).astype(np.float32)
    field[10:14, 10:14] += [6.0, 0.0]  # a moving object
    valid = np.ones((hc, wc), bool)
    for mode in ("similarity", "affine"):
        out = compensate(field, valid, mode)
        mag = np.hypot(out[..., 0], out[..., 1])
        obj = np.zeros_like(valid)
        obj[10:14, 10:14] = True
        assert mag[~obj].max() < 0.05 and mag[obj].min() > 5.5
    med = compensate(field, valid, "median")
    assert np.hypot(med[..., 0], med[..., 1])[~obj].max() > 0.3  # translation-only leaves the zoom
    with pytest.raises(ValueError):
        compensate(field, valid, "bogus")


def test_batched_median_compensation_matches_numpy_median():
    from cv_reader.camera import compensate_batch

    rng = np.random.default_rng(3)
    vec = (rng.integers(-40, 40, (5, 7, 9, 2)) / 4.0).astype(np.float32)
    valid = rng.random((5, 7, 9)) < 0.6
    valid[1] = False  # no inter cells: nothing to subtract
    valid[2] = False
    valid[2, 3, 4] = valid[2, 0, 0] = True  # even count: mean of the two middle values
    out = compensate_batch(vec, valid, "median")
    for b in range(5):
        med = np.median(vec[b][valid[b]], axis=0) if valid[b].any() else np.zeros(2, np.float32)
        np.testing.assert_array_equal(out[b], vec[b] - med.astype(np.float32))
