"""``forward`` / ``generate`` with visual inputs, shared by the LLaVA causal LMs."""

from __future__ import annotations

import torch

from ..llava_arch import init_multimodal_weights


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
        **kwargs,
    ):
        if inputs_embeds is None and images is not None:
            (input_ids, position_ids, attention_mask, past_key_values, inputs_embeds, labels) = (
                self.prepare_inputs_labels_for_multimodal(
                    input_ids, position_ids, attention_mask, past_key_values, labels,
                    images, modalities, image_sizes, patch_positions,
                )
            )
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
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
