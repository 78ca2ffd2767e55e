"""Command-line options the entry points share: which checkpoint to load and how videos become inputs.

The chat CLI (``llava.serve.cli``) and the held-out predictor (``llava.eval.predict``) take the same
``--model-path --model-base --device`` and ``--video-mode --frames --codec-frames --codec-canvas
--codec-images`` flags; they are defined once here, with one loading rule (float32 on the CPU,
the checkpoint's dtype elsewhere) and one way from the flags to :class:`~llava.mm_inputs.VideoOptions`
(the codec cut in the encoder's patch size, as training cuts it).
"""

from __future__ import annotations

import argparse

import torch

from .mm_inputs import VIDEO_MODES, VideoOptions, codec_options
from .model.builder import load_pretrained_model
from .video_io import LLAVA_CODEC


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", required=True, help="LLaVA-OV checkpoint directory")
    parser.add_argument("--model-base", default=None,
                        help="base checkpoint for LoRA / projector-only checkpoints")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--video-mode", choices=VIDEO_MODES, default="codec",
                        help="codec: codec-style patch mosaics (cv_reader); frames: uniformly sampled frames")
    parser.add_argument("--frames", type=int, default=VideoOptions.frames_upbound,
                        help="frames sampled in --video-mode frames")
    parser.add_argument("--codec-frames", type=int, default=LLAVA_CODEC.sequence_length,
                        help="frames the codec reader samples (T)")
    parser.add_argument("--codec-canvas", type=int, default=LLAVA_CODEC.square_size,
                        help="codec canvas side in pixels")
    parser.add_argument("--codec-images", type=int, default=LLAVA_CODEC.keep_frames_equiv,
                        help="codec mosaics per video (N)")


def load_checkpoint(args: argparse.Namespace):
    """``(tokenizer, model, image_processor)`` of ``--model-path`` (+ ``--model-base``), on ``--device``."""
    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path, args.model_base, torch_dtype=torch.float32 if args.device == "cpu" else "auto"
    )
    return tokenizer, model.to(args.device), image_processor


def video_options(args: argparse.Namespace, patch_size: int) -> VideoOptions:
    codec = codec_options(args.codec_frames, args.codec_images, args.codec_canvas, patch_size)
    return VideoOptions(args.video_mode, args.frames, codec=codec)


__all__ = ["add_checkpoint_arguments", "add_video_arguments", "load_checkpoint", "video_options"]
