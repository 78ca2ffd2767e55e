"""The vision side of LLaVA-OV: the OV-Encoder as a LLaVA vision tower, and the projectors.

The tower turns the visual inputs of a whole batch (images, image tiles, uniformly sampled
video frames, codec mosaics with their ``positions_thw``) into *one* packed encoder pass and
returns, for each input, the features of ``mm_vision_select_layer`` with the ``(t, h, w)`` grid
coordinates of every token (the projector and the video pooling need them).

Projectors, chosen by ``config.mm_projector_type``:

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

Self-contained (torch, transformers, huggingface_hub): the file travels inside checkpoint folders.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache
from torch import nn

from .configuration_onevision_encoder import OneVisionEncoderConfig
from .image_processing_onevision_encoder import OneVisionEncoderImageProcessor
from .modeling_onevision_encoder import OneVisionEncoderModel


@dataclass
class VisualPiece:
    """One encoder sample: pixels ``[C, H, W]`` / ``[C, T, H, W]`` and optional positions."""

    pixels: torch.Tensor
    visible_indices: torch.Tensor | None = None
    patch_positions: torch.Tensor | None = None


def grid_positions(frames: int, grid_h: int, grid_w: int, device=None) -> torch.Tensor:
    """``(t, h, w)`` of every token of a dense ``frames x grid_h x grid_w`` grid, raster order."""
    t, h, w = torch.meshgrid(
        torch.arange(frames, device=device), torch.arange(grid_h, device=device),
        torch.arange(grid_w, device=device), indexing="ij",
    )
    return torch.stack((t, h, w), dim=-1).reshape(-1, 3)


def temporal_slots(frames: int, grid_t: int, device=None) -> torch.Tensor:
    """RoPE time slot of each of ``frames`` uniformly sampled frames spread over a ``grid_t`` grid."""
    return torch.linspace(0, grid_t - 1, frames, device=device).long()


def local_encoder_source(name: str) -> str | None:
    """Local directory of the encoder ``name``: the directory itself, or its Hugging Face cache snapshot.

    Never touches the network; None when neither holds a ``config.json``.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path) if (path / "config.json").is_file() else None
    try:
        cached = try_to_load_from_cache(str(name), "config.json")
    except ValueError:  # not a valid hub id either
        return None
    return str(Path(cached).parent) if isinstance(cached, str) else None


def encoder_config_for(name: str) -> OneVisionEncoderConfig:
    """Config of the encoder a LLaVA config names in ``mm_vision_tower`` (upstream checkpoints embed none)."""
    source = local_encoder_source(name)
    if source is None:
        raise ValueError(
            f"the checkpoint embeds no vision_config and names its vision encoder mm_vision_tower={name!r}, "
            f"which is neither a local directory with a config.json nor in the Hugging Face cache "
            f"({hub_constants.HF_HUB_CACHE}). Download it (`huggingface-cli download {name}`), or set "
            "mm_vision_tower in the checkpoint's config.json to a local copy of the encoder"
        )
    return OneVisionEncoderConfig.from_pretrained(source)


