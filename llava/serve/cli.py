"""Chat with a LLaVA-OV checkpoint in the terminal.

    python -m llava.serve.cli --model-path CKPT [--model-base BASE]
        [--image IMG ... | --video VIDEO [--video-mode codec|frames]]
        [--conv-mode qwen_1_5] [--temperature 0.2] [--max-new-tokens 512]

Multi-turn: the media go with the first question; each answer is streamed as it is
generated. ``exit`` / ``quit`` or end of input (Ctrl-D) ends the chat. Questions can be
piped on stdin, one per line, for non-interactive use.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

import torch
from PIL import Image, UnidentifiedImageError
from transformers import TextStreamer

from ..constants import DEFAULT_IMAGE_TOKEN
from ..conversation import conv_templates, get_conv_template
from ..mm_utils import KeywordsStoppingCriteria, process_images, tokenizer_image_token
from ..model.builder import load_pretrained_model
from ..video_io import CodecInputError, VideoLoadError, load_codec_inputs, load_video_frames

EXIT_WORDS = {"exit", "quit"}


class MediaError(Exception):
    """A media file given on the command line cannot be used."""


@dataclass
class VisualInputs:
    """Model-ready visual inputs: one entry per ``<image>`` placeholder."""

    images: list[torch.Tensor] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)
    patch_positions: list[torch.Tensor | None] = field(default_factory=list)

    def add(self, entry: torch.Tensor, modality: str, size=(0, 0), positions=None) -> None:
        self.images.append(entry)
        self.modalities.append(modality)
        self.image_sizes.append(size)
        self.patch_positions.append(positions)


def load_images(paths: list[str], processor, config) -> VisualInputs:
    inputs = VisualInputs()
    for path in paths:
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            raise MediaError(f"cannot read image {path}: {error}") from None
        pixels = process_images([image], processor, config)
        inputs.add(pixels[0], "image", image.size)
    return inputs


def load_video(path: str, mode: str, processor, args) -> VisualInputs:
    inputs = VisualInputs()
    try:
        if mode == "frames":
            clip = load_video_frames(path, frames_upbound=args.frames)
            pixels = processor(videos=[list(clip.frames)], return_tensors="pt")["pixel_values_videos"]
            inputs.add(pixels[0].transpose(0, 1), "video", tuple(clip.frames.shape[2:0:-1]))
        else:
            codec = load_codec_inputs(
                video_path=path, sequence_length=args.codec_frames, square_size=args.codec_canvas,
                keep_frames_equiv=args.codec_images,
                patch_size=processor.patch_size,
            )
            mosaics = processor(images=list(codec.mosaics), do_resize=False, return_tensors="pt")["pixel_values"]
            inputs.add(mosaics, "codec", codec.mosaics.shape[1:3], torch.as_tensor(codec.positions).long())
    except (VideoLoadError, CodecInputError, OSError, ValueError) as error:
        raise MediaError(f"cannot read video {path}: {error}") from None
    return inputs


def default_conv_mode(config) -> str:
    return "qwen3" if config.model_type == "llava_qwen3" else "qwen_1_5"


def read_question(interactive: bool) -> str | None:
    """Next non-empty question, or None at end of input / an exit word."""
    while True:
        try:
            line = input("user: " if interactive else "")
        except EOFError:
            return None
        line = line.strip()
        if line.lower() in EXIT_WORDS:
            return None
        if line:
            return line


def chat(args: argparse.Namespace) -> int:
    tokenizer, model, processor, _ = load_pretrained_model(
        args.model_path, args.model_base, torch_dtype=torch.float32 if args.device == "cpu" else "auto"
    )
    model.to(args.device)
    if args.image:
        visual = load_images(args.image, processor, model.config)
    elif args.video:
        visual = load_video(args.video, args.video_mode, processor, args)
    else:
        visual = VisualInputs()

    conv = get_conv_template(args.conv_mode or default_conv_mode(model.config))
    interactive = sys.stdin.isatty()
    first = True
    while (question := read_question(interactive)) is not None:
        if first and visual.images:
            question = "\n".join([DEFAULT_IMAGE_TOKEN] * len(visual.images)) + "\n" + question
        conv.append_message(conv.roles[0], question)
        conv.append_message(conv.roles[1], None)
        input_ids = torch.tensor([tokenizer_image_token(conv.get_prompt(), tokenizer)], device=args.device)
        stop = conv.stop_str or tokenizer.eos_token
        streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        print("assistant: ", end="", flush=True)
        kwargs = dict(
            max_new_tokens=args.max_new_tokens,
            do_sample=args.temperature > 0,
            streamer=streamer,
            eos_token_id=tokenizer.convert_tokens_to_ids(stop),
            pad_token_id=tokenizer.pad_token_id,
            stopping_criteria=[KeywordsStoppingCriteria([stop], tokenizer, None)],
        )
        if args.temperature > 0:
            kwargs["temperature"] = args.temperature
        if visual.images:  # every turn re-sends the history, placeholders included
            kwargs.update(
                images=[t.to(args.device) for t in visual.images], modalities=visual.modalities,
                image_sizes=visual.image_sizes, patch_positions=visual.patch_positions,
            )
        with torch.inference_mode():
            output = model.generate(input_ids, **kwargs)
        answer = tokenizer.decode(output[0], skip_special_tokens=True).strip()
        conv.messages[-1][-1] = answer
        first = False
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", required=True, help="LLaVA-OV checkpoint directory")
    parser.add_argument("--model-base", default=None, help="base checkpoint for LoRA / projector-only checkpoints")
    media = parser.add_mutually_exclusive_group()
    media.add_argument("--image", nargs="+", default=None, help="one or more image files")
    media.add_argument("--video", default=None, help="a video file")
    parser.add_argument("--video-mode", choices=["codec", "frames"], default="codec",
                        help="codec: codec-style patch mosaics (cv_reader); frames: uniformly sampled frames")
    parser.add_argument("--frames", type=int, default=16, help="frames sampled in --video-mode frames")
    parser.add_argument("--codec-frames", type=int, default=64, help="frames the codec reader samples (T)")
    parser.add_argument("--codec-canvas", type=int, default=576, help="codec canvas side in pixels")
    parser.add_argument("--codec-images", type=int, default=8, help="codec mosaics per video (N)")
    parser.add_argument("--conv-mode", choices=sorted(conv_templates), default=None,
                        help="conversation template (default: from the checkpoint's LLM)")
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return chat(args)
    except MediaError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except ValueError as error:  # e.g. a path that is not a checkpoint
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print()
        return 130


if __name__ == "__main__":
    sys.exit(main())
