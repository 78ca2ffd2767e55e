#!/usr/bin/env bash
# Set up the environment (if needed) and run the test suite: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh dev
exec "${VENV:-.venv}/bin/python" -m pytest -q "$@"
