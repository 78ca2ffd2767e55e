"""LLaVA on any Hugging Face causal-LM family, from one definition.

:func:`define_llava_lm` makes the three classes of one family — the config (the LM's config
plus the ``mm_*`` keys of :class:`LlavaConfigMixin`), the base model (the LM's base model plus
the vision tower and projector of :class:`LlavaMetaModel`) and the causal LM (``forward`` /
``generate`` with visual inputs) — registers them with ``AutoConfig`` /
``AutoModelForCausalLM`` and records the family in :data:`LLAVA_LMS`. Adding a family is one
call (see ``llava_qwen.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.modeling_outputs import CausalLMOutputWithPast

from ...constants import IGNORE_INDEX

from ..configuration_llava import LlavaConfigMixin
from ..llava_arch import LlavaMetaForCausalLM, LlavaMetaModel, init_multimodal_weights


@dataclass
class LlavaCausalLMOutput(CausalLMOutputWithPast):
    """The training output: the loss, no logits, and ``num_tokens`` (tokens the LM processed, padding excluded)."""

    num_tokens: torch.Tensor | None = None


class MultimodalCausalLMMixin:
    """Put before the Hugging Face ``*ForCausalLM`` class in the bases.

    ``forward(..., images, image_sizes, modalities, patch_positions)`` splices the visual
    features in place of the ``<image>`` placeholders; ``generate(inputs, images=...)``
    does the same for the prompt, then decodes with the usual generation kwargs (KV
    cache, sampling, stopping criteria, streamers). Like any decoder-only model fed
    ``inputs_embeds``, ``generate`` returns only the new tokens.
    """

    def _init_weights(self, module):
        super()._init_weights(module)
        init_multimodal_weights(module, self.config.initializer_range)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        images=None,
        image_sizes=None,
        modalities=None,
        patch_positions=None,
        logits_to_keep: int | torch.Tensor = 0,
        pack_sequences: bool = False,
        **kwargs,
    ):
        """Causal-LM forward with visual inputs spliced in at the ``<image>`` placeholders.

        ``pack_sequences=True`` packs the samples of the batch into rows of at most
        ``tokenizer_model_max_length`` tokens, each sample attending only to itself (training).
        In training mode with ``labels`` the LM head runs only on the positions that carry a
        label and ``logits`` is None: a codec video's 10,368 visual tokens and the prompt never
        get full-vocabulary logits. The loss is the same as the full computation (the mean over
        supervised tokens, or their sum / ``num_items_in_batch`` when the Trainer passes it).
        """
        if labels is not None and self.training and inputs_embeds is None:
            sequences, sequence_labels = self.splice_visual_tokens(
                input_ids, attention_mask, labels, images, modalities, image_sizes, patch_positions
            )
            if pack_sequences:
                position_ids, attention_mask, _, inputs_embeds, labels = self._pack_rows(sequences, sequence_labels, True)
            else:
                position_ids, attention_mask, _, inputs_embeds, labels = self._pad_batch(
                    sequences, sequence_labels, position_ids, attention_mask, None, True
                )
            num_tokens = sum(s.shape[0] for s in sequences)
            return self._supervised_forward(attention_mask, position_ids, inputs_embeds, labels, num_tokens, kwargs)
        if inputs_embeds is None and (images is not None or pack_sequences):
            (input_ids, position_ids, attention_mask, past_key_values, inputs_embeds, labels) = (
                self.prepare_inputs_labels_for_multimodal(
                    input_ids, position_ids, attention_mask, past_key_values, labels,
                    images, modalities, image_sizes, patch_positions, pack_sequences=pack_sequences,
                )
            )
        if past_key_values is not None:  # newer transformers call the cache differently: pass it only if set
            kwargs["past_key_values"] = past_key_values
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def _supervised_forward(self, attention_mask, position_ids, inputs_embeds, labels, num_tokens, kwargs):
        """Hidden states for every position, the LM head and cross-entropy only where a label is."""
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        kwargs.pop("past_key_values", None)
        outputs = self.get_model()(
            attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds, use_cache=False,
            **kwargs,
        )
        hidden = outputs.last_hidden_state[:, :-1]
        targets = labels[:, 1:].to(hidden.device)
        supervised = targets != IGNORE_INDEX
        logits = self.lm_head(hidden[supervised]).float()
        loss = F.cross_entropy(logits, targets[supervised], reduction="sum")
        if num_items_in_batch is not None:
            loss = loss / torch.as_tensor(num_items_in_batch, device=loss.device)
        elif supervised.any():
            loss = loss / supervised.sum()
        return LlavaCausalLMOutput(
            loss=loss, logits=None, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
            num_tokens=torch.tensor(num_tokens),
        )

    @torch.no_grad()
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        images=None,
        image_sizes=None,
        modalities=None,
        patch_positions=None,
        **kwargs,
    ):
        if "inputs_embeds" in kwargs:
            raise ValueError("pass token ids as `inputs` (with images=...), not inputs_embeds")
        if inputs is None:
            raise ValueError("generate needs the prompt token ids as `inputs`")
        position_ids = kwargs.pop("position_ids", None)
        attention_mask = kwargs.pop("attention_mask", None)
        if images is not None:
            _, position_ids, attention_mask, _, inputs_embeds, _ = self.prepare_inputs_labels_for_multimodal(
                inputs, position_ids, attention_mask, None, None, images, modalities, image_sizes, patch_positions
            )
        else:
            inputs_embeds = self.get_model().embed_tokens(inputs)
        return super().generate(
            position_ids=position_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs
        )


@dataclass(frozen=True)
class LlavaLM:
    """One registered family: its name (``qwen2``), ``model_type``, classes and chat template."""

    name: str
    model_type: str
    config_class: type
    model_class: type
    causal_lm_class: type
    conv_template: str
    llm_model_type: str  # the Hugging Face LM's model_type (qwen2): a plain checkpoint of it can be built on

    @property
    def classes(self) -> tuple[type, type, type]:
        """``(config_class, model_class, causal_lm_class)``."""
        return self.config_class, self.model_class, self.causal_lm_class


#: Registered families by name (``qwen2``, ``qwen3``, ...).
LLAVA_LMS: dict[str, LlavaLM] = {}


def llava_lm_for_model_type(model_type: str | None) -> LlavaLM | None:
    """The family whose LLaVA ``model_type`` is ``model_type`` (e.g. ``llava_qwen``), or None."""
    return next((lm for lm in LLAVA_LMS.values() if lm.model_type == model_type), None)


def llava_lm_for_llm(model_type: str | None) -> LlavaLM | None:
    """The family built on the plain language model ``model_type`` (e.g. ``qwen2``), or None."""
    return next((lm for lm in LLAVA_LMS.values() if lm.llm_model_type == model_type), None)


def define_llava_lm(
    name: str,
    model_type: str,
    class_prefix: str,
    config_class: type,
    model_class: type,
    causal_lm_class: type,
    conv_template: str,
    module: str,
) -> LlavaLM:
    """Make, register and return the LLaVA classes of one Hugging Face LM family.

    ``config_class`` / ``model_class`` / ``causal_lm_class`` are the family's Hugging Face
    classes (``Qwen2Config``, ``Qwen2Model``, ``Qwen2ForCausalLM``); the new classes are named
    ``{class_prefix}Config``, ``{class_prefix}Model``, ``{class_prefix}ForCausalLM`` and live
    in ``module`` (assign them there under those names so they pickle and import).
    ``conv_template`` is the family's default conversation template.
    """

    class Config(LlavaConfigMixin, config_class):
        pass

    Config.model_type = model_type

    class Model(LlavaMetaModel, model_class):
        config_class = Config

    class ForCausalLM(MultimodalCausalLMMixin, causal_lm_class, LlavaMetaForCausalLM):
        config_class = Config

        def __init__(self, config):
            super(causal_lm_class, self).__init__(config)  # the PreTrainedModel: skip building a plain LM
            self.model = Model(config)
            self.vocab_size = config.vocab_size
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
            self.post_init()

        def get_model(self) -> LlavaMetaModel:
            return self.model

    for cls, suffix in ((Config, "Config"), (Model, "Model"), (ForCausalLM, "ForCausalLM")):
        cls.__name__ = cls.__qualname__ = class_prefix + suffix
        cls.__module__ = module
    AutoConfig.register(model_type, Config, exist_ok=True)
    AutoModelForCausalLM.register(Config, ForCausalLM, exist_ok=True)
    lm = LlavaLM(name, model_type, Config, Model, ForCausalLM, conv_template, config_class.model_type)
    LLAVA_LMS[name] = lm
    return lm
