"""Tiny random-initialised LLaVA-OV checkpoints for smoke tests, demos and users' CI.

    python -m llava.model.tiny --out DIR [--llm qwen2|qwen3] [--projector mlp2x_gelu] [--parts]

Writes a complete checkpoint directory (a few MB): ``config.json`` (``llava_qwen`` or
``llava_qwen3`` with the OV-Encoder's ``vision_config`` embedded), ``model.safetensors``
(tokenizer-sized LLM, OV-Encoder, projector), a byte-level BPE tokenizer with the Qwen
special tokens, ``preprocessor_config.json`` and ``generation_config.json``. It loads with
``load_pretrained_model(DIR)`` and the chat CLI exactly like a real checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import GenerationConfig

from ..synthetic.tokenizer import build_tiny_qwen_tokenizer
from .configuration_onevision_encoder import OneVisionEncoderConfig
from .families import LLAVA_LMS, LlavaLM
from .folder import write_checkpoint, write_directory_atomically
from .image_processing_onevision_encoder import OneVisionEncoderImageProcessor

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
        image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        conv_template=_family(llm).conv_template,
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


def _save_generation_config(config, directory: Path) -> None:
    GenerationConfig(eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, max_new_tokens=64).save_pretrained(
        directory
    )


def _refuse_non_empty(out: Path) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty")
    return out


def save_tiny_checkpoint(out: str | Path, llm: str = "qwen2", seed: int = 0, video: dict | None = None,
                         **multimodal) -> Path:
    """Write a loadable, self-contained tiny LLaVA-OV checkpoint to ``out`` atomically (temp dir, then rename).

    ``video``: the processor's video settings (``folder.video_settings``; default its codec mode); ``multimodal``:
    config overrides (``mm_*`` keys, or the language model's, e.g. ``hidden_size``)."""
    tokenizer, model, processor = build_tiny_model(llm, seed, **multimodal)
    model.generation_config = GenerationConfig(eos_token_id=model.config.eos_token_id,
                                               pad_token_id=model.config.pad_token_id, max_new_tokens=64)
    card = {"name": Path(out).name, "base_model": f"tiny random {llm}", "data": ["none (random weights)"]}
    out = _refuse_non_empty(Path(out))
    write_directory_atomically(
        out, lambda staging: write_checkpoint(staging, model, tokenizer, processor, video=video, card=card)
    )
    return out


def save_tiny_parts(out: str | Path, llm: str = "qwen2", seed: int = 0) -> tuple[Path, Path]:
    """A training start: ``out/llm`` (a plain tiny language model + tokenizer) and ``out/encoder`` (an OV-Encoder).

    ``python -m llava.train.train --model_name_or_path out/llm --vision_tower out/encoder`` builds
    LLaVA on them exactly as on real checkpoints.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from .modeling_onevision_encoder import OneVisionEncoderModel

    tokenizer = tiny_tokenizer(llm)
    family = _family(llm)
    extra = {"head_dim": 16} if llm == "qwen3" else {}
    config = AutoConfig.for_model(
        family.llm_model_type, **TINY_LLM, **extra, vocab_size=len(tokenizer), bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    language_model = AutoModelForCausalLM.from_config(config)
    encoder = OneVisionEncoderModel(OneVisionEncoderConfig(**TINY_ENCODER))
    processor = OneVisionEncoderImageProcessor(
        patch_size=TINY_ENCODER["patch_size"], max_pixels=TINY_ENCODER["image_size"] ** 2
    )

    def write(staging: Path) -> None:
        language_model.save_pretrained(staging / "llm")
        tokenizer.save_pretrained(staging / "llm")
        _save_generation_config(config, staging / "llm")
        encoder.save_pretrained(staging / "encoder")
        processor.save_pretrained(staging / "encoder")

    out = _refuse_non_empty(Path(out))
    write_directory_atomically(out, write)
    return out / "llm", out / "encoder"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="checkpoint directory to create")
    parser.add_argument("--llm", choices=sorted(LLAVA_LMS), default="qwen2")
    parser.add_argument("--projector", default="mlp2x_gelu", help="mm_projector_type (linear, mlp2x_gelu, spatial_merge)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parts", action="store_true",
                        help="write OUT/llm (a plain language model) and OUT/encoder instead: a training start")
    args = parser.parse_args(argv)
    try:
        if args.parts:
            llm_dir, encoder_dir = save_tiny_parts(args.out, args.llm, args.seed)
            print(f"wrote a tiny {args.llm} language model to {llm_dir} and a tiny OV-Encoder to {encoder_dir}")
            return
        path = save_tiny_checkpoint(args.out, args.llm, args.seed, mm_projector_type=args.projector)
    except (FileExistsError, ValueError) as error:
        parser.error(str(error))
    size = sum(f.stat().st_size for f in path.iterdir()) / 2**20
    print(f"wrote tiny {args.llm} LLaVA-OV checkpoint to {path} ({size:.1f} MiB)")


if __name__ == "__main__":
    main()
