#!/usr/bin/env bash
# Projector pre-training (LLaVA stage 1): only the projector trains, on image-caption pairs with the
# `plain` template; the run saves OUTPUT_DIR/mm_projector.bin, which scripts/sft_ov_encoder.sh loads.
#
#   bash scripts/pretrain_ov_encoder.sh [extra train.py flags]
#
# Settings are env-overridable as in sft_ov_encoder.sh (same launcher variables).
set -euo pipefail
cd "$(dirname "$0")/.."

LLM_VERSION=${LLM_VERSION:-Qwen/Qwen3-4B-Instruct-2507}
VISION_MODEL_VERSION=${VISION_MODEL_VERSION:-lmms-lab/onevision-encoder-large}
DATA_PATH=${DATA_PATH:-data/blip_laion_cc_sbu_558k.json}
IMAGE_FOLDER=${IMAGE_FOLDER:-data/images}
RUN_NAME=${RUN_NAME:-llava-onevision-encoder-large-qwen3-4b-pretrain}
OUTPUT_DIR=${OUTPUT_DIR:-checkpoints/projectors/$RUN_NAME}
DEEPSPEED=${DEEPSPEED:-scripts/zero2.json}
PER_DEVICE_BATCH=${PER_DEVICE_BATCH:-16}
GRAD_ACCUM=${GRAD_ACCUM:-2}
LEARNING_RATE=${LEARNING_RATE:-1e-3}
MODEL_MAX_LENGTH=${MODEL_MAX_LENGTH:-8192}
ATTN_IMPLEMENTATION=${ATTN_IMPLEMENTATION:-auto}  # flash_attention_2 where flash-attn is installed, else varlen
NUM_WORKERS=${NUM_WORKERS:-16}

exec bash scripts/launch_train.sh \
    --deepspeed "$DEEPSPEED" \
    --model_name_or_path "$LLM_VERSION" \
    --version plain \
    --data_path "$DATA_PATH" \
    --image_folder "$IMAGE_FOLDER" \
    --vision_tower "$VISION_MODEL_VERSION" \
    --mm_tunable_parts mm_mlp_adapter \
    --tune_mm_mlp_adapter True \
    --mm_vision_select_layer -2 \
    --mm_projector_type mlp2x_gelu \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --mm_patch_merge_type flat \
    --bf16 True \
    --tf32 True \
    --run_name "$RUN_NAME" \
    --output_dir "$OUTPUT_DIR" \
    --num_train_epochs 1 \
    --per_device_train_batch_size "$PER_DEVICE_BATCH" \
    --gradient_accumulation_steps "$GRAD_ACCUM" \
    --save_strategy no \
    --learning_rate "$LEARNING_RATE" \
    --weight_decay 0. \
    --warmup_ratio 0.03 \
    --lr_scheduler_type cosine \
    --logging_steps 1 \
    --model_max_length "$MODEL_MAX_LENGTH" \
    --gradient_checkpointing True \
    --dataloader_num_workers "$NUM_WORKERS" \
    --lazy_preprocess True \
    --report_to "${REPORT_TO:-none}" \
    --attn_implementation "$ATTN_IMPLEMENTATION" \
    "$@"
