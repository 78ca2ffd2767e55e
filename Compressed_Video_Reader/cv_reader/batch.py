"""Shared plumbing of the Stage-1/Stage-2 batch tools.

Why: both tools shard samples the same way (so a shard of Stage 2 finds the outputs of the
same shard of Stage 1), name outputs the same way as the upstream tools (existing datasets
keep working). Dataset files are read by :mod:`cv_reader.dataset`, atomic writes and hashes are
:mod:`cv_reader.util`'s.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .dataset import DatasetReader, Record
from .util import short_hash


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


def record_row(item: dict, record: Record) -> int:
    """Row index of a record's shard key: its ``_row_idx`` if it has a usable one, else its index in the file."""
    try:
        return int(item.get("_row_idx", record.index))
    except (TypeError, ValueError):
        return record.index


def shard_records(reader: DatasetReader, stats: dict, num_shards: int, shard_id: int, max_samples: int = 0,
                  need_video: bool = True) -> Iterator[tuple[Record, str]]:
    """The records of shard ``shard_id`` of ``num_shards`` with their shard key, the loop Stage 1 and both Stage-2
    modes share (so a shard of Stage 2 finds the outputs of the same shard of Stage 1). Counts in ``stats``:
    ``seen``, ``bad_records`` (the reader's), ``skip`` (no ``id`` or ``video``, when ``need_video``), ``shard_skip``;
    stops once ``stats["picked"]`` (the caller's count) reaches ``max_samples`` (0: no limit). A record without a
    video (``need_video=False``) is keyed with an empty video."""
    for record in reader:
        stats["seen"] += 1
        stats["bad_records"] = reader.bad_records
        item = record.data
        sid, video = item.get("id"), item.get("video")
        if need_video and (sid is None or video is None):
            stats["skip"] += 1
            continue
        key = shard_key(video or "", sid, record_row(item, record))
        if shard_of(key, num_shards) != shard_id:
            stats["shard_skip"] += 1
            continue
        if max_samples > 0 and stats["picked"] >= max_samples:
            return
        yield record, key


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


def resolve_video(video: str, video_folder: str | None) -> str:
    """Absolute-or-cwd path of a dataset ``video`` entry (joined to ``video_folder`` if relative)."""
    if video_folder and not os.path.isabs(video):
        return os.path.join(video_folder, video)
    return video


__all__ = [
    "find_stage1_meta",
    "Stage1Index",
    "safe_id",
    "sample_stem",
    "open_dataset",
    "resolve_video",
    "record_row",
    "shard_key",
    "shard_records",
    "shard_of",
    "stage1_prefix",
    "stage1_suffix",
]
