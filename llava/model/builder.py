"""Load LLaVA-OV checkpoints: full, LoRA (base + adapter) and projector-only.

``load_pretrained_model(model_path, model_base, model_name, ...)`` returns
``(tokenizer, model, image_processor, context_len)`` as LLaVA-NeXT's builder does:

* **full**: ``model_path`` holds a ``llava_qwen`` / ``llava_qwen3`` config and all weights;
* **LoRA**: ``model_path`` holds a PEFT adapter (``adapter_config.json``), the LLaVA config
  and ``non_lora_trainables`` (projector, newline, tuned tower parts); ``model_base`` is the
  LLM (or LLaVA) checkpoint the adapter was trained on. ``merge_lora=True`` folds the
  adapter into the weights;
* **projector-only**: ``model_path`` holds the LLaVA config and ``mm_projector.bin`` /
  ``mm_projector.safetensors``; ``model_base`` is the LLM, and the encoder weights come
  from the config's ``mm_vision_tower``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer

from .families import LLAVA_LMS, llava_lm_for_model_type
from .folder import ensure_image_token
from .image_processing_onevision_encoder import OneVisionEncoderImageProcessor
from .weights import (
    NON_LORA_FILES,
    PROJECTOR_FILES,
    find_file,
    load_non_lora_trainables,
    load_projector_weights,
    load_tower_weights_from_source,
)


def _read_config(path: Path) -> dict:
    config_file = path / "config.json"
    if not path.is_dir():
        raise ValueError(f"{path} is not a model checkpoint: no such directory")
    if not config_file.is_file():
        raise ValueError(f"{path} is not a model checkpoint: it has no config.json")
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_file} is not valid JSON: {error}") from None


def _llava_class(config: dict, path: Path):
    lm = llava_lm_for_model_type(config.get("model_type"))
    if lm is None:
        raise ValueError(
            f"{path} is a {config.get('model_type')!r} checkpoint; expected a LLaVA-OV checkpoint "
            f"(model_type one of {sorted(lm.model_type for lm in LLAVA_LMS.values())})"
        )
    return lm.causal_lm_class


def _load_tokenizer(*paths: Path):
    for path in paths:
        if path is not None and any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
            return AutoTokenizer.from_pretrained(str(path), use_fast=True)
    raise ValueError(f"no tokenizer found in {[str(p) for p in paths if p is not None]}")


def get_model_name_from_path(model_path: str | os.PathLike) -> str:
    """``.../llava-qwen`` -> ``llava-qwen``; ``.../run/checkpoint-500`` -> ``run_checkpoint-500``."""
    parts = [p for p in re.split(r"[\\/]+", str(model_path).strip()) if p]
    if not parts:
        raise ValueError(f"cannot derive a model name from an empty path {model_path!r}")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return f"{parts[-2]}_{parts[-1]}"
    return parts[-1]


def load_pretrained_model(
    model_path: str,
    model_base: str | None = None,
    model_name: str | None = None,
    device_map: str | dict | None = None,
    torch_dtype: torch.dtype | str = "auto",
    attn_implementation: str | None = None,
    merge_lora: bool = False,
    **kwargs,
):
    """Load a LLaVA-OV checkpoint; returns ``(tokenizer, model, image_processor, context_len)``.

    ``model_name`` is accepted for LLaVA-NeXT compatibility; the checkpoint kind is read
    from the directory's files, not guessed from the name. ``kwargs`` go to
    ``from_pretrained`` (e.g. ``low_cpu_mem_usage``).
    """
    path = Path(model_path)
    config = _read_config(path)
    model_class = _llava_class(config, path)
    base = Path(model_base) if model_base is not None else None
    load_kwargs = dict(kwargs, dtype=torch_dtype)
    if device_map is not None:
        load_kwargs["device_map"] = device_map
    if attn_implementation is not None:
        load_kwargs["attn_implementation"] = attn_implementation

    is_lora = (path / "adapter_config.json").exists()
    projector_file = find_file(path, PROJECTOR_FILES)
    if is_lora or (projector_file is not None and not _has_full_weights(path)):
        if base is None:
            kind = "LoRA" if is_lora else "projector-only"
            raise ValueError(f"{path} is a {kind} checkpoint: pass model_base (the checkpoint it was trained on)")
        base_is_llava = llava_lm_for_model_type(_read_config(base).get("model_type")) is not None
        llava_config = AutoConfig.from_pretrained(str(path))
        model = model_class.from_pretrained(str(base), config=llava_config, **load_kwargs)
        if not base_is_llava:  # a plain LLM: the encoder weights come from mm_vision_tower
            load_tower_weights_from_source(model)
        if is_lora:
            model = _attach_lora(model, path, merge_lora)
        else:
            load_projector_weights(model, projector_file)
        tokenizer = _load_tokenizer(path, base)
    else:
        model = model_class.from_pretrained(str(path), **load_kwargs)
        tokenizer = _load_tokenizer(path)
    model.eval()
    if model.config.image_token_id is None:  # written before the processor existed: give it the image token
        ensure_image_token(tokenizer, model)

    image_processor = load_image_processor(path, base, model)
    context_len = model.config.tokenizer_model_max_length or model.config.max_position_embeddings
    return tokenizer, model, image_processor, context_len


def _has_full_weights(path: Path) -> bool:
    return any(path.glob("model*.safetensors")) or any(path.glob("pytorch_model*.bin"))


def _attach_lora(model, path: Path, merge: bool):
    from peft import PeftModel

    non_lora = find_file(path, NON_LORA_FILES)
    if non_lora is not None:
        load_non_lora_trainables(model, non_lora)
    model = PeftModel.from_pretrained(model, str(path))
    return model.merge_and_unload() if merge else model


def load_image_processor(path: str | Path, base: str | Path | None, model) -> OneVisionEncoderImageProcessor:
    """The checkpoint's processor, else the base's, else the tower's (its encoder's, or the default)."""
    for candidate in (path, base):
        if candidate is not None and (Path(candidate) / "preprocessor_config.json").exists():
            return OneVisionEncoderImageProcessor.from_pretrained(str(candidate))
    return model.get_vision_tower().image_processor


def saved_video_settings(path: str | Path | None) -> dict:
    """The video settings a checkpoint folder saved with its processor (``processor_config.json``'s ``video``:
    the mode and sampling it was trained with); ``{}`` for folders written before the processor existed."""
    config_file = Path(path) / "processor_config.json" if path is not None else None
    if config_file is None or not config_file.is_file():
        return {}
    try:
        video = json.loads(config_file.read_text()).get("video")
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_file} is not valid JSON: {error}") from None
    return video if isinstance(video, dict) else {}


__all__ = ["get_model_name_from_path", "load_image_processor", "load_pretrained_model", "saved_video_settings"]
