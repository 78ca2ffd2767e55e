"""Reference choice for bitstream vectors: x264's multiple reference frames and B-pyramid.

x264 with ref=3, bframes=3 and b-pyramid predicts a P-frame from the P-frames 4 and 8
back and the B-reference between them, and B-frames from the middle B of their mini-GOP.
The clip is a grainy texture panning by a fraction of a pixel per frame, so a cell
predicted from the wrong frame is off by a pixel or more and its residual far above
the grain's.
"""

from __future__ import annotations

import cv_reader as cv
import cv_reader.reader as reader
import numpy as np
import pytest
from codec_helpers import _texture, encode
from cv_reader.decode import build_index

N, W, H, GOP = 48, 96, 64, 24
GRAIN = 2.0  # std of the per-frame grain, grey levels
# b-adapt=0 fixes the frame types: I/P every 4th frame, the middle B of each run a reference.
PYRAMID = f"keyint={GOP}:min-keyint={GOP}:scenecut=0:ref=3:bframes=3:b-pyramid=normal:b-adapt=0:threads=1"


def _panning_frames(speed=(1.3, 0.6), seed=0) -> list[np.ndarray]:
    """Grey texture moving by ``speed`` px per frame (bilinear, sub-pixel) plus grain, as RGB."""
    rng = np.random.default_rng(seed)
    big = _texture(H + 32, W + int(speed[0] * N) + 32, seed)[..., 0].astype(np.float32)
    out = []
    for t in range(N):
        x, y = speed[0] * t, speed[1] * t
        ix, iy, fx, fy = int(x), int(y), x - int(x), y - int(y)
        a = big[iy : iy + H + 1, ix : ix + W + 1]
        top = a[:-1, :-1] * (1 - fx) + a[:-1, 1:] * fx
        bottom = a[1:, :-1] * (1 - fx) + a[1:, 1:] * fx
        grey = top * (1 - fy) + bottom * fy + rng.normal(0.0, GRAIN, (H, W))
        out.append(np.repeat(np.clip(np.round(grey), 0, 255).astype(np.uint8)[..., None], 3, 2))
    return out


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("references") / "pyramid.mp4")
    return encode(path, _panning_frames(), "libx264", options={"x264-params": PYRAMID + ":log-level=none"})


@pytest.fixture(scope="module")
def pyramid_records(pyramid) -> dict[int, cv.FrameRecord]:
    return {r.index: r for r in cv.read_video(pyramid)}


def _reference_flags(path: str, needed) -> dict[int, bool]:
    """What the reader's frame source reads from the slice headers while decoding ``needed``."""
    refs: dict[int, bool] = {}
    source = reader._ReferenceSource(build_index(path), needed, set(range(N)), refs, export_mvs=True)
    for _ in source.frames():
        pass
    return refs


@pytest.fixture(scope="module")
def pyramid_flags(pyramid) -> dict[int, bool]:
    return _reference_flags(pyramid, range(N))


def _b_runs(types: str) -> list[range]:
    """Display ranges of the runs of consecutive B-frames."""
    runs, start = [], None
    for i, p in enumerate(types + "I"):
        if p == "B" and start is None:
            start = i
        elif p != "B" and start is not None:
            runs.append(range(start, i))
            start = None
    return runs


def test_slice_headers_mark_the_b_pyramid_references(pyramid, pyramid_records, pyramid_flags, tmp_path):
    types = "".join(pyramid_records[i].pict_type for i in range(N))
    assert types.startswith("IBBBPBBBP") and types[GOP] == "I"
    flags = pyramid_flags
    assert sorted(flags) == list(range(N))
    assert all(flags[i] for i, p in enumerate(types) if p != "B")  # every I/P frame
    runs = _b_runs(types)
    assert sum(len(r) == 3 for r in runs) >= 10
    for run in runs:  # the middle B of three (x264 puts one reference in a run of two or more)
        refs = [i for i in run if flags[i]]
        assert refs == ([run[1]] if len(run) == 3 else refs[:1]), (run, refs)
    # A request in the second GOP segment seeks there: the packets it feeds give the same flags.
    second = _reference_flags(pyramid, [40, 41])
    assert min(second) == GOP and second == {i: flags[i] for i in second}
    # MPEG-TS carries Annex B start codes instead of avcC length prefixes.
    options = {"x264-params": PYRAMID + ":log-level=none"}
    ts = encode(str(tmp_path / "pyramid.ts"), _panning_frames(), "libx264", options=options)
    assert _reference_flags(ts, range(N)) == flags


