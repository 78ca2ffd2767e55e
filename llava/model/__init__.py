"""Models: the OV-Encoder vision tower and the LLaVA-OV language models (registered with the Auto classes on import).

The files named ``configuration_*``, ``modeling_*``, ``image_processing_*``, ``processing_*`` and
``video_*`` are self-contained (only relative imports among themselves): they are the code a
checkpoint folder carries (``llava.model.folder``). The rest of this package is the project's own:
``families`` (the registered LM families), ``builder`` (loading every checkpoint kind), ``weights``,
``tiny`` (tiny random checkpoints), ``folder`` (saving self-contained folders).
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel

from .configuration_llava import LlavaQwen3Config, LlavaQwenConfig
from .configuration_onevision_encoder import OneVisionEncoderConfig
from .families import LLAVA_LMS, LlavaLM, llava_lm_for_llm, llava_lm_for_model_type
from .image_processing_onevision_encoder import OneVisionEncoderImageProcessor
from .modeling_llava_qwen import LlavaQwenForCausalLM, LlavaQwenModel
from .modeling_llava_qwen3 import LlavaQwen3ForCausalLM, LlavaQwen3Model
from .modeling_onevision_encoder import OneVisionEncoderModel, OneVisionEncoderOutput


def _register_encoder() -> None:
    """Make ``Auto*.from_pretrained(dir)`` load ``model_type: onevision_encoder`` natively."""
    AutoConfig.register(OneVisionEncoderConfig.model_type, OneVisionEncoderConfig, exist_ok=True)
    AutoModel.register(OneVisionEncoderConfig, OneVisionEncoderModel, exist_ok=True)
    AutoImageProcessor.register(
        OneVisionEncoderConfig, image_processor_classes={"pil": OneVisionEncoderImageProcessor}, exist_ok=True
    )


_register_encoder()

__all__ = [
    "LLAVA_LMS",
    "LlavaLM",
    "LlavaQwen3Config",
    "LlavaQwen3ForCausalLM",
    "LlavaQwen3Model",
    "LlavaQwenConfig",
    "LlavaQwenForCausalLM",
    "LlavaQwenModel",
    "OneVisionEncoderConfig",
    "OneVisionEncoderImageProcessor",
    "OneVisionEncoderModel",
    "OneVisionEncoderOutput",
    "llava_lm_for_llm",
    "llava_lm_for_model_type",
]
