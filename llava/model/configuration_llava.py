"""The multimodal part of a LLaVA config: every ``mm_*`` / image key with its default, in one place.

Key names are LLaVA-NeXT's, so its checkpoints, scripts and training flags keep working. The
mixin is a dataclass; the LLaVA config classes put it beside the language model's config
(``LlavaQwenConfig(LlavaConfigMixin, Qwen2Config)``), so a config that lacks a key — an
older checkpoint, one trained by the upstream code — loads with the default below, and
model code reads ``config.mm_vision_select_layer`` instead of repeating the default.
Keys the table does not know (other upstream options) are kept as plain attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(kw_only=True, repr=False)
class LlavaConfigMixin:
    # ---- vision tower
    mm_vision_tower: str | None = None
    """OV-Encoder checkpoint: a local directory or a hub id. None = text-only model."""
    vision_config: dict | None = None
    """The encoder's config, embedded so the checkpoint is self-contained. Upstream checkpoints
    have none: it is then read from ``mm_vision_tower`` (local directory or Hugging Face cache)."""
    vision_attn_implementation: str | None = None
    """Attention backend of the tower (``sdpa``, ``eager``, ``flash_attention_2``); None = encoder default."""
    mm_vision_select_layer: int = -2
    """Which ``hidden_states`` entry of the encoder feeds the projector."""
    mm_vision_select_feature: str = "patch"
    # ---- projector
    mm_projector_type: str = "linear"
    """``linear``, ``mlp{N}x_gelu`` or ``spatial_merge``."""
    mm_hidden_size: int | None = None
    mm_spatial_merge_size: int = 2
    use_mm_proj: bool | None = None
    # ---- how visual tokens are arranged
    mm_patch_merge_type: str = "flat"
    """``flat``, or ``spatial_unpad`` (LLaVA-NeXT: unpadded anyres grid + a learned newline per row)."""
    mm_newline_position: str = "one_token"
    mm_spatial_pool_stride: int | None = None
    """2D pooling of each video frame's feature grid (None or 1 = none)."""
    mm_spatial_pool_mode: str = "average"
    # ---- images
    image_aspect_ratio: str | None = None
    """``anyres`` / ``anyres_max_N`` (tiles), ``pad`` (square), anything else = native resolution."""
    image_grid_pinpoints: Any = None
    """anyres candidate resolutions, ``(width, height)`` pairs or a ``"(1x1),...,(3x3)"`` range."""
    image_tile_size: int | None = None
    """anyres tile side when the image processor has no fixed size (default 448)."""
    # ---- training
    mm_tunable_parts: str | None = None
    """Comma list of ``mm_vision_tower``, ``mm_mlp_adapter``, ``mm_language_model``."""
    mm_use_im_start_end: bool = False
    mm_use_im_patch_token: bool = False
    tokenizer_model_max_length: int | None = None
    """Spliced sequences are cut to this many tokens."""
    tokenizer_padding_side: str = "right"
    """Side the model pads a spliced batch on (``left`` for batched generation)."""


__all__ = ["LlavaConfigMixin"]
