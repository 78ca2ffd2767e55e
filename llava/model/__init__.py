"""Models: the OV-Encoder vision tower (and, later, the LLaVA language models)."""

from .multimodal_encoder import (
    OneVisionEncoderConfig,
    OneVisionEncoderImageProcessor,
    OneVisionEncoderModel,
    OneVisionEncoderOutput,
)

__all__ = [
    "OneVisionEncoderConfig",
    "OneVisionEncoderImageProcessor",
    "OneVisionEncoderModel",
    "OneVisionEncoderOutput",
]
