"""Answer the first question of every LLaVA record with a checkpoint: held-out accuracy of a run.

    python -m llava.eval.predict --model-path CKPT --data heldout.jsonl --out predictions.jsonl \\
        [--image-folder DIR] [--video-folder DIR] [--video-mode codec|frames] [--codec-frames 64 ...]
        [--conv-mode TEMPLATE] [--images-as-clip N] [--batch-size 8] [--max-new-tokens 16]

Records are read and their media turned into inputs exactly as training does
(``llava.train.data``: same dataset reader, same placeholders, same prompt tokenisation), then
answered greedily in left-padded batches, each answer ending at the template's stop string
(``llava.inference.generation.StopRule``). Writes ``{"id", "prediction"}`` lines (atomically);
unusable records are reported and skipped. (Benchmarks are scored with lmms-eval; the tiny SFT
preset scores these predictions with ``playground/tiny_sft/score.py``.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cv_reader.util import atomic_write_bytes
from tqdm import tqdm

from ..cli_options import add_checkpoint_arguments, add_video_arguments, load_checkpoint, video_options
from ..inference.chat import default_conv_template
from ..inference.generation import generate_batch
from ..processing.media import VisualProcessor
from ..train.arguments import DataArguments
from ..train.data import RECORD_ERRORS, SupervisedDataset


def predict(model, tokenizer, dataset: SupervisedDataset, batch_size: int = 8, max_new_tokens: int = 16,
            progress: bool = True) -> tuple[dict[str, str], list[str]]:
    """``({record id: answer}, [problems])`` for every record of ``dataset``."""
    answers, problems, pending = {}, [], []

    def flush() -> None:
        outputs = generate_batch(model, tokenizer, [(ids, visual) for _, ids, visual in pending],
                                 dataset.template, max_new_tokens=max_new_tokens, do_sample=False)
        answers.update((record_id, answer) for (record_id, _, _), answer in zip(pending, outputs))
        pending.clear()

    for i in tqdm(range(len(dataset)), desc="answering", unit="record", disable=not progress,
                  file=sys.stderr):
        record_id = str(dataset.records[i].get("id", f"#{i}"))
        try:
            ids, visual = dataset.prompt(i)
        except RECORD_ERRORS as error:
            problems.append(f"{dataset.where_of(i)}: {error}")
            continue
        pending.append((record_id, ids, visual))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return answers, problems


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_checkpoint_arguments(parser)
    parser.add_argument("--data", required=True, help="records: .jsonl / .json / brace list / .yaml mixture")
    parser.add_argument("--out", required=True, help="predictions JSONL to write")
    parser.add_argument("--image-folder", default=None)
    parser.add_argument("--video-folder", default=None)
    add_video_arguments(parser)
    parser.add_argument("--conv-mode", default=None, help="conversation template (default: the checkpoint's)")
    parser.add_argument("--images-as-clip", type=int, default=DataArguments.images_as_clip, metavar="N",
                        help="as training's --images_as_clip: a record of exactly N images and no "
                        "positions_thw is one clip (0, the default: images stay images)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        tokenizer, model, image_processor = load_checkpoint(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    data_args = DataArguments(data_path=args.data, image_folder=args.image_folder,
                              video_folder=args.video_folder, video_mode=args.video_mode,
                              images_as_clip=args.images_as_clip)
    visual = VisualProcessor(image_processor, model.config, video_options(args, image_processor.patch_size))
    try:
        dataset = SupervisedDataset(args.data, tokenizer, visual, data_args,
                                    args.conv_mode or default_conv_template(model.config))
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    answers, problems = predict(model, tokenizer, dataset, args.batch_size, args.max_new_tokens)
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps({"id": k, "prediction": v}) + "\n" for k, v in answers.items())
    atomic_write_bytes(out, lines.encode("utf-8"))
    print(f"answered {len(answers)} records ({len(problems)} skipped); written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
