from .common import LLAVA_LMS, LlavaLM, define_llava_lm, llava_lm_for_llm, llava_lm_for_model_type
from .llava_qwen import (
    LlavaQwen3Config,
    LlavaQwen3ForCausalLM,
    LlavaQwen3Model,
    LlavaQwenConfig,
    LlavaQwenForCausalLM,
    LlavaQwenModel,
)

__all__ = [
    "LLAVA_LMS",
    "LlavaLM",
    "LlavaQwen3Config",
    "LlavaQwen3ForCausalLM",
    "LlavaQwen3Model",
    "LlavaQwenConfig",
    "LlavaQwenForCausalLM",
    "LlavaQwenModel",
    "define_llava_lm",
    "llava_lm_for_llm",
    "llava_lm_for_model_type",
]
