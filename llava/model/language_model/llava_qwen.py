"""LLaVA on Qwen2 (``model_type: llava_qwen``) and Qwen3 (``llava_qwen3``)."""

from __future__ import annotations

from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen2Model, Qwen3Config, Qwen3ForCausalLM, Qwen3Model

from .common import define_llava_lm

_qwen2 = define_llava_lm(
    "qwen2", "llava_qwen", "LlavaQwen", Qwen2Config, Qwen2Model, Qwen2ForCausalLM, "qwen_1_5", __name__
)
LlavaQwenConfig, LlavaQwenModel, LlavaQwenForCausalLM = _qwen2.classes

_qwen3 = define_llava_lm(
    "qwen3", "llava_qwen3", "LlavaQwen3", Qwen3Config, Qwen3Model, Qwen3ForCausalLM, "qwen3", __name__
)
LlavaQwen3Config, LlavaQwen3Model, LlavaQwen3ForCausalLM = _qwen3.classes

__all__ = [
    "LlavaQwen3Config",
    "LlavaQwen3ForCausalLM",
    "LlavaQwen3Model",
    "LlavaQwenConfig",
    "LlavaQwenForCausalLM",
    "LlavaQwenModel",
]
