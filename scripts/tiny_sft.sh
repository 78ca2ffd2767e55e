#!/usr/bin/env bash
# The tiny preset of scripts/sft_ov_encoder.sh: the whole SFT job on a 2-core CPU, in minutes,
# on a model that really learns.
#
#   PRESET=tiny bash scripts/sft_ov_encoder.sh [extra train.py flags]
#
# 1. a tiny random-initialised start (llava.model.tiny --parts: a Qwen2-style LLM + tokenizer and
#    an OV-Encoder, loaded by the trainer as it loads real ones);
# 2. a synthetic dataset whose answers depend on what is seen (playground/tiny_sft): images,
#    codec packs made by Stage 1 + Stage 2 from H.264 and HEVC clips, raw videos the trainer turns
#    into codec inputs online, text-only records, and a held-out split;
# 3. llava/train/train.py on it, the same code path as the GPU recipe;
# 4. held-out accuracy per task (llava.eval.predict + playground/tiny_sft/score.py), and one
#    held-out question asked through the chat CLI.
#
# Environment: OUTPUT_DIR (default checkpoints/llava-ov-tiny-sft: the checkpoint, trainer_state.json
# with the loss history, heldout_predictions.jsonl, heldout_scores.json), BASE_DIR and DATA_DIR
# (default OUTPUT_DIR/base and OUTPUT_DIR/data; reused when present), EPOCHS, LEARNING_RATE,
# BATCH_SIZE, TRAIN_PER_TASK, HELDOUT_PER_TASK, NUM_WORKERS, SEED, PYTHON (default .venv/bin/python
# when there is one). A rerun with the same OUTPUT_DIR trains again from the same start.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
OUTPUT_DIR=${OUTPUT_DIR:-checkpoints/llava-ov-tiny-sft}
BASE_DIR=${BASE_DIR:-$OUTPUT_DIR/base}
DATA_DIR=${DATA_DIR:-$OUTPUT_DIR/data}
EPOCHS=${EPOCHS:-3}
LEARNING_RATE=${LEARNING_RATE:-2e-3}
BATCH_SIZE=${BATCH_SIZE:-8}
TRAIN_PER_TASK=${TRAIN_PER_TASK:-300}
HELDOUT_PER_TASK=${HELDOUT_PER_TASK:-40}
NUM_WORKERS=${NUM_WORKERS:-2}
SEED=${SEED:-0}
# The dataset's clips are 16 frames on a 64-px canvas, packed into 4 mosaics (playground/tiny_sft).
CODEC=(--codec_frames 16 --codec_canvas 64 --codec_images 4)
CHAT_CODEC=(--codec-frames 16 --codec-canvas 64 --codec-images 4)

mkdir -p "$OUTPUT_DIR"
if [ ! -d "$BASE_DIR/llm" ]; then
  echo "[tiny] writing the tiny start to $BASE_DIR"
  "$PYTHON" -m llava.model.tiny --parts --out "$BASE_DIR" --seed "$SEED"
fi
if [ ! -f "$DATA_DIR/heldout.jsonl" ]; then
  echo "[tiny] generating the synthetic dataset in $DATA_DIR"
  "$PYTHON" playground/tiny_sft/make_dataset.py --out "$DATA_DIR" --seed "$SEED" \
      --train-per-task "$TRAIN_PER_TASK" --heldout-per-task "$HELDOUT_PER_TASK"
fi

echo "[tiny] training on $DATA_DIR/train.yaml"
"$PYTHON" -m llava.train.train \
    --model_name_or_path "$BASE_DIR/llm" \
    --vision_tower "$BASE_DIR/encoder" \
    --version qwen_1_5 \
    --data_path "$DATA_DIR/train.yaml" \
    --image_folder "$DATA_DIR" \
    --video_folder "$DATA_DIR" \
    --video_mode codec "${CODEC[@]}" \
    --mm_tunable_parts mm_vision_tower,mm_mlp_adapter,mm_language_model \
    --mm_projector_type mlp2x_gelu \
    --mm_vision_select_layer -2 \
    --group_by_modality_length True \
    --output_dir "$OUTPUT_DIR" \
    --num_train_epochs "$EPOCHS" \
    --per_device_train_batch_size "$BATCH_SIZE" \
    --learning_rate "$LEARNING_RATE" \
    --lr_scheduler_type cosine \
    --warmup_ratio 0.05 \
    --weight_decay 0.0 \
    --model_max_length 2048 \
    --logging_steps 10 \
    --save_strategy no \
    --dataloader_num_workers "$NUM_WORKERS" \
    --dataloader_pin_memory False \
    --report_to none \
    --seed "$SEED" \
    "$@"

echo "[tiny] answering the held-out split"
"$PYTHON" -m llava.eval.predict --model-path "$OUTPUT_DIR" --data "$DATA_DIR/heldout.jsonl" \
    --image-folder "$DATA_DIR" --video-folder "$DATA_DIR" "${CHAT_CODEC[@]}" \
    --out "$OUTPUT_DIR/heldout_predictions.jsonl"
"$PYTHON" playground/tiny_sft/score.py --heldout "$DATA_DIR/heldout.jsonl" \
    --predictions "$OUTPUT_DIR/heldout_predictions.jsonl" --out "$OUTPUT_DIR/heldout_scores.json"

# One held-out question through the chat CLI: the first raw-video record, read by the codec path.
IFS=$'\t' read -r VIDEO QUESTION ANSWER < <("$PYTHON" -c '
import json, sys
record = next(r for r in map(json.loads, open(sys.argv[1])) if r["task"] == "video_colour")
print(record["video"], record["conversations"][0]["value"].replace("<image>", "").strip(), record["answer"], sep="\t")
' "$DATA_DIR/heldout.jsonl")
echo "[tiny] chat about $DATA_DIR/$VIDEO"
echo "user: $QUESTION"
echo "$QUESTION" | "$PYTHON" -m llava.serve.cli --model-path "$OUTPUT_DIR" --video "$DATA_DIR/$VIDEO" \
    "${CHAT_CODEC[@]}" --temperature 0 --max-new-tokens 8
echo "(held-out answer: $ANSWER)"
echo "[tiny] done; chat with the checkpoint: $PYTHON -m llava.serve.cli --model-path $OUTPUT_DIR --video FILE ${CHAT_CODEC[*]}"
