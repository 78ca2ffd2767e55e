"""LLaVA-OV on any Hugging Face causal LM: what every language-model family shares.

``LlavaMetaModel`` is mixed into the base language model (it owns the OV-Encoder tower,
the projector and the learned newline token); ``LlavaMetaForCausalLM`` into the causal-LM
class (it encodes the visual inputs and puts their features where the prompt says), with
``MultimodalCausalLMMixin`` (``forward`` and generation with visual inputs). One file per family
(``modeling_llava_qwen.py``, ``modeling_llava_qwen3.py``) puts them on that family's classes.

A prompt reaches the model in Hugging Face's form, the one ``LlavaOVProcessor`` returns: each visual
token is one ``config.image_token_id`` in ``input_ids``, and ``forward`` scatters the visual features
into those positions; ``generate`` is the standard one (the visual inputs go to its first step). The
processor and ``llava.batching`` expand LLaVA's ``<image>`` placeholders, pad, pack and truncate: the
model does none of it (packed rows come with ``segment_ids``, which become the attention mask).

Visual inputs are a flat list ``images`` (one entry per ``<image>`` placeholder, in the
order the placeholders appear across the batch) with a parallel list ``modalities``:

* ``"image"``  ``[C, H, W]`` at native resolution, or ``[1 + n, C, h, w]`` for ``anyres``
  (a base view, then the tiles);
* ``"video"``  ``[C, T, H, W]`` uniformly sampled frames, spread over the encoder's
  temporal RoPE grid, optionally 2D-pooled per frame (``mm_spatial_pool_stride``);
* ``"codec"``  ``[C, N, S, S]`` codec mosaics whose ``patch_positions`` entry holds the
  ``[K, 3]`` ``positions_thw`` rows (``K = N * (S / P)^2``): one token per selected patch,
  placed on the RoPE grid by those positions. The N mosaics are encoded together (one
  attention span) and take **N placeholders**, one mosaic's tokens each, as Stage 2 writes
  codec records (``N`` ``<image>`` lines) and as the upstream code trains; ``N`` frames of any
  size with explicit positions (upstream's 8-image records) work the same way.

``placeholder_count`` says how many placeholders an entry takes (1 for images and videos).

Video and codec entries keep the image processor's ``pixel_values_videos`` layout (one
sample of it), which is also the encoder's. ``image_sizes`` entries are ``(width, height)``
(``image_processing_llava.py``). The processor (or ``llava.processing.media``) builds all of these from media.
All visual inputs of a batch go through the encoder in **one** packed pass.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import logging

from .configuration_llava import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from .image_processing_llava import get_anyres_image_grid_shape, parse_anyres_max, unpad_image
from .modeling_llava_vision import (
    OVEncoderVisionTower,
    VisualPiece,
    build_vision_projector,
    build_vision_tower,
    grid_positions,
    temporal_slots,
)
from .modeling_onevision_encoder import OneVisionEncoderPoolingHead

MODALITIES = ("image", "video", "codec")
logger = logging.get_logger(__name__)


def placeholder_count(entry: torch.Tensor, modality: str) -> int:
    """How many ``<image>`` placeholders a visual input takes: one per mosaic for ``codec``, else 1."""
    return int(entry.shape[1]) if modality == "codec" and entry.ndim == 4 else 1

try:
    from transformers import initialization as hf_init
except ImportError:  # pragma: no cover - older transformers
    hf_init = None


class LlavaMetaModel:
    """Mixin for the base language model: vision tower, projector, ``image_newline``."""

    def __init__(self, config):
        super().__init__(config)
        if config.mm_vision_tower is not None:
            # The checkpoint carries the tower weights: build it from its config only.
            self.vision_tower = build_vision_tower(config, delay_load=True)
            if config.vision_config is None:  # upstream layout: embed it, so saving makes a self-contained checkpoint
                config.vision_config = self.vision_tower.config.to_dict()
            self.mm_projector = build_vision_projector(config)
            if "unpad" in config.mm_patch_merge_type:
                self.image_newline = nn.Parameter(torch.zeros(config.hidden_size))

    def get_vision_tower(self) -> OVEncoderVisionTower | None:
        return getattr(self, "vision_tower", None)

    def initialize_vision_modules(self, vision_tower: str, **options) -> None:
        """Attach a pretrained OV-Encoder and a fresh projector to a text-only model.

        ``options`` are LLaVA config keys (``mm_projector_type``, ``mm_vision_select_layer``,
        ``mm_patch_merge_type``, ``image_aspect_ratio``, ...) written into the config.
        """
        config = self.config
        config.mm_vision_tower = vision_tower
        for key, value in options.items():
            setattr(config, key, value)
        self.vision_tower = OVEncoderVisionTower(
            vision_tower,
            select_layer=config.mm_vision_select_layer,
            select_feature=config.mm_vision_select_feature,
            attn_implementation=config.vision_attn_implementation,
        )
        config.vision_config = self.vision_tower.config.to_dict()
        config.mm_hidden_size = self.vision_tower.hidden_size
        config.use_mm_proj = True
        self.mm_projector = build_vision_projector(config).to(self.embed_tokens.weight.dtype)
        if "unpad" in config.mm_patch_merge_type and not hasattr(self, "image_newline"):
            std = 1 / math.sqrt(config.hidden_size)
            self.image_newline = nn.Parameter(torch.randn(config.hidden_size, dtype=self.embed_tokens.weight.dtype) * std)


def init_multimodal_weights(module: nn.Module, std: float) -> None:
    """Initialise the parameters a language model's ``_init_weights`` does not know about."""
    normal = hf_init.normal_ if hf_init is not None else nn.init.normal_
    zeros = hf_init.zeros_ if hf_init is not None else nn.init.zeros_
    if isinstance(module, LlavaMetaModel) and hasattr(module, "image_newline"):
        normal(module.image_newline, mean=0.0, std=1 / math.sqrt(module.image_newline.numel()))
    elif isinstance(module, OneVisionEncoderPoolingHead):
        normal(module.probe, mean=0.0, std=std)
        normal(module.attention.in_proj_weight, mean=0.0, std=std)
        zeros(module.attention.in_proj_bias)


