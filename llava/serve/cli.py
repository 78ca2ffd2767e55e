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


def load_video(
    path: str, mode: str, processor, frames: int = 16, codec_frames: int = 64, codec_canvas: int = 576,
    codec_images: int = 8,
) -> VisualInputs:
    """``frames``: uniformly sampled frames; ``codec``: codec mosaics + positions (cv_reader)."""
    inputs = VisualInputs()
    try:
        if mode == "frames":
            clip = load_video_frames(path, frames_upbound=frames)
            pixels = processor(videos=[list(clip.frames)], return_tensors="pt")["pixel_values_videos"]
            inputs.add(pixels[0].transpose(0, 1), "video", tuple(clip.frames.shape[2:0:-1]))
        else:
            codec = load_codec_inputs(
                video_path=path, sequence_length=codec_frames, square_size=codec_canvas,
                keep_frames_equiv=codec_images,
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


class ChatSession:
    """A multi-turn conversation with a loaded model about fixed visual inputs."""

    def __init__(self, tokenizer, model, visual: VisualInputs, conv_mode: str | None = None,
                 temperature: float = 0.2, max_new_tokens: int = 512):
        self.tokenizer, self.model, self.visual = tokenizer, model, visual
        self.conv = get_conv_template(conv_mode or default_conv_mode(model.config))
        self.temperature, self.max_new_tokens = temperature, max_new_tokens
        self.turns = 0

    def ask(self, question: str, streamer=None) -> str:
        """Answer ``question`` (the media go with the first one); ``streamer`` gets the tokens live."""
        if self.turns == 0 and self.visual.images:
            question = "\n".join([DEFAULT_IMAGE_TOKEN] * len(self.visual.images)) + "\n" + question
        self.conv.append_message(self.conv.roles[0], question)
        self.conv.append_message(self.conv.roles[1], None)
        device = self.model.device
        input_ids = torch.tensor([tokenizer_image_token(self.conv.get_prompt(), self.tokenizer)], device=device)
        stop = self.conv.stop_str or self.tokenizer.eos_token
        kwargs = dict(
            max_new_tokens=self.max_new_tokens,
            do_sample=self.temperature > 0,
            streamer=streamer,
            eos_token_id=self.tokenizer.convert_tokens_to_ids(stop),
            pad_token_id=self.tokenizer.pad_token_id,
            stopping_criteria=[KeywordsStoppingCriteria([stop], self.tokenizer, None)],
        )
        if self.temperature > 0:
            kwargs["temperature"] = self.temperature
        if self.visual.images:  # every turn re-sends the history, placeholders included
            kwargs.update(
                images=[t.to(device) for t in self.visual.images], modalities=self.visual.modalities,
                image_sizes=self.visual.image_sizes, patch_positions=self.visual.patch_positions,
            )
        with torch.inference_mode():
            output = self.model.generate(input_ids, **kwargs)
        answer = self.tokenizer.decode(output[0], skip_special_tokens=True).strip()
        self.conv.messages[-1][-1] = answer
        self.turns += 1
        return answer


def chat(args: argparse.Namespace) -> int:
    tokenizer, model, processor, _ = load_pretrained_model(
        args.model_path, args.model_base, torch_dtype=torch.float32 if args.device == "cpu" else "auto"
    )
    model.to(args.device)
    if args.image:
        visual = load_images(args.image, processor, model.config)
    elif args.video:
        visual = load_video(
            args.video, args.video_mode, processor, args.frames, args.codec_frames, args.codec_canvas, args.codec_images
        )
    else:
        visual = VisualInputs()
    session = ChatSession(tokenizer, model, visual, args.conv_mode, args.temperature, args.max_new_tokens)
    interactive = sys.stdin.isatty()
    while (question := read_question(interactive)) is not None:
        print("assistant: ", end="", flush=True)
        session.ask(question, streamer=TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True))
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
