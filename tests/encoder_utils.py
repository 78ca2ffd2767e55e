"""Tiny OV-Encoder configs and models with non-trivial random weights, for the tests."""

from __future__ import annotations

import torch

import llava  # noqa: F401  (registers the Auto classes)
from llava.model import OneVisionEncoderConfig, OneVisionEncoderModel


def tiny_encoder_config(**overrides) -> OneVisionEncoderConfig:
    """2 layers, width 64, 2 heads (head_dim 32: the smallest 4:6:6 split), patch 4."""
    fields = dict(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        patch_size=4,
        image_size=32,
        rope_temporal_size=8,
    )
    fields.update(overrides)
    return OneVisionEncoderConfig(**fields)


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (norm weights and biases too) a distinct random value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            is_norm = isinstance(module, (torch.nn.LayerNorm, torch.nn.RMSNorm))
            for name, param in module.named_parameters(recurse=False):
                base = 1.0 if is_norm and name == "weight" else 0.0
                param.copy_(base + 0.2 * torch.randn(param.shape, generator=generator))
    return model


def tiny_encoder(attn_implementation: str = "sdpa", seed: int = 0, **overrides) -> OneVisionEncoderModel:
    config = tiny_encoder_config(**overrides)
    config._attn_implementation = attn_implementation
    model = OneVisionEncoderModel(config)
    return randomize_(model, seed).eval()
