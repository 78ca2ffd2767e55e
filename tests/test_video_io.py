"""video_io: frame sampling and decoding through cv_reader, codec-input loading and validation."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image

from llava.processing.video import (
    LLAVA_CODEC,
    CodecInputError,
    MediaError,
    VideoReadError,
    load_codec_inputs,
    load_video_frames,
    sample_frame_indices,
)
from llava.sample_data import sample_video_path

NUM_FRAMES, FPS = 24, 12


def gray_level(index: int) -> int:
    return 10 + 8 * index


def write_video(path, num_frames: int = NUM_FRAMES, fps: int = FPS, width: int = 64, height: int = 48):
    """Lossless H.264 clip: frame i is flat gray ``gray_level(i)`` with a moving white bar."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"qp": "0"}
        for i in range(num_frames):
            pixels = np.full((height, width, 3), gray_level(i), np.uint8)
            pixels[:, (4 * i) % (width - 8) :][:, :8] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decoded_ids(frames: np.ndarray) -> list[int]:
    """Which source frame each decoded frame is, read back from its gray level."""
    return [round((float(np.median(f)) - 10) / 8) for f in frames]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4")


# ----------------------------------------------------------- sampling rule
def test_uniform_sampling_includes_first_and_last_frame():
    assert sample_frame_indices(100, 25.0, frames_upbound=8).tolist() == [0, 14, 28, 42, 56, 70, 84, 99]
    assert sample_frame_indices(5, 25.0, frames_upbound=8).tolist() == [0, 1, 2, 3, 4]
    assert sample_frame_indices(5, 25.0, frames_upbound=None).tolist() == [0, 1, 2, 3, 4]


def test_force_sample_returns_exactly_frames_upbound():
    assert sample_frame_indices(5, 25.0, frames_upbound=8, force_sample=True).tolist() == [
        0,
        0,
        1,
        1,
        2,
        2,
        3,
        4,
    ]
    assert len(sample_frame_indices(100, 25.0, frames_upbound=8, fps=1, force_sample=True)) == 8


def test_fps_sampling_and_its_cap():
    assert sample_frame_indices(100, 25.0, frames_upbound=32, fps=1).tolist() == [0, 25, 50, 75]
    assert sample_frame_indices(100, 25.0, frames_upbound=3, fps=1).tolist() == [0, 49, 99]
    assert sample_frame_indices(10, 25.0, frames_upbound=32, fps=100).tolist() == list(range(10))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"total_frames": 0}, "total_frames"),
        ({"total_frames": 5, "frames_upbound": 0}, "frames_upbound"),
        ({"total_frames": 5, "fps": 0}, "fps"),
        ({"total_frames": 5, "frames_upbound": None, "force_sample": True}, "force_sample"),
    ],
)
def test_sampling_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_frame_indices(avg_fps=25.0, **kwargs)


# ----------------------------------------------------------- decoding
def test_load_video_frames_returns_the_sampled_frames(clip):
    video = load_video_frames(clip, frames_upbound=5)
    assert video.frames.shape == (5, 48, 64, 3) and video.frames.dtype == np.uint8
    assert video.frame_indices.tolist() == [0, 5, 11, 17, 23]
    assert decoded_ids(video.frames) == [0, 5, 11, 17, 23]
    np.testing.assert_allclose(video.frame_times, np.array([0, 5, 11, 17, 23]) / FPS)
    assert video.fps == pytest.approx(FPS) and video.duration == pytest.approx(NUM_FRAMES / FPS)
    assert video.total_frames == NUM_FRAMES
    assert video.frame_time_str().startswith("0.00s,0.42s,")


def test_fps_and_force_sample_through_the_loader(clip):
    by_fps = load_video_frames(clip, frames_upbound=32, fps=2)
    assert by_fps.frame_indices.tolist() == [0, 6, 12, 18] and decoded_ids(by_fps.frames) == [0, 6, 12, 18]
    forced = load_video_frames(clip, frames_upbound=30, force_sample=True)
    assert len(forced.frames) == 30 and decoded_ids(forced.frames) == forced.frame_indices.tolist()


def test_uniform_frames_are_the_codec_readers_frames(clip):
    """One sampler: uniform frame sampling picks the frames cv_reader samples for codec patches."""
    import cv_reader

    assert sample_frame_indices(NUM_FRAMES, FPS, frames_upbound=7).tolist() == cv_reader.sample_frame_ids_uniform(
        NUM_FRAMES, 7
    )
    codec = load_codec_inputs(clip, sequence_length=7, keep_frames_equiv=1, square_size=64)
    assert codec.frame_ids.tolist() == load_video_frames(clip, frames_upbound=7).frame_indices.tolist()


