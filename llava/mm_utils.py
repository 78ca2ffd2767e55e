"""Prompt helpers shared by training, evaluation and serving (LLaVA-NeXT names and semantics):
``<image>`` placeholders as token ids, stopping on keywords, a model name from its path.

Image arrangements (``process_images``, anyres) live in ``llava.model.image_processing_llava``,
which also states the project's size convention.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import torch
from transformers import StoppingCriteria

from .constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX


# ============================================================== tokenisation
def bos_prefix(tokenizer) -> list[int]:
    """``[bos_id]`` when the tokenizer adds a BOS on its own (Llama-style), else ``[]`` (Qwen)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return []
    with_special = tokenizer("a").input_ids
    without = tokenizer("a", add_special_tokens=False).input_ids
    if with_special[:1] == [bos] and with_special[1 : 1 + len(without)] == without:
        return [bos]
    return []


def tokenizer_image_token(
    prompt: str,
    tokenizer,
    image_token_index: int = IMAGE_TOKEN_INDEX,
    return_tensors: str | None = None,
) -> list[int] | torch.Tensor:
    """Token ids of ``prompt`` with each ``<image>`` replaced by ``image_token_index``.

    The text between placeholders is tokenised piece by piece (no special tokens), so the
    placeholder never merges with its neighbours; a BOS is prepended only when the tokenizer
    would add one itself.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a str, got {type(prompt).__name__}")
    input_ids = bos_prefix(tokenizer)
    for index, chunk in enumerate(prompt.split(DEFAULT_IMAGE_TOKEN)):
        if index > 0:
            input_ids.append(image_token_index)
        if chunk:
            input_ids.extend(tokenizer(chunk, add_special_tokens=False).input_ids)
    if return_tensors is None:
        return input_ids
    if return_tensors == "pt":
        return torch.tensor(input_ids, dtype=torch.long)
    raise ValueError(f"unsupported return_tensors={return_tensors!r} (use None or 'pt')")


# ============================================================== misc
def get_model_name_from_path(model_path: str | os.PathLike) -> str:
    """``.../llava-qwen`` -> ``llava-qwen``; ``.../run/checkpoint-500`` -> ``run_checkpoint-500``."""
    parts = [p for p in re.split(r"[\\/]+", str(model_path).strip()) if p]
    if not parts:
        raise ValueError(f"cannot derive a model name from an empty path {model_path!r}")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


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


__all__ = [
    "KeywordsStoppingCriteria",
    "bos_prefix",
    "get_model_name_from_path",
    "tokenizer_image_token",
]