def test_slice_header_parsing():
    slice_ref = bytes([0x41, 0x9A])  # nal_ref_idc 2, non-IDR slice
    slice_nonref = bytes([0x01, 0x9E])  # nal_ref_idc 0
    sei, aud = bytes([0x06, 0x05, 0x11]), bytes([0x09, 0xF0])  # never slices, whatever their ref_idc
    avcc = b"".join(len(n).to_bytes(4, "big") + n for n in (aud, sei, slice_nonref))
    assert reader._slice_ref_idc(avcc, 4) == 0
    assert reader._slice_ref_idc(len(slice_ref).to_bytes(2, "big") + slice_ref, 2) == 2
    assert reader._slice_ref_idc(b"\x00\x00\x00\x01" + aud + b"\x00\x00\x01" + slice_ref, 0) == 2
    assert reader._slice_ref_idc(b"\x00\x00\x01" + bytes([0x65, 0x88]), 0) == 3  # IDR
    assert reader._slice_ref_idc(b"\x00\x00\x01" + sei, 0) is None  # no slice
    assert reader._slice_ref_idc(b"\x00\x00\x00\x09" + slice_ref, 4) is None  # length past the end


def test_every_inter_frame_is_predicted_down_to_the_grain(pyramid_records):
    """The residual of every P- and B-frame stays near the grain's.

    Two grain samples differ by about 2.8 grey levels (std), whose 95th percentile is about
    5.5; coding noise adds a little (largest P-frame: 11). With only ``t-1`` and the nearest
    I/P frame as candidates, 8 of the 46 inter frames were above 16 (P-frames up to 44,
    B-references up to 35).
    """
    inter = [r for r in pyramid_records.values() if r.pict_type in ("P", "B")]
    assert len(inter) == N - 2 and all(r.mv_source == "bitstream" for r in inter)
    p95 = {r.index: float(np.percentile(np.abs(r.residual), 95)) for r in inter}
    assert max(p95.values()) <= 16, {i: v for i, v in p95.items() if v > 16}


def test_p_frames_are_predicted_from_b_references(pyramid_records, pyramid_flags):
    """Some P-frames take most of their cells from the B-reference before them."""
    b_refs = [i for i, r in pyramid_records.items() if r.pict_type == "B" and pyramid_flags[i]]
    p_from = np.concatenate(
        [r.index + r.mv_ref[r.mv_ref != 0] for r in pyramid_records.values() if r.pict_type == "P"]
    )
    assert np.isin(p_from, b_refs).mean() > 0.1


def test_references_stay_in_the_window_and_the_gop_segment(pyramid_records, pyramid_flags):
    flags = pyramid_flags
    for t, r in pyramid_records.items():
        d = np.unique(r.mv_ref[r.mv_ref != 0]).astype(int)
        if r.pict_type == "I":
            assert set(d) <= {-1, 1}  # block matching against a neighbour
            continue
        ref = t + d
        assert (d >= -reader.PAST_REACH).all() and (d <= reader.FUTURE_REACH).all()
        assert (ref >= (t // GOP) * GOP).all(), (t, d)  # never the previous GOP segment
        # Other than the neighbours, only reference frames; none after the next I/P frame.
        assert all(flags[i] for i in ref if abs(i - t) > 1), (t, d)
        next_anchor = (
            next(i for i in range(t + 1, N) if pyramid_records[i].pict_type != "B") if t < N - 1 else t
        )
        assert (ref <= next_anchor).all(), (t, d)


@pytest.mark.parametrize(
    "ids",
    [
        [8],
        [9],
        [10],
        [23],
        [24],
        [25],
        [47],
        list(range(0, N, 5)),
        [7, 8, 9, 30, 31, 32],
        list(range(2, N, 3)),
    ],
)
def test_records_do_not_depend_on_the_requested_frames(pyramid, pyramid_records, ids):
    """Every frame's candidates are decoded for it alone, whichever other frames are read."""
    for background in (True, False):
        got = list(cv.read_video(pyramid, ids, background=background))
        assert [r.index for r in got] == ids
        for r in got:
            full = pyramid_records[r.index]
            for name in ("luma", "mv", "mv_ref", "residual"):
                np.testing.assert_array_equal(
                    getattr(r, name), getattr(full, name), err_msg=f"{name} of {r.index}"
                )


def test_only_the_frames_a_record_reads_are_converted(pyramid, pyramid_records, pyramid_flags, monkeypatch):
    """Non-reference frames other than a target's neighbours are never converted to luma."""
    index = build_index(pyramid)
    flags = pyramid_flags
    assert pyramid_records[9].pict_type == "B" and not flags[9]  # and its candidates skip 11, 7, 5, ...
    pts_to_idx = {int(p): i for i, p in enumerate(index.pts)}
    converted: list[int] = []
    original = reader.luma_resized

    def counting(frame, *args, **kwargs):
        converted.append(pts_to_idx[int(frame.pts)])
        return original(frame, *args, **kwargs)

    monkeypatch.setattr(reader, "luma_resized", counting)
    for t in (8, 9, 10, 33):
        converted.clear()
        rec = next(iter(cv.read_video(pyramid, [t], index=index)))
        assert len(converted) == len(set(converted))  # each frame once
        assert t in converted and set(converted) - {t - 1, t, t + 1} <= {i for i in range(N) if flags[i]}
        # and every frame a cell was predicted from was among them
        assert set((t + rec.mv_ref[rec.mv_ref != 0]).tolist()) <= set(converted)
