"""PyTorch OneVision-Encoder (OV-Encoder).

A pre-norm ViT with no absolute position embedding and a shared 3D rotary embedding
(T:H:W channel split 4:6:6). It reads images at native resolution and videos either as
dense frames or as a sparse set of patches (codec-style selection) placed on a
``rope_temporal_size x Hp x Wp`` grid.

The numbers match the published reference implementation (see
``docs/encoder.md``); three things differ by design:

* only the patches that are kept are embedded (pixels are gathered, then projected),
  where the reference embeds every frame and gathers afterwards;
* a *list* of samples with different token counts runs as one packed sequence with
  block-diagonal attention (``cu_seqlens``), returning per-sample features equal to
  running each sample alone;
* SDPA is the default attention backend, and bad inputs raise ``ValueError`` up front.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import AttentionInterface

from .configuration_onevision_encoder import OneVisionEncoderConfig

try:  # transformers >= 5 ships init helpers that respect already-loaded weights.
    from transformers import initialization as hf_init
except ImportError:  # pragma: no cover - older transformers
    hf_init = None


# ---------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------


@dataclass
class OneVisionEncoderOutput(BaseModelOutputWithPooling):
    """Encoder output.

    For a batched tensor input, ``last_hidden_state`` is ``[B, K, D]`` and every entry of
    ``hidden_states`` has that shape. For a *list* input (variable-length samples) the
    tokens of all samples are packed: ``last_hidden_state`` is ``[sum(K_i), D]`` and
    ``cu_seqlens`` (``[num_samples + 1]``, int32) marks where each sample starts; use
    :meth:`split` to get per-sample tensors. ``pooler_output`` is ``[num_samples, D]`` in
    both cases (when the config has ``use_head``).
    """

    cu_seqlens: torch.Tensor | None = None

    def split(self, tensor: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Per-sample views of a packed tensor (``last_hidden_state`` by default)."""
        tensor = self.last_hidden_state if tensor is None else tensor
        if self.cu_seqlens is None:
            return list(tensor.unbind(0))
        return list(torch.split(tensor, self.cu_seqlens.diff().tolist(), dim=0))


# ---------------------------------------------------------------------------
# Which patches become tokens, and where they sit on the RoPE grid
# ---------------------------------------------------------------------------


@dataclass
class TokenLayout:
    """Token selection for one batch.

    ``source``: ``[B, K, 3]`` (frame, patch row, patch column) of the input patches to embed,
    or ``None`` for all patches in raster order. ``positions``: ``[B, K, 3]`` ``(t, h, w)``
    RoPE coordinates of those tokens (broadcastable over B).
    """

    source: torch.Tensor | None
    positions: torch.Tensor


