"""Shared plumbing of the Stage-1/Stage-2 batch tools.

Why: both tools shard samples the same way (so a shard of Stage 2 finds the outputs of the
same shard of Stage 1), name outputs the same way as the upstream tools (existing datasets
keep working). Dataset files are read by :mod:`cv_reader.dataset`, atomic writes and hashes are
:mod:`cv_reader.util`'s.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .dataset import DatasetReader, Record
from .util import short_hash, sweep_stale_tmp


def open_dataset(path: str | os.PathLike, tool: str) -> DatasetReader:
    """The reader of a tool's dataset flag; a configuration error (bad mixture, missing
    file, unsupported suffix) ends the tool with that message instead of a traceback."""
    try:
        return DatasetReader(path)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"[{tool}] cannot read the dataset: {exc}") from None


def shard_tag(num_shards: int, shard_id: int, tool: str) -> str:
    """``shardXXofYY`` (the name part of a shard's logs and outputs); a ``shard_id`` outside
    ``[0, num_shards)`` ends the tool with a message naming both flags."""
    num_shards = max(1, int(num_shards))
    if not 0 <= shard_id < num_shards:
        raise SystemExit(f"[{tool}] --shard_id {shard_id} must be in [0, {num_shards}) (--num_shards {num_shards})")
    return f"shard{shard_id:02d}of{num_shards:02d}"


def sweep_interrupted(tool: str, *places: tuple[Path, dict]) -> int:
    """Remove the temp files an interrupted run of ``tool`` left in each ``(directory, sweep_stale_tmp
    keywords)``, say how many, and return the count (``stale_tmp_removed``)."""
    removed = sum(sweep_stale_tmp(directory, **kw) for directory, kw in places)
    if removed:
        print(f"[{tool}] removed {removed} temp file(s) left by an interrupted run", flush=True)
    return removed


#: The counters of a batch tool's status line, in the order it prints them (each tool prints those it counts):
#: records read, records of this shard taken, outcomes of the taken ones, records passed over and why.
STATUS_FIELDS = ("seen", "picked", "ok", "fail", "unsupported", "resumed", "skip", "passthrough", "shard_skip",
                 "bad_records")


class BatchRun:
    """What the runs of Stage 1 and both Stage-2 modes share: outcome counters, the progress bar,
    the per-outcome logs (failures, unsupported codecs), the periodic status line and the summary.

    ``stats`` holds the counters the tool counts (a subset of :data:`STATUS_FIELDS`; the dataset
    loop, :func:`shard_records`, counts ``seen``, ``skip``, ``shard_skip`` and ``bad_records`` in it).
    Each finished record is one :meth:`outcome`; every ``log_every`` outcomes the status line
    ``[tool] shardXXofYY seen=... elapsed=...s avg=...s/<unit>`` is written above the bar, and
    :meth:`summary` prints it once more as the ``[tool] DONE ...`` line scripts read.
    """

    def __init__(self, tool: str, tag: str, unit: str, stats: dict, logs: dict[str, Path], log_every: int):
        self.tool, self.tag, self.unit, self.stats, self.log_every = tool, tag, unit, stats, int(log_every)
        self.logs = {name: Path(path) for name, path in logs.items()}
        self.done = 0
        self.t0 = time.perf_counter()
        self._stack = ExitStack()
        self._files: dict = {}
        self.bar: tqdm | None = None

    def __enter__(self) -> BatchRun:
        for name, path in self.logs.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            self._files[name] = self._stack.enter_context(open(path, "a", encoding="utf-8"))
        self._stack.enter_context(logging_redirect_tqdm())  # bad-record warnings print above the bar
        self.bar = self._stack.enter_context(
            tqdm(desc=f"{self.tool} {self.tag}", unit=self.unit, file=sys.stderr, mininterval=1.0)
        )
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc_info) -> bool | None:
        return self._stack.__exit__(*exc_info)

    def enter_context(self, cm):
        """Enter ``cm`` (e.g. the worker pool) for the rest of the run; it is closed before the logs."""
        return self._stack.enter_context(cm)

    def outcome(self, name: str, log_line: str | None = None) -> None:
        """Count one finished record as ``name``; ``log_line`` goes to the log of that outcome."""
        self.stats[name] += 1
        if log_line is not None:
            log = self._files[name]
            log.write(log_line + "\n")
            log.flush()
        self.done += 1
        self.bar.update(1)
        if self.log_every > 0 and self.done % self.log_every == 0:
            self.bar.write(self.status_line())

    def status_line(self, done: bool = False) -> str:
        elapsed = time.perf_counter() - self.t0
        counts = " ".join(f"{name}={self.stats[name]}" for name in STATUS_FIELDS if name in self.stats)
        head = f"[{self.tool}] DONE" if done else f"[{self.tool}]"
        return (f"{head} {self.tag} {counts} elapsed={elapsed:.1f}s "
                f"avg={elapsed / max(self.done, 1):.3f}s/{self.unit}")

    def summary(self, reader: DatasetReader, *lines: str) -> None:
        """Print the ``DONE`` line, the reader's bad-record summary and ``lines``, each ``[tool]``-prefixed."""
        self.stats["bad_records"] = reader.bad_records
        print(self.status_line(done=True), flush=True)
        for line in (*reader.summary_lines(), *lines):
            print(f"[{self.tool}] {line}", flush=True)


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
    "BatchRun",
    "STATUS_FIELDS",
    "shard_tag",
    "sweep_interrupted",
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
