"""Write the flash-events dataset: videos in which a brief coloured square decides the answer.

    python playground/flash_events/make_dataset.py --out DIR [--seed S] [--train N] [--test M]
        [--frames 128] [--size 64] [--overwrite]

The videos, questions and writer are ``llava.synthetic.flash_events`` (in the package, because the
offline lmms-eval tasks ``llava/eval/tasks/flash_events`` render its test split from an installed
wheel); this script is its command line. Layout and balance: README.md and that module.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from llava.synthetic.flash_events import (
    DEFAULT_FRAMES,
    DEFAULT_SEED,
    DEFAULT_SIZE,
    DEFAULT_TEST,
    DEFAULT_TRAIN,
    make_dataset,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="dataset directory to create (must be empty or absent)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--train", type=int, default=DEFAULT_TRAIN, help="train videos (two records each)")
    parser.add_argument("--test", type=int, default=DEFAULT_TEST, help="test videos (two records each)")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES)
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="frame side in px (multiple of 16)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        info = make_dataset(
            args.out, args.seed, args.train, args.test, args.frames, args.size, overwrite=args.overwrite
        )
    except (FileExistsError, ValueError) as error:
        parser.error(str(error))
    counts = info["counts"]
    print(
        f"wrote {Path(args.out).resolve()} in {time.perf_counter() - start:.1f}s (seed {args.seed}): "
        f"{counts['train']} train + {counts['test']} test videos of {args.frames} frames at {args.size} px, "
        "two questions each"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