def test_frames_agree_with_decord_on_a_real_clip():
    """Cross-check against an independent decoder: same frames, same pixels up to colour rounding."""
    decord = pytest.importorskip("decord")
    path = sample_video_path()
    ours = load_video_frames(path, frames_upbound=4)
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    theirs = reader.get_batch(ours.frame_indices.tolist()).asnumpy()
    assert ours.frame_indices.tolist() == [0, 43, 87, 131] and len(reader) == ours.total_frames == 132
    assert ours.frames.shape == theirs.shape == (4, 720, 1280, 3)
    assert np.abs(ours.frames.astype(int) - theirs).mean() < 2.0
    assert ours.duration == pytest.approx(132 / 25)


def test_frames_are_counted_when_the_container_has_no_count(tmp_path):
    path = write_video(tmp_path / "clip.mkv")
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0  # Matroska stores no frame count
    video = load_video_frames(path, frames_upbound=3)
    assert video.total_frames == NUM_FRAMES and decoded_ids(video.frames) == [0, 11, 23]


def test_missing_file(tmp_path):
    with pytest.raises(VideoReadError, match="nope.mp4: file not found"):
        load_video_frames(tmp_path / "nope.mp4")


def test_non_video_file(tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 50)
    with pytest.raises(VideoReadError, match="notes.mp4"):
        load_video_frames(path)


def test_audio_only_file(tmp_path):
    path = tmp_path / "tone.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        samples = (np.sin(np.arange(8000) / 5) * 3000).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(VideoReadError, match="no video stream"):
        load_video_frames(path)


def test_one_error_hierarchy_names_file_and_problem(tmp_path):
    """Every media error is a MediaError (a ValueError) carrying the path and the problem."""
    assert issubclass(VideoReadError, MediaError) and issubclass(CodecInputError, MediaError)
    assert issubclass(MediaError, ValueError)
    with pytest.raises(MediaError) as info:
        load_video_frames(tmp_path / "nope.mp4")
    assert info.value.path == str(tmp_path / "nope.mp4") and info.value.problem == "file not found"
    with pytest.raises(MediaError) as info:
        load_codec_inputs(mosaic_paths=[tmp_path / "m.png"], positions_path=tmp_path / "p.npy")
    assert info.value.path == str(tmp_path / "m.png") and "not found" in info.value.problem


# ----------------------------------------------------------- codec inputs (precomputed)
def write_codec_files(tmp_path, num: int = 2, side: int = 32, patch: int = 16, positions=None):
    rng = np.random.default_rng(0)
    mosaics = rng.integers(0, 256, (num, side, side, 3), dtype=np.uint8)
    paths = []
    for i, mosaic in enumerate(mosaics):
        paths.append(tmp_path / f"mosaic_{i}.png")
        Image.fromarray(mosaic).save(paths[-1])
    if positions is None:
        grid = side // patch
        positions = np.array(
            [(t, h, w) for t in range(num) for h in range(grid) for w in range(grid)], dtype=np.int32
        )
    positions_path = tmp_path / "positions_thw.npy"
    np.save(positions_path, positions)
    return mosaics, positions, paths, positions_path


def test_precomputed_codec_inputs_round_trip(tmp_path):
    mosaics, positions, paths, positions_path = write_codec_files(tmp_path)
    inputs = load_codec_inputs(mosaic_paths=paths, positions_path=positions_path)  # a 32 px pack as it is
    assert inputs.mosaics.dtype == np.uint8 and inputs.mosaics.shape == (2, 32, 32, 3)
    np.testing.assert_array_equal(inputs.mosaics, mosaics)
    assert inputs.positions.dtype == np.int32 and inputs.positions.shape == (8, 3)
    np.testing.assert_array_equal(inputs.positions, positions)
    assert inputs.frame_ids is None and inputs.num_images == 2


def test_a_pack_is_read_at_its_own_geometry_not_the_configurations(tmp_path):
    """The LLaVA configuration (576 px, T 64, 8 mosaics) governs videos encoded online; a 32 px pack of 2
    mosaics is read as it is, and overriding what a pack has its own value of is refused, not ignored."""
    assert (LLAVA_CODEC.sequence_length, LLAVA_CODEC.keep_frames_equiv, LLAVA_CODEC.square_size) == (64, 8, 576)
    assert (LLAVA_CODEC.patch_size, LLAVA_CODEC.padding_policy, LLAVA_CODEC.keep_first_full_frame) == (16, "zero", True)
    _, _, paths, positions_path = write_codec_files(tmp_path)
    inputs = load_codec_inputs(mosaic_paths=paths, positions_path=positions_path, params=LLAVA_CODEC)
    assert inputs.mosaics.shape == (2, 32, 32, 3)
    assert inputs.meta == {"num_images": 2, "square_size": 32, "patch_size": 16, "frames": 2,
                           "padding_policy": "zero"}
    for own in ("square_size", "sequence_length", "keep_frames_equiv"):
        with pytest.raises(ValueError, match=f"own canvas, frames and mosaic count: {own} apply to videos"):
            load_codec_inputs(mosaic_paths=paths, positions_path=positions_path, **{own: 32})


