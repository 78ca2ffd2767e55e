"""Bad and unusual input: clear exceptions from the API, correct handling of edge cases."""

from __future__ import annotations

from pathlib import Path

import av
import cv_reader as cv
import numpy as np
import pytest
from codec_helpers import decode_all_rgb, encode, synth_frames
from cv_reader import UnsupportedCodecError, VideoReadError

SMALL = dict(sequence_length=8, keep_frames_equiv=2, square_size=192, patch_size=16)


def make_bad_files(root: Path, good_mp4: str) -> dict[str, str]:
    """Files every entry point must reject with a clear error (shared with the CLI tests)."""
    out = {"missing": str(root / "does_not_exist.mp4")}
    (root / "notes.mp4").write_text("this is not a video\n" * 50)
    out["not_a_video"] = str(root / "notes.mp4")
    (root / "empty.mp4").write_bytes(b"")
    out["empty"] = str(root / "empty.mp4")
    data = Path(good_mp4).read_bytes()
    (root / "truncated.mp4").write_bytes(data[: len(data) // 2])
    out["truncated"] = str(root / "truncated.mp4")
    frames, _ = synth_frames(n=24)
    fs = encode(str(root / "faststart.mp4"), frames, "libx264")
    fast = root / "fast.mp4"  # remux with the index up front, then cut: the index outlives the data
    with av.open(fs) as src, av.open(str(fast), "w", options={"movflags": "faststart"}) as dst:
        ins = src.streams.video[0]
        outs = dst.add_stream_from_template(ins)
        for pkt in src.demux(ins):
            if pkt.dts is None:
                continue
            pkt.stream = outs
            dst.mux(pkt)
    fd = fast.read_bytes()
    (root / "truncated_faststart.mp4").write_bytes(fd[: int(len(fd) * 0.6)])
    out["truncated_faststart"] = str(root / "truncated_faststart.mp4")
    with av.open(str(root / "zero_frames.mkv"), "w") as c:  # a video stream that holds no packets
        vs = c.add_stream("libx264", rate=24)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        a = c.add_stream("pcm_s16le", rate=8000)
        a.layout = "mono"
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        fr.sample_rate = 8000
        for pkt in list(a.encode(fr)) + list(a.encode()):
            c.mux(pkt)
    out["zero_frames"] = str(root / "zero_frames.mkv")
    with av.open(str(root / "audio_only.m4a"), "w") as c:
        a = c.add_stream("aac", rate=8000)
        a.layout = "mono"
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 2048), np.float32), format="fltp", layout="mono")
        fr.sample_rate = 8000
        for pkt in list(a.encode(fr)) + list(a.encode()):
            c.mux(pkt)
    out["audio_only"] = str(root / "audio_only.m4a")
    return out


def make_unknown_codec(root: Path) -> str:
    """An AVI whose video FourCC no FFmpeg decoder knows."""
    frames, _ = synth_frames(n=6)
    p = encode(str(root / "mpeg4.avi"), frames, "mpeg4", options={})
    data = Path(p).read_bytes().replace(b"FMP4", b"QQQQ")
    out = root / "unknown_codec.avi"
    out.write_bytes(data)
    return str(out)


@pytest.fixture(scope="module")
def bad(tmp_path_factory, h264_static):
    return make_bad_files(tmp_path_factory.mktemp("bad"), h264_static.path)


