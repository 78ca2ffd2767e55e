"""Helpers for the tests of this project's local lmms-eval tasks (llava/eval/tasks)."""

from __future__ import annotations

import contextlib

import pytest


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
