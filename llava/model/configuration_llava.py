"""LLaVA-OV configs: the language model's config plus every ``mm_*`` / image key, validated when built.

Key names are LLaVA-NeXT's, so its checkpoints, scripts and training flags keep working. The
multimodal keys are one dataclass, :class:`LlavaConfigMixin`; each language-model family's config
puts it beside the LM's own (``LlavaQwenConfig(LlavaConfigMixin, Qwen2Config)``), so a config that
lacks a key (an older checkpoint, one trained by the upstream code) loads with the default below,
and model code reads ``config.mm_vision_select_layer`` instead of repeating the default. Keys the
table does not know (other upstream options) are kept as plain attributes. A bad value is refused
when the config is built or a key is set (``validate_multimodal``), naming the key and the choices.

Self-contained (transformers only): the file travels inside checkpoint folders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from transformers import Qwen2Config, Qwen3Config

IGNORE_INDEX = -100
"""Label value the loss skips."""
IMAGE_TOKEN_INDEX = -200
"""LLaVA's in-memory placeholder id: one per ``<image>`` of a training sample, replaced by its visual tokens."""

PROJECTOR_TYPES = ("linear", "mlp{N}x_gelu", "spatial_merge")
CHOICES = {
    "mm_vision_select_feature": ("patch", "cls_patch"),
    "mm_patch_merge_type": ("flat", "spatial", "spatial_unpad"),
    "mm_newline_position": ("one_token", "no_token", "grid", "frame"),
    "mm_spatial_pool_mode": ("average", "max", "bilinear"),
    "tokenizer_padding_side": ("left", "right"),
}


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
    """Samples are cut to this many tokens once expanded, never inside their visual tokens (``llava.batching``),
    and packed rows hold at most this many."""
    tokenizer_padding_side: str = "right"
    """LLaVA-NeXT's key, kept for its checkpoints: batches are padded by ``llava.batching`` (right for training,
    left for generation), not by the model."""
    # ---- prompts
    image_token_id: int | None = None
    """The token a processor repeats once per visual token (``<|image_pad|>``); the model scatters the
    visual features into those positions. None: the checkpoint predates the processor (see the
    re-save command in docs/model.md)."""
    conv_template: str | None = None
    """The conversation template the model was trained with (``qwen_1_5``, ``qwen3``, ...)."""

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self.validate_multimodal()

    def __setattr__(self, key: str, value: Any) -> None:
        if key in _KEY_CHECKS:  # one key alone; how keys combine is checked when the config is built
            _KEY_CHECKS[key](key, value)
        super().__setattr__(key, value)

    def validate_multimodal(self) -> None:
        """Refuse a multimodal option no code path understands, naming the key and the choices."""
        for key, check in _KEY_CHECKS.items():
            check(key, getattr(self, key, None))
        aspect = self.image_aspect_ratio or ""
        if aspect.startswith("anyres") and not self.image_grid_pinpoints:
            raise ValueError(f"image_aspect_ratio={aspect!r} needs image_grid_pinpoints (the candidate tile grids)")
        if self.mm_vision_tower is None and self.vision_config is not None:
            raise ValueError("vision_config is set but mm_vision_tower is None: name the tower the config describes")


def _check_choice(key: str, value: Any) -> None:
    if value is not None and value not in CHOICES[key]:
        raise ValueError(f"{key}={value!r} is not one of {CHOICES[key]}")


def _check_projector(key: str, value: Any) -> None:
    if value not in ("linear", "spatial_merge") and not re.fullmatch(r"mlp[1-9]\d*x_gelu", str(value)):
        raise ValueError(f"{key}={value!r} is not one of {PROJECTOR_TYPES}")


def _check_positive(key: str, value: Any) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{key}={value!r} must be a positive int")


def _check_aspect(key: str, value: Any) -> None:
    if (value or "").startswith("anyres") and not re.fullmatch(r"anyres(_max_[1-9]\d*)?", value):
        raise ValueError(f"{key}={value!r}: use 'anyres', 'anyres_max_N', 'pad' or 'native'")


_KEY_CHECKS = {
    **dict.fromkeys(CHOICES, _check_choice),
    "mm_projector_type": _check_projector,
    "mm_spatial_merge_size": _check_positive,
    "mm_spatial_pool_stride": _check_positive,
    "image_aspect_ratio": _check_aspect,
}


class LlavaQwenConfig(LlavaConfigMixin, Qwen2Config):
    """LLaVA-OV on a Qwen2 / Qwen2.5 language model (``model_type: llava_qwen``, LLaVA-NeXT's name)."""

    model_type = "llava_qwen"


class LlavaQwen3Config(LlavaConfigMixin, Qwen3Config):
    """LLaVA-OV on a Qwen3 language model (``model_type: llava_qwen3``)."""

    model_type = "llava_qwen3"


__all__ = ["IGNORE_INDEX", "IMAGE_TOKEN_INDEX", "LlavaConfigMixin", "LlavaQwen3Config", "LlavaQwenConfig"]