def _grid_coordinates(flat_index: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Flat index on a ``(T, grid_h, grid_w)`` grid -> ``(t, h, w)`` in the last dim."""
    per_frame = grid_h * grid_w
    return torch.stack(
        (flat_index // per_frame, (flat_index // grid_w) % grid_h, flat_index % grid_w), dim=-1
    )


def _check_integer(name: str, tensor: torch.Tensor) -> None:
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {tensor.dtype}")


def _check_range(name: str, values: torch.Tensor, upper: int, what: str) -> None:
    if values.numel() == 0:
        return
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= upper:
        raise ValueError(f"{name} out of range: values span [{low}, {high}] but {what} allows [0, {upper - 1}]")


def resolve_token_layout(
    video_shape: Sequence[int],
    patch_size: int,
    rope_temporal_size: int | None,
    is_video: bool,
    visible_indices: torch.Tensor | None = None,
    patch_positions: torch.Tensor | None = None,
) -> TokenLayout:
    """Decide which patches to embed and their RoPE coordinates (reference semantics).

    ``video_shape`` is ``(B, C, T, H, W)`` (an image is ``T = 1``). With ``N = T*Hp*Wp``
    patches in the input:

    * nothing given: all ``N`` patches, at their own grid coordinates;
    * ``visible_indices [B, K]``: flat indices on the ``Tg x Hp x Wp`` grid
      (``Tg = rope_temporal_size`` for video, 1 for images). ``K == N`` only *places* the
      tokens (no token is dropped); ``K != N`` keeps the patches at those indices;
    * ``patch_positions [B, K, 3]``: explicit ``(t, h, w)`` RoPE coordinates. Alongside
      ``visible_indices`` it only sets positions. Alone with ``K != N`` it also selects the
      input patch at frame ``t``, row ``h``, column ``w`` (an extension: the reference
      requires ``K == N`` there).
    """
    batch, _, frames, height, width = video_shape
    grid_h, grid_w = height // patch_size, width // patch_size
    num_patches = frames * grid_h * grid_w
    grid_t = (rope_temporal_size if rope_temporal_size is not None else frames) if is_video else 1
    positions_t = rope_temporal_size if rope_temporal_size is not None else frames
    source = None
    positions = None

    if visible_indices is not None:
        _check_integer("visible_indices", visible_indices)
        if visible_indices.ndim != 2 or visible_indices.shape[0] != batch:
            raise ValueError(
                f"visible_indices must have shape [batch={batch}, K], got {tuple(visible_indices.shape)}"
            )
        grid_size = grid_t * grid_h * grid_w
        if visible_indices.shape[1] == num_patches:
            _check_range("visible_indices", visible_indices, grid_size, f"a {grid_t}x{grid_h}x{grid_w} RoPE grid")
            positions = _grid_coordinates(visible_indices, grid_h, grid_w)
        else:
            upper = min(num_patches, grid_size)
            _check_range(
                "visible_indices",
                visible_indices,
                upper,
                f"an input of {num_patches} patches on a {grid_t}x{grid_h}x{grid_w} RoPE grid",
            )
            source = _grid_coordinates(visible_indices, grid_h, grid_w)
            positions = source

    if patch_positions is not None:
        _check_integer("patch_positions", patch_positions)
        if patch_positions.ndim != 3 or patch_positions.shape[0] != batch or patch_positions.shape[2] != 3:
            raise ValueError(
                f"patch_positions must have shape [batch={batch}, K, 3], got {tuple(patch_positions.shape)}"
            )
        num_tokens = patch_positions.shape[1]
        if visible_indices is not None and visible_indices.shape[1] != num_tokens:
            raise ValueError(
                f"K mismatch: visible_indices keeps {visible_indices.shape[1]} tokens but "
                f"patch_positions has {num_tokens} rows"
            )
        selects = visible_indices is None and num_tokens != num_patches
        t_upper = frames if selects else positions_t
        for axis, (name, upper) in enumerate((("t", t_upper), ("h", grid_h), ("w", grid_w))):
            _check_range(f"patch_positions[..., {axis}] ({name})", patch_positions[..., axis], upper, "the input")
        if selects:
            source = patch_positions
        positions = patch_positions

    if positions is None:
        if num_patches > grid_t * grid_h * grid_w:
            raise ValueError(
                f"video has {frames} frames but rope_temporal_size is {rope_temporal_size}: pass visible_indices "
                "or patch_positions, or use rope_temporal_size=None"
            )
        flat = torch.arange(num_patches)
        positions = _grid_coordinates(flat, grid_h, grid_w).unsqueeze(0)
    return TokenLayout(source=source, positions=positions)


def gather_patches(pixel_values: torch.Tensor, patch_size: int, source: torch.Tensor | None) -> torch.Tensor:
    """``[B, C, T, H, W]`` -> ``[B, K, C*P*P]`` flattened patches (channel, row, column order).

    Only the selected patches are copied: the patch grid is a strided view of the input.
    """
    batch, channels, frames, height, width = pixel_values.shape
    grid_h, grid_w = height // patch_size, width // patch_size
    grid = pixel_values.view(batch, channels, frames, grid_h, patch_size, grid_w, patch_size)
    grid = grid.permute(0, 2, 3, 5, 1, 4, 6)  # [B, T, Hp, Wp, C, P, P]
    patch_dim = channels * patch_size * patch_size
    if source is None:
        return grid.reshape(batch, frames * grid_h * grid_w, patch_dim)
    rows = torch.arange(batch, device=pixel_values.device).unsqueeze(1)
    source = source.to(pixel_values.device)
    picked = grid[rows, source[..., 0], source[..., 1], source[..., 2]]
    return picked.reshape(batch, source.shape[1], patch_dim)


# ---------------------------------------------------------------------------
# Rotary embedding (3D, 4:6:6) — reproduces the reference layout exactly
# ---------------------------------------------------------------------------


class OneVisionEncoderRotaryEmbedding(nn.Module):
    """Angles for the shared 3D RoPE.

    With ``half = head_dim / 2`` and ``unit = half / 16``, the temporal axis gets ``4*unit``
    channels and height/width ``6*unit`` each; axis frequencies are
    ``theta ** -(i / n)`` (exponent ``i/n``, as the weights were trained), and the
    ``half``-long angle vector is concatenated with itself. No buffers: the frequencies
    are recomputed on the fly so meta-device initialisation needs no special care.
    """

    def __init__(self, config: OneVisionEncoderConfig):
        super().__init__()
        head_dim = config.hidden_size // config.num_attention_heads
        unit = head_dim // 2 // 16
        self.axis_sizes = (4 * unit, 6 * unit, 6 * unit)
        self.theta = float(config.rope_theta)

    def inverse_frequencies(self, device: torch.device) -> list[torch.Tensor]:
        return [
            1.0 / (self.theta ** (torch.arange(n, dtype=torch.float32, device=device) / n))
            for n in self.axis_sizes
        ]

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """``positions [..., 3]`` (t, h, w) -> float32 angles ``[..., head_dim]``."""
        coords = positions.to(torch.float32)
        inv = self.inverse_frequencies(positions.device)
        half = torch.cat([coords[..., axis, None] * inv[axis] for axis in range(3)], dim=-1)
        return torch.cat((half, half), dim=-1)


def rotate_interleaved(x: torch.Tensor) -> torch.Tensor:
    """``(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)``."""
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack((-odd, even), dim=-1).flatten(-2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x [B, L, H, hd]`` with ``cos/sin [B, L, 1, hd]`` already in ``x``'s dtype."""
    return x * cos + rotate_interleaved(x) * sin


# ---------------------------------------------------------------------------
# Attention backends. All take and return [B, L, H, hd]; ``cu_seqlens`` (with B == 1)
# marks independent packed samples (block-diagonal attention).
# ---------------------------------------------------------------------------


def block_diagonal_mask(cu_seqlens: torch.Tensor, length: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive ``[L, L]`` mask that lets each packed sample attend only to itself."""
    sample_of_token = torch.bucketize(
        torch.arange(length, device=cu_seqlens.device), cu_seqlens[1:].to(torch.long), right=True
    )
    same = sample_of_token[:, None] == sample_of_token[None, :]
    mask = torch.zeros(length, length, dtype=dtype, device=cu_seqlens.device)
    return mask.masked_fill_(~same, torch.finfo(dtype).min)


def eager_attention(q, k, v, scale, dropout, cu_seqlens, max_seqlen, training):
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, hd]
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if cu_seqlens is not None:
        scores = scores + block_diagonal_mask(cu_seqlens, scores.shape[-1], scores.dtype)
    probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    probs = F.dropout(probs, p=dropout, training=training)
    return torch.matmul(probs, v).transpose(1, 2), probs


def per_sample_sdpa(q, k, v, cu_seqlens, scale: float | None, dropout: float = 0.0,
                    causal: bool = False) -> torch.Tensor:
    """Exact attention of packed samples on any device, one SDPA call per sample (no ``[T, T]`` mask): ``q``
    ``[1, H, T, hd]``, ``k`` / ``v`` ``[1, H_kv, T, hd]`` (fewer heads: grouped-query, each shared by
    ``H / H_kv`` query heads), samples at ``cu_seqlens``; returns ``[1, H, T, hd]``."""
    grouped = k.shape[1] != q.shape[1]
    lengths = cu_seqlens.diff().tolist()
    outs = [
        F.scaled_dot_product_attention(qs, ks, vs, dropout_p=dropout, is_causal=causal, scale=scale, enable_gqa=grouped)
        for qs, ks, vs in zip(*(t.split(lengths, dim=2) for t in (q, k, v)))
    ]
    return torch.cat(outs, dim=2)


def torch_varlen_ready(tensor: torch.Tensor) -> bool:
    """Whether PyTorch's variable-length attention (flash kernels) runs on ``tensor``: CUDA, half precision, a
    torch that has it (2.10 and later)."""
    if not tensor.is_cuda or tensor.dtype not in (torch.float16, torch.bfloat16):
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True


def torch_varlen(q, k, v, cu_seqlens, max_seqlen: int, scale: float | None, causal: bool = False) -> torch.Tensor:
    """PyTorch's variable-length attention: ``q`` ``[T, H, hd]``, ``k`` / ``v`` ``[T, H_kv, hd]``; ``[T, H, hd]``."""
    from torch.nn.attention.varlen import varlen_attn

    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    return varlen_attn(q, k, v, cu, cu, max_seqlen, max_seqlen, scale=scale,
                       window_size=(-1, 0) if causal else (-1, -1), enable_gqa=k.shape[1] != q.shape[1])


def sdpa_attention(q, k, v, scale, dropout, cu_seqlens, max_seqlen, training):
    dropout = dropout if training else 0.0
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, L, hd]
    if cu_seqlens is None:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scale).transpose(1, 2), None
    return per_sample_sdpa(q, k, v, cu_seqlens, scale, dropout).transpose(1, 2), None


