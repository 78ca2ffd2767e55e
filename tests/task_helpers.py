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
