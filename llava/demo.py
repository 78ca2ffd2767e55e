"""End-to-end CPU demo of what exists so far: the OV-Encoder on a real sample video.

    python -m llava.demo [--video PATH] [--encoder CHECKPOINT_DIR] [--frames 8]

Without ``--encoder`` a small randomly initialised OV-Encoder is written as a checkpoint
directory and loaded back through ``AutoModel`` / ``AutoImageProcessor`` (the same
``from_pretrained`` path a published checkpoint takes). The demo then encodes one frame at
native resolution, the clip as dense frames on the 3D-RoPE grid, a sparse selection of
patches, and all of them together as one packed variable-length batch, and checks that
the packed result equals the per-sample results.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from transformers import AutoImageProcessor, AutoModel

import llava  # noqa: F401  (registers the OV-Encoder with the Auto classes)
from llava.model import OneVisionEncoderConfig, OneVisionEncoderImageProcessor, OneVisionEncoderModel
from llava.sample_data import sample_video_path

DEMO_ENCODER = dict(
    hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4, patch_size=16,
    image_size=224, rope_temporal_size=64,
)


def read_uniform_frames(path: Path, count: int) -> list[np.ndarray]:
    """``count`` RGB frames sampled uniformly over the clip (decodes the clip once)."""
    try:
        with av.open(str(path)) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    except (av.error.FFmpegError, IndexError) as error:
        raise SystemExit(f"error: cannot decode video {path}: {error}") from None
    if not frames:
        raise SystemExit(f"error: {path} has no video frames")
    picks = np.linspace(0, len(frames) - 1, count).round().astype(int)
    return [frames[i] for i in picks]


def load_encoder(checkpoint: str | None, workdir: Path) -> tuple[OneVisionEncoderModel, OneVisionEncoderImageProcessor]:
    if checkpoint is None:
        checkpoint = str(workdir / "ov-encoder-demo")
        torch.manual_seed(0)
        OneVisionEncoderModel(OneVisionEncoderConfig(**DEMO_ENCODER)).save_pretrained(checkpoint)
        OneVisionEncoderImageProcessor(patch_size=DEMO_ENCODER["patch_size"], max_pixels=224 * 224).save_pretrained(
            checkpoint
        )
        print("built a random-initialised demo encoder (no weights can be downloaded here)")
    model = AutoModel.from_pretrained(checkpoint).eval()
    try:
        processor = AutoImageProcessor.from_pretrained(checkpoint)
    except OSError:  # no preprocessor_config.json: native resolution up to the pre-training area
        processor = OneVisionEncoderImageProcessor(
            patch_size=model.config.patch_size, max_pixels=model.config.image_size**2
        )
    return model, processor


def timed(fn):
    start = time.perf_counter()
    with torch.no_grad():
        out = fn()
    return out, time.perf_counter() - start


def run_demo(video: Path, checkpoint: str | None, frames: int, keep_fraction: float) -> None:
    with tempfile.TemporaryDirectory(prefix="llava-demo-") as workdir:
        model, processor = load_encoder(checkpoint, Path(workdir))
    config = model.config
    clip = read_uniform_frames(video, frames)
    print(f"video: {video.name}, {frames} frames of {clip[0].shape[1]}x{clip[0].shape[0]}")

    image = processor(images=clip[0], return_tensors="pt")["pixel_values"]
    video_pixels = processor(videos=clip, return_tensors="pt")["pixel_values_videos"]
    _, _, num_frames, height, width = video_pixels.shape
    grid_h, grid_w = height // config.patch_size, width // config.patch_size
    per_frame = grid_h * grid_w

    # Dense frames spread over the temporal RoPE grid (K == N: positions only).
    grid_t = config.rope_temporal_size or num_frames
    frame_slots = torch.linspace(0, grid_t - 1, num_frames).long()
    spread = (frame_slots[:, None] * per_frame + torch.arange(per_frame)).reshape(1, -1)

    # A sparse selection: the patches that change most between consecutive frames.
    # (The codec reader, Compressed_Video_Reader, makes this choice from motion vectors.)
    change = (video_pixels[0, :, 1:] - video_pixels[0, :, :-1]).abs().mean(0)  # [T-1, H, W]
    patch_change = change.reshape(num_frames - 1, grid_h, config.patch_size, grid_w, config.patch_size).mean((2, 4))
    scores = torch.cat([torch.full((1, grid_h, grid_w), float("inf")), patch_change]).flatten()
    keep = max(1, int(keep_fraction * scores.numel()))
    sparse_local = scores.topk(keep).indices.sort().values  # indices into the T x Hp x Wp input
    sparse_positions = torch.stack(
        [frame_slots[sparse_local // per_frame], (sparse_local // grid_w) % grid_h, sparse_local % grid_w], dim=-1
    )

    rows = []
    image_out, seconds = timed(lambda: model(image))
    rows.append(("image, native resolution", image_out.last_hidden_state.shape[1], seconds))
    dense_out, seconds = timed(lambda: model(video_pixels, visible_indices=spread))
    rows.append((f"video, {num_frames} dense frames", dense_out.last_hidden_state.shape[1], seconds))
    sparse_video = video_pixels[0]
    sparse_out, seconds = timed(
        lambda: model(video_pixels, patch_positions=sparse_positions[None], visible_indices=sparse_local[None])
    )
    rows.append((f"video, {keep} most-changing patches", sparse_out.last_hidden_state.shape[1], seconds))

    packed_out, seconds = timed(
        lambda: model(
            [image[0], sparse_video, sparse_video],
            visible_indices=[None, spread[0], sparse_local],
            patch_positions=[None, None, sparse_positions],
        )
    )
    rows.append(("all three, one packed pass", packed_out.last_hidden_state.shape[0], seconds))

    print(f"\n{'input':40s} {'tokens':>7s} {'seconds':>8s}")
    for name, tokens, secs in rows:
        print(f"{name:40s} {tokens:7d} {secs:8.3f}")

    alone = [image_out, dense_out, sparse_out]
    worst = max(
        (got - want.last_hidden_state[0]).abs().max().item() for got, want in zip(packed_out.split(), alone)
    )
    print(f"\npacked vs per-sample max |difference|: {worst:.2e}")
    print(f"feature width {config.hidden_size}; pooled output {tuple(packed_out.pooler_output.shape)}")
    if worst > 1e-3:
        raise SystemExit("error: packed and per-sample features disagree")
    print("demo finished")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, default=None, help="video file (default: a public sample clip)")
    parser.add_argument("--encoder", default=None, help="OV-Encoder checkpoint directory (default: random demo)")
    parser.add_argument("--frames", type=int, default=8, help="frames sampled uniformly from the clip")
    parser.add_argument("--keep", type=float, default=0.25, help="fraction of video patches kept in sparse mode")
    args = parser.parse_args(argv)
    if args.frames < 2:
        parser.error("--frames must be at least 2")
    if not 0 < args.keep <= 1:
        parser.error("--keep must be in (0, 1]")
    video = args.video or sample_video_path()
    if not video.is_file():
        parser.error(f"video not found: {video}")
    run_demo(video, args.encoder, args.frames, args.keep)


if __name__ == "__main__":
    main()
