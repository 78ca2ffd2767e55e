"""Small file helpers the codec reader and the project share: atomic writes (temp file + ``os.replace``, so a
crash never leaves a half-written file that looks done), sweeping the temp files killed runs left, pickle-free
``.npy`` loads, short stable hashes, one-line error text."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from typing import Any

import numpy as np


def short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


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


__all__ = ["atomic_save_npy", "atomic_write_bytes", "atomic_write_json", "load_npy", "one_line", "short_hash",
           "sweep_stale_tmp"]
