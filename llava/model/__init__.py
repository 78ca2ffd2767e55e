"""Models: the OV-Encoder vision tower and the LLaVA language models (registered on import)."""

from .language_model import LlavaQwen3Config, LlavaQwen3ForCausalLM, LlavaQwenConfig, LlavaQwenForCausalLM
from .multimodal_encoder import (
    OneVisionEncoderConfig,
    OneVisionEncoderImageProcessor,
    OneVisionEncoderModel,
    OneVisionEncoderOutput,
)

__all__ = [
    "LlavaQwen3Config",
    "LlavaQwen3ForCausalLM",
    "LlavaQwenConfig",
    "LlavaQwenForCausalLM",
    "OneVisionEncoderConfig",
    "OneVisionEncoderImageProcessor",
    "OneVisionEncoderModel",
    "OneVisionEncoderOutput",
]
