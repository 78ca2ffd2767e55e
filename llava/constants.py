"""Token constants shared by data, model and serving code (LLaVA values, kept for checkpoint interop)."""

from __future__ import annotations

IGNORE_INDEX = -100  # label value skipped by the cross-entropy loss
IMAGE_TOKEN_INDEX = -200  # placeholder id spliced into input_ids where image features go

DEFAULT_IMAGE_TOKEN = "<image>"
DEFAULT_IMAGE_PATCH_TOKEN = "<im_patch>"
DEFAULT_IM_START_TOKEN = "<im_start>"
DEFAULT_IM_END_TOKEN = "<im_end>"

__all__ = [
    "DEFAULT_IMAGE_PATCH_TOKEN",
    "DEFAULT_IMAGE_TOKEN",
    "DEFAULT_IM_END_TOKEN",
    "DEFAULT_IM_START_TOKEN",
    "IGNORE_INDEX",
    "IMAGE_TOKEN_INDEX",
]
