#!/usr/bin/env bash
# Score a LLaVA-OV checkpoint with stock lmms-eval (model llava_ov_encoder, registered by this package).
#
#   TASKS="videomme" MODEL_PATH=checkpoints/run bash scripts/eval/eval_ov_encoder.sh [extra lmms-eval flags]
#
# Environment: MODEL_PATH (required), MODEL_BASE (LoRA / projector-only checkpoints), TASKS (default
# ai2d,chartqa,docvqa_val), CONV_TEMPLATE (default: the checkpoint's), NUM_GPUS (processes, torchrun;
# default 1), BATCH_SIZE (1), VIDEO_MODE (codec | frames), MAX_FRAMES (frames mode), CODEC_OFFLINE_ROOT
# (precomputed codec assets, folders joined by ':'; default: outputs/codec_assets and $HF_HOME when they
# hold assets), OUTPUT_PATH (default outputs/eval/<checkpoint name>), INCLUDE_PATH (extra task folders,
# joined by ':'; this project's local tasks in llava/eval/tasks are always included), TORCH_DTYPE,
# ATTN_IMPLEMENTATION, MODEL_ARGS (more model_args, k=v,...), LIMIT (--limit, for smoke tests),
# PYTHON (default .venv/bin/python when there is one), MASTER_PORT, RECORD_CARD (1: add the scores to the
# checkpoint folder's model card, README.md and eval_results.json).
# Exits non-zero when lmms-eval fails or a task has no results, and prints a results table at the end.
# docs/evaluation.md lists the benchmarks and their task names.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
MODEL_PATH=${MODEL_PATH:?set MODEL_PATH to the checkpoint directory to evaluate}
TASKS=${TASKS:-ai2d,chartqa,docvqa_val}
NUM_GPUS=${NUM_GPUS:-1}
BATCH_SIZE=${BATCH_SIZE:-1}
VIDEO_MODE=${VIDEO_MODE:-codec}
OUTPUT_PATH=${OUTPUT_PATH:-outputs/eval/$(basename "$MODEL_PATH")}
HF_HOME=${HF_HOME:-$HOME/.cache/huggingface}
export HF_HOME  # lmms-eval's video tasks find their files under it (docs/evaluation.md)

if [ -z "${CODEC_OFFLINE_ROOT+set}" ]; then
  roots=()
  [ -d outputs/codec_assets ] && roots+=("$PWD/outputs/codec_assets")
  compgen -G "$HF_HOME/*_offline/assets" >/dev/null && roots+=("$HF_HOME")
  CODEC_OFFLINE_ROOT=$(IFS=:; echo "${roots[*]:-}")
fi

model_args="pretrained=$MODEL_PATH,video_mode=$VIDEO_MODE"
[ -n "${MODEL_BASE:-}" ] && model_args+=",model_base=$MODEL_BASE"
[ -n "${CONV_TEMPLATE:-}" ] && model_args+=",conv_template=$CONV_TEMPLATE"
[ -n "${MAX_FRAMES:-}" ] && model_args+=",max_frames=$MAX_FRAMES"
[ -n "$CODEC_OFFLINE_ROOT" ] && model_args+=",codec_offline_root=$CODEC_OFFLINE_ROOT"
[ -n "${TORCH_DTYPE:-}" ] && model_args+=",torch_dtype=$TORCH_DTYPE"
[ -n "${ATTN_IMPLEMENTATION:-}" ] && model_args+=",attn_implementation=$ATTN_IMPLEMENTATION"
[ -n "${MODEL_ARGS:-}" ] && model_args+=",$MODEL_ARGS"

flags=(--model llava_ov_encoder --model_args "$model_args" --tasks "$TASKS" --batch_size "$BATCH_SIZE"
       --output_path "$OUTPUT_PATH")
[ -n "${INCLUDE_PATH:-}" ] && flags+=(--include_path "$INCLUDE_PATH")
[ -n "${LIMIT:-}" ] && flags+=(--limit "$LIMIT")
[ "${RECORD_CARD:-0}" = "1" ] && flags+=(--record_card)

echo "[eval] $TASKS on $MODEL_PATH ($NUM_GPUS process(es), batch $BATCH_SIZE, video $VIDEO_MODE${CODEC_OFFLINE_ROOT:+, codec assets in $CODEC_OFFLINE_ROOT})"
if [ "$NUM_GPUS" -gt 1 ]; then
  exec "$PYTHON" -m torch.distributed.run --nproc_per_node "$NUM_GPUS" --master_port "${MASTER_PORT:-29501}" \
      -m llava.eval.run "${flags[@]}" "$@"
fi
exec "$PYTHON" -m llava.eval.run "${flags[@]}" "$@"
