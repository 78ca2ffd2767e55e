"""OV-Encoder as a Hugging Face model, registered with the Auto classes on import."""

from transformers import AutoConfig, AutoImageProcessor, AutoModel

from .configuration_onevision_encoder import OneVisionEncoderConfig
from .image_processing_onevision_encoder import OneVisionEncoderImageProcessor
from .modeling_onevision_encoder import OneVisionEncoderModel, OneVisionEncoderOutput


def _register() -> None:
    """Make ``Auto*.from_pretrained(dir)`` load ``model_type: onevision_encoder`` natively."""
    AutoConfig.register(OneVisionEncoderConfig.model_type, OneVisionEncoderConfig, exist_ok=True)
    AutoModel.register(OneVisionEncoderConfig, OneVisionEncoderModel, exist_ok=True)
    try:  # transformers >= 5.x names processor backends
        AutoImageProcessor.register(
            OneVisionEncoderConfig, image_processor_classes={"pil": OneVisionEncoderImageProcessor}, exist_ok=True
        )
    except TypeError:
        AutoImageProcessor.register(
            OneVisionEncoderConfig, slow_image_processor_class=OneVisionEncoderImageProcessor, exist_ok=True
        )


_register()

__all__ = [
    "OneVisionEncoderConfig",
    "OneVisionEncoderImageProcessor",
    "OneVisionEncoderModel",
    "OneVisionEncoderOutput",
]
