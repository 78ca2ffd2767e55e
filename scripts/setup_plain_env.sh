#!/usr/bin/env bash
# A venv WITHOUT this project, holding only what a checkpoint folder needs: torch, transformers, PyAV,
# Pillow and numpy, at the versions the project's venv has (so answers compare like for like).
# tests/test_plain_transformers.py loads checkpoints in it through trust_remote_code, as a user would.
#
#   bash scripts/setup_plain_env.sh      Environment: VENV (the project's, default .venv),
#                                        PLAIN_VENV (default .venv-plain), PYTHON (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PLAIN_VENV=${PLAIN_VENV:-.venv-plain}
PYTHON=${PYTHON:-python3}

pins=$("$VENV/bin/python" - <<'PY'
from importlib.metadata import version
print(" ".join(f"{name}=={version(name).split('+')[0]}" for name in ("torch", "transformers", "av", "pillow", "numpy")))
PY
)
stamp="$PLAIN_VENV/.plain-pins"
if [ -x "$PLAIN_VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$pins" ]; then
  exit 0
fi
echo "[setup] creating $PLAIN_VENV (no project): $pins"
rm -rf "$PLAIN_VENV"
"$PYTHON" -m venv "$PLAIN_VENV"
# shellcheck disable=SC2086  # one argument per pin
"$PLAIN_VENV/bin/python" -m pip install -q $pins
echo "$pins" > "$stamp"
