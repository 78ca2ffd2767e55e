"""Batched inference on a loaded LLaVA-OV model: answers to many prompts, log-likelihoods of continuations,
and where an answer ends.

Used by the held-out predictor (``llava.eval.predict``) and the lmms-eval model
(``llava.eval.lmms_model``). A prompt is its token ids (``llava.preprocess.tokenize_prompt``) and its
visual inputs (``llava.mm_inputs``); a batch left-pads the ids and concatenates the visual inputs, so
every sample of a batch gets what it would get alone. ``StopRule`` is the one place that decides where a
generated answer ends, for these two and for the chat session and the server too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import StoppingCriteriaList

from .conversation import Conversation, get_conv_template
from .mm_inputs import VisualInputs
from .mm_utils import KeywordsStoppingCriteria
from .model.processing_llava import VisualLayout, expand_placeholders

Prompt = tuple[torch.Tensor, VisualInputs]

#: Temperatures below this sample greedily: dividing the logits by a smaller one overflows them to
#: ``inf`` (vLLM draws the line at the same place).
GREEDY_BELOW = 1e-5


def sampling_kwargs(temperature: float, top_p: float | None = None) -> dict:
    """``generate`` arguments for ``temperature`` (and ``top_p``): greedy below :data:`GREEDY_BELOW`."""
    if temperature < GREEDY_BELOW:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, **({} if top_p is None else {"top_p": top_p})}


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


def expand_prompt(model, ids: torch.Tensor, visual: VisualInputs) -> torch.Tensor:
    """1-D prompt ids with each ``<image>`` placeholder (-200, ``llava.preprocess.tokenize_prompt``) replaced by
    its run of ``config.image_token_id`` tokens: the ids the checkpoint's processor makes for the same prompt,
    which ``generate`` takes as any Hugging Face model's."""
    if not len(visual):
        return ids
    tower = model.get_vision_tower()
    token_id = model.config.image_token_id
    if token_id is None:
        raise ValueError(
            "this checkpoint has no image_token_id (it predates the processor): re-save it in the new layout "
            "(python -m llava.model.resave OLD NEW)"
        )
    layout = VisualLayout.from_config(model.config, tower.config.patch_size)
    return torch.tensor(expand_placeholders(ids.tolist(), visual.placeholder_tokens(layout), token_id),
                        dtype=torch.long)


@contextmanager
def left_padding(model) -> Iterator[None]:
    """The model re-pads the spliced sequences on the left while inside (batched generation needs it)."""
    previous = getattr(model.config, "tokenizer_padding_side", "right")
    model.config.tokenizer_padding_side = "left"
    try:
        yield
    finally:
        model.config.tokenizer_padding_side = previous


def _left_padded(sequences: Sequence[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(ids) for ids in sequences)
    batch = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros_like(batch)
    for row, ids in enumerate(sequences):
        batch[row, longest - len(ids):], mask[row, longest - len(ids):] = ids, 1
    return batch, mask


def generate_batch(model, tokenizer, prompts: Sequence[Prompt], template: str | Conversation,
                   **generate_kwargs) -> list[str]:
    """The answer to each prompt (cut at the stop string, special tokens removed, stripped), from one
    ``generate`` call.

    ``template`` is the conversation template the prompts were rendered with: each row ends at its stop
    string (``StopRule``). ``generate_kwargs`` go to ``model.generate`` (``max_new_tokens``,
    ``do_sample``, ``temperature``, ``top_p``, ``num_beams``, ...).
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, mask = _left_padded([expand_prompt(model, ids, visual) for ids, visual in prompts], pad_id)
    visual = VisualInputs.concat(p[1] for p in prompts).to(model.device)
    stop = StopRule.of(template, tokenizer)
    kwargs = dict(pad_token_id=pad_id, **stop.generate_kwargs(tokenizer, ids), **generate_kwargs)
    with torch.inference_mode():
        output = model.generate(ids.to(model.device), attention_mask=mask.to(model.device), **kwargs,
                                **visual.model_kwargs())
    return [stop.cut(tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=True)).strip() for row in output]


def continuation_logprobs(
    model, tokenizer, requests: Sequence[tuple[torch.Tensor, torch.Tensor, VisualInputs]]
) -> list[tuple[float, bool]]:
    """For each ``(prompt ids, continuation ids, visual inputs)``: the summed log-probability of the
    continuation after the prompt, and whether greedy decoding would produce exactly it.

    The rows are left-padded, so every continuation ends at the last position and the LM head runs only
    on the last ``max(len(continuation)) + 1`` positions, never on the visual tokens.
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    for _, continuation, _ in requests:
        if len(continuation) == 0:
            raise ValueError("a continuation needs at least one token, got an empty one")
    sequences = [torch.cat([prompt, continuation]) for prompt, continuation, _ in requests]
    ids, mask = _left_padded(sequences, pad_id)
    visual = VisualInputs.concat(r[2] for r in requests).to(model.device)
    keep = max(len(c) for _, c, _ in requests) + 1
    with left_padding(model), torch.inference_mode():
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), use_cache=False,
                       logits_to_keep=keep, **visual.model_kwargs()).logits.float()
    results = []
    for row, (_, continuation, _) in enumerate(requests):
        n = len(continuation)
        predicting = logits[row, -n - 1:-1]  # the positions whose next token is a continuation token
        target = continuation.to(predicting.device)
        logprob = F.log_softmax(predicting, dim=-1).gather(1, target[:, None]).sum()
        results.append((float(logprob), bool((predicting.argmax(-1) == target).all())))
    return results


__all__ = [
    "GREEDY_BELOW", "Prompt", "StopRule", "continuation_logprobs", "expand_prompt", "generate_batch", "left_padding",
    "sampling_kwargs",
]
