#!/usr/bin/env bash
# Create (or reuse) a virtualenv and install the project into it, for this machine.
#
#   bash scripts/setup_env.sh [EXTRAS]      EXTRAS: comma list of pyproject extras (default: dev)
#
# Environment: VENV (default .venv), PYTHON (default python3),
#              TORCH_SPEC (override the torch requirement, e.g. "torch==2.6.0").
# torch is installed first and on its own: CPU machines get the pinned CPU build
# (torch==2.13.0; an unpinned torch pulls several GB of CUDA wheels), CUDA machines the
# default CUDA build. The project's own "torch>=2.4" is then already satisfied, and the
# project is installed with that torch version as a constraint.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
EXTRAS=${1:-dev}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  if [ -z "${TORCH_SPEC:-}" ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      TORCH_SPEC="torch"
    else
      TORCH_SPEC="torch==2.13.0"
    fi
  fi
  echo "[setup] installing $TORCH_SPEC"
  "$PY" -m pip install -q "$TORCH_SPEC"
fi

# Reinstall the project only when its requirements or the chosen extras change.
stamp="$VENV/.llava-install-$(echo "$EXTRAS" | tr ',' '-')"
digest=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
  echo "[setup] installing the project with extras [$EXTRAS]"
  # Keep the torch installed above: some dependencies (lmms-eval, through timm and others) ask
  # for a torch range that pip would otherwise satisfy with a newer, several-GB CUDA build.
  constraints=$(mktemp)
  "$PY" -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > "$constraints"
  "$PY" -m pip install -q -e ".[$EXTRAS]" -c "$constraints"
  rm -f "$constraints"
  echo "$digest" > "$stamp"
fi

# A torchvision built for another torch breaks transformers' image utilities (PyPI's
# torchvision wheels do not load with the CPU torch build); the project never needs it,
# so remove it when it does not import.
if "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torchvision') is None)"; then
  if ! "$PY" -c "import torchvision" >/dev/null 2>&1; then
    echo "[setup] removing a torchvision that does not load with this torch"
    "$PY" -m pip uninstall -q -y torchvision
  fi
fi
