"""Peak memory of turning one image or video into model inputs, each case in a fresh process.

What the server's per-request bound (docs/serving.md) rests on. For images, two paths side by side on the
same file: the project's input layer (``cv_reader.read_image`` -> ``VisualProcessor.image``: decoded once,
resized by PIL before any array copy) and the plain way (``Image.open(...).convert("RGB")``, then the
image processor on the numpy array). For videos, the input layer in both video modes at 720p and 4K.
Peak = the process's peak RSS increase over its baseline after imports and the model's image processor.

    python benchmarks/bench_media_memory.py                 # print the table
    python benchmarks/bench_media_memory.py --write-docs    # also update docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from docs_section import replace_section  # benchmarks/docs_section.py
from rss import reset_peak_rss, rss_bytes  # benchmarks/rss.py

SECTION = "## Media decoding memory"
IMAGES = [("RGB", 12), ("RGB", 50), ("RGBA", 50), ("I;16", 50)]  # (PIL mode, megapixels)
VIDEOS = [(1280, 720), (3840, 2160)]


def make_image(folder: Path, mode: str, megapixels: float) -> Path:
    import numpy as np
    from PIL import Image

    side = int((megapixels * 1e6) ** 0.5)
    path = folder / f"{mode.replace(';', '')}_{megapixels:g}mp.png"
    if not path.exists():
        rng = np.random.default_rng(0)
        if mode == "I;16":
            tile = rng.integers(0, 65535, (64, 64), dtype=np.uint16)
        else:
            tile = rng.integers(0, 255, (64, 64, len(mode)), dtype=np.uint8)
        Image.fromarray(np.tile(tile, (side // 64 + 1, side // 64 + 1) + (1,) * (tile.ndim - 2))[:side, :side]
                        ).save(path, compress_level=1)
    return path


def make_video(folder: Path, width: int, height: int) -> Path:
    import av
    import numpy as np

    path = folder / f"clip_{width}x{height}.mp4"
    if not path.exists():
        rng = np.random.default_rng(0)
        with av.open(str(path), "w") as container:
            stream = container.add_stream("libx264", rate=12)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"preset": "ultrafast"}
            background = rng.integers(20, 90, (height, width, 3), dtype=np.uint8)
            for i in range(48):
                frame = background.copy()
                x = (i * width // 48) % (width - width // 8)
                frame[height // 3: height // 2, x: x + width // 8] = 240
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path


def worker(case: dict) -> dict:
    """One measurement in this (fresh) process."""
    import numpy as np
    from PIL import Image

    from llava.model.tiny import build_tiny_model
    from llava.processing.media import VisualProcessor

    _, model, processor = build_tiny_model("qwen2", seed=0)
    processor.max_pixels = 28 * 28 * 1280  # the released checkpoints' image budget, not the tiny one's
    visual = VisualProcessor(processor, model.config, video_mode=case.get("mode", "codec"))
    reset_peak_rss()
    base = rss_bytes("VmRSS")
    if case["path"] == "plain":
        with Image.open(case["file"]) as image:
            array = np.asarray(image.convert("RGB"))
        shape = tuple(processor(images=[array], return_tensors="pt")["pixel_values"].shape)
    elif case["kind"] == "image":
        shape = tuple(visual.image(case["file"]).images[0].shape)
    else:
        shape = tuple(visual.video(case["file"]).images[0].shape)
    return {"peak_mib": (rss_bytes("VmHWM") - base) / 2**20, "input": list(shape)}


def measure(case: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(case)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "bench_media_memory"))
    parser.add_argument("--write-docs", action="store_true", help="update its section of docs/benchmarks.md")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    folder = Path(args.workdir)
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["| image | decoded (MiB) | input layer peak (MiB) | plain PIL + processor peak (MiB) | plain / layer |",
             "|---|---:|---:|---:|---:|"]
    for mode, megapixels in IMAGES:
        path = make_image(folder, mode, megapixels)
        layer = measure({"kind": "image", "path": "layer", "file": str(path)})
        plain = measure({"kind": "image", "path": "plain", "file": str(path)})
        decoded = megapixels * 1e6 * {"RGB": 3, "RGBA": 4, "I;16": 2}[mode] / 2**20
        lines.append(f"| {mode} {megapixels:g} MP PNG | {decoded:.0f} | {layer['peak_mib']:.0f} | "
                     f"{plain['peak_mib']:.0f} | {plain['peak_mib'] / layer['peak_mib']:.1f}x |")
        print(lines[-1], flush=True)
    lines += ["", "| video (H.264, 48 frames) | frames mode peak (MiB) | codec mode peak (MiB) |", "|---|---:|---:|"]
    for width, height in VIDEOS:
        path = make_video(folder, width, height)
        frames = measure({"kind": "video", "path": "layer", "mode": "frames", "file": str(path)})
        codec = measure({"kind": "video", "path": "layer", "mode": "codec", "file": str(path)})
        lines.append(f"| {width}x{height} | {frames['peak_mib']:.0f} | {codec['peak_mib']:.0f} |")
        print(lines[-1], flush=True)
    text = (
        "`python benchmarks/bench_media_memory.py` (CPU; each case a fresh process; peak RSS increase while one "
        "image or video becomes model inputs; the image processor at the released checkpoints' 1.0 MP budget; "
        "frames mode 16 frames, codec mode 64 frames into 8 mosaics of 576 px).\n\n" + "\n".join(lines)
    )
    print("\n" + text)
    if args.write_docs:
        replace_section(SECTION, text)
        print("updated docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
