"""Command-line arguments of ``llava/train/train.py``, parsed with ``HfArgumentParser``.

The names and meanings are LLaVA-NeXT's, so the upstream scripts' flags keep working
(``--model_name_or_path --version --data_path --image_folder --vision_tower --mm_tunable_parts
--mm_vision_tower_lr --pretrain_mm_mlp_adapter --group_by_modality_length --image_aspect_ratio
--image_grid_pinpoints --lazy_preprocess --attn_implementation ...`` plus every Hugging Face
``TrainingArguments`` flag). A few upstream flags select features this project does not have
(quantised training, resamplers, ``<im_patch>`` tokens); they are accepted and refused with a
clear error when set to anything but their neutral value, never silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import transformers

from ..processing.media import VIDEO_MODES
from ..processing.video import LLAVA_CODEC

TUNABLE_PARTS = ("mm_vision_tower", "mm_mlp_adapter", "mm_language_model")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=None,
        metadata={
            "help": "a language model (Qwen2 / Qwen3 checkpoint) to build LLaVA on, "
            "or a LLaVA checkpoint to continue"
        },
    )
    model_class_name: str | None = field(
        default=None,
        metadata={
            "help": "LLaVA-NeXT's class override, e.g. LlavaQwen or LlavaQwen3 (default: from the config)"
        },
    )
    version: str = field(default="qwen_1_5", metadata={"help": "conversation template (llava.processing.conversation)"})
    mm_tunable_parts: str | None = field(
        default=None,
        metadata={
            "help": "comma list of mm_vision_tower, mm_mlp_adapter, mm_language_model; "
            "overrides the legacy flags"
        },
    )
    freeze_backbone: bool = field(default=False, metadata={"help": "legacy: freeze the language model"})
    tune_mm_mlp_adapter: bool = field(
        default=False,
        metadata={"help": "projector pre-training: train only the projector, save only mm_projector.bin"},
    )
    tune_mm_vision_resampler: bool = False
    vision_tower: str | None = field(
        default=None, metadata={"help": "OV-Encoder checkpoint (directory or hub id)"}
    )
    vision_tower_pretrained: str | None = field(
        default=None,
        metadata={"help": "encoder weights to load into the tower (default: those of --vision_tower)"},
    )
    unfreeze_mm_vision_tower: bool = field(
        default=False, metadata={"help": "legacy: also train the vision tower"}
    )
    unfreeze_language_model: bool = False
    mm_vision_select_layer: int = field(
        default=-2, metadata={"help": "encoder hidden_states entry fed to the projector"}
    )
    pretrain_mm_mlp_adapter: str | None = field(
        default=None, metadata={"help": "mm_projector.bin to start from"}
    )
    mm_projector_type: str = field(
        default="linear", metadata={"help": "linear, mlp{N}x_gelu or spatial_merge"}
    )
    mm_use_im_start_end: bool = False
    mm_use_im_patch_token: bool = False
    mm_patch_merge_type: str = "flat"
    mm_vision_select_feature: str = "patch"
    mm_resampler_type: str | None = None
    mm_spatial_pool_stride: int | None = None
    mm_spatial_pool_mode: str = "average"
    mm_newline_position: str = "one_token"
    mm_spatial_merge_size: int = 2
    rope_scaling_factor: float | None = None
    rope_scaling_type: str | None = None
    vision_attn_implementation: str | None = field(
        default=None, metadata={"help": "attention of the tower (default: --attn_implementation)"}
    )


@dataclass
class DataArguments:
    data_path: str = field(
        default=None,
        metadata={
            "help": "training data: .json / .jsonl, a {a,b}.json brace list "
            "or a .yaml mixture (cv_reader.dataset)"
        },
    )
    lazy_preprocess: bool = field(
        default=True, metadata={"help": "accepted for LLaVA scripts; samples are always built lazily"}
    )
    is_multimodal: bool = False
    early_mix_text: bool = field(
        default=False, metadata={"help": "group text-only samples with multimodal ones"}
    )
    image_folder: str | None = field(
        default=None, metadata={"help": "root of relative image and mosaic paths"}
    )
    image_aspect_ratio: str = field(
        default="native", metadata={"help": "native, pad, anyres or anyres_max_N"}
    )
    image_grid_pinpoints: str | None = field(
        default=None, metadata={"help": "anyres resolutions, e.g. \"[(576, 1152), ...]\""}
    )
    image_tile_size: int | None = field(
        default=None, metadata={"help": "anyres tile side (pinpoints must be multiples of it; default 448)"}
    )
    image_crop_resolution: int | None = None
    image_split_resolution: int | None = None
    video_folder: str | None = field(default=None, metadata={"help": "root of relative video paths"})
    video_mode: str = field(
        default="codec",
        metadata={"help": "raw videos as codec patches (online) or uniform frames", "choices": VIDEO_MODES},
    )
    video_fps: float | None = field(
        default=None, metadata={"help": "frames mode: sample this many frames per second"}
    )
    frames_upbound: int = field(default=32, metadata={"help": "frames mode: at most this many frames"})
    force_sample: bool = field(
        default=False, metadata={"help": "frames mode: always exactly frames_upbound frames"}
    )
    add_time_instruction: bool = field(
        default=False,
        metadata={
            "help": "put LLaVA-NeXT's time instruction (the video's length and its sampled frames' times: "
            "the uniform frames', or in codec mode the T frames the patches come from) after a raw video's "
            "placeholder; Stage-2 packs record no times and get none"
        },
    )
    codec_frames: int = field(
        default=LLAVA_CODEC.sequence_length, metadata={"help": "codec: frames sampled (T)"}
    )
    codec_images: int = field(
        default=LLAVA_CODEC.keep_frames_equiv, metadata={"help": "codec: mosaics per video (N)"}
    )
    codec_canvas: int = field(
        default=LLAVA_CODEC.square_size, metadata={"help": "codec: canvas side in pixels"}
    )
    images_as_clip: int = field(
        default=0,
        metadata={
            "help": "opt-in: a record with exactly this many images and no positions_thw is one clip at "
            "uniform t (8: upstream's 8-frame video records); 0 (default): images stay images, as upstream"
        },
    )
    bad_record_limit: float = field(
        default=0.1, metadata={"help": "stop when more than this share of the records read so far is bad"}
    )


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    cache_dir: str | None = None
    optim: str = "adamw_torch"
    remove_unused_columns: bool = False
    freeze_mm_mlp_adapter: bool = False
    freeze_mm_vision_resampler: bool = False
    mpt_attn_impl: str | None = "triton"
    model_max_length: int = field(default=4096, metadata={"help": "tokens per sequence (and per packed row)"})
    double_quant: bool = True
    quant_type: str = "nf4"
    bits: int = field(default=16, metadata={"help": "only 16 (no quantised training)"})
    lora_enable: bool = False
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_weight_path: str = ""
    lora_bias: str = field(default="none", metadata={"help": "none, all or lora_only"})
    mm_projector_lr: float | None = None
    mm_vision_tower_lr: float | None = None
    group_by_varlen: bool = False
    group_by_modality_length: bool = field(
        default=False, metadata={"help": "batches of one modality (text / image / video) and similar lengths"}
    )
    group_by_modality_length_auto: bool = False
    verbose_logging: bool = False
    attn_implementation: str = field(default="auto", metadata={
        "help": "auto (flash_attention_2 where flash-attn is installed on a CUDA machine, else varlen), varlen "
                "(PyTorch's varlen attention for packed rows), sdpa, eager or flash_attention_2"})
    packing: bool = field(
        default=False, metadata={"help": "pack each batch's samples into rows of model_max_length"}
    )
    warmup_ratio: float | None = field(
        default=None,
        metadata={
            "help": "share of the steps spent warming up (transformers 5 spells it --warmup_steps 0.03)"
        },
    )

    def __post_init__(self):
        # upstream scripts pass --warmup_ratio, which transformers 5 dropped
        if self.warmup_ratio is not None:
            if not 0 <= self.warmup_ratio < 1:
                raise ValueError(f"--warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
            if self.warmup_steps:
                raise ValueError("pass --warmup_ratio or --warmup_steps, not both")
            self.warmup_steps = self.warmup_ratio
        super().__post_init__()


def check_arguments(
    model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments
) -> None:
    """Refuse upstream options this project does not implement, and contradictory settings."""
    unsupported = {
        "--bits": training_args.bits != 16,
        "--tune_mm_vision_resampler": model_args.tune_mm_vision_resampler,
        "--freeze_mm_vision_resampler": training_args.freeze_mm_vision_resampler,
        "--mm_resampler_type": model_args.mm_resampler_type is not None,
        "--mm_use_im_patch_token": model_args.mm_use_im_patch_token,
        "--mm_use_im_start_end": model_args.mm_use_im_start_end,
        "--image_crop_resolution / --image_split_resolution": bool(
            data_args.image_crop_resolution or data_args.image_split_resolution
        ),
        "--group_by_varlen": training_args.group_by_varlen,
        "--lora_weight_path": bool(training_args.lora_weight_path),
    }
    given = [flag for flag, on in unsupported.items() if on]
    if given:
        raise ValueError(f"not supported by this project: {', '.join(given)} (leave at the default)")
    if model_args.mm_tunable_parts:
        unknown = set(parts_of(model_args.mm_tunable_parts)) - set(TUNABLE_PARTS)
        if unknown:
            raise ValueError(
                f"--mm_tunable_parts: unknown part(s) {sorted(unknown)}; choose from {TUNABLE_PARTS}"
            )
    if not 0 <= data_args.bad_record_limit <= 1:
        raise ValueError(f"--bad_record_limit is a fraction in [0, 1], got {data_args.bad_record_limit}")
    if training_args.lora_bias not in ("none", "all", "lora_only"):
        raise ValueError(f"--lora_bias must be none, all or lora_only, got {training_args.lora_bias!r}")
    if data_args.data_path is None or model_args.model_name_or_path is None:
        raise ValueError("--model_name_or_path and --data_path are required")


def parts_of(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


__all__ = [
    "TUNABLE_PARTS",
    "DataArguments",
    "ModelArguments",
    "TrainingArguments",
    "check_arguments",
    "parts_of",
]
