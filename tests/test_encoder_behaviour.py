"""OV-Encoder behaviour: mode equivalences, backends, packed batches, gradients, bad inputs."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys

import pytest
import torch
from encoder_utils import tiny_encoder

from llava.model import modeling_onevision_encoder as modeling

ATOL = 1e-5


def grid_positions(frames: int, grid_h: int, grid_w: int) -> torch.Tensor:
    t, h, w = torch.meshgrid(torch.arange(frames), torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    return torch.stack([t, h, w], dim=-1).reshape(-1, 3)


# --- mode equivalences -------------------------------------------------------


def test_dense_equals_all_visible_indices(make_encoder):
    model = make_encoder()
    video = torch.randn(2, 3, 8, 8, 12)
    with torch.no_grad():
        dense = model(video).last_hidden_state
        indexed = model(video, visible_indices=torch.arange(8 * 6).repeat(2, 1)).last_hidden_state
    torch.testing.assert_close(dense, indexed, atol=ATOL, rtol=ATOL)


def test_visible_indices_equal_equivalent_patch_positions(make_encoder):
    model = make_encoder()
    video = torch.randn(2, 3, 8, 8, 12)
    indices = torch.tensor([[3, 7, 11, 30, 31, 47], [0, 1, 2, 3, 4, 5]])
    positions = grid_positions(8, 2, 3)[indices]
    with torch.no_grad():
        by_index = model(video, visible_indices=indices)
        by_position = model(video, patch_positions=positions)
    torch.testing.assert_close(by_index.last_hidden_state, by_position.last_hidden_state, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(by_index.pooler_output, by_position.pooler_output, atol=ATOL, rtol=ATOL)


def test_only_kept_patches_are_embedded(make_encoder):
    """Cost follows the tokens kept: the projection sees K patches, not T*Hp*Wp."""
    model = make_encoder()
    seen = []
    model.embeddings.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    indices = torch.tensor([[1, 9, 17, 40]])
    with torch.no_grad():
        model(torch.randn(1, 3, 8, 8, 12), visible_indices=indices)
        model(torch.randn(1, 3, 8, 8, 12), patch_positions=grid_positions(8, 2, 3)[indices])
    patch_dim = 3 * 4 * 4
    assert seen == [(1, 4, patch_dim), (1, 4, patch_dim)]


def test_gather_patches_matches_conv_layout():
    video = torch.randn(2, 3, 4, 8, 12)
    source = torch.tensor([[[0, 0, 0], [3, 1, 2]], [[2, 1, 0], [1, 0, 1]]])
    patches = modeling.gather_patches(video, 4, source)
    for b in range(2):
        for k in range(2):
            t, h, w = source[b, k].tolist()
            expected = video[b, :, t, h * 4 : h * 4 + 4, w * 4 : w * 4 + 4].reshape(-1)
            torch.testing.assert_close(patches[b, k], expected, rtol=0, atol=0)


# --- attention backends ------------------------------------------------------


@pytest.mark.parametrize("backend", ["sdpa", "varlen"])
@pytest.mark.parametrize("packed", [False, True])
def test_eager_and_sdpa_agree(packed, backend):
    """``sdpa`` and ``varlen`` (PyTorch's varlen kernels on CUDA, per-sample SDPA here) give eager's numbers."""
    eager, sdpa = tiny_encoder("eager", seed=5), tiny_encoder(backend, seed=5)
    if packed:
        inputs = [torch.randn(3, 4, 8, 12), torch.randn(3, 16, 8)]
    else:
        inputs = torch.randn(2, 3, 8, 8, 12)
    with torch.no_grad():
        a, b = eager(inputs, output_hidden_states=True), sdpa(inputs, output_hidden_states=True)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, atol=ATOL, rtol=ATOL)


def test_eager_returns_attention_probabilities():
    model = tiny_encoder("eager")
    with torch.no_grad():
        out = model(torch.randn(2, 3, 8, 12), output_attentions=True)
    assert len(out.attentions) == 2
    assert out.attentions[0].shape == (2, 2, 6, 6)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 2, 6))


def test_packed_eager_attention_is_block_diagonal():
    model = tiny_encoder("eager")
    with torch.no_grad():
        out = model([torch.randn(3, 8, 8), torch.randn(3, 4, 12)], output_attentions=True)
    probs = out.attentions[0][0]  # [H, 7, 7]: 4 tokens then 3 tokens
    assert probs.shape == (2, 7, 7)
    assert torch.all(probs[:, :4, 4:] == 0) and torch.all(probs[:, 4:, :4] == 0)


def test_output_attentions_needs_eager():
    with pytest.raises(ValueError, match="eager"):
        tiny_encoder("sdpa")(torch.randn(1, 3, 8, 8), output_attentions=True)


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None, reason="checks the error when it is absent")
def test_flash_attention_2_without_flash_attn_fails_clearly(tmp_path):
    from transformers import AutoModel

    tiny_encoder().save_pretrained(tmp_path)
    with pytest.raises(ImportError, match="(?i)flash"):
        AutoModel.from_pretrained(tmp_path, attn_implementation="flash_attention_2")


@pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None,
                    reason="flash_attention_2 needs CUDA and the flash_attn package")
def test_flash_attention_2_agrees_with_sdpa_on_gpu():  # pragma: no cover - GPU only
    flash = tiny_encoder("flash_attention_2", seed=6).cuda().to(torch.bfloat16)
    sdpa = tiny_encoder("sdpa", seed=6).cuda().to(torch.bfloat16)
    inputs = [torch.randn(3, 4, 8, 12, device="cuda", dtype=torch.bfloat16), torch.randn(3, 16, 8, device="cuda",
                                                                                     dtype=torch.bfloat16)]
    with torch.no_grad():
        a, b = flash(inputs), sdpa(inputs)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, atol=3e-2, rtol=3e-2)


def _install_flash_attn_double(monkeypatch, calls):
    """A stand-in for the flash_attn package (absent on CPU machines) with its documented API:
    ``flash_attn_func(q, k, v)`` on ``[B, L, H, hd]`` and ``flash_attn_varlen_func`` on packed
    ``[total, H, hd]`` with ``cu_seqlens``. It checks the encoder's calling contract; the
    kernels themselves are exercised on GPU by the test above."""
    import types

    def attend(q, k, v, scale):
        scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale
        return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v.float()).to(q.dtype)

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
        calls.append(("dense", q.dtype, q.shape))
        assert not causal and q.ndim == 4
        return torch.stack([attend(qb, kb, vb, softmax_scale) for qb, kb, vb in zip(q, k, v)])

    def flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None, causal=False):
        calls.append(("varlen", q.dtype, cu_q.tolist(), max_q))
        assert not causal and q.ndim == 3 and cu_q.dtype == torch.int32 and torch.equal(cu_q, cu_k)
        bounds = cu_q.tolist()
        return torch.cat([attend(q[a:b], k[a:b], v[a:b], softmax_scale) for a, b in zip(bounds, bounds[1:])])

    module = types.ModuleType("flash_attn")
    module.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
    module.flash_attn_func, module.flash_attn_varlen_func = flash_attn_func, flash_attn_varlen_func
    monkeypatch.setitem(sys.modules, "flash_attn", module)


@pytest.mark.parametrize("packed", [False, True])
def test_flash_attention_2_calling_contract(monkeypatch, packed):
    calls = []
    _install_flash_attn_double(monkeypatch, calls)
    sdpa = tiny_encoder("sdpa", seed=6).to(torch.bfloat16)
    flash = tiny_encoder("sdpa", seed=6).to(torch.bfloat16)
    flash.config._attn_implementation = "flash_attention_2"  # transformers refuses it at init on CPU
    if packed:
        inputs = [torch.randn(3, 4, 8, 12), torch.randn(3, 16, 8)]
    else:
        inputs = torch.randn(2, 3, 8, 8, 12)
    with torch.no_grad():
        a, b = flash(inputs), sdpa(inputs)
    torch.testing.assert_close(a.last_hidden_state.float(), b.last_hidden_state.float(), atol=0.05, rtol=0.05)
    assert len(calls) == 2 and all(call[1] == torch.bfloat16 for call in calls)
    assert calls[0][0] == ("varlen" if packed else "dense")
    if packed:
        assert calls[0][2:] == ([0, 24, 32], 24)
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        flash.float()(torch.randn(1, 3, 8, 8))


def test_bfloat16_stays_bfloat16(make_encoder):
    """No silent upcast: q/k/v reach the attention kernel in the activation dtype."""
    model = make_encoder().to(torch.bfloat16)
    dtypes = []
    original = modeling.ATTENTION_FUNCTIONS["sdpa"]

    def spy(q, k, v, *args):
        dtypes.append((q.dtype, k.dtype, v.dtype))
        return original(q, k, v, *args)

    modeling.ATTENTION_FUNCTIONS["sdpa"] = spy
    try:
        with torch.no_grad():
            out = model(torch.randn(1, 3, 8, 8, 12, dtype=torch.bfloat16), output_hidden_states=True)
    finally:
        modeling.ATTENTION_FUNCTIONS["sdpa"] = original
    assert set(dtypes) == {(torch.bfloat16,) * 3}
    assert out.last_hidden_state.dtype == torch.bfloat16
    assert out.pooler_output.dtype == torch.bfloat16
    assert all(h.dtype == torch.bfloat16 for h in out.hidden_states)


def test_bfloat16_close_to_float32(make_encoder):
    model = make_encoder()
    video = torch.randn(1, 3, 8, 8, 12)
    with torch.no_grad():
        full = model(video).last_hidden_state
        half = model.to(torch.bfloat16)(video.to(torch.bfloat16)).last_hidden_state.float()
    assert (full - half).abs().max() < 0.15 * full.abs().max()


# --- variable-length (packed) batches ------------------------------------------


def test_packed_batch_equals_each_sample_alone(make_encoder):
    """Three codec videos with different token counts and an image of another size, one pass."""
    model = make_encoder(rope_temporal_size=16)
    generator = torch.Generator().manual_seed(7)
    num_patches = 16 * 3 * 4
    videos = [torch.randn(3, 16, 12, 16, generator=generator) for _ in range(3)]
    keep = [torch.randperm(num_patches, generator=generator)[:k].sort().values for k in (150, 97, 40)]
    image = torch.randn(3, 20, 8, generator=generator)
    samples = videos + [image]
    indices = keep + [None]
    with torch.no_grad():
        packed = model(samples, visible_indices=indices, output_hidden_states=True)
        alone = [model(v[None], visible_indices=i[None], output_hidden_states=True) for v, i in zip(videos, keep)]
        alone.append(model(image[None], output_hidden_states=True))
    assert packed.cu_seqlens.tolist() == [0, 150, 247, 287, 297]
    assert packed.last_hidden_state.shape == (297, 64)
    for got, want in zip(packed.split(), alone):
        torch.testing.assert_close(got, want.last_hidden_state[0], atol=ATOL, rtol=ATOL)
    torch.testing.assert_close(packed.pooler_output, torch.cat([a.pooler_output for a in alone]), atol=ATOL, rtol=ATOL)
    for layer, hidden in enumerate(packed.hidden_states):
        for got, want in zip(packed.split(hidden), alone):
            torch.testing.assert_close(got, want.hidden_states[layer][0], atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("backend", ["eager", "sdpa", "varlen"])
def test_packed_gradients_equal_each_sample_alone(backend):
    """Training the tower on a packed batch is training it on each sample alone: every weight's gradient."""
    model = tiny_encoder(backend, seed=3).train()
    generator = torch.Generator().manual_seed(4)
    samples = [torch.randn(3, 4, 8, 12, generator=generator), torch.randn(3, 16, 8, generator=generator),
               torch.randn(3, 8, 8, generator=generator)]

    def grads(batches) -> dict:
        model.zero_grad()
        for batch in batches:
            out = model(batch, output_hidden_states=True)
            (out.hidden_states[-2].square().mean() * out.hidden_states[-2].shape[0]).backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    packed, alone = grads([samples]), grads([[sample] for sample in samples])
    assert packed.keys() == alone.keys() and len(packed) > 8
    for name, grad in alone.items():
        torch.testing.assert_close(packed[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_packed_batch_with_per_sample_positions(make_encoder):
    """Per-sample codec positions (the upstream LLaVA code used sample 0's for all)."""
    model = make_encoder(rope_temporal_size=64)
    generator = torch.Generator().manual_seed(8)
    mosaics = [torch.randn(3, n, 8, 12, generator=generator) for n in (2, 1)]
    positions = [
        torch.stack([torch.randint(0, 64, (n * 6,), generator=generator), grid_positions(n, 2, 3)[:, 1],
                     grid_positions(n, 2, 3)[:, 2]], dim=-1)
        for n in (2, 1)
    ]
    with torch.no_grad():
        packed = model(mosaics, patch_positions=positions)
        alone = [model(m[None], patch_positions=p[None]).last_hidden_state[0] for m, p in zip(mosaics, positions)]
    for got, want in zip(packed.split(), alone):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=ATOL)


def test_return_dict_false_tuple_order(make_encoder):
    model = make_encoder()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 8, 8), output_hidden_states=True, return_dict=False)
        ref = model(torch.randn(1, 3, 8, 8), output_hidden_states=True)
    assert len(out) == 3
    assert out[0].shape == ref.last_hidden_state.shape and out[1].shape == ref.pooler_output.shape
    assert len(out[2]) == 3


