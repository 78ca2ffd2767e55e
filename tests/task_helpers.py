"""Helpers for the tests of this project's local lmms-eval tasks (llava/eval/tasks)."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest


def import_by_path(path: str | Path, name: str) -> ModuleType:
    """The module in ``path``, imported once under ``name``: a task's utils.py as lmms-eval's
    ``!function`` loads it, or a playground script (not a package). Registered in ``sys.modules``
    (dataclasses need their module there); a failed import leaves nothing registered."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(path))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


@contextlib.contextmanager
def offline_task_media(tmp_path_factory, media_variable: str):
    """A local task's setting: offline, with the datasets cache and the task's media cache
    (``media_variable``, e.g. ``TINY_OV_MEDIA``) in temporary folders; yields the media folder."""
    folder = tmp_path_factory.mktemp(media_variable.lower())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        patch.setenv("LMMS_EVAL_DATASETS_CACHE", str(tmp_path_factory.mktemp("datasets")))
        patch.setenv(media_variable, str(folder))
        yield folder


#: The metric each local task reports (``tiny_ov_free``: an image task; ``flash_events_colour``: a video task).
LOCAL_TASK_METRICS = {"tiny_ov_free": "exact_match,none", "flash_events_colour": "acc,none"}


def evaluate_local_tasks(out: Path, media: Path, model: str, model_args: str, limit: int) -> dict:
    """``python -m llava.eval.run`` on ``tiny_ov_free`` and ``flash_events_colour`` (their media written under
    ``media``), ``limit`` documents each: ``{"scores": {task: score}, "answers": {(doc_id, samples file): the
    filtered answers}}``."""
    import json
    import os
    import subprocess

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(out / "hf_home"),
           "TINY_OV_MEDIA": str(media / "tiny_ov"), "FLASH_EVENTS_MEDIA": str(media / "flash_events")}
    result = subprocess.run(
        [sys.executable, "-m", "llava.eval.run", "--model", model, "--model_args", model_args,
         "--tasks", ",".join(LOCAL_TASK_METRICS), "--limit", str(limit), "--batch_size", "1",
         "--output_path", str(out), "--log_samples"],
        cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (results,) = out.rglob("*_results.json")
    scores = json.loads(results.read_text())["results"]
    answers = {}
    for samples in out.rglob("*_samples_*.jsonl"):
        for line in samples.read_text().splitlines():
            sample = json.loads(line)
            answers[sample["doc_id"], samples.name.split("_samples_")[1]] = sample["filtered_resps"]
    return {"scores": {task: scores[task][metric] for task, metric in LOCAL_TASK_METRICS.items()},
            "answers": answers}
