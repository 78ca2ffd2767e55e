"""Shared plumbing of the Stage-1/Stage-2 batch tools.

Why: both tools shard samples the same way (so a shard of Stage 2 finds the outputs of the
same shard of Stage 1), name outputs the same way as the upstream tools (existing datasets
keep working) and must never leave half-written files behind (temp file + ``os.replace``).
Dataset files are read by :mod:`cv_reader.dataset`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .dataset import DatasetReader


def open_dataset(path: str | os.PathLike, tool: str) -> DatasetReader:
    """The reader of a tool's dataset flag; a configuration error (bad mixture, missing
    file, unsupported suffix) ends the tool with that message instead of a traceback."""
    try:
        return DatasetReader(path)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"[{tool}] cannot read the dataset: {exc}") from None


def shard_key(video: str, sample_id: Any, row_idx: int) -> str:
    """Upstream sharding key (``video|id|row``)."""
    return f"{video}|{sample_id}|{row_idx}"


def shard_of(key: str, num_shards: int) -> int:
    """Stable shard of ``key`` (first 8 hex digits of its SHA-1, as upstream)."""
    return int(hashlib.sha1(key.encode("utf-8")).hexdigest()[:8], 16) % int(num_shards)


def short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def safe_id(sample_id: Any) -> str:
    """Sample id usable inside a file name (path separators replaced)."""
    return str(sample_id).replace("/", "_").replace("\\", "_")


def sample_stem(sample_id: Any, video: str) -> str:
    """``sample_<id>__<stem>__<path hash>`` (upstream naming; Stage-2 pack directory)."""
    vp = Path(video)
    return f"sample_{safe_id(sample_id)}__{vp.stem}__{short_hash(str(vp))}"


def stage1_prefix(out_root: str | os.PathLike, sample_id: Any, video: str, key: str) -> Path:
    """``sample_<id>__<stem>__<path hash>__<key hash>`` inside ``out_root``."""
    return Path(out_root) / f"{sample_stem(sample_id, video)}__{short_hash(key)}"


def stage1_suffix(t: int, square: int, patch: int, k: int | str) -> str:
    return f"_T{t}_square{square}_p{patch}_K{k}"


class Stage1Index:
    """Complete Stage-1 outputs under a directory, listed once.

    Why: resume checks and Stage-2 lookups per sample must not glob a directory that may
    hold millions of files (that is quadratic); one ``os.scandir``/``os.walk`` is enough.
    A sample counts as complete when its ``meta.json`` and both ``.npy`` files exist.
    """

    def __init__(
        self, root: str | os.PathLike, t: int, square: int, patch: int, recursive: bool = False
    ) -> None:
        self.tag = f"_T{int(t)}_square{int(square)}_p{int(patch)}_K"
        self.by_prefix: dict[str, str] = {}
        self.by_sample: dict[str, list[str]] = {}
        if not os.path.isdir(root):
            return
        walker = os.walk(root) if recursive else [(str(root), [], [e.name for e in os.scandir(root)])]
        for dirpath, _dirs, files in walker:
            names = set(files)
            for name in files:
                if not name.endswith(".meta.json") or self.tag not in name:
                    continue
                base = name[: -len(".meta.json")]
                if base + ".visidx_thw.npy" in names and base + ".frame_ids.npy" in names:
                    self._add(base[: base.rindex(self.tag)], os.path.join(dirpath, name))

    def _add(self, prefix: str, meta: str) -> None:
        self.by_prefix.setdefault(prefix, meta)
        sample = prefix[: prefix.rindex("__") + 2] if "__" in prefix else prefix
        self.by_sample.setdefault(sample, []).append(meta)

    def complete(self, prefix: Path) -> str | None:
        """Meta path of the complete outputs of ``prefix`` (any K), or None."""
        return self.by_prefix.get(prefix.name)

    def find(self, sample_id: Any, video: str) -> str | None:
        """Meta path of a sample's outputs whatever its sharding key, or None."""
        hits = self.by_sample.get(sample_stem(sample_id, video) + "__")
        return sorted(hits)[0] if hits else None


def find_stage1_meta(
    root: str | os.PathLike, sample_id: Any, video: str, t: int, square: int, patch: int
) -> Path | None:
    """The Stage-1 ``meta.json`` of one sample (any K), or None (lists ``root`` recursively)."""
    hit = Stage1Index(root, t, square, patch, recursive=True).find(sample_id, video)
    return Path(hit) if hit else None


def _tmp(path: str | os.PathLike) -> str:
    p = str(path)
    return f"{p}.tmp{os.getpid()}"


# Temp files of atomic writes of the tools' own outputs: ``<name>.<ext>.tmp<pid>``.
_TMP_NAME = re.compile(r"\.(?:npy|json|jsonl|jpg|png)\.tmp(\d+)$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_stale_tmp(root: str | os.PathLike, recursive: bool = True, prefix: str = "") -> int:
    """Delete temp files that killed runs left under ``root``; returns how many.

    Only names of the tools' atomic writes (``*.npy|json|jsonl|jpg|png.tmp<pid>``, starting
    with ``prefix``) whose writing process no longer exists are touched, so a run working
    beside this one keeps its files.
    """
    removed = 0
    if not os.path.isdir(root):
        return 0
    walker = os.walk(root) if recursive else [(str(root), [], os.listdir(root))]
    for folder, _, names in walker:
        for name in names:
            m = _TMP_NAME.search(name)
            if m and name.startswith(prefix) and not _pid_alive(int(m.group(1))):
                try:
                    os.remove(os.path.join(folder, name))
                    removed += 1
                except FileNotFoundError:
                    pass
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either nothing or the whole file."""
    tmp = _tmp(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save_npy(path: str | os.PathLike, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """``np.load`` that refuses pickled objects."""
    return np.load(path, allow_pickle=False)


def one_line(text: str) -> str:
    """Error text fit for a tab-separated log line."""
    return " ".join(str(text).split())


def resolve_video(video: str, video_folder: str | None) -> str:
    """Absolute-or-cwd path of a dataset ``video`` entry (joined to ``video_folder`` if relative)."""
    if video_folder and not os.path.isabs(video):
        return os.path.join(video_folder, video)
    return video


__all__ = [
    "atomic_save_npy",
    "atomic_write_bytes",
    "atomic_write_json",
    "find_stage1_meta",
    "Stage1Index",
    "safe_id",
    "sample_stem",
    "load_npy",
    "one_line",
    "open_dataset",
    "resolve_video",
    "shard_key",
    "shard_of",
    "short_hash",
    "sweep_stale_tmp",
    "stage1_prefix",
    "stage1_suffix",
]
