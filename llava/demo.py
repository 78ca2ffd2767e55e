"""CPU demo of the encoder side on a real sample video: codec reader -> OV-Encoder, packed.

    python -m llava.demo [--video PATH] [--encoder CHECKPOINT_DIR] [--frames 8]

1. The codec reader (``cv_reader.codec_patchify``) picks the patches of many frames that
   carry motion and residual energy and packs them into mosaics + ``(t, h, w)`` positions.
2. The OV-Encoder encodes one frame at native resolution, the clip as dense frames on the
   3D-RoPE grid, and the codec patches, then all three as one packed variable-length
   batch, and checks the packed result equals the per-sample results. Without
   ``--encoder`` a small random-initialised encoder is written as a checkpoint directory
   and loaded back through ``AutoModel`` / ``AutoImageProcessor`` (the path a published
   checkpoint takes).

``bash scripts/demo.sh`` runs this, then the tiny SFT preset (``PRESET=tiny bash
scripts/sft_ov_encoder.sh``): a tiny LLaVA-OV trained on CPU in minutes, its held-out
accuracy, and one chat answer from the trained checkpoint.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoImageProcessor, AutoModel

import llava  # noqa: F401  (registers the OV-Encoder with the Auto classes)
from llava.model import OneVisionEncoderConfig, OneVisionEncoderImageProcessor, OneVisionEncoderModel
from llava.model.modeling_llava_vision import temporal_slots
from llava.processing.video import MediaError, load_codec_inputs, load_video_frames
from llava.sample_data import sample_video_path

DEMO_ENCODER = dict(
    hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4, patch_size=16,
    image_size=224, rope_temporal_size=64,
)


def load_encoder(
    checkpoint: str | None, workdir: Path
) -> tuple[OneVisionEncoderModel, OneVisionEncoderImageProcessor]:
    if checkpoint is None:
        checkpoint = str(workdir / "ov-encoder-demo")
        torch.manual_seed(0)
        OneVisionEncoderModel(OneVisionEncoderConfig(**DEMO_ENCODER)).save_pretrained(checkpoint)
        OneVisionEncoderImageProcessor(
            patch_size=DEMO_ENCODER["patch_size"], max_pixels=224 * 224
        ).save_pretrained(checkpoint)
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


def codec_inputs(video: Path, processor, frames: int, canvas: int, mosaics: int):
    """Codec mosaics as pixels ``[C, N, S, S]`` and their positions ``[K, 3]``, with timing."""
    start = time.perf_counter()
    codec = load_codec_inputs(
        video,
        sequence_length=frames,
        square_size=canvas,
        keep_frames_equiv=mosaics,
        patch_size=processor.patch_size,
    )
    seconds = time.perf_counter() - start
    pixels = processor(
        videos=[list(codec.mosaics)], do_resize=False, return_tensors="pt"
    )["pixel_values_videos"][0]
    return pixels, torch.as_tensor(codec.positions).long(), seconds


def encoder_demo(video: Path, checkpoint: str | None, frames: int, codec_frames: int) -> None:
    with tempfile.TemporaryDirectory(prefix="llava-demo-") as workdir:
        model, processor = load_encoder(checkpoint, Path(workdir))
    config = model.config
    clip = list(load_video_frames(video, frames_upbound=frames, force_sample=True).frames)
    print(f"video: {video.name}, {frames} frames of {clip[0].shape[1]}x{clip[0].shape[0]}")

    image = processor(images=clip[0], return_tensors="pt")["pixel_values"]
    video_pixels = processor(videos=clip, return_tensors="pt")["pixel_values_videos"]
    _, _, num_frames, height, width = video_pixels.shape
    per_frame = (height // config.patch_size) * (width // config.patch_size)
    # Dense frames spread over the temporal RoPE grid (K == N: the indices only place tokens).
    frame_slots = temporal_slots(num_frames, config.rope_temporal_size or num_frames)
    spread = (frame_slots[:, None] * per_frame + torch.arange(per_frame)).reshape(1, -1)

    canvas = config.patch_size * max(1, config.image_size // config.patch_size)  # pre-training frame size
    codec_video, positions, codec_seconds = codec_inputs(video, processor, codec_frames, canvas, mosaics=4)
    print(f"codec reader: {positions.shape[0]} patches from {codec_frames} frames in {codec_seconds:.2f} s "
          f"-> {codec_video.shape[1]} mosaics of {canvas}x{canvas}")

    rows = []
    image_out, seconds = timed(lambda: model(image))
    rows.append(("image, native resolution", image_out.last_hidden_state.shape[1], seconds))
    dense_out, seconds = timed(lambda: model(video_pixels, visible_indices=spread))
    rows.append((f"video, {num_frames} dense frames", dense_out.last_hidden_state.shape[1], seconds))
    codec_out, seconds = timed(lambda: model(codec_video[None], patch_positions=positions[None]))
    rows.append(
        (f"video, codec patches of {codec_frames} frames", codec_out.last_hidden_state.shape[1], seconds)
    )
    packed_out, seconds = timed(
        lambda: model(
            [image[0], video_pixels[0], codec_video],
            visible_indices=[None, spread[0], None],
            patch_positions=[None, None, positions],
        )
    )
    rows.append(("all three, one packed pass", packed_out.last_hidden_state.shape[0], seconds))

    print(f"\n{'input':40s} {'tokens':>7s} {'seconds':>8s}")
    for name, tokens, secs in rows:
        print(f"{name:40s} {tokens:7d} {secs:8.3f}")

    alone = [image_out, dense_out, codec_out]
    worst = max(
        (got - want.last_hidden_state[0]).abs().max().item() for got, want in zip(packed_out.split(), alone)
    )
    print(f"\npacked vs per-sample max |difference|: {worst:.2e}")
    print(f"feature width {config.hidden_size}; pooled output {tuple(packed_out.pooler_output.shape)}")
    if worst > 1e-3:
        raise SystemExit("error: packed and per-sample features disagree")


def run_demo(video: Path, checkpoint: str | None, frames: int, codec_frames: int) -> None:
    encoder_demo(video, checkpoint, frames, codec_frames)
    print("\ndemo finished")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", type=Path, default=None, help="video file (default: a public sample clip)")
    parser.add_argument(
        "--encoder", default=None, help="OV-Encoder checkpoint directory (default: random demo)"
    )
    parser.add_argument("--frames", type=int, default=8, help="frames sampled uniformly from the clip")
    parser.add_argument("--codec-frames", type=int, default=32, help="frames the codec reader samples")
    args = parser.parse_args(argv)
    if args.frames < 2:
        parser.error("--frames must be at least 2")
    if args.codec_frames < 2:
        parser.error("--codec-frames must be at least 2")
    video = args.video or sample_video_path()
    if not video.is_file():
        parser.error(f"video not found: {video}")
    try:
        run_demo(video, args.encoder, args.frames, args.codec_frames)
    except MediaError as error:  # names the file and the problem
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
