"""playground/flash_events/run.py --quick: the codec-vs-uniform benchmark, end to end, as CI runs it.

One quick run (data -> Stage 1/2 -> six tiny trainings -> lmms-eval) is shared by the tests; they
check what it writes, that a rerun resumes instead of recomputing, that other settings are refused,
and that what it reports as "flash in the input" is what the reader selects.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from task_helpers import import_by_path

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "playground" / "flash_events" / "run.py"
BUDGETS = (2, 4, 8)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _run(out: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(RUN), "--quick", "--out", str(out), *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1500,
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("flash_run") / "run"
    done = _run(out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout


@pytest.fixture(scope="module")
def runner():
    return import_by_path(RUN, "_flash_events_run")


def test_results_cover_both_modes_at_every_budget(quick_run):
    out, stdout = quick_run
    rows = json.loads((out / "results.json").read_text())
    assert sorted((r["mode"], r["budget"]) for r in rows) == sorted(
        (mode, budget) for mode in ("codec", "uniform") for budget in BUDGETS
    )
    for r in rows:
        assert r["patches"] == r["budget"] * 16  # the same visual-token budget in both modes
        assert 0.0 <= r["colour"] <= 1.0 and 0.0 <= r["where"] <= 1.0
        assert r["accuracy"] == pytest.approx((r["colour"] + r["where"]) / 2)
        assert 0.0 <= r["flash_reached"] <= 1.0 and r["train_seconds"] > 0
    reached = {(r["mode"], r["budget"]): r["flash_reached"] for r in rows}
    for budget in BUDGETS:  # selection, measured on the packs the eval read: deterministic
        assert reached["codec", budget] > reached["uniform", budget], reached
    table = (out / "results.md").read_text()
    assert table.strip() in stdout and table.count("\n") == 2 + len(BUDGETS)
    with Image.open(out / "accuracy_vs_budget.png") as image:
        assert image.format == "PNG" and image.size[0] > 300
    scores = json.loads((out / "eval" / "codec_b4" / "scores.json").read_text())
    assert set(scores) == {"flash_events_colour", "flash_events_where"}
    assert "some test videos were not read" not in stdout  # codec evals read the precomputed packs


def test_a_rerun_resumes_without_recomputing(quick_run):
    out, _ = quick_run
    before = (out / "results.json").read_text()
    logs = {p.name: p.stat().st_mtime_ns for p in (out / "logs").iterdir()}
    again = _run(out)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "log:" not in again.stdout  # no step ran again
    assert {p.name: p.stat().st_mtime_ns for p in (out / "logs").iterdir()} == logs
    assert (out / "results.json").read_text() == before


def test_other_settings_into_the_same_folder_are_refused(quick_run):
    out, _ = quick_run
    refused = _run(out, "--epochs", "3")
    assert refused.returncode != 0
    assert "holds a run with other settings" in refused.stderr and "epochs" in refused.stderr
    assert json.loads((out / "run_config.json").read_text())["size"]["epochs"] == 1


def test_flash_reached_is_what_the_reader_selects(quick_run, runner, monkeypatch):
    """The codec figure, read back from the eval's Stage-2 packs, equals cv_reader's own selection."""
    from cv_reader import sample_frame_ids_uniform, select_patches

    from llava.processing.media import codec_options

    out, _ = quick_run
    media = out / "media"
    monkeypatch.setenv("FLASH_EVENTS_MEDIA", str(media))
    utils = import_by_path(REPO / "llava/eval/tasks/flash_events/utils.py", "_flash_events_task_utils")
    docs = runner.test_docs(runner.SIZES["quick"].limit)
    for budget in BUDGETS:
        assets = out / "codec" / f"B{budget}" / "assets"
        params = codec_options(64, budget, 64, 16)
        hits = 0
        for doc in docs:
            selection = select_patches(utils.render_video(doc), params)
            frames = np.asarray(sample_frame_ids_uniform(128, 64))[selection.thw[:, 0]]
            in_event = (frames >= doc["start"]) & (frames < doc["start"] + doc["length"])
            y, x = selection.thw[:, 1] * 16, selection.thw[:, 2] * 16
            reach = (16 + doc["side"]) / 2  # centre distance below which a patch and the square overlap
            overlap = (abs(y + 8 - doc["y"] - doc["side"] / 2) < reach) & (
                abs(x + 8 - doc["x"] - doc["side"] / 2) < reach
            )
            hits += bool((in_event & overlap).any())
        assert runner.flash_reached("codec", budget, docs, assets) == hits / len(docs)
    # uniform: the sampler's frames against the event, no decoding needed
    assert runner.flash_reached("uniform", 2, docs, None) == sum(
        doc["start"] <= 0 < doc["start"] + doc["length"] or doc["start"] <= 127 < doc["start"] + doc["length"]
        for doc in docs
    ) / len(docs)