def varlen_attention(q, k, v, scale, dropout, cu_seqlens, max_seqlen, training):
    """Packed samples through PyTorch's varlen kernels on CUDA in half precision (no dropout); SDPA otherwise."""
    if cu_seqlens is None or (training and dropout) or not torch_varlen_ready(q):
        return sdpa_attention(q, k, v, scale, dropout, cu_seqlens, max_seqlen, training)
    return torch_varlen(q[0], k[0], v[0], cu_seqlens, max_seqlen, scale).unsqueeze(0), None


def varlen_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, cu_seq_lens_q=None, max_length_q=None, **kwargs):
    """transformers' attention function ``varlen`` (``attn_implementation="varlen"``, any model): packed rows whose
    samples come as ``cu_seq_lens_q`` (flattened over the batch; the LLaVA model passes them for ``segment_ids``)
    attend each sample to itself only, through PyTorch's varlen kernels on CUDA, one SDPA call per sample
    elsewhere (a cost of the sum of the samples' squared lengths); anything else is transformers' SDPA, mask and
    all. ``query`` ``[B, H, L, hd]``; returns ``[B, L, H, hd]``."""
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if kwargs.get("sliding_window") is not None:
        raise ValueError("attn_implementation='varlen' does not take sliding-window layers with packed rows: use "
                         "flash_attention_2, or rows without packing")
    batch, heads, length, dim = query.shape
    causal = getattr(module, "is_causal", True)
    if not dropout and torch_varlen_ready(query):
        def tokens(tensor: torch.Tensor) -> torch.Tensor:  # [B, H, L, hd] -> [B * L, H, hd]
            return tensor.transpose(1, 2).reshape(batch * length, tensor.shape[1], dim)

        out = torch_varlen(tokens(query), tokens(key), tokens(value), cu_seq_lens_q, int(max_length_q), scaling, causal)
        return out.reshape(batch, length, heads, dim), None

    def one_row(tensor: torch.Tensor) -> torch.Tensor:  # [B, H, L, hd] -> [1, H, B * L, hd] (a view for B == 1)
        return tensor.transpose(0, 1).reshape(1, tensor.shape[1], batch * length, dim)

    out = per_sample_sdpa(one_row(query), one_row(key), one_row(value), cu_seq_lens_q, scaling, dropout, causal)
    return out[0].reshape(heads, batch, length, dim).permute(1, 2, 0, 3), None


