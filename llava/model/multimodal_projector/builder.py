"""Vision-to-language projectors, chosen by ``config.mm_projector_type``.

* ``linear``                 one Linear
* ``mlp{N}x_gelu``           Linear, (GELU, Linear) x (N-1)   -> state_dict keys ``0``, ``2``, ...
* ``spatial_merge``          Qwen2-VL-style merger: LayerNorm, then the features of each
                             ``m x m`` neighbourhood (``mm_spatial_merge_size``, default 2)
                             within one frame are concatenated and sent through an MLP.
                             Works on codec patches too: neighbours are found from each
                             token's ``(t, h, w)``; absent neighbours count as zeros.

``linear`` / ``mlp`` projectors are plain modules applied per token (keys as in LLaVA:
``mm_projector.0.weight`` ...). The merger also needs each token's ``(t, h, w)`` and
returns the merged positions: it is marked with ``merges_tokens = True``.
"""

from __future__ import annotations

import re

import torch
from torch import nn


class SpatialMergeProjector(nn.Module):
    """Merge each ``m x m`` spatial neighbourhood of one frame into one token."""

    merges_tokens = True

    def __init__(self, vision_hidden: int, text_hidden: int, merge_size: int = 2, eps: float = 1e-6):
        super().__init__()
        self.merge_size = merge_size
        merged = vision_hidden * merge_size * merge_size
        self.ln_q = nn.LayerNorm(vision_hidden, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(merged, merged), nn.GELU(), nn.Linear(merged, text_hidden))

    def forward(
        self, features: torch.Tensor, positions: torch.Tensor, segments: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[K, D]`` features at ``[K, 3]`` positions -> ``[G, H]`` merged, ``[G, 3]`` group positions, ``[G]`` segments.

        ``segments`` (default all 0) says which sample each token belongs to: tokens of different
        samples never merge, and the groups come out sample by sample, each sorted by ``(t, h, w)``.
        """
        m = self.merge_size
        positions = positions.to(features.device, torch.long)
        if segments is None:
            segments = torch.zeros(positions.shape[0], dtype=torch.long, device=features.device)
        keys = torch.stack((segments.to(positions.device), positions[:, 0], positions[:, 1] // m, positions[:, 2] // m), -1)
        groups, group_of_token = torch.unique(keys, dim=0, return_inverse=True)  # sorted (segment, t, h, w)
        slot = (positions[:, 1] % m) * m + positions[:, 2] % m
        merged = features.new_zeros(groups.shape[0], m * m, features.shape[-1])
        merged[group_of_token, slot] = self.ln_q(features)
        return self.mlp(merged.flatten(1)), groups[:, 1:], groups[:, 0]


def build_vision_projector(config) -> nn.Module:
    projector_type = config.mm_projector_type
    vision_hidden, text_hidden = config.mm_hidden_size, config.hidden_size
    if projector_type == "linear":
        return nn.Linear(vision_hidden, text_hidden)
    mlp = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if mlp:
        layers: list[nn.Module] = [nn.Linear(vision_hidden, text_hidden)]
        for _ in range(int(mlp.group(1)) - 1):
            layers += [nn.GELU(), nn.Linear(text_hidden, text_hidden)]
        return nn.Sequential(*layers)
    if projector_type == "spatial_merge":
        return SpatialMergeProjector(vision_hidden, text_hidden, config.mm_spatial_merge_size)
    raise ValueError(
        f"unknown mm_projector_type {projector_type!r}: use 'linear', 'mlp{{N}}x_gelu' or 'spatial_merge'"
    )
