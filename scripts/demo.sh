#!/usr/bin/env bash
# Set up the environment (if needed) and run the end-to-end CPU demo: bash scripts/demo.sh [demo args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh demo
exec "${VENV:-.venv}/bin/python" -m llava.demo "$@"
