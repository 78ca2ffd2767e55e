"""LLaVA-NeXT's entry name: ``llava/train/train_mem.py`` runs :mod:`llava.train.train` (same flags)."""

import sys

from llava.train.train import main

if __name__ == "__main__":
    sys.exit(main())
