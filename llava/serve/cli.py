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

from transformers import TextStreamer

from ..cli_options import add_checkpoint_arguments, add_video_arguments, load_checkpoint, video_options
from ..constants import DEFAULT_IMAGE_TOKEN
from ..inference.chat import ChatSession
from ..processing.conversation import conv_templates
from ..processing.media import MediaError, VisualInputs, VisualProcessor

EXIT_WORDS = {"exit", "quit"}


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
    tokenizer, model, image_processor = load_checkpoint(args)
    video = video_options(args, image_processor.patch_size)
    processor = VisualProcessor(image_processor, model.config, video)
    if args.image:
        visual = VisualInputs.concat(processor.image(path) for path in args.image)
    elif args.video:
        visual = processor.video(args.video)
    else:
        visual = VisualInputs()
    session = ChatSession(tokenizer, model, visual, args.conv_mode, args.temperature, args.max_new_tokens)
    interactive = sys.stdin.isatty()
    while (question := read_question(interactive)) is not None:
        if DEFAULT_IMAGE_TOKEN in question:
            print(f"error: a question may not contain {DEFAULT_IMAGE_TOKEN} (the media are placed for you)",
                  file=sys.stderr)
            continue
        print("assistant: ", end="", flush=True)
        session.ask(question, streamer=TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_checkpoint_arguments(parser)
    media = parser.add_mutually_exclusive_group()
    media.add_argument("--image", nargs="+", default=None, help="one or more image files")
    media.add_argument("--video", default=None, help="a video file")
    add_video_arguments(parser)
    parser.add_argument("--conv-mode", choices=sorted(conv_templates), default=None,
                        help="conversation template (default: from the checkpoint's LLM)")
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return chat(args)
    except MediaError as error:  # names the file and the problem
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
