"""Loading weight files into a LLaVA model: projector-only, non-LoRA trainables, the tower's source.

Why its own module: the trainer (attaching a pre-trained projector, resuming) and the checkpoint
loader (``builder``) both need it, and the model files that travel in checkpoint folders must not
(they stay self-contained). Every file is read
without unpickling code (safetensors, or ``torch.load(..., weights_only=True)``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

PROJECTOR_FILES = ("mm_projector.safetensors", "mm_projector.bin")
NON_LORA_FILES = ("non_lora_trainables.safetensors", "non_lora_trainables.bin")


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A safetensors file or a ``torch.save``d state dict, loaded without unpickling code."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return state


def find_file(directory: Path, names: tuple[str, ...]) -> Path | None:
    """The first of ``names`` that exists in ``directory``."""
    return next((directory / name for name in names if (directory / name).exists()), None)


def _base(model_or_base) -> nn.Module:
    return model_or_base.get_model() if hasattr(model_or_base, "get_model") else model_or_base


def load_projector_weights(model_or_base, path: str | Path) -> None:
    """Load a projector-only checkpoint (a file or its directory; keys ``[model.]mm_projector.*``)."""
    path = Path(path)
    if path.is_dir():
        path = find_file(path, PROJECTOR_FILES) or path / PROJECTOR_FILES[1]
    if not path.exists():
        raise FileNotFoundError(f"projector weights not found: {path}")
    state = load_weights_file(path)
    prefix = "mm_projector."
    weights = {key.split(prefix, 1)[1]: value for key, value in state.items() if prefix in key}
    if not weights:
        raise ValueError(f"{path} has no mm_projector.* weights (keys: {sorted(state)[:5]} ...)")
    _base(model_or_base).mm_projector.load_state_dict(weights, strict=True)


def load_non_lora_trainables(model: nn.Module, path: str | Path) -> None:
    """The weights a LoRA run trained in full (projector, newline, tuned tower parts)."""
    state = load_weights_file(path)
    state = {key.removeprefix("base_model.model."): value for key, value in state.items()}
    _, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(f"{path} has keys the model does not know: {unexpected[:5]}")


def load_tower_weights_from_source(model) -> None:
    """Fill the tower (built from its config only) with the weights of the encoder checkpoint it names."""
    from .modeling_onevision_encoder import OneVisionEncoderModel

    tower = model.get_vision_tower()
    source = tower.vision_tower_name
    try:
        encoder = OneVisionEncoderModel.from_pretrained(source)
    except OSError as error:
        raise ValueError(f"cannot load the tower weights of mm_vision_tower={source!r}: {error}") from None
    tower.vision_tower.load_state_dict(encoder.state_dict(), strict=True)


__all__ = [
    "NON_LORA_FILES",
    "PROJECTOR_FILES",
    "find_file",
    "load_non_lora_trainables",
    "load_projector_weights",
    "load_tower_weights_from_source",
    "load_weights_file",
]
