"""Tiny random-initialised LLaVA-OV checkpoints for smoke tests, demos and users' CI.

    python -m llava.model.tiny --out DIR [--llm qwen2|qwen3] [--projector mlp2x_gelu]

Writes a complete checkpoint directory (a few MB): ``config.json`` (``llava_qwen`` or
``llava_qwen3`` with the OV-Encoder's ``vision_config`` embedded), ``model.safetensors``
(tokenizer-sized LLM, OV-Encoder, projector), a byte-level BPE tokenizer with the Qwen
special tokens, ``preprocessor_config.json`` and ``generation_config.json``. It loads with
``load_pretrained_model(DIR)`` and the chat CLI exactly like a real checkpoint.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import GenerationConfig

from ..tokenizer_utils import build_tiny_qwen_tokenizer
from .language_model import LLAVA_LMS, LlavaLM
from .multimodal_encoder import OneVisionEncoderConfig, OneVisionEncoderImageProcessor

TINY_ENCODER = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, patch_size=16,
    image_size=64, rope_temporal_size=64,
)
TINY_LLM = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=4096, tie_word_embeddings=True, rms_norm_eps=1e-6,
)
def _family(llm: str) -> LlavaLM:
    if llm not in LLAVA_LMS:
        raise ValueError(f"--llm must be one of {sorted(LLAVA_LMS)}, got {llm!r}")
    return LLAVA_LMS[llm]


def tiny_tokenizer(llm: str = "qwen2"):
    """The tiny tokenizer, its chat template the family's default conversation template."""
    return build_tiny_qwen_tokenizer(template=_family(llm).conv_template)


def tiny_llava_config(tokenizer, llm: str = "qwen2", **multimodal):
    """Config of a tiny LLaVA model; ``multimodal`` overrides the ``mm_*`` / image keys."""
    config_class = _family(llm).config_class
    encoder = OneVisionEncoderConfig(**TINY_ENCODER)
    extra = {"head_dim": 16} if llm == "qwen3" else {}
    fields = dict(
        TINY_LLM,
        **extra,
        vocab_size=len(tokenizer),
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
        mm_vision_tower="tiny-ov-encoder",
        vision_config=encoder.to_dict(),
        mm_hidden_size=encoder.hidden_size,
        mm_projector_type="mlp2x_gelu",
        mm_vision_select_layer=-2,
        mm_vision_select_feature="patch",
        mm_patch_merge_type="flat",
        image_aspect_ratio="native",
        image_grid_pinpoints=None,
        mm_spatial_pool_stride=None,
        mm_tunable_parts="mm_mlp_adapter,mm_language_model",
        tokenizer_model_max_length=2048,
        tokenizer_padding_side="right",
        use_mm_proj=True,
    )
    fields.update(multimodal)
    return config_class(**fields)


def build_tiny_model(llm: str = "qwen2", seed: int = 0, **multimodal):
    """``(tokenizer, model, image_processor)``, random-initialised with ``seed``."""
    tokenizer = tiny_tokenizer(llm)
    config = tiny_llava_config(tokenizer, llm, **multimodal)
    torch.manual_seed(seed)
    model = _family(llm).causal_lm_class(config).eval()
    processor = OneVisionEncoderImageProcessor(
        patch_size=TINY_ENCODER["patch_size"], max_pixels=TINY_ENCODER["image_size"] ** 2
    )
    return tokenizer, model, processor


def save_tiny_checkpoint(out: str | Path, llm: str = "qwen2", seed: int = 0, **multimodal) -> Path:
    """Write a loadable tiny checkpoint to ``out`` atomically (temp dir, then rename)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty")
    tokenizer, model, processor = build_tiny_model(llm, seed, **multimodal)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        processor.save_pretrained(staging)
        GenerationConfig(
            eos_token_id=model.config.eos_token_id, pad_token_id=model.config.pad_token_id, max_new_tokens=64
        ).save_pretrained(staging)
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="checkpoint directory to create")
    parser.add_argument("--llm", choices=sorted(LLAVA_LMS), default="qwen2")
    parser.add_argument("--projector", default="mlp2x_gelu", help="mm_projector_type (linear, mlp2x_gelu, spatial_merge)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        path = save_tiny_checkpoint(args.out, args.llm, args.seed, mm_projector_type=args.projector)
    except (FileExistsError, ValueError) as error:
        parser.error(str(error))
    size = sum(f.stat().st_size for f in path.iterdir()) / 2**20
    print(f"wrote tiny {args.llm} LLaVA-OV checkpoint to {path} ({size:.1f} MiB)")


if __name__ == "__main__":
    main()
