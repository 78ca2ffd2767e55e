"""The prepared GPU check (benchmarks/gpu_check.sh) works before a GPU is lent: its smoke run does every step at
tiny sizes on the CPU and writes the results file; without a GPU the real run refuses at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _check(*argv: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_the_smoke_run_passes_every_step_and_writes_the_results(tmp_path):
    out = tmp_path / "smoke.json"
    result = _check("--smoke", "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads(out.read_text())
    steps = results["steps"]
    assert list(steps) == ["parity", "encoder", "sft_step", "tiny_sft"]
    assert all(step["status"] == "pass" for step in steps.values()), steps
    # every backend against the reference implementation, the packed batch included
    assert steps["parity"]["backends"] == ["eager", "sdpa", "varlen"]
    assert max(steps["parity"]["relative_error"].values()) < 1e-4
    assert steps["encoder"]["dense"]["tokens_per_s"] > 0 and steps["encoder"]["codec"]["tokens_per_s"] > 0
    assert steps["sft_step"]["attention"] == "varlen"  # auto without flash-attn
    assert steps["sft_step"]["packed"]["tokens_per_s"] > 0 and steps["sft_step"]["unpacked"]["steps"] > 0
    assert steps["tiny_sft"]["steps"] == 10 and steps["tiny_sft"]["heldout"]["overall"]["total"] > 0
    assert results["environment"]["torch"] and results["smoke"] is True


def test_without_a_gpu_the_real_run_says_so(tmp_path):
    result = _check("--out", str(tmp_path / "gpu.json"), timeout=120)
    assert result.returncode == 2 and "no CUDA device" in result.stderr
    assert not (tmp_path / "gpu.json").exists()
    unknown = _check("--smoke", "--steps", "parity,fly", timeout=120)
    assert unknown.returncode == 2 and "--steps: choose from" in unknown.stderr
