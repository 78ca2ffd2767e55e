"""LLaVA-OV on a Qwen3 language model (``model_type: llava_qwen3``).

The Qwen3 base model gains the vision tower, the projector and the learned newline
(``LlavaMetaModel``); the causal LM gains visual inputs in ``forward`` and ``generate``
(``MultimodalCausalLMMixin``, ``LlavaMetaForCausalLM``): see ``modeling_llava.py``.
"""

from __future__ import annotations

from torch import nn
from transformers import Qwen3ForCausalLM, Qwen3Model

from .configuration_llava import LlavaQwen3Config
from .modeling_llava import LlavaMetaForCausalLM, LlavaMetaModel, MultimodalCausalLMMixin


class LlavaQwen3Model(LlavaMetaModel, Qwen3Model):
    """Qwen3's decoder with the OV-Encoder tower (``vision_tower``), ``mm_projector`` and ``image_newline``."""

    config_class = LlavaQwen3Config


class LlavaQwen3ForCausalLM(MultimodalCausalLMMixin, Qwen3ForCausalLM, LlavaMetaForCausalLM):
    """Qwen3's causal LM over ``LlavaQwen3Model``: state-dict keys ``model.*`` and ``lm_head.*`` as LLaVA-NeXT's."""

    config_class = LlavaQwen3Config

    def __init__(self, config: LlavaQwen3Config):
        super(Qwen3ForCausalLM, self).__init__(config)  # the PreTrainedModel's: do not build a plain Qwen3Model
        self.model = LlavaQwen3Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_model(self) -> LlavaQwen3Model:
        return self.model


__all__ = ["LlavaQwen3ForCausalLM", "LlavaQwen3Model"]
