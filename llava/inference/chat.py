"""A multi-turn chat with a loaded LLaVA-OV model: what the chat CLI, the demo and the server share.

The prompt is rendered by the conversation template and tokenised exactly as training
tokenises it (``llava.processing.prompts.tokenize_prompt``); the visual inputs come from
``llava.processing.media``. Answers can stream through any ``transformers`` streamer.
"""

from __future__ import annotations

import torch

from ..constants import DEFAULT_IMAGE_TOKEN
from ..model.families import llava_lm_for_model_type
from ..processing.conversation import conv_templates, get_conv_template
from ..processing.media import VisualInputs
from ..processing.prompts import tokenize_prompt
from .generation import StopRule, expand_prompt, sampling_kwargs


def default_conv_template(config) -> str:
    """The template the checkpoint was trained with (``conv_template``, which ``llava.train`` records),
    else its language-model family's (``qwen_1_5`` if unknown)."""
    trained = getattr(config, "conv_template", None)
    if trained in conv_templates:
        return trained
    lm = llava_lm_for_model_type(getattr(config, "model_type", None))
    return lm.conv_template if lm is not None else "qwen_1_5"


class ChatSession:
    """A conversation with ``model`` about fixed visual inputs (given with the first question)."""

    def __init__(
        self,
        tokenizer,
        model,
        visual: VisualInputs | None = None,
        conv_template: str | None = None,
        temperature: float = 0.2,
        max_new_tokens: int = 512,
    ):
        self.tokenizer, self.model = tokenizer, model
        self.visual = (visual or VisualInputs()).to(model.device)
        self.conv = get_conv_template(conv_template or default_conv_template(model.config))
        self.temperature, self.max_new_tokens = temperature, max_new_tokens
        self.turns = 0

    def ask(self, question: str, streamer=None) -> str:
        """Answer ``question``; ``streamer`` (e.g. ``TextStreamer``) receives the tokens as they come.

        The question may not contain the ``<image>`` placeholder (the session places the visuals' own):
        ``ValueError``, and the conversation is unchanged."""
        if DEFAULT_IMAGE_TOKEN in question:
            raise ValueError(f"a question may not contain {DEFAULT_IMAGE_TOKEN}: the media given with the "
                             "chat are placed for you")
        if self.turns == 0 and len(self.visual):
            question = self.visual.prompt_lead() + question
        self.conv.append_message(self.conv.roles[0], question)
        self.conv.append_message(self.conv.roles[1], None)
        input_ids = expand_prompt(self.model, tokenize_prompt(self.conv, self.tokenizer), self.visual)
        input_ids = input_ids[None].to(self.model.device)
        stop = StopRule.of(self.conv, self.tokenizer)  # the template's stop string
        kwargs = dict(
            max_new_tokens=self.max_new_tokens,
            streamer=streamer,
            pad_token_id=self.tokenizer.pad_token_id,
            **stop.generate_kwargs(self.tokenizer, input_ids),
            **self.visual.model_kwargs(),  # every turn re-sends the history, placeholders included
        )
        kwargs.update(sampling_kwargs(self.temperature))
        with torch.inference_mode():
            output = self.model.generate(input_ids, **kwargs)
        new_tokens = output[0, input_ids.shape[1]:]
        answer = stop.cut(self.tokenizer.decode(new_tokens, skip_special_tokens=True)).strip()
        self.conv.messages[-1][-1] = answer
        self.turns += 1
        return answer


__all__ = ["ChatSession", "default_conv_template"]
