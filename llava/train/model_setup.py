"""Build the model and tokenizer a training run starts from, and choose what trains.

Two starts, as in LLaVA-NeXT: a language model (``--model_name_or_path`` a Qwen2 / Qwen3
checkpoint) plus an OV-Encoder (``--vision_tower``), joined by a fresh projector (or the
``--pretrain_mm_mlp_adapter`` one); or a LLaVA checkpoint to continue (its tower and
projector come with it). ``--mm_tunable_parts`` then decides which parameters train; with
``--lora_enable`` the language model trains through LoRA adapters instead.
"""

from __future__ import annotations

import ast
import importlib.util
import logging

import torch
from transformers import AutoConfig, AutoTokenizer

from ..model.families import LLAVA_LMS, LlavaLM, llava_lm_for_llm, llava_lm_for_model_type
from ..model.modeling_llava_vision import OVEncoderVisionTower
from ..model.weights import load_projector_weights
from .arguments import DataArguments, ModelArguments, TrainingArguments, parts_of

logger = logging.getLogger("llava.train")

#: Module-name fragments of the parts that never get LoRA adapters (they train in full or not at all).
MULTIMODAL_MODULES = ("vision_tower", "mm_projector")


def tunable_parts(model_args: ModelArguments, training_args: TrainingArguments) -> list[str]:
    """``--mm_tunable_parts``, or what LLaVA-NeXT's legacy flags mean when it is not given."""
    if model_args.mm_tunable_parts:
        return parts_of(model_args.mm_tunable_parts)
    if model_args.tune_mm_mlp_adapter:
        return ["mm_mlp_adapter"]
    parts = ["mm_mlp_adapter"] if not training_args.freeze_mm_mlp_adapter else []
    if not model_args.freeze_backbone:
        parts.append("mm_language_model")
    if model_args.unfreeze_mm_vision_tower:
        parts.append("mm_vision_tower")
    return parts


def projector_only(model_args: ModelArguments, training_args: TrainingArguments) -> bool:
    """True when only the projector trains: checkpoints are then ``mm_projector.bin`` alone."""
    return tunable_parts(model_args, training_args) == ["mm_mlp_adapter"] and not training_args.lora_enable


def parse_pinpoints(value):
    """``"[(574, 1120), ...]"`` / ``"(1x1),...,(3x3)"`` as given on the command line."""
    if value is None or not isinstance(value, str) or "x" in value:
        return value
    try:
        return [list(pair) for pair in ast.literal_eval(value)]
    except (ValueError, SyntaxError) as error:
        raise ValueError(f"--image_grid_pinpoints: cannot parse {value!r} ({error})") from None


def _family_of_llm(model_type: str, class_name: str | None) -> LlavaLM:
    """The LLaVA family to build on a plain language model (``--model_class_name`` picks it by name)."""
    if class_name:
        wanted = class_name.removesuffix("ForCausalLM") + "ForCausalLM"
        family = next((lm for lm in LLAVA_LMS.values() if lm.causal_lm_class.__name__ == wanted), None)
        if family is None:
            names = sorted(
                lm.causal_lm_class.__name__.removesuffix("ForCausalLM") for lm in LLAVA_LMS.values()
            )
            raise ValueError(
                f"--model_class_name {class_name!r} is not a LLaVA family here; choose from {names}"
            )
        return family
    family = llava_lm_for_llm(model_type)
    if family is None:
        raise ValueError(
            f"--model_name_or_path is a {model_type!r} model; LLaVA families here build on "
            f"{sorted(lm.llm_model_type for lm in LLAVA_LMS.values())} "
            "(add one: llava/model/families.py)"
        )
    return family


def build_tokenizer(model_args: ModelArguments, training_args: TrainingArguments):
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path,
        cache_dir=training_args.cache_dir,
        model_max_length=training_args.model_max_length,
        padding_side="right",
        use_fast=True,
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def build_model(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments):
    """The LLaVA model to train, its multimodal config keys set from the arguments."""
    dtype = torch.bfloat16 if training_args.bf16 else (torch.float16 if training_args.fp16 else torch.float32)
    attention = resolve_attention(training_args.attn_implementation)
    load = dict(cache_dir=training_args.cache_dir, dtype=dtype, attn_implementation=attention)
    config = AutoConfig.from_pretrained(model_args.model_name_or_path, cache_dir=training_args.cache_dir)
    if model_args.rope_scaling_factor is not None and model_args.rope_scaling_type is not None:
        config.rope_scaling = {"type": model_args.rope_scaling_type, "factor": model_args.rope_scaling_factor}
    family = llava_lm_for_model_type(config.model_type)
    continuing = family is not None
    if continuing:
        model = family.causal_lm_class.from_pretrained(model_args.model_name_or_path, config=config, **load)
        if model_args.pretrain_mm_mlp_adapter:
            load_projector_weights(model, model_args.pretrain_mm_mlp_adapter)
    else:
        family = _family_of_llm(config.model_type, model_args.model_class_name)
        llava_config = family.config_class(**{k: v for k, v in config.to_dict().items() if k != "model_type"})
        model = family.causal_lm_class.from_pretrained(
            model_args.model_name_or_path, config=llava_config, **load
        )
        if model_args.vision_tower is None:
            raise ValueError(
                f"{model_args.model_name_or_path} is a plain language model: pass --vision_tower"
            )
        model.get_model().initialize_vision_modules(
            model_args.vision_tower,
            mm_projector_type=model_args.mm_projector_type,
            mm_vision_select_layer=model_args.mm_vision_select_layer,
            mm_vision_select_feature=model_args.mm_vision_select_feature,
            mm_patch_merge_type=model_args.mm_patch_merge_type,
            mm_spatial_merge_size=model_args.mm_spatial_merge_size,
            image_aspect_ratio=data_args.image_aspect_ratio,
            image_grid_pinpoints=parse_pinpoints(data_args.image_grid_pinpoints),
            vision_attn_implementation=(
                model_args.vision_attn_implementation or _tower_attention(attention)
            ),
        )
        if model_args.pretrain_mm_mlp_adapter:
            load_projector_weights(model, model_args.pretrain_mm_mlp_adapter)
        model.get_vision_tower().to(dtype=dtype)
    if model_args.vision_tower_pretrained:
        encoder = OVEncoderVisionTower(model_args.vision_tower_pretrained).vision_tower
        model.get_vision_tower().vision_tower.load_state_dict(encoder.state_dict(), strict=True)
    _set_run_config(model.config, model_args, data_args, training_args, continuing)
    return model


