"""Write the tiny SFT preset's synthetic dataset: small visual tasks whose one-word answers
depend on the pixels, plus a text-only task, with a held-out split for scoring.

    python playground/tiny_sft/make_dataset.py --out DIR [--seed S] [--train-per-task N]
        [--heldout-per-task M] [--overwrite]

The tasks, the media and the writer are ``llava.synthetic.tiny_sft`` (in the package, because the
offline lmms-eval tasks ``llava/eval/tasks/tiny_ov`` render the same media from an installed
wheel); this script is its command line. Same seed and sizes, same files byte for byte.
"""

from __future__ import annotations

import argparse
import sys
import time

from llava.synthetic.tiny_sft import DEFAULT_HELDOUT_PER_TASK, DEFAULT_TRAIN_PER_TASK, TASKS, make_dataset


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="dataset directory to create (must be empty or absent)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-per-task", type=int, default=DEFAULT_TRAIN_PER_TASK)
    parser.add_argument("--heldout-per-task", type=int, default=DEFAULT_HELDOUT_PER_TASK)
    parser.add_argument("--canvas", type=int, default=64, help="image / frame / codec canvas side (px)")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip = codec sequence_length")
    parser.add_argument("--mosaics", type=int, default=4, help="codec mosaics per clip = keep_frames_equiv")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        result = make_dataset(
            args.out,
            args.seed,
            args.train_per_task,
            args.heldout_per_task,
            canvas=args.canvas,
            frames=args.frames,
            mosaics=args.mosaics,
            overwrite=args.overwrite,
        )
    except (FileExistsError, ValueError) as error:
        parser.error(str(error))
    elapsed = time.perf_counter() - start
    counts = result["counts"]
    print(f"wrote {result['out']} in {elapsed:.1f}s (seed {args.seed})")
    for name, task in TASKS.items():
        train, heldout = counts["train"][name], counts["heldout"][name]
        answers = "/".join(task.classes)
        print(f"  {name:13s} {task.kind:6s} train {train:4d}  heldout {heldout:4d}  answers {answers}")
    print(f"  train mixture: {result['train_yaml']}\n  held-out:      {result['heldout']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