def flash_attention_2(q, k, v, scale, dropout, cu_seqlens, max_seqlen, training):
    from flash_attn import flash_attn_func, flash_attn_varlen_func

    if q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"flash_attention_2 needs float16 or bfloat16 activations, got {q.dtype}")
    dropout = dropout if training else 0.0
    if cu_seqlens is None:
        return flash_attn_func(q, k, v, dropout_p=dropout, softmax_scale=scale, causal=False), None
    out = flash_attn_varlen_func(
        q[0], k[0], v[0], cu_seqlens, cu_seqlens, max_seqlen, max_seqlen,
        dropout_p=dropout, softmax_scale=scale, causal=False,
    )
    return out.unsqueeze(0), None


# ``varlen`` is a name transformers accepts for any model; without packed rows it is SDPA, masks included
AttentionInterface.register("varlen", varlen_attention_forward)
AttentionMaskInterface.register("varlen", sdpa_mask)

ATTENTION_FUNCTIONS: dict[str, Callable] = {
    "eager": eager_attention,
    "sdpa": sdpa_attention,
    "varlen": varlen_attention,
    "flash_attention_2": flash_attention_2,
}


# ---------------------------------------------------------------------------
# Modules (names follow the published state_dict layout)
# ---------------------------------------------------------------------------


