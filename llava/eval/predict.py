"""Answer the first question of every LLaVA record with a checkpoint: held-out accuracy of a run.

    python -m llava.eval.predict --model-path CKPT --data heldout.jsonl --out predictions.jsonl \\
        [--image-folder DIR] [--video-folder DIR] [--video-mode codec|frames] [--codec-frames 64 ...]
        [--batch-size 8] [--max-new-tokens 16]

Records are read and their media turned into inputs exactly as training does
(``llava.train.data``: same dataset reader, same placeholders, same prompt tokenisation), then
answered greedily in left-padded batches. Writes ``{"id", "prediction"}`` lines (atomically);
unusable records are reported and skipped. (Benchmarks are scored with lmms-eval; the tiny SFT
preset scores these predictions with ``playground/tiny_sft/score.py``.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from ..chat import default_conv_template
from ..mm_inputs import VisualInputs, VisualProcessor
from ..model.builder import load_pretrained_model
from ..train.arguments import DataArguments
from ..train.data import RECORD_ERRORS, SupervisedDataset, video_options
from ..video_io import LLAVA_CODEC


def predict(model, tokenizer, dataset: SupervisedDataset, batch_size: int = 8, max_new_tokens: int = 16,
            progress: bool = True) -> tuple[dict[str, str], list[str]]:
    """``({record id: answer}, [problems])`` for every record of ``dataset``."""
    model.config.tokenizer_padding_side = "left"  # batched generation pads on the left
    stop = tokenizer.convert_tokens_to_ids("<|im_end|>")
    answers, problems, pending = {}, [], []

    def flush() -> None:
        longest = max(len(ids) for _, ids, _ in pending)
        batch = torch.full((len(pending), longest), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(batch)
        for row, (_, ids, _) in enumerate(pending):
            batch[row, longest - len(ids):], mask[row, longest - len(ids):] = ids, 1
        visual = VisualInputs.concat(v for _, _, v in pending).to(model.device)
        with torch.inference_mode():
            output = model.generate(batch.to(model.device), attention_mask=mask.to(model.device),
                                    max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop,
                                    pad_token_id=tokenizer.pad_token_id, **visual.model_kwargs())
        for (record_id, _, _), row in zip(pending, output):
            answers[record_id] = tokenizer.decode(row, skip_special_tokens=True).strip()
        pending.clear()

    for i in tqdm(range(len(dataset)), desc="answering", unit="record", disable=not progress, file=sys.stderr):
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


def _write_atomically(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.writelines(line + "\n" for line in lines)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--model-base", default=None)
    parser.add_argument("--data", required=True, help="records: .jsonl / .json / brace list / .yaml mixture")
    parser.add_argument("--out", required=True, help="predictions JSONL to write")
    parser.add_argument("--image-folder", default=None)
    parser.add_argument("--video-folder", default=None)
    parser.add_argument("--video-mode", choices=("codec", "frames"), default="codec")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--codec-frames", type=int, default=LLAVA_CODEC.sequence_length)
    parser.add_argument("--codec-canvas", type=int, default=LLAVA_CODEC.square_size)
    parser.add_argument("--codec-images", type=int, default=LLAVA_CODEC.keep_frames_equiv)
    parser.add_argument("--conv-mode", default=None, help="conversation template (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        tokenizer, model, image_processor, _ = load_pretrained_model(
            args.model_path, args.model_base, torch_dtype=torch.float32 if args.device == "cpu" else "auto"
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    model.to(args.device)
    data_args = DataArguments(
        data_path=args.data, image_folder=args.image_folder, video_folder=args.video_folder,
        video_mode=args.video_mode, frames_upbound=args.frames, codec_frames=args.codec_frames,
        codec_canvas=args.codec_canvas, codec_images=args.codec_images,
    )
    visual = VisualProcessor(image_processor, model.config, video_options(data_args, image_processor.patch_size))
    try:
        dataset = SupervisedDataset(args.data, tokenizer, visual, data_args,
                                    args.conv_mode or default_conv_template(model.config))
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    answers, problems = predict(model, tokenizer, dataset, args.batch_size, args.max_new_tokens)
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    _write_atomically(Path(args.out), [json.dumps({"id": k, "prediction": v}) for k, v in answers.items()])
    print(f"answered {len(answers)} records ({len(problems)} skipped); written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
