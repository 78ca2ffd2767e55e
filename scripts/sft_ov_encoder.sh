#!/usr/bin/env bash
# Stage-2 SFT of OV-Encoder + projector + a Qwen LLM.
#
#   bash scripts/sft_ov_encoder.sh [extra train.py flags]        the seed recipe, GPU nodes
#   PRESET=tiny bash scripts/sft_ov_encoder.sh [extra flags]     a tiny model that learns, 2 CPU cores, minutes
#
# Every setting below can be overridden from the environment (DATA_PATH=... bash ...); extra flags
# go to llava/train/train.py and win over these. The recipe resumes from OUTPUT_DIR/checkpoint-* by
# itself. One node: NUM_GPUS; several: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT on every node
# (LAUNCHER=deepspeed with HOSTFILE instead of torchrun works too). docs/training.md explains it all.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${PRESET:-recipe}" = tiny ]; then
  exec bash scripts/tiny_sft.sh "$@"
fi
if [ "${PRESET:-recipe}" != recipe ]; then
  echo "PRESET must be recipe (default) or tiny, got '$PRESET'" >&2
  exit 2
fi

LLM_VERSION=${LLM_VERSION:-Qwen/Qwen3-4B-Instruct-2507}
VISION_MODEL_VERSION=${VISION_MODEL_VERSION:-lmms-lab/onevision-encoder-large}
PROMPT_VERSION=${PROMPT_VERSION:-qwen_1_5}
DATA_PATH=${DATA_PATH:-data/mix.yaml}
IMAGE_FOLDER=${IMAGE_FOLDER:-data}
VIDEO_FOLDER=${VIDEO_FOLDER:-data}
RUN_NAME=${RUN_NAME:-llava-onevision-encoder-large-qwen3-4b-sft}
OUTPUT_DIR=${OUTPUT_DIR:-checkpoints/$RUN_NAME}
# The projector of scripts/pretrain_ov_encoder.sh (its default OUTPUT_DIR): a fixed name, not a date.
PRETRAIN_MM_MLP_ADAPTER=${PRETRAIN_MM_MLP_ADAPTER:-checkpoints/projectors/llava-onevision-encoder-large-qwen3-4b-pretrain/mm_projector.bin}
DEEPSPEED=${DEEPSPEED:-scripts/zero3.json}
MM_TUNABLE_PARTS=${MM_TUNABLE_PARTS:-mm_vision_tower,mm_mlp_adapter,mm_language_model}
MM_VISION_TOWER_LR=${MM_VISION_TOWER_LR:-2e-6}
LEARNING_RATE=${LEARNING_RATE:-1e-5}
PER_DEVICE_BATCH=${PER_DEVICE_BATCH:-1}
GRAD_ACCUM=${GRAD_ACCUM:-16}
EPOCHS=${EPOCHS:-1}
SAVE_STEPS=${SAVE_STEPS:-500}
SAVE_TOTAL_LIMIT=${SAVE_TOTAL_LIMIT:-20}
MODEL_MAX_LENGTH=${MODEL_MAX_LENGTH:-32768}
ATTN_IMPLEMENTATION=${ATTN_IMPLEMENTATION:-auto}  # flash_attention_2 where flash-attn is installed, else varlen
IMAGE_ASPECT_RATIO=${IMAGE_ASPECT_RATIO:-anyres}
# Upstream's (574, 1120, 1694) are multiples of 14 px patches; with the 16 px patches of the
# published LLaVA encoder config the same grid is 576-px tiles (36 x 36 patches).
IMAGE_GRID_PINPOINTS=${IMAGE_GRID_PINPOINTS:-"[(576, 1152), (1152, 576), (1152, 1152), (1728, 576), (576, 1728)]"}
IMAGE_TILE_SIZE=${IMAGE_TILE_SIZE:-576}
VIDEO_MODE=${VIDEO_MODE:-codec}
NUM_WORKERS=${NUM_WORKERS:-1}
PACKING=${PACKING:-False}

exec bash scripts/launch_train.sh \
    --deepspeed "$DEEPSPEED" \
    --model_name_or_path "$LLM_VERSION" \
    --version "$PROMPT_VERSION" \
    --data_path "$DATA_PATH" \
    --image_folder "$IMAGE_FOLDER" \
    --video_folder "$VIDEO_FOLDER" \
    --video_mode "$VIDEO_MODE" \
    --pretrain_mm_mlp_adapter "$PRETRAIN_MM_MLP_ADAPTER" \
    --mm_tunable_parts "$MM_TUNABLE_PARTS" \
    --mm_vision_tower_lr "$MM_VISION_TOWER_LR" \
    --vision_tower "$VISION_MODEL_VERSION" \
    --mm_projector_type mlp2x_gelu \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --group_by_modality_length True \
    --image_aspect_ratio "$IMAGE_ASPECT_RATIO" \
    --image_grid_pinpoints "$IMAGE_GRID_PINPOINTS" \
    --image_tile_size "$IMAGE_TILE_SIZE" \
    --mm_patch_merge_type flat \
    --bf16 True \
    --tf32 True \
    --run_name "$RUN_NAME" \
    --output_dir "$OUTPUT_DIR" \
    --num_train_epochs "$EPOCHS" \
    --per_device_train_batch_size "$PER_DEVICE_BATCH" \
    --gradient_accumulation_steps "$GRAD_ACCUM" \
    --save_strategy steps \
    --save_steps "$SAVE_STEPS" \
    --save_total_limit "$SAVE_TOTAL_LIMIT" \
    --learning_rate "$LEARNING_RATE" \
    --logging_steps 1 \
    --model_max_length "$MODEL_MAX_LENGTH" \
    --gradient_checkpointing True \
    --dataloader_num_workers "$NUM_WORKERS" \
    --lazy_preprocess True \
    --dataloader_drop_last True \
    --packing "$PACKING" \
    --report_to "${REPORT_TO:-none}" \
    --attn_implementation "$ATTN_IMPLEMENTATION" \
    "$@"
