"""Batched inference on a loaded LLaVA-OV model: answers to many prompts, log-likelihoods of continuations,
and where an answer ends.

Used by the held-out predictor (``llava.eval.predict``) and the lmms-eval model
(``llava.eval.lmms_model``). A prompt is its token ids (``llava.processing.prompts.tokenize_prompt``) and its
visual inputs (``llava.processing.media``); a batch left-pads the ids and concatenates the visual inputs, so
every sample of a batch gets what it would get alone. ``StopRule`` is the one place that decides where a
generated answer ends, for these two and for the chat session and the server too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import StoppingCriteria, StoppingCriteriaList

from ..batching import Example, collate, expand
from ..model.processing_llava import VisualLayout
from ..processing.conversation import Conversation, get_conv_template
from ..processing.media import VisualInputs

Prompt = tuple[torch.Tensor, VisualInputs]

#: Temperatures below this sample greedily: dividing the logits by a smaller one overflows them to
#: ``inf`` (vLLM draws the line at the same place).
GREEDY_BELOW = 1e-5


def sampling_kwargs(temperature: float, top_p: float | None = None) -> dict:
    """``generate`` arguments for ``temperature`` (and ``top_p``): greedy below :data:`GREEDY_BELOW`."""
    if temperature < GREEDY_BELOW:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, **({} if top_p is None else {"top_p": top_p})}


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stop a row once its generated text ends with (token ids) or contains (decoded tail) a keyword.

    ``input_ids`` is the prompt as it appears at the start of ``generate``'s output: pass the
    prompt ids when generating from ``input_ids``; pass ``None`` when generating from
    ``inputs_embeds`` (LLaVA), whose output holds only new tokens.
    """

    def __init__(self, keywords: Sequence[str], tokenizer, input_ids: torch.Tensor | None):
        if isinstance(keywords, str):
            keywords = [keywords]
        if not keywords or any(not isinstance(k, str) or not k for k in keywords):
            raise ValueError(f"keywords must be non-empty strings, got {keywords!r}")
        self.keywords = list(keywords)
        self.tokenizer = tokenizer
        self.keyword_ids = [
            torch.tensor(tokenizer(k, add_special_tokens=False).input_ids) for k in self.keywords
        ]
        self.start_len = 0 if input_ids is None else int(input_ids.shape[-1])
        self.tail_tokens = max(len(ids) for ids in self.keyword_ids) + 2

    def _ends_with_keyword_ids(self, generated: torch.Tensor) -> torch.Tensor:
        hit = torch.zeros(generated.shape[0], dtype=torch.bool, device=generated.device)
        for ids in self.keyword_ids:
            if 0 < ids.numel() <= generated.shape[1]:
                hit |= (generated[:, -ids.numel() :] == ids.to(generated.device)).all(dim=1)
        return hit

    def _tail_contains_keyword(self, generated: torch.Tensor) -> torch.Tensor:
        tails = self.tokenizer.batch_decode(generated[:, -self.tail_tokens :], skip_special_tokens=False)
        return torch.tensor(
            [any(k in tail for k in self.keywords) for tail in tails], device=generated.device
        )

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None = None, **kwargs
    ) -> torch.BoolTensor:
        generated = input_ids[:, self.start_len :]
        if generated.shape[1] == 0:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        return self._ends_with_keyword_ids(generated) | self._tail_contains_keyword(generated)


@dataclass(frozen=True)
class StopRule:
    """Where a generated answer ends: the conversation template's stop string (``Conversation.stop_string``).

    Every entry point that generates takes it from here, so an answer ends where the template's training
    samples end (ChatML at ``<|im_end|>``, ``plain`` at its ``"\\n"`` separator). ``token_id`` is the stop
    string's id when it is one token: ``generate`` ends a row on it (``eos_token_id``). The string is
    also caught in the decoded text, since a tokenizer may merge it with its neighbours or spell it with
    several tokens, and ``cut`` removes it and what follows from the answer.
    """

    text: str
    token_id: int | None

    @classmethod
    def of(cls, template: str | Conversation, tokenizer) -> StopRule:
        """The rule of ``template`` (a registered name or a ``Conversation``) for ``tokenizer``."""
        conv = get_conv_template(template) if isinstance(template, str) else template
        text = conv.stop_string()
        ids = tokenizer(text, add_special_tokens=False).input_ids
        return cls(text, ids[0] if len(ids) == 1 else None)

    def generate_kwargs(self, tokenizer, prompt_ids: torch.Tensor) -> dict:
        """``generate`` arguments that end each row at the stop string (``prompt_ids``: the ids generation
        starts from, which its output begins with)."""
        kwargs: dict = {"stopping_criteria": StoppingCriteriaList([
            KeywordsStoppingCriteria([self.text], tokenizer, prompt_ids)])}
        if self.token_id is not None:
            kwargs["eos_token_id"] = self.token_id
        return kwargs

    def cut(self, text: str) -> str:
        """``text`` up to the stop string (the answer without it and without what came after it)."""
        return text.split(self.text, 1)[0]


