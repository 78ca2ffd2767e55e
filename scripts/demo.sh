#!/usr/bin/env bash
# Set up the environment (if needed) and run the end-to-end CPU demo: bash scripts/demo.sh [llava.demo args]
#
# 1. llava.demo: the codec reader and the OV-Encoder on a real sample video (packed = per sample);
# 2. the tiny SFT preset (scripts/tiny_sft.sh): a tiny LLaVA-OV trained on a synthetic dataset of
#    images, codec packs, raw videos and text in a few minutes, its held-out accuracy per task and
#    one chat answer from the trained checkpoint (OUTPUT_DIR, default checkpoints/llava-ov-tiny-sft).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh demo
PYTHON="${VENV:-.venv}/bin/python"
"$PYTHON" -m llava.demo "$@"
echo
PYTHON="$PYTHON" PRESET=tiny exec bash scripts/sft_ov_encoder.sh
