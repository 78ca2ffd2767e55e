"""Re-save a checkpoint in the self-contained layout (processor, model code with ``auto_map``, model card).

    python -m llava.model.resave OLD NEW [--model-base BASE] [--conv-template qwen_1_5]
        [--video-mode codec|frames] [--frames 16] [--codec-frames 64] [--codec-images 8] [--codec-canvas 576]

``OLD`` is anything ``load_pretrained_model`` loads: a folder this project wrote before the processor
existed, an upstream LLaVA-OV checkpoint, a LoRA or projector-only checkpoint with ``--model-base`` (merged
into a full one). ``NEW`` then loads with plain ``transformers`` (``trust_remote_code=True``) and with every
entry point of this project. The video settings saved with the processor are the flags' (default: the
LLaVA codec configuration), so give those the model was trained with. ``NEW`` is written atomically
and must not exist or be empty.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..cli_options import resolve_video_options
from .builder import load_pretrained_model, saved_video_settings
from .folder import (
    ensure_image_token,
    saved_results,
    video_settings,
    write_checkpoint,
    write_directory_atomically,
)


def resave(old: str | Path, new: str | Path, model_base: str | None = None, conv_template: str | None = None,
           **video_flags: int | str | None) -> Path:
    """Load ``old`` (+ ``model_base``) and write it to ``new`` in the self-contained layout; returns ``new``.

    ``video_flags`` (``mode``, ``frames``, ``codec_frames``, ``codec_images``, ``codec_canvas``,
    ``time_instruction``; None or absent:
    ``old``'s saved setting, else the default) are the video settings saved with the processor."""
    tokenizer, model, image_processor, _ = load_pretrained_model(
        str(old), model_base, torch_dtype="auto", merge_lora=True
    )
    ensure_image_token(tokenizer, model)
    if conv_template is not None:
        model.config.conv_template = conv_template
    video = saved_or_default_video(old, model.config, image_processor.patch_size, **video_flags)
    card = {"name": Path(new).name, "base_model": Path(str(old)).name, "results": saved_results(old)}
    out = Path(new)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder")
    write_directory_atomically(out, lambda staging: write_checkpoint(staging, model, tokenizer, image_processor,
                                                                     video, card))
    return out


def saved_or_default_video(folder: str | Path, config, patch_size: int, **video_flags: int | str | None) -> dict:
    """The video processor's settings: each of ``video_flags`` given, else ``folder``'s saved one, else the default
    (``llava.cli_options.resolve_video_options``)."""
    options = resolve_video_options(saved_video_settings(folder), patch_size, **video_flags)
    codec = {"sequence_length": options.codec.sequence_length, "keep_frames_equiv": options.codec.keep_frames_equiv,
             "square_size": options.codec.square_size}
    return video_settings(config, patch_size, mode=options.mode, frames_upbound=options.frames_upbound,
                          fps=options.fps, force_sample=options.force_sample, codec=codec,
                          time_instruction=options.time_instruction)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old", help="the checkpoint to re-save")
    parser.add_argument("new", help="the folder to write (must not exist or be empty)")
    parser.add_argument("--model-base", default=None, help="base checkpoint of a LoRA / projector-only OLD")
    parser.add_argument("--conv-template", default=None, help="conversation template (default: OLD's, else its LM's)")
    parser.add_argument("--video-mode", choices=("codec", "frames"), default=None,
                        help="video mode saved with the processor (default: OLD's, else codec)")
    parser.add_argument("--frames", type=int, default=None, help="frames mode: frames sampled")
    parser.add_argument("--codec-frames", type=int, default=None, help="codec: frames sampled (T)")
    parser.add_argument("--codec-images", type=int, default=None, help="codec: mosaics per video (N)")
    parser.add_argument("--codec-canvas", type=int, default=None, help="codec: canvas side in pixels")
    parser.add_argument("--time-instruction", action=argparse.BooleanOptionalAction, default=None,
                        help="videos get the time instruction (a model trained with --add_time_instruction)")
    args = parser.parse_args(argv)
    try:
        with torch.no_grad():
            path = resave(args.old, args.new, args.model_base, args.conv_template, mode=args.video_mode,
                          frames=args.frames, codec_frames=args.codec_frames, codec_images=args.codec_images,
                          codec_canvas=args.codec_canvas, time_instruction=args.time_instruction)
    except (FileExistsError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"re-saved {args.old} as {path} (processor, model code, model card)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
