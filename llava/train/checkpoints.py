"""Which ``checkpoint-*`` folders of a run are complete: marking them, choosing one to resume, rotating.

The Trainer writes a checkpoint file by file and rank by rank — the weights, the optimizer state
(under DeepSpeed one shard per rank), the scheduler, each rank's RNG state, ``trainer_state.json`` —
so a run killed while saving leaves a folder that looks like a checkpoint and cannot be resumed.
:class:`~llava.train.trainer.LLaVATrainer` therefore writes :data:`MARKER` into the folder last:
after every rank finished its part (a barrier), after the files reached the disk (fsync), atomically
(a temporary file renamed), listing every file of the checkpoint with its size. A folder is complete

* with the marker: when every file it lists is there with that size;
* without it (saved before this rule, or by another trainer): when it holds ``trainer_state.json``
  and an RNG state for every rank of the resuming run (``rng_state.pth``, or ``rng_state_<rank>.pth``
  of ranks 0 .. world size - 1). Each rank saves its RNG state after its weights and optimizer part
  (DeepSpeed's save also ends with a barrier) and rank 0 writes ``trainer_state.json`` after its RNG
  state, so these are the last files each rank writes.

Resuming takes the newest complete folder and says which newer ones it skipped and why; rotation
(``--save_total_limit``) counts complete folders only, by step, after the new one is marked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

#: Written last into a checkpoint folder, once all of it is on disk.
MARKER = "checkpoint_complete.json"
_FOLDER = re.compile(r"^checkpoint-(\d+)$")


class IncompleteCheckpoint(ValueError):
    """``--resume_from_checkpoint`` names a folder that cannot be resumed (the message says why)."""


def checkpoint_folders(run_dir: str | Path) -> list[Path]:
    """The ``checkpoint-<step>`` folders of ``run_dir``, oldest step first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _FOLDER.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def incomplete_reason(folder: str | Path, world_size: int = 1) -> str | None:
    """Why ``folder`` cannot be resumed, or None when it is complete (rules: the module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        return "no such folder"
    marker = folder / MARKER
    if not marker.exists():
        return _legacy_reason(folder, world_size)
    try:
        files = json.loads(marker.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{MARKER} is unreadable ({error}); save the checkpoint again or remove the folder"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing although {MARKER} lists it"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} when it was saved"
    return None


def _legacy_reason(folder: Path, world_size: int) -> str | None:
    killed = "the run was probably killed while saving it"
    if not (folder / "trainer_state.json").is_file():
        return f"no {MARKER} and no trainer_state.json; {killed}"
    if (folder / "rng_state.pth").is_file() or (world_size == 1 and (folder / "rng_state_0.pth").is_file()):
        return None
    names = [f"rng_state_{rank}.pth" for rank in range(world_size)]
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        return f"no {MARKER} and no {', '.join(missing)} (a rank had not finished its part); {killed}"
    return None


def newest_complete(run_dir: str | Path, world_size: int = 1) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The newest complete checkpoint of ``run_dir`` (None if there is none), and the newer
    folders skipped, each with why."""
    skipped = []
    for folder in reversed(checkpoint_folders(run_dir)):
        reason = incomplete_reason(folder, world_size)
        if reason is None:
            return folder, skipped
        skipped.append((folder, reason))
    return None, skipped


def check_resumable(folder: str | Path, world_size: int = 1) -> Path:
    """``folder`` if it is a complete checkpoint; else :class:`IncompleteCheckpoint` naming it, why,
    and the run's newest complete checkpoint to resume instead."""
    folder = Path(folder)
    reason = incomplete_reason(folder, world_size)
    if reason is None:
        return folder
    instead, _ = newest_complete(folder.parent, world_size)
    hint = f"resume from {instead} instead" if instead is not None else "no complete checkpoint is beside it"
    raise IncompleteCheckpoint(f"--resume_from_checkpoint {folder} cannot be resumed: {reason} ({hint})")


def mark_complete(folder: str | Path, step: int, world_size: int) -> Path:
    """Flush every file of ``folder`` to disk, then write :data:`MARKER` (atomically) listing them.
    Call on one process, after all ranks finished writing the folder."""
    folder = Path(folder)
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MARKER and not path.name.startswith(f".{MARKER}"):
            _fsync(path)
            files[path.relative_to(folder).as_posix()] = path.stat().st_size
    for directory in {folder, *(p.parent for p in folder.rglob("*"))}:
        _fsync(directory)
    staging = folder / f".{MARKER}.{os.getpid()}.tmp"  # one per process: nodes may share the folder
    with open(staging, "w") as handle:
        json.dump({"step": step, "world_size": world_size, "files": files}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, folder / MARKER)
    _fsync(folder)
    return folder / MARKER


def discard(folder: str | Path) -> None:
    """Remove ``folder``, its marker first (a removal cut short leaves an incomplete folder, never a
    complete-looking one)."""
    folder = Path(folder)
    (folder / MARKER).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def rotate(run_dir: str | Path, limit: int | None, world_size: int = 1,
           keep: str | Path | None = None) -> list[Path]:
    """Delete complete checkpoints beyond the newest ``limit`` (never ``keep``, the best one) and the
    incomplete ones older than the newest complete one (they can never be resumed); returns what
    was deleted. Incomplete folders newer than every complete one are left alone."""
    if not limit or limit <= 0:
        return []
    keep = Path(keep).resolve() if keep else None
    folders = checkpoint_folders(run_dir)
    complete = [f for f in folders if incomplete_reason(f, world_size) is None]
    if not complete:
        return []
    kept = set(complete[-limit:]) | {f for f in complete if keep is not None and f.resolve() == keep}
    newest = complete[-1]
    doomed = [f for f in folders if f not in kept and (f in complete or _step(f) < _step(newest))]
    for folder in doomed:
        discard(folder)
    return doomed


def _step(folder: Path) -> int:
    return int(_FOLDER.match(folder.name).group(1))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():  # some file systems cannot sync a directory; a file must reach the disk
            raise
    finally:
        os.close(fd)


__all__ = [
    "MARKER", "IncompleteCheckpoint", "check_resumable", "checkpoint_folders", "discard",
    "incomplete_reason", "mark_complete", "newest_complete", "rotate",
]
