"""LLaVA-OV on a Qwen2 / Qwen2.5 language model (``model_type: llava_qwen``).

The Qwen2 base model gains the vision tower, the projector and the learned newline
(``LlavaMetaModel``); the causal LM gains visual inputs in ``forward`` and ``generate``
(``MultimodalCausalLMMixin``, ``LlavaMetaForCausalLM``): see ``modeling_llava.py``.
"""

from __future__ import annotations

from torch import nn
from transformers import Qwen2ForCausalLM, Qwen2Model

from .configuration_llava import LlavaQwenConfig
from .modeling_llava import LlavaMetaForCausalLM, LlavaMetaModel, MultimodalCausalLMMixin


class LlavaQwenModel(LlavaMetaModel, Qwen2Model):
    """Qwen2's decoder with the OV-Encoder tower (``vision_tower``), ``mm_projector`` and ``image_newline``."""

    config_class = LlavaQwenConfig


class LlavaQwenForCausalLM(MultimodalCausalLMMixin, Qwen2ForCausalLM, LlavaMetaForCausalLM):
    """Qwen2's causal LM over ``LlavaQwenModel``: state-dict keys ``model.*`` and ``lm_head.*`` as LLaVA-NeXT's."""

    config_class = LlavaQwenConfig

    def __init__(self, config: LlavaQwenConfig):
        super(Qwen2ForCausalLM, self).__init__(config)  # the PreTrainedModel's: do not build a plain Qwen2Model
        self.model = LlavaQwenModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_model(self) -> LlavaQwenModel:
        return self.model


__all__ = ["LlavaQwenForCausalLM", "LlavaQwenModel"]
