"""Command-line options the entry points share: which checkpoint to load and how videos become inputs.

The chat CLI (``llava.serve.cli``) and the held-out predictor (``llava.eval.predict``) take the same
``--model-path --model-base --device`` and ``--video-mode --frames --codec-frames --codec-canvas
--codec-images --time-instruction`` flags; they are defined once here, with one loading rule (float32 on the CPU,
the checkpoint's dtype elsewhere) and one way from the flags to :class:`~llava.processing.media.VideoOptions`:
a flag not given takes the checkpoint's saved setting (its processor's ``video``, what it was trained
with), and the codec is cut in the encoder's patch size, as training cuts it.
"""

from __future__ import annotations

import argparse

import torch

from .model.builder import load_pretrained_model, saved_video_settings
from .processing.media import VIDEO_MODES, VideoOptions, codec_options
from .processing.video import LLAVA_CODEC


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", required=True, help="LLaVA-OV checkpoint directory")
    parser.add_argument("--model-base", default=None,
                        help="base checkpoint for LoRA / projector-only checkpoints")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    saved = "default: the checkpoint's saved setting, else %s"
    parser.add_argument("--video-mode", choices=VIDEO_MODES, default=None,
                        help="codec: codec-style patch mosaics (cv_reader); frames: uniformly sampled frames "
                             f"({saved % 'codec'})")
    parser.add_argument("--frames", type=int, default=None,
                        help=f"frames sampled in --video-mode frames ({saved % VideoOptions.frames_upbound})")
    parser.add_argument("--codec-frames", type=int, default=None,
                        help=f"frames the codec reader samples (T) ({saved % LLAVA_CODEC.sequence_length})")
    parser.add_argument("--codec-canvas", type=int, default=None,
                        help=f"codec canvas side in pixels ({saved % LLAVA_CODEC.square_size})")
    parser.add_argument("--codec-images", type=int, default=None,
                        help=f"codec mosaics per video (N) ({saved % LLAVA_CODEC.keep_frames_equiv})")
    parser.add_argument("--time-instruction", action=argparse.BooleanOptionalAction, default=None,
                        help="follow a video file's placeholders with LLaVA-NeXT's time instruction, as a model "
                             f"trained with --add_time_instruction expects ({saved % 'off'})")


def load_checkpoint(args: argparse.Namespace):
    """``(tokenizer, model, image_processor)`` of ``--model-path`` (+ ``--model-base``), on ``--device``."""
    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path, args.model_base, torch_dtype=torch.float32 if args.device == "cpu" else "auto"
    )
    return tokenizer, model.to(args.device), image_processor


def video_options(args: argparse.Namespace, patch_size: int) -> VideoOptions:
    """The video options of the flags, each flag not given taken from the checkpoint's saved settings."""
    return resolve_video_options(
        saved_video_settings(getattr(args, "model_path", None)), patch_size, args.video_mode, args.frames,
        args.codec_frames, args.codec_images, args.codec_canvas, getattr(args, "time_instruction", None),
    )


def resolve_video_options(saved: dict, patch_size: int, mode: str | None = None, frames: int | None = None,
                          codec_frames: int | None = None, codec_images: int | None = None,
                          codec_canvas: int | None = None, time_instruction: bool | None = None) -> VideoOptions:
    """Video options from explicit values, else the checkpoint's ``saved`` settings (its processor's ``video``),
    else the defaults; the codec is cut in the encoder's ``patch_size``."""
    codec = saved.get("codec") or {}

    def pick(value, saved_value, default):
        return value if value is not None else (saved_value if saved_value is not None else default)

    options = codec_options(
        int(pick(codec_frames, codec.get("sequence_length"), LLAVA_CODEC.sequence_length)),
        int(pick(codec_images, codec.get("keep_frames_equiv"), LLAVA_CODEC.keep_frames_equiv)),
        int(pick(codec_canvas, codec.get("square_size"), LLAVA_CODEC.square_size)),
        patch_size,
    )
    return VideoOptions(
        pick(mode, saved.get("mode"), "codec"), int(pick(frames, saved.get("frames_upbound"), VideoOptions.frames_upbound)),
        fps=saved.get("fps") if frames is None else None, force_sample=bool(saved.get("force_sample", False)),
        codec=options, time_instruction=bool(pick(time_instruction, saved.get("time_instruction"), False)),
    )


__all__ = [
    "add_checkpoint_arguments", "add_video_arguments", "load_checkpoint", "resolve_video_options", "video_options",
]