def test_int64_positions_and_other_patch_sizes(tmp_path):
    grid = 4
    positions = np.array([(0, h, w) for h in range(grid) for w in range(grid)], dtype=np.int64)
    _, _, paths, positions_path = write_codec_files(tmp_path, num=1, positions=positions)
    inputs = load_codec_inputs(mosaic_paths=paths, positions_path=positions_path, patch_size=8)
    assert inputs.positions.dtype == np.int32 and inputs.positions.shape == (16, 3)
    with pytest.raises(CodecInputError, match="K=16"):
        load_codec_inputs(mosaic_paths=paths, positions_path=positions_path)  # patch 16 -> K=4


@pytest.mark.parametrize(
    "positions, match",
    [
        (np.zeros((8, 2), np.int32), r"shape \[K, 3\]"),
        (np.zeros(24, np.int32), r"shape \[K, 3\]"),
        (np.zeros((8, 3), np.float32), "integers"),
        (np.zeros((7, 3), np.int32), "K=7"),
        (np.full((8, 3), -1, np.int32), "non-negative"),
        (np.full((8, 3), 2, np.int32), "must be < 2"),
    ],
)
def test_bad_positions_are_rejected(tmp_path, positions, match):
    _, _, paths, positions_path = write_codec_files(tmp_path, positions=positions)
    with pytest.raises(CodecInputError, match=match):
        load_codec_inputs(mosaic_paths=paths, positions_path=positions_path)


def test_pickled_positions_never_load(tmp_path):
    _, _, paths, positions_path = write_codec_files(tmp_path)
    np.save(positions_path, np.array([{"t": 0}, [1, 2, 3]], dtype=object), allow_pickle=True)
    with pytest.raises(CodecInputError, match="pickle|numeric"):
        load_codec_inputs(mosaic_paths=paths, positions_path=positions_path)


def test_padding_policy_exclude(tmp_path):
    """A pack records no frame count: its t is only known non-negative (it spans max(t) + 1 frames)."""
    positions = np.array([(0, 0, 0), (0, 0, 1), (5, 1, 0), (5, 1, 1)], dtype=np.int32)
    _, _, paths, positions_path = write_codec_files(tmp_path, positions=positions)
    inputs = load_codec_inputs(mosaic_paths=paths, positions_path=positions_path, padding_policy="exclude")
    assert inputs.positions.shape == (4, 3) and inputs.meta["frames"] == 6
    with pytest.raises(CodecInputError, match="K=4 rows but 2 mosaics of 2x2 patches need K=8"):
        load_codec_inputs(mosaic_paths=paths, positions_path=positions_path)  # padding zero
    with pytest.raises(ValueError, match="padding_policy"):
        load_codec_inputs(mosaic_paths=paths, positions_path=positions_path, padding_policy="drop")


def test_bad_mosaics_are_rejected(tmp_path):
    _, _, paths, positions_path = write_codec_files(tmp_path)
    Image.new("RGB", (32, 16)).save(paths[1])
    with pytest.raises(CodecInputError, match="mosaic_1.png: mosaic is 32x16; mosaics must be square"):
        load_codec_inputs(mosaic_paths=paths, positions_path=positions_path)
    with pytest.raises(CodecInputError, match="missing.png: mosaic image not found"):
        load_codec_inputs(mosaic_paths=[tmp_path / "missing.png"], positions_path=positions_path)
    with pytest.raises(CodecInputError, match="missing.npy: positions file not found"):
        load_codec_inputs(mosaic_paths=paths[:1], positions_path=tmp_path / "missing.npy")
    Image.new("RGB", (40, 40)).save(paths[0])
    with pytest.raises(CodecInputError, match="side 40 is not a multiple of the encoder's 16px patches"):
        load_codec_inputs(mosaic_paths=paths[:1], positions_path=positions_path)


def test_codec_input_arguments_are_checked(tmp_path, clip):
    _, _, paths, positions_path = write_codec_files(tmp_path)
    with pytest.raises(ValueError, match="not both"):
        load_codec_inputs(video_path=clip, mosaic_paths=paths, positions_path=positions_path)
    with pytest.raises(ValueError, match="both mosaic_paths and positions_path"):
        load_codec_inputs(mosaic_paths=paths)
    with pytest.raises(ValueError, match="single path"):
        load_codec_inputs(mosaic_paths=str(paths[0]), positions_path=positions_path)
    with pytest.raises(TypeError, match="unknown codec parameter"):
        load_codec_inputs(clip, canvas=64)


# ----------------------------------------------------------- codec inputs (from a video)
def test_codec_inputs_from_video_with_cv_reader(clip):
    inputs = load_codec_inputs(clip, sequence_length=8, keep_frames_equiv=2, square_size=64, patch_size=16)
    assert inputs.mosaics.shape == (2, 64, 64, 3) and inputs.mosaics.dtype == np.uint8
    assert inputs.positions.shape == (2 * 4 * 4, 3) and inputs.positions.dtype == np.int32
    assert inputs.positions[:, 0].max() < 8 and len(inputs.frame_ids) == 8
