"""LLaVA on Qwen2: ``LlavaQwenConfig`` (``model_type: llava_qwen``) and ``LlavaQwenForCausalLM``."""

from __future__ import annotations

from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen2Model

from ..llava_arch import LlavaMetaForCausalLM, LlavaMetaModel
from .common import MultimodalCausalLMMixin


class LlavaQwenConfig(Qwen2Config):
    model_type = "llava_qwen"


class LlavaQwenModel(LlavaMetaModel, Qwen2Model):
    config_class = LlavaQwenConfig

    def __init__(self, config: Qwen2Config):
        super().__init__(config)


class LlavaQwenForCausalLM(MultimodalCausalLMMixin, Qwen2ForCausalLM, LlavaMetaForCausalLM):
    config_class = LlavaQwenConfig

    def __init__(self, config: Qwen2Config):
        super(Qwen2ForCausalLM, self).__init__(config)  # Qwen2PreTrainedModel: skip building a plain Qwen2Model
        self.model = LlavaQwenModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_model(self) -> LlavaQwenModel:
        return self.model


AutoConfig.register("llava_qwen", LlavaQwenConfig, exist_ok=True)
AutoModelForCausalLM.register(LlavaQwenConfig, LlavaQwenForCausalLM, exist_ok=True)

__all__ = ["LlavaQwenConfig", "LlavaQwenForCausalLM", "LlavaQwenModel"]
