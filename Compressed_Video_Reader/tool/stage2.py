#!/usr/bin/env python3
"""Stage 2: pack Stage-1 selections into mosaics, positions_thw.npy and a training JSONL.

Example::

    python Compressed_Video_Reader/tool/stage2.py --mode pack --input_dataset videos.jsonl \
        --out_jsonl train_codec.jsonl --visidx_root stage1_out --out_image_root stage2_out \
        --num_images 8 --square_size 576 --T 64 --patch 16 --write_positions --first_full

Implementation: :mod:`cv_reader.stage2`.
"""

import os
import sys

try:
    import cv_reader  # noqa: F401
except ImportError:  # running from a checkout without installing the project
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cv_reader.stage2 import main

if __name__ == "__main__":
    sys.exit(main())