class LlavaMetaForCausalLM(ABC):
    """Mixin for the causal LM: encodes visual inputs and arranges their tokens, one run per placeholder."""

    @abstractmethod
    def get_model(self) -> LlavaMetaModel: ...

    def get_vision_tower(self) -> OVEncoderVisionTower | None:
        return self.get_model().get_vision_tower()

    # -- visual inputs -> pieces (encoder samples) ---------------------------------

    def _pieces_of(self, index: int, entry: torch.Tensor, modality: str, positions) -> list[VisualPiece]:
        tower = self.get_vision_tower()
        patch = tower.config.patch_size
        where = f"images[{index}] ({modality})"
        if modality == "image":
            if entry.ndim == 3:
                return [VisualPiece(entry)]
            if entry.ndim == 4:  # anyres: base view + tiles, each encoded on its own
                return [VisualPiece(view) for view in entry]
            raise ValueError(f"{where} must be [C, H, W] or [1 + tiles, C, H, W], got {tuple(entry.shape)}")
        if modality not in MODALITIES:
            raise ValueError(f"{where}: unknown modality {modality!r}; expected one of {MODALITIES}")
        channels = tower.config.num_channels
        if entry.ndim != 4 or entry.shape[0] != channels:
            looks_tchw = entry.ndim == 4 and entry.shape[1] == channels
            hint = " (it looks like [T, C, H, W]: pass entry.transpose(0, 1))" if looks_tchw else ""
            raise ValueError(
                f"{where} must be [C={channels}, frames, H, W] (the processor's pixel_values_videos layout), "
                f"got {tuple(entry.shape)}{hint}"
            )
        frames, height, width = entry.shape[1:]
        grid_h, grid_w = height // patch, width // patch
        if modality == "video":
            grid_t = tower.config.rope_temporal_size or frames
            if frames > grid_t:
                raise ValueError(f"{where} has {frames} frames; the encoder's temporal grid holds {grid_t}")
            grid = grid_positions(frames, grid_h, grid_w)
            grid[:, 0] = temporal_slots(frames, grid_t)[grid[:, 0]]
            return [VisualPiece(entry, patch_positions=grid.to(entry.device))]
        if modality == "codec":
            if positions is None:
                raise ValueError(f"{where} needs its positions_thw in patch_positions[{index}]")
            positions = torch.as_tensor(positions, device=entry.device)
            expected = frames * grid_h * grid_w
            if positions.ndim != 2 or positions.shape != (expected, 3):
                raise ValueError(
                    f"{where}: positions_thw must be [{expected}, 3] for {frames} mosaics of "
                    f"{grid_h}x{grid_w} patches (padding policy 'zero'), got {tuple(positions.shape)}"
                )
            return [VisualPiece(entry, patch_positions=positions.long())]

    # -- encode, project, arrange ----------------------------------------------------

    def encode_visual_inputs(self, images, modalities=None, image_sizes=None, patch_positions=None):
        """Token features ``[n_i, hidden]`` for every visual input (one packed encoder pass)."""
        if isinstance(images, torch.Tensor):
            images = list(images)
        count = len(images)
        modalities = list(modalities) if modalities is not None else ["image"] * count
        if len(modalities) != count:
            raise ValueError(f"{count} visual inputs but {len(modalities)} modalities")
        patch_positions = list(patch_positions) if patch_positions is not None else [None] * count
        if len(patch_positions) != count:
            raise ValueError(f"{count} visual inputs but {len(patch_positions)} patch_positions entries")

        tower = self.get_vision_tower()
        pieces, owner = [], []
        for i, (entry, modality, positions) in enumerate(zip(images, modalities, patch_positions)):
            entry_pieces = self._pieces_of(i, entry, modality, positions)
            pieces += entry_pieces
            owner += [i] * len(entry_pieces)
        features = tower.split(tower(pieces), pieces)

        positions = [tower.token_positions(piece).to(feats.device) for piece, feats in zip(pieces, features)]
        projected = [[] for _ in range(count)]
        for part, i in zip(self._project(features, positions), owner):
            projected[i].append(part)
        return [
            self._arrange(modality, parts, image_sizes[i] if image_sizes is not None else None, images[i])
            for i, (modality, parts) in enumerate(zip(modalities, projected))
        ]

    def _project(self, features: list[torch.Tensor], positions: list[torch.Tensor]):
        """``(features, positions)`` of every piece after the projector, run once for the whole batch.

        One call, not one per piece: under ZeRO-3 each call gathers the projector's weights, and
        ranks whose batches hold different numbers of pieces must still make the same calls.
        """
        projector = self.get_model().mm_projector
        sizes = [f.shape[0] for f in features]
        flat = torch.cat(features).to(next(projector.parameters()).dtype)
        if not getattr(projector, "merges_tokens", False):
            return list(zip(torch.split(projector(flat), sizes), positions))
        segments = torch.repeat_interleave(torch.arange(len(sizes), device=flat.device), torch.tensor(sizes, device=flat.device))
        merged, merged_positions, merged_segments = projector(flat, torch.cat(positions), segments)
        counts = torch.bincount(merged_segments, minlength=len(sizes)).tolist()
        return list(zip(torch.split(merged, counts), torch.split(merged_positions, counts)))

    def _newline(self) -> torch.Tensor | None:
        return getattr(self.get_model(), "image_newline", None)

    def placeholder_features(self, images, modalities=None, image_sizes=None, patch_positions=None):
        """The features of every ``<image>`` placeholder of the batch, in order (one packed pass).

        Like :meth:`encode_visual_inputs`, with each ``codec`` input's features split into one
        chunk per mosaic (its ``N`` placeholders): the tokens of mosaic ``j`` are rows
        ``j * G .. (j + 1) * G - 1`` (``G`` patches per mosaic); a token-merging projector's
        output is split into ``N`` near-equal runs, and a trailing newline token stays with
        the last chunk.
        """
        features = self.encode_visual_inputs(images, modalities, image_sizes, patch_positions)
        modalities = list(modalities) if modalities is not None else ["image"] * len(features)
        chunks = []
        for entry, modality, feats in zip(images, modalities, features):
            count = placeholder_count(entry, modality)
            if count == 1:
                chunks.append(feats)
                continue
            tokens = feats.shape[0] - (1 if self._adds_newline(modality) else 0)
            parts = list(torch.tensor_split(feats[:tokens], count))
            parts[-1] = torch.cat([parts[-1], feats[tokens:]])
            chunks += parts
        return chunks

    def _adds_newline(self, modality: str) -> bool:
        config = self.config
        if "unpad" not in config.mm_patch_merge_type or self._newline() is None:
            return False
        return modality == "image" or config.mm_newline_position == "one_token"

    def _arrange(self, modality: str, parts, image_size, entry: torch.Tensor) -> torch.Tensor:
        newline = self._newline() if "unpad" in self.config.mm_patch_merge_type else None
        if modality == "video":
            features = self._pool_frames(*parts[0])
        elif modality == "codec":
            features = parts[0][0]
        elif len(parts) == 1 or newline is None:
            features = torch.cat([f for f, _ in parts])
        else:
            features = self._unpad_tiles(parts, image_size, tile_size=entry.shape[-1], newline=newline)
            return features
        if self._adds_newline(modality):
            features = torch.cat([features, newline[None].to(features.dtype)])
        return features

    def _pool_frames(self, features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Optional 2D pooling of each frame's feature grid (``mm_spatial_pool_stride``)."""
        stride = self.config.mm_spatial_pool_stride
        if not stride or stride == 1:
            return features
        frames = positions[:, 0].unique().numel()
        grid_h, grid_w = int(positions[:, 1].max()) + 1, int(positions[:, 2].max()) + 1
        grid = features.view(frames, grid_h, grid_w, -1).permute(0, 3, 1, 2)
        mode = self.config.mm_spatial_pool_mode
        if mode == "average":
            grid = F.avg_pool2d(grid, stride, ceil_mode=True)
        elif mode == "max":
            grid = F.max_pool2d(grid, stride, ceil_mode=True)
        elif mode == "bilinear":
            size = (math.ceil(grid_h / stride), math.ceil(grid_w / stride))
            grid = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
        else:
            raise ValueError(f"mm_spatial_pool_mode must be average, max or bilinear, got {mode!r}")
        return grid.permute(0, 2, 3, 1).reshape(-1, grid.shape[1])

    def _unpad_tiles(self, parts, image_size, tile_size: int, newline: torch.Tensor) -> torch.Tensor:
        """LLaVA-NeXT ``spatial_unpad``: base view, then the tile grid cropped to the image's
        aspect ratio with a newline token after every row."""

        if image_size is None:
            raise ValueError("anyres images with spatial_unpad need image_sizes")
        base, _ = parts[0]
        tiles = [f for f, _ in parts[1:]]
        tile_positions = parts[1][1]
        grid_h, grid_w = int(tile_positions[:, 1].max()) + 1, int(tile_positions[:, 2].max()) + 1
        num_w, num_h = get_anyres_image_grid_shape(image_size, self.config.image_grid_pinpoints, tile_size)
        if num_w * num_h != len(tiles):
            raise ValueError(f"anyres image of size {image_size} should have {num_w}x{num_h} tiles, got {len(tiles)}")
        hidden = base.shape[-1]
        grid = torch.stack(tiles).view(num_h, num_w, grid_h, grid_w, hidden)
        grid = grid.permute(4, 0, 2, 1, 3).reshape(hidden, num_h * grid_h, num_w * grid_w)
        grid = unpad_image(grid, image_size)
        max_tiles = parse_anyres_max(self.config.image_aspect_ratio)
        if max_tiles:
            limit = max_tiles * grid_h * grid_w
            rows, cols = grid.shape[1:]
            scale = math.sqrt(rows * cols / limit)
            if scale > 1.1:
                grid = F.interpolate(grid[None], size=(int(rows / scale), int(cols / scale)), mode="bilinear")[0]
        rows = grid.shape[1]
        grid = torch.cat([grid, newline[:, None, None].expand(hidden, rows, 1).to(grid.dtype)], dim=-1)
        return torch.cat([base, grid.flatten(1).transpose(0, 1)])

    # -- text-only batches, packed rows ----------------------------------------------

    def _text_only_anchor(self) -> torch.Tensor | None:
        """Zero that depends on the tower and projector, for a training batch without visual inputs.

        Every rank must run the same modules, forward and backward (ZeRO-3 gathers each module's
        weights collectively; DDP wants a gradient for every trainable weight): a text-only batch runs
        the tower and projector on one blank patch and adds zero. None outside training.
        """
        tower = self.get_vision_tower()
        if tower is None or not self.training:
            return None
        patch = tower.config.patch_size
        blank = torch.zeros(tower.config.num_channels, patch, patch, dtype=tower.dtype, device=tower.device)
        return self.placeholder_features([blank], ["image"])[0].sum() * 0.0

    def packed_attention_mask(self, segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """The attention mask of packed rows: each token sees the earlier tokens of its own sample only.

        ``segment_ids`` ``[rows, L]`` names each position's sample (-1: padding, which sees itself so no
        row is empty). A 4-D block-diagonal causal mask ``[rows, 1, L, L]``: boolean for SDPA, 0 / -inf
        for eager and others; None for ``flash_attention_2``, which reads the sample boundaries from the
        restarting ``position_ids``. (``varlen`` takes the bounds instead: :func:`packed_sample_bounds`.)
        """
        implementation = self.config._attn_implementation
        if implementation == "flash_attention_2":
            return None
        length = segment_ids.shape[1]
        same = segment_ids[:, :, None] == segment_ids[:, None, :]
        causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril()
        allowed = same & causal & (segment_ids[:, :, None] >= 0)
        allowed |= torch.eye(length, dtype=torch.bool, device=segment_ids.device) & (segment_ids < 0)[:, :, None]
        mask = allowed[:, None]
        if implementation == "sdpa":
            return mask
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)



def packed_sample_bounds(segment_ids: torch.Tensor) -> dict:
    """The ``varlen`` attention's arguments for packed rows (``segment_ids`` ``[rows, L]``, -1 padding): the bounds
    of every run of one sample (or of padding) in the flattened rows, as transformers names them."""
    rows, length = segment_ids.shape
    flat = segment_ids.reshape(-1)
    starts = torch.ones_like(flat, dtype=torch.bool)
    starts[1:] = flat[1:] != flat[:-1]
    starts[::length] = True  # a row starts a run
    bounds = torch.cat([starts.nonzero().flatten(), flat.new_tensor([flat.numel()])]).to(torch.int32)
    longest = int(bounds.diff().max())
    return {"cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds, "max_length_q": longest, "max_length_k": longest}


@dataclass
class LlavaCausalLMOutput(CausalLMOutputWithPast):
    """The training output: the loss, no logits, and ``num_tokens`` (tokens the LM processed, padding excluded)."""

    num_tokens: torch.Tensor | None = None


class MultimodalCausalLMMixin:
    """Put before the Hugging Face ``*ForCausalLM`` class in the bases: ``forward`` with visual inputs
    (``images``, ``image_sizes``, ``modalities``, ``patch_positions``; packed rows' ``segment_ids``) and a
    ``prepare_inputs_for_generation`` that passes them to the first step only."""

    def _init_weights(self, module):
        super()._init_weights(module)
        init_multimodal_weights(module, self.config.initializer_range)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        images=None,
        image_sizes=None,
        modalities=None,
        patch_positions=None,
        segment_ids: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ):
        """Causal-LM forward with the visual features scattered into the prompt's image tokens.

        ``segment_ids`` (packed rows, ``llava.batching``) replaces ``attention_mask``: each sample attends
        only to itself. In training mode with ``labels`` the LM head runs only on the positions that carry
        a label and ``logits`` is None: a codec video's 10,368 visual tokens and the prompt never get
        full-vocabulary logits. The loss is the same as the full computation (the mean over supervised
        tokens, or their sum / ``num_items_in_batch`` when the Trainer passes it).
        """
        if input_ids is not None and bool((input_ids == IMAGE_TOKEN_INDEX).any()):
            raise ValueError(
                "input_ids hold LLaVA-NeXT <image> placeholders (-200): expand each into its visual tokens "
                "first, with the checkpoint's processor (LlavaOVProcessor) or llava.batching.collate"
            )
        supervised = labels is not None and self.training
        if inputs_embeds is None and input_ids is not None and (images is not None or supervised):
            inputs_embeds = self.scatter_visual_tokens(input_ids, images, modalities, image_sizes, patch_positions)
            input_ids = None
        if segment_ids is not None and self.config._attn_implementation == "varlen":
            # the samples' bounds go to the attention function; no mask is built (a dict of masks is used as is)
            attention_mask = dict.fromkeys(getattr(self.config, "layer_types", None) or ["full_attention"])
            kwargs.update(packed_sample_bounds(segment_ids))
        elif segment_ids is not None:
            attention_mask = self.packed_attention_mask(segment_ids, inputs_embeds.dtype if inputs_embeds is not None
                                                        else self.dtype)
        if supervised:
            if segment_ids is not None:
                num_tokens = int((segment_ids >= 0).sum())
            elif attention_mask is not None and attention_mask.ndim == 2:
                num_tokens = int(attention_mask.sum())
            else:
                num_tokens = labels.numel()
            return self._supervised_forward(attention_mask, position_ids, inputs_embeds, labels, num_tokens, kwargs)
        if past_key_values is not None:  # newer transformers call the cache differently: pass it only if set
            kwargs["past_key_values"] = past_key_values
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def scatter_visual_tokens(self, input_ids, images, modalities=None, image_sizes=None, patch_positions=None):
        """The embeddings of an expanded prompt with the visual features in the ``image_token_id`` positions.

        The features of all placeholders, in order, must be exactly as many as those positions
        (``LlavaOVProcessor`` counts them); otherwise ``ValueError`` with both numbers.
        """
        embeds = self.get_model().embed_tokens(input_ids)
        token_id = self.config.image_token_id
        if token_id is None and images:
            raise ValueError(
                "this checkpoint has no image_token_id (it predates the processor): pass LLaVA-NeXT prompts "
                "(one -200 per <image>), or re-save it in the new layout (python -m llava.model.resave)"
            )
        slots = input_ids == token_id
        if not images:
            if bool(slots.any()):
                raise ValueError(f"the prompt has {int(slots.sum())} image tokens (id {token_id}) but no visual inputs")
            anchor = self._text_only_anchor()
            return embeds if anchor is None else embeds + anchor.to(embeds.dtype)
        features = torch.cat(self.placeholder_features(images, modalities, image_sizes, patch_positions))
        if int(slots.sum()) != features.shape[0]:
            raise ValueError(
                f"the prompt has {int(slots.sum())} image tokens (id {token_id}) but its visual inputs make "
                f"{features.shape[0]} visual tokens: expand each placeholder with the checkpoint's processor"
            )
        return embeds.masked_scatter(slots[..., None].to(embeds.device), features.to(embeds.dtype))

    def prepare_inputs_for_generation(self, input_ids, *args, inputs_embeds=None, images=None, modalities=None,
                                      image_sizes=None, patch_positions=None, **kwargs):
        """Hugging Face's, with the visual inputs passed to the first step only (the prompt's)."""
        inputs = super().prepare_inputs_for_generation(input_ids, *args, inputs_embeds=inputs_embeds, **kwargs)
        if "is_first_iteration" in inspect.signature(super().prepare_inputs_for_generation).parameters:
            first = bool(kwargs.get("is_first_iteration", False))
        else:  # older transformers: the first step is the one at cache position 0
            positions = kwargs.get("cache_position")
            first = positions is None or int(positions[0]) == 0
        if first or not kwargs.get("use_cache", True):
            inputs.update(images=images, modalities=modalities, image_sizes=image_sizes,
                          patch_positions=patch_positions)
        return inputs

    def _supervised_forward(self, attention_mask, position_ids, inputs_embeds, labels, num_tokens, kwargs):
        """Hidden states for every position, the LM head and cross-entropy only where a label is."""
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        kwargs.pop("past_key_values", None)
        kwargs.pop("input_ids", None)
        outputs = self.get_model()(
            attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds, use_cache=False,
            **kwargs,
        )
        hidden = outputs.last_hidden_state[:, :-1]
        targets = labels[:, 1:].to(hidden.device)
        supervised = targets != IGNORE_INDEX
        logits = self.lm_head(hidden[supervised]).float()
        loss = F.cross_entropy(logits, targets[supervised], reduction="sum")
        if num_items_in_batch is not None:
            loss = loss / torch.as_tensor(num_items_in_batch, device=loss.device)
        elif supervised.any():
            loss = loss / supervised.sum()
        return LlavaCausalLMOutput(
            loss=loss, logits=None, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
            num_tokens=torch.tensor(num_tokens),
        )
