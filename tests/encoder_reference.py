"""Test oracle: a literal, functional transcription of the reference semantics in ``docs/encoder.md``.

It deliberately follows the reference's own order of work (embed every frame with a
Conv2d, build the full RoPE grid, then gather; eager attention) and shares no code with
``llava.model``, so agreement with it checks our optimised paths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _norm(x, sd, prefix, cfg):
    if cfg.layer_norm_type == "rms_norm":
        return F.rms_norm(x, (x.shape[-1],), sd[f"{prefix}.weight"], eps=cfg.layer_norm_eps)
    return F.layer_norm(x, (x.shape[-1],), sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], eps=cfg.layer_norm_eps)


def _axis_freqs(n, theta):
    return 1.0 / (theta ** (torch.arange(n, dtype=torch.float32) / n))


def _rope_grid(cfg, t, h, w):
    """Half-angle table for every grid cell, frame-major: ``[t*h*w, half]``."""
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    unit = head_dim // 2 // 16
    ft = torch.outer(torch.arange(t, dtype=torch.float32), _axis_freqs(4 * unit, cfg.rope_theta))
    fh = torch.outer(torch.arange(h, dtype=torch.float32), _axis_freqs(6 * unit, cfg.rope_theta))
    fw = torch.outer(torch.arange(w, dtype=torch.float32), _axis_freqs(6 * unit, cfg.rope_theta))
    t_ids = torch.arange(t).repeat_interleave(h * w)
    h_ids = torch.arange(h).repeat_interleave(w).repeat(t)
    w_ids = torch.arange(w).repeat(h).repeat(t)
    return torch.cat([ft[t_ids], fh[h_ids], fw[w_ids]], dim=-1)


def _rope_from_positions(cfg, positions):
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    unit = head_dim // 2 // 16
    p = positions.float()
    return torch.cat(
        [
            p[..., 0, None] * _axis_freqs(4 * unit, cfg.rope_theta),
            p[..., 1, None] * _axis_freqs(6 * unit, cfg.rope_theta),
            p[..., 2, None] * _axis_freqs(6 * unit, cfg.rope_theta),
        ],
        dim=-1,
    )


def _rotate(x):
    even, odd = x[..., ::2], x[..., 1::2]
    return torch.stack((-odd, even), dim=-1).flatten(-2)


def _gelu_mlp(x, sd, prefix):
    x = F.linear(x, sd[f"{prefix}.fc1.weight"], sd[f"{prefix}.fc1.bias"])
    x = F.gelu(x)
    return F.linear(x, sd[f"{prefix}.fc2.weight"], sd[f"{prefix}.fc2.bias"])


def reference_forward(sd, cfg, pixel_values, visible_indices=None, patch_positions=None):
    """Returns ``(last_hidden_state, pooler_output, hidden_states)`` like the reference."""
    P = cfg.patch_size
    D = cfg.hidden_size
    NH = cfg.num_attention_heads
    hd = D // NH
    if pixel_values.dim() == 5:
        Tg = cfg.rope_temporal_size if cfg.rope_temporal_size is not None else pixel_values.shape[2]
        H, W = pixel_values.shape[3:]
        video = pixel_values
    else:
        Tg = 1
        H, W = pixel_values.shape[2:]
        video = pixel_values.unsqueeze(2)
    B, C, T = video.shape[:3]
    frames = video.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W)
    emb = F.conv2d(frames, sd["embeddings.patch_embedding.weight"], stride=P)  # [B*T, D, gh, gw]
    gh, gw = H // P, W // P
    x = emb.flatten(2).transpose(1, 2).reshape(B, T * gh * gw, D)
    N = x.shape[1]

    dense = visible_indices is None and patch_positions is None
    if dense:
        freqs = _rope_grid(cfg, Tg, gh, gw).unsqueeze(0).expand(B, -1, -1)
    else:
        if visible_indices is None:
            visible_indices = torch.arange(N).unsqueeze(0).expand(B, -1)
        if patch_positions is not None:
            freqs = _rope_from_positions(cfg, patch_positions)
        else:
            freqs = _rope_grid(cfg, Tg, gh, gw)[visible_indices]
    freqs = torch.cat([freqs, freqs], dim=-1)

    x = _norm(x, sd, "layernorm_pre", cfg)
    if not dense and visible_indices.shape[1] != N:
        x = x.gather(1, visible_indices.unsqueeze(-1).expand(-1, -1, D))

    cos = freqs.cos().unsqueeze(1).to(x.dtype)
    sin = freqs.sin().unsqueeze(1).to(x.dtype)
    hidden_states = []
    for i in range(cfg.num_hidden_layers):
        hidden_states.append(x)
        p = f"encoder.layers.{i}"
        h = _norm(x, sd, f"{p}.layer_norm1", cfg)
        L = h.shape[1]

        def proj(name):
            y = F.linear(h, sd[f"{p}.self_attn.{name}.weight"], sd[f"{p}.self_attn.{name}.bias"])
            return y.view(B, L, NH, hd).transpose(1, 2)

        q, k, v = proj("q_proj"), proj("k_proj"), proj("v_proj")
        q = q * cos + _rotate(q) * sin
        k = k * cos + _rotate(k) * sin
        attn = torch.softmax(q @ k.transpose(2, 3) * hd**-0.5, dim=-1)
        o = (attn @ v).transpose(1, 2).reshape(B, L, D)
        x = x + F.linear(o, sd[f"{p}.self_attn.out_proj.weight"], sd[f"{p}.self_attn.out_proj.bias"])
        x = x + _gelu_mlp(_norm(x, sd, f"{p}.layer_norm2", cfg), sd, f"{p}.mlp")
    hidden_states.append(x)

    pooled = None
    if cfg.use_head:
        x = _norm(x, sd, "layernorm_post", cfg)
        probe = sd["head.probe"].repeat(B, 1, 1)
        wq, wk, wv = sd["head.attention.in_proj_weight"].chunk(3)
        bq, bk, bv = sd["head.attention.in_proj_bias"].chunk(3)
        q = F.linear(probe, wq, bq).view(B, 1, NH, hd).transpose(1, 2)
        k = F.linear(x, wk, bk).view(B, -1, NH, hd).transpose(1, 2)
        v = F.linear(x, wv, bv).view(B, -1, NH, hd).transpose(1, 2)
        r = (torch.softmax(q @ k.transpose(2, 3) * hd**-0.5, dim=-1) @ v).transpose(1, 2).reshape(B, 1, D)
        r = F.linear(r, sd["head.attention.out_proj.weight"], sd["head.attention.out_proj.bias"])
        r = r + _gelu_mlp(F.rms_norm(r, (D,), sd["head.norm.weight"], eps=cfg.layer_norm_eps), sd, "head.mlp")
        pooled = r[:, 0]
    return x, pooled, tuple(hidden_states)
