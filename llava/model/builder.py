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
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer

from .language_model import LlavaQwen3ForCausalLM, LlavaQwenForCausalLM
from .multimodal_encoder import OneVisionEncoderImageProcessor, OneVisionEncoderModel

LLAVA_MODEL_TYPES = {"llava_qwen": LlavaQwenForCausalLM, "llava_qwen3": LlavaQwen3ForCausalLM}
PROJECTOR_FILES = ("mm_projector.safetensors", "mm_projector.bin")
NON_LORA_FILES = ("non_lora_trainables.safetensors", "non_lora_trainables.bin")


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file or a ``torch.save``d state dict, loaded without unpickling code."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return state


def load_projector_weights(model_or_base, path: str | Path) -> None:
    """Load a projector-only checkpoint (keys ``[model.]mm_projector.*``) into the model."""
    path = Path(path)
    if path.is_dir():
        path = next((path / name for name in PROJECTOR_FILES if (path / name).exists()), path / PROJECTOR_FILES[1])
    if not path.exists():
        raise FileNotFoundError(f"projector weights not found: {path}")
    state = load_weights_file(path)
    weights = {key.split("mm_projector.", 1)[1]: value for key, value in state.items() if "mm_projector." in key}
    if not weights:
        raise ValueError(f"{path} has no mm_projector.* weights (keys: {sorted(state)[:5]} ...)")
    base = model_or_base.get_model() if hasattr(model_or_base, "get_model") else model_or_base
    base.mm_projector.load_state_dict(weights, strict=True)


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
    model_type = config.get("model_type")
    if model_type not in LLAVA_MODEL_TYPES:
        raise ValueError(
            f"{path} is a {model_type!r} checkpoint; expected a LLaVA-OV checkpoint "
            f"(model_type one of {sorted(LLAVA_MODEL_TYPES)})"
        )
    return LLAVA_MODEL_TYPES[model_type]


def _load_tokenizer(*paths: Path):
    for path in paths:
        if path is not None and any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
            return AutoTokenizer.from_pretrained(str(path), use_fast=True)
    raise ValueError(f"no tokenizer found in {[str(p) for p in paths if p is not None]}")


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
    projector_file = next((path / f for f in PROJECTOR_FILES if (path / f).exists()), None)
    if is_lora or (projector_file is not None and not _has_full_weights(path)):
        if base is None:
            kind = "LoRA" if is_lora else "projector-only"
            raise ValueError(f"{path} is a {kind} checkpoint: pass model_base (the checkpoint it was trained on)")
        base_is_llava = _read_config(base).get("model_type") in LLAVA_MODEL_TYPES
        llava_config = AutoConfig.from_pretrained(str(path))
        model = model_class.from_pretrained(str(base), config=llava_config, **load_kwargs)
        if not base_is_llava:  # a plain LLM: the encoder weights come from mm_vision_tower
            _load_tower_from_source(model)
        if is_lora:
            model = _attach_lora(model, path, merge_lora)
        else:
            load_projector_weights(model, projector_file)
        tokenizer = _load_tokenizer(path, base)
    else:
        model = model_class.from_pretrained(str(path), **load_kwargs)
        tokenizer = _load_tokenizer(path)
    model.eval()

    image_processor = _load_image_processor(path, base, model)
    context_len = getattr(model.config, "tokenizer_model_max_length", None) or getattr(
        model.config, "max_position_embeddings", 2048
    )
    return tokenizer, model, image_processor, context_len


def _has_full_weights(path: Path) -> bool:
    return any(path.glob("model*.safetensors")) or any(path.glob("pytorch_model*.bin"))


def _attach_lora(model, path: Path, merge: bool):
    from peft import PeftModel

    non_lora = next((path / f for f in NON_LORA_FILES if (path / f).exists()), None)
    if non_lora is not None:
        state = load_weights_file(non_lora)
        state = {key.removeprefix("base_model.model."): value for key, value in state.items()}
        _, unexpected = model.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"{non_lora} has keys the model does not know: {unexpected[:5]}")
    model = PeftModel.from_pretrained(model, str(path))
    return model.merge_and_unload() if merge else model


def _load_tower_from_source(model) -> None:
    """Fill the (delay-loaded) tower with the weights of the encoder checkpoint it names."""
    tower = model.get_vision_tower()
    source = tower.vision_tower_name
    try:
        encoder = OneVisionEncoderModel.from_pretrained(source)
    except OSError as error:
        raise ValueError(f"cannot load the vision tower weights from mm_vision_tower={source!r}: {error}") from None
    tower.vision_tower.load_state_dict(encoder.state_dict(), strict=True)


def _load_image_processor(path: Path, base: Path | None, model) -> OneVisionEncoderImageProcessor:
    for candidate in (path, base):
        if candidate is not None and (candidate / "preprocessor_config.json").exists():
            return OneVisionEncoderImageProcessor.from_pretrained(str(candidate))
    return model.get_vision_tower().image_processor


__all__ = ["load_pretrained_model", "load_projector_weights", "load_weights_file"]