# --- training ------------------------------------------------------------------


def test_gradients_reach_every_parameter(make_encoder):
    model = make_encoder().train()
    pixels = [torch.randn(3, 4, 8, 8, requires_grad=True), torch.randn(3, 12, 8, requires_grad=True)]
    out = model(pixels, visible_indices=[torch.tensor([0, 3, 5, 9, 14]), None])
    (out.last_hidden_state.square().mean() + out.pooler_output.square().mean()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(p.grad is not None for p in pixels)


def test_gradient_checkpointing_gives_the_same_gradients(make_encoder):
    video = torch.randn(2, 3, 8, 8, 12)

    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = make_encoder(seed=9).train()
        if checkpointing:
            # Newer transformers rename the API (activation_checkpointing_*); older ones only have gradient_*.
            if hasattr(model, "activation_checkpointing_enable"):
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            assert all(layer.gradient_checkpointing for layer in model.encoder.layers)
        out = model(video)
        (out.last_hidden_state.sum() + out.pooler_output.sum()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, checkpointed = grads(False), grads(True)
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], atol=1e-5, rtol=1e-5)


# --- bad inputs ----------------------------------------------------------------


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m(torch.randn(3, 8, 8)), r"shape \[B, C, H, W\]"),
        (lambda m: m(torch.randn(1, 1, 3, 8, 8, 8)), r"shape \[B, C, H, W\]"),
        (lambda m: m(torch.randn(1, 3, 10, 8)), "multiples of patch_size=4"),
        (lambda m: m(torch.randn(1, 3, 2, 8)), "multiples of patch_size=4"),
        (lambda m: m(torch.randn(1, 4, 8, 8)), "4 channels, expected 3"),
        (lambda m: m(torch.randn(1, 3, 12, 8, 8)), "rope_temporal_size"),
        (lambda m: m(torch.randn(1, 3, 8, 8, 8), visible_indices=torch.tensor([[0, 256]])), "out of range"),
        (lambda m: m(torch.randn(1, 3, 8, 8, 8), visible_indices=torch.tensor([[-1, 2]])), "out of range"),
        (lambda m: m(torch.randn(1, 3, 8, 8, 8), visible_indices=torch.tensor([0.0, 1.0])), "integer"),
        (lambda m: m(torch.randn(2, 3, 8, 8, 8), visible_indices=torch.tensor([[0, 1]])), r"\[batch=2, K\]"),
        (lambda m: m(torch.randn(1, 3, 8, 8), patch_positions=torch.tensor([[[0, 2, 0]]])), "out of range"),
        (lambda m: m(torch.randn(1, 3, 8, 8), patch_positions=torch.tensor([[0, 1, 0]])), r"\[batch=1, K, 3\]"),
        (
            lambda m: m(
                torch.randn(1, 3, 8, 8, 8),
                visible_indices=torch.tensor([[0, 1, 2]]),
                patch_positions=torch.tensor([[[0, 0, 0], [0, 0, 1]]]),
            ),
            "K mismatch",
        ),
        (lambda m: m([torch.randn(3, 8, 8)], visible_indices=[None, None]), "list of 1 entries"),
        (lambda m: m([torch.randn(1, 3, 8, 8)]), r"pixel_values\[0\]"),
        (lambda m: m([]), "empty"),
    ],
)
def test_bad_inputs_raise_value_error(make_encoder, call, message):
    with pytest.raises(ValueError, match=message):
        call(make_encoder())