def make_norm(config: OneVisionEncoderConfig) -> nn.Module:
    if config.layer_norm_type == "rms_norm":
        return nn.RMSNorm(config.hidden_size, eps=config.layer_norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class OneVisionEncoderPatchEmbedding(nn.Conv2d):
    """The published checkpoints' bias-free ``Conv2d(C, D, kernel=stride=P)``, applied to flattened patches.

    ``forward`` takes ``[..., C*P*P]`` patches (channel, row, column order) and returns ``[..., D]``:
    the Conv2d's result on those patches, computed as one matmul (several times faster on CPU
    than a convolution over P x P tiles). Being the module that owns the weight and uses it in
    its own forward keeps it correct under ZeRO-3, which gathers a module's weights at its forward.
    """

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return F.linear(patches.to(self.weight.dtype), self.weight.reshape(self.out_channels, -1))


class OneVisionEncoderEmbeddings(nn.Module):
    """Bias-free patch projection applied to gathered patches only."""

    def __init__(self, config: OneVisionEncoderConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.patch_embedding = OneVisionEncoderPatchEmbedding(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size, bias=False
        )

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """``[..., C*P*P]`` flattened patches -> ``[..., D]``; equals the Conv2d on those patches."""
        return self.patch_embedding(patches)


class OneVisionEncoderAttention(nn.Module):
    def __init__(self, config: OneVisionEncoderConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scale = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.k_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.v_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, length, _ = hidden_states.shape
        shape = (batch, length, self.num_heads, self.head_dim)
        q = apply_rotary(self.q_proj(hidden_states).view(shape), cos, sin)
        k = apply_rotary(self.k_proj(hidden_states).view(shape), cos, sin)
        v = self.v_proj(hidden_states).view(shape)
        attend = ATTENTION_FUNCTIONS[self.config._attn_implementation]
        out, weights = attend(q, k, v, self.scale, self.dropout, cu_seqlens, max_seqlen, self.training)
        return self.out_proj(out.reshape(batch, length, -1)), weights


class OneVisionEncoderMLP(nn.Module):
    def __init__(self, config: OneVisionEncoderConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class OneVisionEncoderEncoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(self, config: OneVisionEncoderConfig):
        super().__init__()
        self.layer_norm1 = make_norm(config)
        self.self_attn = OneVisionEncoderAttention(config)
        self.layer_norm2 = make_norm(config)
        self.mlp = OneVisionEncoderMLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cu_seqlens: torch.Tensor | None = None,
        max_seqlen: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn_out, weights = self.self_attn(self.layer_norm1(hidden_states), cos, sin, cu_seqlens, max_seqlen)
        hidden_states = hidden_states + attn_out
        hidden_states = hidden_states + self.mlp(self.layer_norm2(hidden_states))
        return hidden_states, weights


class OneVisionEncoderEncoder(nn.Module):
    def __init__(self, config: OneVisionEncoderConfig):
        super().__init__()
        self.layers = nn.ModuleList(OneVisionEncoderEncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden_states, cos, sin, cu_seqlens, max_seqlen, output_attentions, output_hidden_states):
        all_hidden = [] if output_hidden_states else None
        all_attn = [] if output_attentions else None
        for layer in self.layers:
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            hidden_states, weights = layer(hidden_states, cos, sin, cu_seqlens, max_seqlen)
            if all_attn is not None:
                all_attn.append(weights)
        if all_hidden is not None:
            all_hidden.append(hidden_states)
        return (
            hidden_states,
            tuple(all_hidden) if all_hidden is not None else None,
            tuple(all_attn) if all_attn is not None else None,
        )


class OneVisionEncoderPoolingHead(nn.Module):
    """Attention pooling with a learned probe, then ``r + mlp(rms_norm(r))``."""

    def __init__(self, config: OneVisionEncoderConfig):
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, config.hidden_size))
        self.attention = nn.MultiheadAttention(config.hidden_size, config.num_attention_heads, batch_first=True)
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = OneVisionEncoderMLP(config)

    def forward(self, hidden_states: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        probe = self.probe.expand(hidden_states.shape[0], -1, -1).to(hidden_states.dtype)
        pooled, _ = self.attention(
            probe, hidden_states, hidden_states, key_padding_mask=key_padding_mask, need_weights=False
        )
        pooled = pooled + self.mlp(self.norm(pooled))
        return pooled[:, 0]


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


class OneVisionEncoderPreTrainedModel(PreTrainedModel):
    config_class = OneVisionEncoderConfig
    base_model_prefix = "onevision_encoder"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _no_split_modules = ["OneVisionEncoderEncoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flash_attn_2 = True  # name used by transformers < 5

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        normal = hf_init.normal_ if hf_init is not None else nn.init.normal_
        zeros = hf_init.zeros_ if hf_init is not None else nn.init.zeros_
        ones = hf_init.ones_ if hf_init is not None else nn.init.ones_
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            normal(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                zeros(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
            ones(module.weight)
            if getattr(module, "bias", None) is not None:
                zeros(module.bias)
        elif isinstance(module, OneVisionEncoderPoolingHead):
            normal(module.probe, mean=0.0, std=std)
            normal(module.attention.in_proj_weight, mean=0.0, std=std)
            zeros(module.attention.in_proj_bias)


class OneVisionEncoderModel(OneVisionEncoderPreTrainedModel):
    """OV-Encoder backbone.

    ``forward(pixel_values, visible_indices=None, patch_positions=None, ...)`` where
    ``pixel_values`` is an image batch ``[B, C, H, W]``, a video batch ``[B, C, T, H, W]``,
    or a list of per-sample tensors (``[C, H, W]`` or ``[C, T, H, W]``, any sizes) with
    optional per-sample lists of ``visible_indices [K_i]`` / ``patch_positions [K_i, 3]``.
    See :func:`resolve_token_layout` for how indices and positions select tokens.
    """

    def __init__(self, config: OneVisionEncoderConfig):
        super().__init__(config)
        self.embeddings = OneVisionEncoderEmbeddings(config)
        self.layernorm_pre = make_norm(config)
        self.encoder = OneVisionEncoderEncoder(config)
        self.video_rope = OneVisionEncoderRotaryEmbedding(config)
        if config.use_head:
            self.layernorm_post = make_norm(config)
            self.head = OneVisionEncoderPoolingHead(config)
        else:
            self.layernorm_post = None
            self.head = None
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embedding

    # -- input handling -----------------------------------------------------

    def _as_video(self, pixel_values: torch.Tensor, batched: bool, where: str) -> tuple[torch.Tensor, bool]:
        """Validate one input tensor and view it as ``[B, C, T, H, W]``; returns (video, is_video)."""
        if not isinstance(pixel_values, torch.Tensor):
            raise ValueError(f"{where} must be a torch.Tensor, got {type(pixel_values).__name__}")
        image_rank, video_rank = (4, 5) if batched else (3, 4)
        if pixel_values.ndim not in (image_rank, video_rank):
            layout = "[B, C, H, W] or [B, C, T, H, W]" if batched else "[C, H, W] or [C, T, H, W]"
            raise ValueError(f"{where} must have shape {layout}, got {tuple(pixel_values.shape)}")
        is_video = pixel_values.ndim == video_rank
        if not batched:
            pixel_values = pixel_values.unsqueeze(0)
        if not is_video:
            pixel_values = pixel_values.unsqueeze(2)
        _, channels, frames, height, width = pixel_values.shape
        patch = self.config.patch_size
        if channels != self.config.num_channels:
            raise ValueError(f"{where} has {channels} channels, expected {self.config.num_channels}")
        if frames < 1 or height < patch or width < patch or height % patch or width % patch:
            raise ValueError(
                f"{where} has frames={frames}, height={height}, width={width}: height and width must be "
                f"positive multiples of patch_size={patch} (resize with OneVisionEncoderImageProcessor)"
            )
        return pixel_values, is_video

    def _embed(
        self, video: torch.Tensor, is_video: bool, visible_indices, patch_positions
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gather and project the kept patches: ``([B, K, D] embeddings, [B|1, K, 3] positions)``."""
        layout = resolve_token_layout(
            video.shape, self.config.patch_size, self.config.rope_temporal_size, is_video,
            visible_indices, patch_positions,
        )
        patches = gather_patches(video, self.config.patch_size, layout.source)
        return self.embeddings(patches), layout.positions.to(video.device)

    def _embed_packed(self, samples, visible_indices, patch_positions):
        """Embed a list of samples as one packed ``[1, sum K_i, D]`` sequence."""
        count = len(samples)
        if count == 0:
            raise ValueError("pixel_values is an empty list")
        for name, per_sample in (("visible_indices", visible_indices), ("patch_positions", patch_positions)):
            if per_sample is not None and (not isinstance(per_sample, (list, tuple)) or len(per_sample) != count):
                raise ValueError(f"with a list of {count} samples, {name} must be a list of {count} entries (or None)")
        patch_chunks, position_chunks = [], []
        for i, sample in enumerate(samples):
            video, is_video = self._as_video(sample, batched=False, where=f"pixel_values[{i}]")
            indices = visible_indices[i] if visible_indices is not None else None
            positions = patch_positions[i] if patch_positions is not None else None
            layout = resolve_token_layout(
                video.shape, self.config.patch_size, self.config.rope_temporal_size, is_video,
                indices.unsqueeze(0) if indices is not None else None,
                positions.unsqueeze(0) if positions is not None else None,
            )
            patch_chunks.append(gather_patches(video, self.config.patch_size, layout.source))
            position_chunks.append(layout.positions.to(video.device).expand(1, -1, -1))
        lengths = torch.tensor([chunk.shape[1] for chunk in patch_chunks])
        cu_seqlens = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
        hidden = self.embeddings(torch.cat(patch_chunks, dim=1))
        return hidden, torch.cat(position_chunks, dim=1), cu_seqlens.to(hidden.device), int(lengths.max())

    # -- forward ------------------------------------------------------------

    def forward(
        self,
        pixel_values: torch.Tensor | list[torch.Tensor],
        visible_indices: torch.Tensor | list[torch.Tensor | None] | None = None,
        patch_positions: torch.Tensor | list[torch.Tensor | None] | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> OneVisionEncoderOutput | tuple:
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if output_attentions and self.config._attn_implementation != "eager":
            raise ValueError(
                f"output_attentions needs attn_implementation='eager' (model uses "
                f"{self.config._attn_implementation!r})"
            )

        packed = isinstance(pixel_values, (list, tuple))
        if packed:
            hidden, positions, cu_seqlens, max_seqlen = self._embed_packed(
                pixel_values, visible_indices, patch_positions
            )
        else:
            video, is_video = self._as_video(pixel_values, batched=True, where="pixel_values")
            hidden, positions = self._embed(video, is_video, visible_indices, patch_positions)
            cu_seqlens, max_seqlen = None, None

        angles = self.video_rope(positions).unsqueeze(2)  # [B|1, K, 1, hd], float32
        cos, sin = angles.cos().to(hidden.dtype), angles.sin().to(hidden.dtype)

        hidden = self.layernorm_pre(hidden)
        sequence, all_hidden, all_attn = self.encoder(
            hidden, cos, sin, cu_seqlens, max_seqlen, output_attentions, output_hidden_states
        )
        if self.layernorm_post is not None:
            sequence = self.layernorm_post(sequence)

        pooled = None
        if self.head is not None:
            pooled = self._pool(sequence, cu_seqlens)

        if packed:  # [1, total, D] -> [total, D]
            sequence = sequence[0]
            all_hidden = tuple(h[0] for h in all_hidden) if all_hidden is not None else None

        if not return_dict:
            extras = tuple(v for v in (all_hidden, all_attn, cu_seqlens) if v is not None)
            return (sequence, pooled) + extras
        return OneVisionEncoderOutput(
            last_hidden_state=sequence,
            pooler_output=pooled,
            hidden_states=all_hidden,
            attentions=all_attn,
            cu_seqlens=cu_seqlens,
        )

    def _pool(self, sequence: torch.Tensor, cu_seqlens: torch.Tensor | None) -> torch.Tensor:
        if cu_seqlens is None:
            return self.head(sequence)
        per_sample = torch.split(sequence[0], cu_seqlens.diff().tolist(), dim=0)
        padded = nn.utils.rnn.pad_sequence(per_sample, batch_first=True)
        lengths = cu_seqlens.diff().to(padded.device)
        padding = torch.arange(padded.shape[1], device=padded.device)[None, :] >= lengths[:, None]
        return self.head(padded, key_padding_mask=padding)


__all__ = ["OneVisionEncoderModel", "OneVisionEncoderOutput", "OneVisionEncoderPreTrainedModel"]
