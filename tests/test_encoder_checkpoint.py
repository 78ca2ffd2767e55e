"""Published checkpoint format: config fields, key layout, Auto-class loading, round trips."""

from __future__ import annotations

import json

import pytest
import torch
from encoder_utils import tiny_encoder, tiny_encoder_config
from safetensors.torch import save_file
from transformers import AutoConfig, AutoImageProcessor, AutoModel

from llava.model import OneVisionEncoderConfig, OneVisionEncoderImageProcessor, OneVisionEncoderModel


def published_keys(num_layers: int, use_head: bool, rms_norm: bool) -> set[str]:
    """State-dict keys of the published checkpoints (docs/encoder.md#checkpoint-layout), written out by hand."""
    norm = ["weight"] if rms_norm else ["weight", "bias"]
    keys = {"embeddings.patch_embedding.weight"}
    keys |= {f"layernorm_pre.{p}" for p in norm}
    for i in range(num_layers):
        layer = f"encoder.layers.{i}"
        keys |= {f"{layer}.layer_norm1.{p}" for p in norm} | {f"{layer}.layer_norm2.{p}" for p in norm}
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            keys |= {f"{layer}.self_attn.{proj}.weight", f"{layer}.self_attn.{proj}.bias"}
        for fc in ("fc1", "fc2"):
            keys |= {f"{layer}.mlp.{fc}.weight", f"{layer}.mlp.{fc}.bias"}
    if use_head:
        keys |= {f"layernorm_post.{p}" for p in norm}
        keys |= {
            "head.probe",
            "head.attention.in_proj_weight",
            "head.attention.in_proj_bias",
            "head.attention.out_proj.weight",
            "head.attention.out_proj.bias",
            "head.norm.weight",
            "head.mlp.fc1.weight",
            "head.mlp.fc1.bias",
            "head.mlp.fc2.weight",
            "head.mlp.fc2.bias",
        }
    return keys


@pytest.mark.parametrize("use_head", [True, False])
@pytest.mark.parametrize("norm", ["layer_norm", "rms_norm"])
def test_state_dict_has_exactly_the_published_keys(use_head, norm):
    model = tiny_encoder(use_head=use_head, layer_norm_type=norm)
    assert set(model.state_dict()) == published_keys(2, use_head, norm == "rms_norm")
    assert model.embeddings.patch_embedding.bias is None


def test_config_defaults_are_the_published_ones():
    config = OneVisionEncoderConfig()
    assert config.model_type == "onevision_encoder"
    expected = dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, num_channels=3,
        image_size=448, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-6, layer_norm_type="layer_norm",
        attention_dropout=0.0, initializer_range=0.02, rope_theta=10000.0, rope_temporal_size=64, use_head=True,
    )
    assert {k: getattr(config, k) for k in expected} == expected


def test_config_round_trip(tmp_path):
    config = tiny_encoder_config(layer_norm_type="rms_norm", rope_temporal_size=None, use_head=False)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, OneVisionEncoderConfig)
    for key in ("hidden_size", "patch_size", "layer_norm_type", "rope_temporal_size", "use_head", "rope_theta"):
        assert getattr(loaded, key) == getattr(config, key)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(layer_norm_type="batch_norm"), "layer_norm_type"),
        (dict(hidden_size=64, num_attention_heads=3), "divisible"),
        (dict(hidden_size=96, num_attention_heads=2), "multiple of 32"),
    ],
)
def test_config_rejects_unusable_values(bad, message):
    with pytest.raises(ValueError, match=message):
        tiny_encoder_config(**bad)


def write_published_checkpoint(directory, model: OneVisionEncoderModel) -> None:
    """A directory laid out like the hub checkpoints: remote-code config + safetensors."""
    config = model.config.to_dict()
    config.update(
        architectures=["OneVisionEncoderModel"],
        auto_map={
            "AutoConfig": "configuration_onevision_encoder.OneVisionEncoderConfig",
            "AutoModel": "modeling_onevision_encoder.OneVisionEncoderModel",
        },
        torch_dtype="float32",
    )
    config.pop("_attn_implementation_autoset", None)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    tensors = {k: v.contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})


def test_auto_model_loads_published_layout_strictly(tmp_path):
    source = tiny_encoder(seed=3)
    write_published_checkpoint(tmp_path, source)
    loaded, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert isinstance(loaded, OneVisionEncoderModel)
    assert info["missing_keys"] in (set(), [])
    assert info["unexpected_keys"] in (set(), [])
    assert loaded.config._attn_implementation == "sdpa"
    for key, value in source.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    video = torch.randn(1, 3, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(video).last_hidden_state, source(video).last_hidden_state)


def test_missing_weight_is_reported(tmp_path):
    source = tiny_encoder()
    write_published_checkpoint(tmp_path, source)
    tensors = {k: v.clone() for k, v in source.state_dict().items() if k != "head.probe"}
    save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    _, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert "head.probe" in set(info["missing_keys"])


def test_save_pretrained_round_trip(tmp_path):
    model = tiny_encoder(seed=4, layer_norm_type="rms_norm")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = OneVisionEncoderModel.from_pretrained(tmp_path).eval()
    pixels = torch.randn(2, 3, 12, 8)
    with torch.no_grad():
        a, b = model(pixels), loaded(pixels)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, rtol=0, atol=0)
    torch.testing.assert_close(a.pooler_output, b.pooler_output, rtol=0, atol=0)


def test_attn_implementation_is_selected_through_from_pretrained(tmp_path):
    tiny_encoder().save_pretrained(tmp_path)
    eager = AutoModel.from_pretrained(tmp_path, attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"


def test_auto_image_processor_round_trip(tmp_path):
    processor = OneVisionEncoderImageProcessor(patch_size=16, max_pixels=64 * 64)
    processor.save_pretrained(tmp_path)
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, OneVisionEncoderImageProcessor)
    assert (loaded.patch_size, loaded.max_pixels) == (16, 64 * 64)
