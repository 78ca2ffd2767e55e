#!/usr/bin/env python3
"""Stage 1: codec-style patch selection for a video dataset (upstream-compatible flags).

Example::

    python Compressed_Video_Reader/tool/stage1.py --dataset_path videos.jsonl --out_root stage1_out \
        --sequence_length 64 --keep_frames_equiv 8 --square_size 576 --patch_size 16 \
        --keep_first_full_frame --padding_policy zero --num_workers 8

Implementation: :mod:`cv_reader.stage1`.
"""

import os
import sys

try:
    import cv_reader  # noqa: F401
except ImportError:  # running from a checkout without installing the project
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cv_reader.stage1 import main

if __name__ == "__main__":
    sys.exit(main())
