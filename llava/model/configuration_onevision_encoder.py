"""Configuration of the OneVision-Encoder (OV-Encoder) vision transformer.

Field names and defaults follow the published checkpoints' ``config.json``
(``model_type: onevision_encoder``) so those files load unchanged.
"""

from __future__ import annotations

from transformers import PretrainedConfig

LAYER_NORM_TYPES = ("layer_norm", "rms_norm")


class OneVisionEncoderConfig(PretrainedConfig):
    r"""Configuration for [`OneVisionEncoderModel`].

    Args:
        hidden_size: width of the transformer (D).
        intermediate_size: width of the MLP hidden layer.
        num_hidden_layers: number of pre-norm transformer blocks.
        num_attention_heads: attention heads; ``hidden_size / num_attention_heads`` must be a
            multiple of 32 so the rotary half splits into T:H:W = 4:6:6 channel groups.
        num_channels: input channels (3 for RGB).
        image_size: pre-training resolution; informative only (inputs may be any multiple of
            ``patch_size``).
        patch_size: side of the square patches (14 or 16 in published checkpoints).
        hidden_act: MLP activation (``"gelu"`` is the exact erf form).
        layer_norm_eps: epsilon of every normalisation layer.
        layer_norm_type: ``"layer_norm"`` or ``"rms_norm"``.
        attention_dropout: dropout on attention probabilities during training.
        initializer_range: std of the normal initialiser for fresh weights.
        rope_theta: base of the rotary frequencies.
        rope_temporal_size: length of the temporal RoPE grid used for video input when no
            explicit positions are given; ``None`` uses the real frame count.
        use_head: whether the model has ``layernorm_post`` and the attention-pooling head.
    """

    model_type = "onevision_encoder"

    def __init__(
        self,
        hidden_size: int = 1024,
        intermediate_size: int = 4096,
        num_hidden_layers: int = 24,
        num_attention_heads: int = 16,
        num_channels: int = 3,
        image_size: int = 448,
        patch_size: int = 14,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-6,
        layer_norm_type: str = "layer_norm",
        attention_dropout: float = 0.0,
        initializer_range: float = 0.02,
        rope_theta: float = 10000.0,
        rope_temporal_size: int | None = 64,
        use_head: bool = True,
        **kwargs,
    ):
        if layer_norm_type not in LAYER_NORM_TYPES:
            raise ValueError(f"layer_norm_type must be one of {LAYER_NORM_TYPES}, got {layer_norm_type!r}")
        if hidden_size % num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be divisible by num_attention_heads ({num_attention_heads})"
            )
        head_dim = hidden_size // num_attention_heads
        if head_dim % 32 != 0:
            raise ValueError(
                f"head_dim = hidden_size / num_attention_heads = {head_dim} must be a multiple of 32 "
                "for the 4:6:6 rotary split"
            )
        if rope_temporal_size is not None and rope_temporal_size < 1:
            raise ValueError(f"rope_temporal_size must be a positive int or None, got {rope_temporal_size}")
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_channels = num_channels
        self.image_size = image_size
        self.patch_size = patch_size
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.layer_norm_type = layer_norm_type
        self.attention_dropout = attention_dropout
        self.initializer_range = initializer_range
        self.rope_theta = rope_theta
        self.rope_temporal_size = rope_temporal_size
        self.use_head = use_head
        super().__init__(**kwargs)
