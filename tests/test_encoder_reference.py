"""OV-Encoder numbers match the reference semantics (float32) in every input mode."""

from __future__ import annotations

import pytest
import torch
from encoder_reference import reference_forward

ATOL = 1e-4


def assert_matches_reference(model, pixel_values, visible_indices=None, patch_positions=None):
    with torch.no_grad():
        ours = model(
            pixel_values, visible_indices=visible_indices, patch_positions=patch_positions, output_hidden_states=True
        )
        ref_last, ref_pooled, ref_hidden = reference_forward(
            model.state_dict(), model.config, pixel_values, visible_indices, patch_positions
        )
    torch.testing.assert_close(ours.last_hidden_state, ref_last, atol=ATOL, rtol=ATOL)
    assert len(ours.hidden_states) == model.config.num_hidden_layers + 1
    for got, want in zip(ours.hidden_states, ref_hidden):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=ATOL)
    if model.config.use_head:
        torch.testing.assert_close(ours.pooler_output, ref_pooled, atol=ATOL, rtol=ATOL)
    else:
        assert ours.pooler_output is None
    return ours


@pytest.fixture(params=["layer_norm", "rms_norm"])
def norm_type(request):
    return request.param


def test_image_native_resolution(make_encoder, norm_type):
    model = make_encoder(layer_norm_type=norm_type)
    images = torch.randn(2, 3, 12, 20)  # 3 x 5 patches, not square
    out = assert_matches_reference(model, images)
    assert out.last_hidden_state.shape == (2, 15, 64)


def test_dense_video_on_full_grid(make_encoder, norm_type):
    model = make_encoder(layer_norm_type=norm_type)  # rope_temporal_size = 8
    assert_matches_reference(model, torch.randn(2, 3, 8, 8, 12))


def test_few_frames_spread_over_temporal_grid(make_encoder, norm_type):
    """4 frames placed on the 8-slot grid by K == N visible_indices (no token dropped)."""
    model = make_encoder(layer_norm_type=norm_type)
    frames, grid_t, per_frame = 4, 8, 2 * 3
    frame_pos = torch.linspace(0, grid_t - 1, frames).long()
    indices = (frame_pos[:, None] * per_frame + torch.arange(per_frame)).reshape(1, -1).repeat(2, 1)
    out = assert_matches_reference(model, torch.randn(2, 3, frames, 8, 12), visible_indices=indices)
    assert out.last_hidden_state.shape[1] == frames * per_frame


def test_sparse_visible_indices_keep_tokens(make_encoder, norm_type):
    """Codec mode: all 8 frames given, K salient patches kept (different per sample)."""
    model = make_encoder(layer_norm_type=norm_type)
    generator = torch.Generator().manual_seed(1)
    num_patches = 8 * 2 * 3
    indices = torch.stack([torch.randperm(num_patches, generator=generator)[:17].sort().values for _ in range(2)])
    out = assert_matches_reference(model, torch.randn(2, 3, 8, 8, 12), visible_indices=indices)
    assert out.last_hidden_state.shape[1] == 17


def test_patch_positions_for_every_token(make_encoder, norm_type):
    """Mosaic mode: N tokens of N packed frames, each with explicit (t, h, w)."""
    model = make_encoder(layer_norm_type=norm_type, rope_temporal_size=64)
    generator = torch.Generator().manual_seed(2)
    count = 2 * 2 * 3
    positions = torch.stack(
        [
            torch.randint(0, 64, (2, count), generator=generator),
            torch.randint(0, 2, (2, count), generator=generator),
            torch.randint(0, 3, (2, count), generator=generator),
        ],
        dim=-1,
    )
    assert_matches_reference(model, torch.randn(2, 3, 2, 8, 12), patch_positions=positions)


def test_visible_indices_with_patch_positions(make_encoder, norm_type):
    model = make_encoder(layer_norm_type=norm_type)
    indices = torch.tensor([[0, 5, 9, 20, 33, 47], [1, 2, 3, 40, 41, 42]])
    positions = torch.stack([indices // 6, (indices // 3) % 2, indices % 3], dim=-1).flip(1)
    assert_matches_reference(model, torch.randn(2, 3, 8, 8, 12), visible_indices=indices, patch_positions=positions)


def test_without_head(make_encoder, norm_type):
    model = make_encoder(layer_norm_type=norm_type, use_head=False)
    assert not hasattr(model, "head") or model.head is None
    assert_matches_reference(model, torch.randn(1, 3, 8, 8))


def test_rope_temporal_size_none_uses_real_frame_count(make_encoder):
    model = make_encoder(rope_temporal_size=None)
    assert_matches_reference(model, torch.randn(1, 3, 5, 8, 8))


def test_patch_size_is_not_hard_coded(make_encoder):
    model = make_encoder(patch_size=16)
    assert_matches_reference(model, torch.randn(1, 3, 32, 48))
