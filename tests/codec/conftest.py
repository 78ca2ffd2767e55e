"""Session fixtures for the codec-reader tests: small real videos, made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from codec_helpers import PAN_SPEED, PKG, H, SynthVideo, W, encode, synth_frames


@pytest.fixture(scope="session")
def vdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("codec_videos")


def _make(vdir: Path, name: str, codec: str, pan: int) -> SynthVideo:
    frames, boxes = synth_frames(pan=pan)
    ext = "mp4"
    path = encode(str(vdir / f"{name}.{ext}"), frames, codec)
    return SynthVideo(path, codec, W, H, len(frames), boxes, pan)


@pytest.fixture(scope="session")
def h264_static(vdir) -> SynthVideo:
    return _make(vdir, "h264_static", "libx264", 0)


@pytest.fixture(scope="session")
def h264_pan(vdir) -> SynthVideo:
    return _make(vdir, "h264_pan", "libx264", PAN_SPEED)


@pytest.fixture(scope="session")
def hevc_static(vdir) -> SynthVideo:
    return _make(vdir, "hevc_static", "libx265", 0)


@pytest.fixture(scope="session")
def hevc_pan(vdir) -> SynthVideo:
    return _make(vdir, "hevc_pan", "libx265", PAN_SPEED)


@pytest.fixture(scope="session")
def env_pythonpath() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PKG) + os.pathsep + env.get("PYTHONPATH", "")
    return env
