"""LLaVA on Qwen3: ``LlavaQwen3Config`` (``model_type: llava_qwen3``) and ``LlavaQwen3ForCausalLM``."""

from __future__ import annotations

from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM, Qwen3Model

from ..llava_arch import LlavaMetaForCausalLM, LlavaMetaModel
from .common import MultimodalCausalLMMixin


class LlavaQwen3Config(Qwen3Config):
    model_type = "llava_qwen3"


class LlavaQwen3Model(LlavaMetaModel, Qwen3Model):
    config_class = LlavaQwen3Config

    def __init__(self, config: Qwen3Config):
        super().__init__(config)


class LlavaQwen3ForCausalLM(MultimodalCausalLMMixin, Qwen3ForCausalLM, LlavaMetaForCausalLM):
    config_class = LlavaQwen3Config

    def __init__(self, config: Qwen3Config):
        super(Qwen3ForCausalLM, self).__init__(config)  # Qwen3PreTrainedModel: skip building a plain Qwen3Model
        self.model = LlavaQwen3Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_model(self) -> LlavaQwen3Model:
        return self.model


AutoConfig.register("llava_qwen3", LlavaQwen3Config, exist_ok=True)
AutoModelForCausalLM.register(LlavaQwen3Config, LlavaQwen3ForCausalLM, exist_ok=True)

__all__ = ["LlavaQwen3Config", "LlavaQwen3ForCausalLM", "LlavaQwen3Model"]
