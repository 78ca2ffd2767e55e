"""Shared fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from encoder_utils import tiny_encoder

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def make_encoder():
    return tiny_encoder


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``PRESET=tiny bash scripts/sft_ov_encoder.sh`` with half the default records (about a minute):
    ``(output dir, stdout)``. The training tests check it; the evaluation tests score its checkpoint."""
    out = tmp_path_factory.mktemp("tiny-sft")
    env = {**os.environ, "PYTHON": sys.executable, "PRESET": "tiny", "OUTPUT_DIR": str(out),
           "TRAIN_PER_TASK": "150", "HELDOUT_PER_TASK": "12", "NUM_WORKERS": "0"}
    result = subprocess.run(["bash", str(REPO / "scripts" / "sft_ov_encoder.sh")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result.stdout