def _layout(model) -> tuple[VisualLayout, int]:
    token_id = model.config.image_token_id
    if token_id is None:
        raise ValueError(
            "this checkpoint has no image_token_id (it predates the processor): re-save it in the new layout "
            "(python -m llava.model.resave OLD NEW)"
        )
    return VisualLayout.from_config(model.config, model.get_vision_tower().config.patch_size), token_id


def expand_prompt(model, ids: torch.Tensor, visual: VisualInputs) -> torch.Tensor:
    """1-D prompt ids with each ``<image>`` placeholder (-200, ``llava.processing.prompts.tokenize_prompt``) replaced by
    its run of ``config.image_token_id`` tokens: the ids the checkpoint's processor makes for the same prompt."""
    if not len(visual):
        return ids
    return expand(Example(ids, None, visual), *_layout(model))[0]


def prompt_batch(model, tokenizer, prompts: Sequence[tuple[torch.Tensor, VisualInputs]]) -> dict:
    """Left-padded model inputs of ``prompts`` (ids with placeholders, visual inputs), on the model's device
    (``llava.batching.collate``)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    layout, token_id = _layout(model) if any(len(visual) for _, visual in prompts) else (None, -1)
    batch = collate([Example(ids, None, visual) for ids, visual in prompts], layout, token_id, pad_id, side="left")
    return {key: value.to(model.device) if isinstance(value, torch.Tensor) else
            [v.to(model.device) if isinstance(v, torch.Tensor) else v for v in value] for key, value in batch.items()}


def generate_batch(model, tokenizer, prompts: Sequence[Prompt], template: str | Conversation,
                   **generate_kwargs) -> list[str]:
    """The answer to each prompt (cut at the stop string, special tokens removed, stripped), from one
    ``generate`` call.

    ``template`` is the conversation template the prompts were rendered with: each row ends at its stop
    string (``StopRule``). ``generate_kwargs`` go to ``model.generate`` (``max_new_tokens``,
    ``do_sample``, ``temperature``, ``top_p``, ``num_beams``, ...).
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = prompt_batch(model, tokenizer, prompts)
    batch.pop("position_ids")  # generate derives them from the mask, step after step
    stop = StopRule.of(template, tokenizer)
    length = batch["input_ids"].shape[1]
    kwargs = dict(pad_token_id=pad_id, **stop.generate_kwargs(tokenizer, batch["input_ids"]), **generate_kwargs)
    with torch.inference_mode():
        output = model.generate(**batch, **kwargs)
    return [stop.cut(tokenizer.decode(row[length:], skip_special_tokens=True)).strip() for row in output]


def continuation_logprobs(
    model, tokenizer, requests: Sequence[tuple[torch.Tensor, torch.Tensor, VisualInputs]]
) -> list[tuple[float, bool]]:
    """For each ``(prompt ids, continuation ids, visual inputs)``: the summed log-probability of the
    continuation after the prompt, and whether greedy decoding would produce exactly it.

    The rows are left-padded, so every continuation ends at the last position and the LM head runs only
    on the last ``max(len(continuation)) + 1`` positions, never on the visual tokens.
    """
    for _, continuation, _ in requests:
        if len(continuation) == 0:
            raise ValueError("a continuation needs at least one token, got an empty one")
    batch = prompt_batch(model, tokenizer, [(torch.cat([prompt, continuation]), visual)
                                            for prompt, continuation, visual in requests])
    keep = max(len(c) for _, c, _ in requests) + 1
    with torch.inference_mode():
        logits = model(**batch, use_cache=False, logits_to_keep=keep).logits.float()
    results = []
    for row, (_, continuation, _) in enumerate(requests):
        n = len(continuation)
        predicting = logits[row, -n - 1:-1]  # the positions whose next token is a continuation token
        target = continuation.to(predicting.device)
        logprob = F.log_softmax(predicting, dim=-1).gather(1, target[:, None]).sum()
        results.append((float(logprob), bool((predicting.argmax(-1) == target).all())))
    return results


__all__ = [
    "GREEDY_BELOW", "KeywordsStoppingCriteria", "Prompt", "StopRule", "continuation_logprobs", "expand_prompt",
    "generate_batch", "prompt_batch", "sampling_kwargs",
]