EXPECTED = {
    "missing": "file not found",
    "not_a_video": "not a readable video",
    "empty": "file is empty",
    "truncated": "truncated",
    "truncated_faststart": "truncated",
    "zero_frames": "no frames",
    "audio_only": "no video stream",
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_bad_files_raise_clear_errors(bad, kind):
    path = bad[kind]
    for call in (
        lambda: cv.probe(path),
        lambda: cv.read_video(path),
        lambda: cv.codec_patchify(path, **SMALL),
    ):
        with pytest.raises(VideoReadError, match=EXPECTED[kind]) as ei:
            call()
        assert path in str(ei.value)  # the message names the file
        assert isinstance(ei.value, ValueError)


def test_unknown_codec_raises_unsupported(tmp_path):
    path = make_unknown_codec(tmp_path)
    with pytest.raises(UnsupportedCodecError) as ei:
        cv.probe(path)
    assert path in str(ei.value)
    with pytest.raises(UnsupportedCodecError, match="not in allowed"):
        cv.probe(str(tmp_path / "mpeg4.avi"), allowed_codecs=["h264", "hevc"])


def test_mpeg4_part2_has_bitstream_vectors(tmp_path):
    frames, _ = synth_frames(n=12)
    p = encode(str(tmp_path / "m.avi"), frames, "mpeg4", options={})
    recs = list(cv.read_video(p))
    assert {r.mv_source for r in recs[1:]} == {"bitstream"}


def test_frame_ids_out_of_range(h264_static):
    with pytest.raises(VideoReadError, match="out of range"):
        cv.read_video(h264_static.path, [0, 48])


def test_fewer_frames_than_T(tmp_path):
    frames, _ = synth_frames(n=5)
    p = encode(str(tmp_path / "five.mp4"), frames, "libx264")
    res = cv.codec_patchify(p, **{**SMALL, "sequence_length": 16})
    assert res.frame_ids.tolist() == np.linspace(0, 4, 16, dtype=int).tolist()  # repeats
    assert res.positions.shape == (2 * 144, 3) and res.positions[:, 0].max() < 16


def test_single_frame_video(tmp_path):
    frames, _ = synth_frames(n=1)
    p = encode(str(tmp_path / "one.mp4"), frames, "libx264")
    (rec,) = list(cv.read_video(p))
    assert rec.mv_mask.all() and not rec.residual.any()
    res = cv.codec_patchify(p, **SMALL)
    assert res.mosaics.shape == (2, 192, 192, 3)


def test_frames_smaller_than_one_patch(tmp_path):
    frames, _ = synth_frames(n=10)
    tiny = encode(str(tmp_path / "tiny.mp4"), [np.ascontiguousarray(f[:8, :8]) for f in frames], "libx264")
    res = cv.codec_patchify(tiny, **SMALL)  # upscaled onto the canvas: works
    assert res.positions.shape[0] == 2 * 144
    thin = encode(str(tmp_path / "thin.mp4"), [np.ascontiguousarray(f[:4, :]) for f in frames], "libx264")
    with pytest.raises(VideoReadError, match="smaller than one 16px patch"):
        cv.codec_patchify(thin, padding_policy="exclude", keep_first_full_frame=False, **SMALL)
    assert cv.codec_patchify(thin, **SMALL).positions.shape[0] == 2 * 144  # zero padding still works


def test_odd_frame_size(tmp_path):
    frames, _ = synth_frames(n=12)
    p = encode(
        str(tmp_path / "odd.mp4"),
        [np.ascontiguousarray(f[:121, :161]) for f in frames],
        "libx264",
        pix_fmt="yuv444p",
    )
    recs = list(cv.read_video(p, [0, 5]))
    assert recs[1].luma.shape == (121, 161) and recs[1].residual.shape == (121, 161)
    assert recs[1].mv.shape == (31, 41, 2)
    res = cv.codec_patchify(p, **SMALL)
    ref = decode_all_rgb(p)
    geo = cv.CanvasGeometry(121, 161, 192, 16)
    assert res.mosaics[0].shape == (192, 192, 3)
    assert np.abs(res.mosaics[0].astype(int) - geo.place(_resize(ref[0], geo)).astype(int)).mean() < 3


def _resize(img: np.ndarray, geo) -> np.ndarray:
    from PIL import Image

    hn, wn = geo.content_hw
    return np.asarray(Image.fromarray(img).resize((wn, hn), Image.BILINEAR))


def test_rotation_metadata_is_applied(tmp_path):
    frames, _ = synth_frames(n=12)
    p = encode(str(tmp_path / "rot.mp4"), frames, "libx264", rotation=90)
    rec = next(cv.read_video(p, [2]))
    assert rec.rotation == 90 and rec.luma.shape == (144, 192)  # records stay in coded orientation
    res = cv.codec_patchify(p, **SMALL)
    assert (res.meta["H0"], res.meta["W0"], res.meta["rotation"]) == (192, 144, 90)
    frame0 = np.rot90(decode_all_rgb(p)[0], 1)  # display orientation (counter-clockwise)
    geo = cv.CanvasGeometry(192, 144, 192, 16)
    assert np.array_equal(res.mosaics[0], geo.place(np.ascontiguousarray(frame0)))
    # Uniform frames (the model's "frames" video mode) come upright too, like the canvas.
    upright = cv.read_frames(p, [0, 5])
    assert upright.shape == (2, 192, 144, 3)
    assert np.array_equal(upright[0], frame0) and np.array_equal(upright[1], np.rot90(decode_all_rgb(p)[5], 1))
