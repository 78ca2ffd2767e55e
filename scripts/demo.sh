#!/usr/bin/env bash
# The whole path on a fresh CPU machine, in about ten minutes: bash scripts/demo.sh [llava.demo args]
#
# 1. llava.demo: the codec reader (Stage-1 selection, mosaics, positions) and the OV-Encoder on a real
#    sample video, packed = per sample;
# 2. the tiny SFT preset (scripts/tiny_sft.sh): a synthetic dataset of images, codec packs made by
#    Stage 1 + Stage 2 from H.264 and HEVC clips, raw videos and text; a tiny LLaVA-OV trained on it,
#    its held-out accuracy per task and one chat answer about a held-out video;
# 3. stock lmms-eval on the offline local tasks (llava/eval/tasks/tiny_ov) with the trained checkpoint;
# 4. how to chat with it: the CLI, the OpenAI-compatible server and its web page.
# The checkpoint saves its video settings (the tiny preset's 16 frames, 64 px canvas, 4 mosaics), which
# the evaluator, the CLI and the server read: no codec flags are passed after training.
# Environment: OUTPUT_DIR (default checkpoints/llava-ov-tiny-sft), VENV (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
bash scripts/setup_env.sh demo
PYTHON="${VENV:-.venv}/bin/python"
OUTPUT_DIR=${OUTPUT_DIR:-checkpoints/llava-ov-tiny-sft}
timings=("set-up: $((SECONDS - start)) s")

step() { echo; echo "=== $1"; }

step "1/4 codec reader + OV-Encoder on a sample video"
t=$SECONDS
"$PYTHON" -m llava.demo "$@"
timings+=("encoder demo: $((SECONDS - t)) s")

step "2/4 tiny SFT: data (Stage 1/2), training, held-out accuracy, one chat answer"
t=$SECONDS
PYTHON="$PYTHON" PRESET=tiny OUTPUT_DIR="$OUTPUT_DIR" bash scripts/sft_ov_encoder.sh
timings+=("tiny SFT: $((SECONDS - t)) s")

step "3/4 lmms-eval on the offline local tasks (tiny_ov)"
t=$SECONDS
log="$OUTPUT_DIR/eval.log"
if ! PYTHON="$PYTHON" TASKS=tiny_ov MODEL_PATH="$OUTPUT_DIR" OUTPUT_PATH="$OUTPUT_DIR/eval" BATCH_SIZE=8 \
    CODEC_OFFLINE_ROOT="" RECORD_CARD=1 \
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 bash scripts/eval/eval_ov_encoder.sh > "$log" 2>&1; then
  tail -n 40 "$log"
  echo "error: the evaluation failed; its whole output is in $log" >&2
  exit 1
fi
grep "^\[llava_ov_encoder\]" "$log" | tail -n 1
sed -n '/^task  /,$p' "$log"  # the script's results table and where the results file is
timings+=("lmms-eval: $((SECONDS - t)) s")

step "4/4 chat with the trained checkpoint"
cat <<TEXT
  CLI:     $PYTHON -m llava.serve.cli --model-path $OUTPUT_DIR --video FILE
  server:  $PYTHON -m llava.serve.openai_api --model-path $OUTPUT_DIR --port 8000
           then open http://127.0.0.1:8000/ (upload an image or a video, ask), or use any OpenAI client
           with base_url http://127.0.0.1:8000/v1 (docs/serving.md)

where everything is:
  checkpoint            $OUTPUT_DIR (loss history: trainer_state.json)
  training data         $OUTPUT_DIR/data (codec packs: $OUTPUT_DIR/data/codec)
  held-out scores       $OUTPUT_DIR/heldout_scores.json
  lmms-eval results     $OUTPUT_DIR/eval (the scores are in the model card too: $OUTPUT_DIR/README.md)
TEXT
echo "time per step: $(IFS=';'; echo "${timings[*]}" | sed 's/;/, /g'); total $((SECONDS - start)) s"
