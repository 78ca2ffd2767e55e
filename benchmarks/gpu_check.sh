#!/usr/bin/env bash
# The prepared GPU check: one command on one H100 / H200, under 8 minutes, one results file
# (benchmarks/gpu_check.py has the steps: encoder parity in bf16 on every attention backend, encoder
# tokens/s and MFU, a packed and a batch-1 SFT step at a Qwen2-1.5B shape with MFU, a 60-step tiny SFT in
# bf16 that must learn).
#
#   bash benchmarks/gpu_check.sh [--out gpu_check.json] [--steps parity,encoder,sft_step,tiny_sft]
#   bash benchmarks/gpu_check.sh --smoke --out smoke.json     # the same steps at tiny sizes on a CPU
#
# The GPU machine needs no network. Its image is expected to have torch, transformers, accelerate, peft,
# numba and Pillow; this project runs from the checkout (PYTHONPATH, no install). What else it imports
# (PyAV, PyYAML, tqdm, safetensors, huggingface_hub) is installed from wheels in WHEELS (default
# ./wheels) when missing. Download them beforehand on a machine with network, for the GPU machine's
# Python (here 3.11, x86-64):
#
#   pip download --only-binary=:all: --python-version 3.11 --platform manylinux2014_x86_64 \
#       --dest wheels "av>=12" pyyaml tqdm safetensors huggingface_hub
#
# Exit status 0 when every step passed; the results file says which did not and why. Record the figures
# in docs/benchmarks.md (the GPU part of "SFT training step" and "OV-Encoder").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-wheels}
LIMIT_S=${LIMIT_S:-480}

missing=$("$PYTHON" - <<'PY'
import importlib.util
modules = {"av": "av", "yaml": "pyyaml", "tqdm": "tqdm", "safetensors": "safetensors",
           "huggingface_hub": "huggingface_hub"}
print(" ".join(package for module, package in modules.items() if importlib.util.find_spec(module) is None))
PY
)
if [ -n "$missing" ]; then
  if [ ! -d "$WHEELS" ]; then
    echo "[gpu_check] missing: $missing, and no wheels folder $WHEELS (see the head of this script)" >&2
    exit 2
  fi
  echo "[gpu_check] installing $missing from $WHEELS"
  # shellcheck disable=SC2086  # one argument per package
  "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" $missing
fi
export PYTHONPATH="$PWD:$PWD/Compressed_Video_Reader${PYTHONPATH:+:$PYTHONPATH}"
exec timeout "$LIMIT_S" "$PYTHON" benchmarks/gpu_check.py "$@"