def resolve_attention(name: str) -> str:
    """``--attn_implementation``; ``auto``: ``flash_attention_2`` where flash-attn imports on a CUDA machine, else
    ``varlen`` (PyTorch's own variable-length attention for packed rows on CUDA, per-sample SDPA on the CPU;
    plain SDPA for unpacked batches)."""
    if name != "auto":
        return name
    chosen = "varlen"
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        chosen = "flash_attention_2"
    logger.info("--attn_implementation auto: %s", chosen)
    return chosen


def _tower_attention(attention: str) -> str | None:
    return attention if attention in ("sdpa", "eager", "flash_attention_2", "varlen") else None


def _set_run_config(config, model_args, data_args, training_args, continuing: bool) -> None:
    """The config keys a checkpoint of this run carries (LLaVA-NeXT writes the same)."""
    config.tokenizer_model_max_length = training_args.model_max_length
    config.tokenizer_padding_side = "right"
    config.conv_template = model_args.version  # chat, evaluation and serving render prompts as trained
    config.mm_tunable_parts = ",".join(tunable_parts(model_args, training_args))
    config.mm_projector_lr = training_args.mm_projector_lr
    config.mm_vision_tower_lr = training_args.mm_vision_tower_lr
    config.mm_spatial_pool_stride = model_args.mm_spatial_pool_stride
    config.mm_spatial_pool_mode = model_args.mm_spatial_pool_mode
    config.mm_newline_position = model_args.mm_newline_position
    if not continuing or data_args.image_aspect_ratio != "native":
        config.image_aspect_ratio = data_args.image_aspect_ratio
    if data_args.image_grid_pinpoints is not None:
        config.image_grid_pinpoints = parse_pinpoints(data_args.image_grid_pinpoints)
    if data_args.image_tile_size is not None:
        config.image_tile_size = data_args.image_tile_size
    config.use_cache = False


def select_trainable(model, model_args: ModelArguments, training_args: TrainingArguments) -> dict[str, int]:
    """Freeze everything but the tunable parts; returns the trainable parameter count per part."""
    parts = tunable_parts(model_args, training_args)
    base = model.get_model()
    model.requires_grad_(False)
    if "mm_language_model" in parts and not training_args.lora_enable:
        model.requires_grad_(True)
        base.vision_tower.requires_grad_(False)
        base.mm_projector.requires_grad_(False)
    if "mm_vision_tower" in parts:
        base.vision_tower.requires_grad_(True)
        for param in base.vision_tower.unused_parameters():  # no gradient ever reaches them
            param.requires_grad_(False)
    if "mm_mlp_adapter" in parts:
        base.mm_projector.requires_grad_(True)
        if getattr(base, "image_newline", None) is not None:
            base.image_newline.requires_grad_(True)

    def trainable(module) -> int:  # ZeRO-3 parameters keep their full size in ds_numel
        return sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters() if p.requires_grad)

    counts = {"vision_tower": trainable(base.vision_tower), "mm_projector": trainable(base.mm_projector)}
    counts["language_model"] = trainable(model) - sum(counts.values())
    return counts


def lora_target_modules(model) -> list[str]:
    """Names of the language model's Linear layers (LLaVA-NeXT's rule: not the tower, the
    projector or lm_head)."""
    names = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not any(part in name for part in MULTIMODAL_MODULES):
            names.add(name.split(".")[-1])
    names.discard("lm_head")
    return sorted(names)


def apply_lora(model, model_args: ModelArguments, training_args: TrainingArguments):
    """Wrap the language model with LoRA adapters; the tunable multimodal parts stay fully trainable."""
    from peft import LoraConfig, get_peft_model

    lora_config = LoraConfig(
        r=training_args.lora_r,
        lora_alpha=training_args.lora_alpha,
        lora_dropout=training_args.lora_dropout,
        bias=training_args.lora_bias,
        target_modules=lora_target_modules(model),
        task_type="CAUSAL_LM",
    )
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    model = get_peft_model(model, lora_config)
    # PEFT froze the non-LoRA parameters: restore the chosen ones
    for name, param in model.named_parameters():
        if name.removeprefix("base_model.model.") in trainable:
            param.requires_grad_(True)
    return model


__all__ = [
    "apply_lora",
    "build_model",
    "build_tokenizer",
    "lora_target_modules",
    "parse_pinpoints",
    "projector_only",
    "select_trainable",
    "tunable_parts",
]
