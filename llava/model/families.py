"""The language-model families LLaVA-OV is built on, and their registration with the Auto classes.

Each family is one file of explicit classes (``modeling_llava_qwen.py``, ``modeling_llava_qwen3.py``)
and one :class:`LlavaLM` record here: its classes, the plain LM's ``model_type`` a training run can
start from, and its default conversation template. Adding a family is a new modeling file and one
``register_llava_lm`` call below.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from .configuration_llava import LlavaQwen3Config, LlavaQwenConfig
from .modeling_llava_qwen import LlavaQwenForCausalLM, LlavaQwenModel
from .modeling_llava_qwen3 import LlavaQwen3ForCausalLM, LlavaQwen3Model


@dataclass(frozen=True)
class LlavaLM:
    """One family: its name (``qwen2``), ``model_type``, classes and default conversation template."""

    name: str
    config_class: type
    model_class: type
    causal_lm_class: type
    conv_template: str
    llm_model_type: str  # the Hugging Face LM's model_type (qwen2): a plain checkpoint of it can be built on
    modeling_file: str  # the file of its classes, copied into checkpoint folders

    @property
    def model_type(self) -> str:
        return self.config_class.model_type

    @property
    def classes(self) -> tuple[type, type, type]:
        """``(config_class, model_class, causal_lm_class)``."""
        return self.config_class, self.model_class, self.causal_lm_class


#: Registered families by name (``qwen2``, ``qwen3``, ...).
LLAVA_LMS: dict[str, LlavaLM] = {}


def register_llava_lm(lm: LlavaLM) -> LlavaLM:
    """Record ``lm`` and register its classes with ``AutoConfig``, ``AutoModelForCausalLM`` and
    ``AutoModelForImageTextToText`` (so ``from_pretrained`` finds them once ``llava`` is imported)."""
    AutoConfig.register(lm.model_type, lm.config_class, exist_ok=True)
    AutoModelForCausalLM.register(lm.config_class, lm.causal_lm_class, exist_ok=True)
    AutoModelForImageTextToText.register(lm.config_class, lm.causal_lm_class, exist_ok=True)
    LLAVA_LMS[lm.name] = lm
    return lm


def llava_lm_for_model_type(model_type: str | None) -> LlavaLM | None:
    """The family whose LLaVA ``model_type`` is ``model_type`` (e.g. ``llava_qwen``), or None."""
    return next((lm for lm in LLAVA_LMS.values() if lm.model_type == model_type), None)


def llava_lm_for_llm(model_type: str | None) -> LlavaLM | None:
    """The family built on the plain language model ``model_type`` (e.g. ``qwen2``), or None."""
    return next((lm for lm in LLAVA_LMS.values() if lm.llm_model_type == model_type), None)


register_llava_lm(LlavaLM("qwen2", LlavaQwenConfig, LlavaQwenModel, LlavaQwenForCausalLM, "qwen_1_5", "qwen2",
                          "modeling_llava_qwen.py"))
register_llava_lm(LlavaLM("qwen3", LlavaQwen3Config, LlavaQwen3Model, LlavaQwen3ForCausalLM, "qwen3", "qwen3",
                          "modeling_llava_qwen3.py"))

__all__ = ["LLAVA_LMS", "LlavaLM", "llava_lm_for_llm", "llava_lm_for_model_type", "register_llava_lm"]