class OVEncoderVisionTower(nn.Module):
    """LLaVA vision tower around :class:`OneVisionEncoderModel`.

    ``delay_load=True`` builds the encoder from its config only (the LLaVA checkpoint
    carries the tower weights under ``model.vision_tower.vision_tower.*``): ``vision_config``
    when the checkpoint embeds it, else the config of ``vision_tower_name`` (a local directory
    or a hub id in the local cache). Otherwise the weights are loaded from ``vision_tower_name``.
    The tower's parameters stay trainable: which parts train is the trainer's decision
    (``mm_tunable_parts``).
    """

    def __init__(
        self,
        vision_tower_name: str,
        select_layer: int = -2,
        select_feature: str = "patch",
        vision_config: dict | None = None,
        delay_load: bool = False,
        attn_implementation: str | None = None,
    ):
        super().__init__()
        if select_feature not in ("patch", "cls_patch"):
            raise ValueError(
                f"mm_vision_select_feature must be 'patch' or 'cls_patch', got {select_feature!r}"
            )
        self.vision_tower_name = vision_tower_name
        self.select_layer = select_layer
        self.select_feature = select_feature
        self.attn_implementation = attn_implementation
        if delay_load:
            if vision_config is None:
                config = encoder_config_for(vision_tower_name)
            else:
                config = OneVisionEncoderConfig(
                    **{k: v for k, v in vision_config.items() if k != "model_type"}
                )
            if attn_implementation is not None:
                config._attn_implementation = attn_implementation
            self.vision_tower = OneVisionEncoderModel(config)
        else:
            kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
            self.vision_tower = OneVisionEncoderModel.from_pretrained(vision_tower_name, **kwargs)
        self.image_processor = self._make_processor(
            local_encoder_source(vision_tower_name) if delay_load else vision_tower_name
        )

    def _make_processor(self, name: str | None) -> OneVisionEncoderImageProcessor:
        """The encoder directory's processor, else native resolution up to the pre-training area."""
        if name is not None:
            try:
                return OneVisionEncoderImageProcessor.from_pretrained(name)
            except (OSError, ValueError):
                pass
        config = self.config
        return OneVisionEncoderImageProcessor(patch_size=config.patch_size, max_pixels=config.image_size**2)

    @property
    def config(self) -> OneVisionEncoderConfig:
        return self.vision_tower.config

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vision_tower.parameters()).dtype

    @property
    def device(self) -> torch.device:
        # read through parameters(), not an attribute: under ZeRO-3 reading ``module.weight``
        # outside that module's forward registers it with the running module, on this rank only
        return next(self.vision_tower.parameters()).device

    def token_positions(self, piece: VisualPiece) -> torch.Tensor:
        """``(t, h, w)`` of the tokens the encoder returns for ``piece``; ``t`` is the frame, or
        the RoPE slot when explicit positions were given (grouping by ``t`` works for both)."""
        pixels = piece.pixels if piece.pixels.ndim == 4 else piece.pixels.unsqueeze(1)
        patch = self.config.patch_size
        frames, grid_h, grid_w = pixels.shape[1], pixels.shape[2] // patch, pixels.shape[3] // patch
        if piece.patch_positions is not None:
            return piece.patch_positions.to(torch.long)
        grid = grid_positions(frames, grid_h, grid_w, device=pixels.device)
        if piece.visible_indices is not None and piece.visible_indices.numel() != grid.shape[0]:
            return grid[piece.visible_indices.to(grid.device)]
        return grid

    def forward(self, pieces: list[VisualPiece]) -> torch.Tensor:
        """Encode all pieces in one packed pass; returns their ``[sum K_i, D]`` features, piece after piece.

        One tensor, not a list: under ZeRO-3 each output tensor of a module triggers its own
        gather in the backward pass, so the number of outputs must not depend on the batch.
        ``split`` cuts the result into per-piece features.
        """
        output = self.vision_tower(
            [p.pixels.to(device=self.device, dtype=self.dtype) for p in pieces],
            visible_indices=[p.visible_indices for p in pieces],
            patch_positions=[p.patch_positions for p in pieces],
            output_hidden_states=True,
        )
        return output.hidden_states[self.select_layer]

    def unused_parameters(self) -> list[nn.Parameter]:
        """The encoder's parameters that the selected features do not depend on.

        With ``select_layer=-2`` (LLaVA's default) the last layer, the post-norm and the pooling
        head run but never reach the LLM, so they get no gradient. The trainer keeps them frozen:
        a trainable parameter without a gradient breaks DDP's reduction.
        """
        encoder = self.vision_tower
        used_layers = self.select_layer % (len(encoder.encoder.layers) + 1)  # hidden_states[i] feeds layer i
        unused = [*encoder.encoder.layers[used_layers:]]
        unused += [module for module in (encoder.layernorm_post, encoder.head) if module is not None]
        return [param for module in unused for param in module.parameters()]

    def split(self, features: torch.Tensor, pieces: list[VisualPiece]) -> list[torch.Tensor]:
        """The packed ``forward`` result as per-piece ``[K_i, D]`` features."""
        return list(torch.split(features, [self.token_positions(p).shape[0] for p in pieces]))


def build_vision_tower(
    config, delay_load: bool = False, attn_implementation: str | None = None
) -> OVEncoderVisionTower:
    """Build the tower named by ``config.mm_vision_tower`` (LLaVA config keys).

    The tower's attention backend is ``attn_implementation``, else the config's
    ``vision_attn_implementation``, else the encoder's default (SDPA).
    """
    if config.mm_vision_tower is None:
        raise ValueError("config has no mm_vision_tower: set it to the OV-Encoder checkpoint (dir or hub id)")
    return OVEncoderVisionTower(
        config.mm_vision_tower,
        select_layer=config.mm_vision_select_layer,
        select_feature=config.mm_vision_select_feature,
        vision_config=config.vision_config,
        delay_load=delay_load,
        attn_implementation=attn_implementation or config.vision_attn_implementation,
    )


# ============================================================== projectors
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


__all__ = [
    "OVEncoderVisionTower",
    "SpatialMergeProjector",
    "VisualPiece",
    "build_vision_projector",
    "build_vision_tower",
    "encoder_config_for",
    "grid_positions",
    "local_encoder_source",
    "temporal_slots",
]
