"""The video files of lmms-eval benchmarks, found where lmms-eval keeps them, as a codec-tool dataset.

    python -m llava.eval.benchmark_videos --tasks videomme --out outputs/codec_assets/videomme/videos.jsonl

What ``scripts/precompute_codec_patch/preprocess_video_benchmark.sh`` runs before Stage 1 and Stage 2.
The tasks are loaded with lmms-eval's own ``TaskManager`` / ``get_task_dict`` (this project's
``llava/eval/tasks`` and the ``--include_path`` folders included, as ``llava.eval.run`` does; a group
or tag expands to its subtasks). For each task it goes over the docs the evaluator scores
(``task.eval_docs``: the test split, else the validation split; ``--split`` picks another) and calls
the task's own ``doc_to_visual(doc)``. The task utils compute the file paths from ``HF_HOME`` (at
import time), so these are the files an evaluation opens; ``HF_HOME`` is made absolute before lmms-eval
is imported, so the paths are absolute too.

Output (written atomically): one JSONL record per distinct video, in doc order,
``{"id": <file stem>, "video": <absolute path>, "task": <subtask of its first doc>}``, the records
``Compressed_Video_Reader/tool/stage1.py`` and ``stage2.py`` read. The id is the stem with every ``_``
that precedes another ``_`` or ends the stem written ``-``, so the Stage-2 pack folder
``sample_<id>__<stem>__<path hash>`` names its stem unambiguously (``llava.eval.codec_assets`` reads it
back). A video a doc names that is not on disk is left out and listed in ``<out>.missing.txt``
(``task<TAB>doc id<TAB>path``), rewritten every run. Many task utils stop with ``sys.exit`` or an
exception for a missing file, and some return nothing; such a doc is listed with the path the message
names, else with the message.

Exit status: 0 (missing videos are counted and listed, not an error); 1 when a task could not be loaded
or its docs read (nothing is written); 2 for an unknown task name or a bad command line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cv_reader.util import atomic_write_bytes, one_line
from tqdm import tqdm

from ..processing.media import is_image_path
from .run import LOCAL_TASKS

#: A path inside the message of a task util that stopped on a missing file (``video path:/x.mp4 does
#: not exist``, ``Tried both ['/x.mp4', ...]``).
_PATH_IN_MESSAGE = re.compile(r"(/[^\s'\",\]]+)")


class UnknownTaskError(ValueError):
    """A requested name is no task, group or tag lmms-eval knows."""


def sample_id(video: str | os.PathLike) -> str:
    """The record id of a video: its stem, with a ``_`` before another ``_`` or at the end made ``-``."""
    return re.sub(r"_(?=_|$)", "-", Path(video).stem)


def _stop_reason(exc: BaseException) -> str:
    """What a ``doc_to_visual`` that stopped said: the path its message names, else the message."""
    message = exc.code if isinstance(exc, SystemExit) else exc
    text = one_line(str(message))
    found = _PATH_IN_MESSAGE.search(text)
    return found.group(1) if found else f"doc_to_visual stopped: {type(exc).__name__}: {text}"


def doc_videos(doc_to_visual: Callable, doc) -> tuple[list[str], str | None]:
    """``(video paths, None)`` a doc names (``str`` visuals that are not images), or ``([], why)``.

    ``why`` is set when ``doc_to_visual`` stopped (``sys.exit`` or an exception: how most video task
    utils report a missing file) or gave no visual at all (how others do).
    """
    try:
        visuals = doc_to_visual(doc)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - every way a task util gives up
        return [], _stop_reason(exc)
    if isinstance(visuals, (str, os.PathLike)):  # a few tasks return one bare path
        visuals = [visuals]
    if not visuals:
        return [], "doc_to_visual gave no visual"
    return [str(v) for v in visuals if isinstance(v, (str, os.PathLike)) and not is_image_path(v)], None


@dataclass
class VideoListing:
    """The distinct videos of some tasks' docs, and the ones the docs name that are not on disk."""

    videos: dict[str, dict] = field(default_factory=dict)  # absolute path -> record, in doc order
    missing: list[tuple[str, int, str]] = field(default_factory=list)  # (task, doc id, path or why)
    tasks: list[str] = field(default_factory=list)
    docs: int = 0

    def add_task(self, task: str, docs: Iterable, doc_to_visual: Callable, progress: bool = True) -> None:
        """Go over one task's docs (doc ids are their positions, as the evaluator numbers them)."""
        self.tasks.append(task)
        bar = tqdm(docs, desc=task, unit="doc", file=sys.stderr, mininterval=1.0, disable=not progress)
        for doc_id, doc in enumerate(bar):
            self.docs += 1
            paths, why = doc_videos(doc_to_visual, doc)
            if why is not None:
                self.missing.append((task, doc_id, why))
            for path in paths:
                video = str(Path(path).absolute())
                if video in self.videos:
                    continue
                if os.path.isfile(video):
                    self.videos[video] = {"id": sample_id(video), "video": video, "task": task}
                else:
                    self.missing.append((task, doc_id, video))

    def write(self, out: str | os.PathLike) -> Path:
        """Write the records to ``out`` and the missing list to ``<out>.missing.txt`` (both atomically)."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in self.videos.values())
        atomic_write_bytes(out, lines.encode("utf-8"))
        missing = missing_path(out)
        atomic_write_bytes(missing, "".join(f"{t}\t{d}\t{p}\n" for t, d, p in self.missing).encode("utf-8"))
        return missing

    def summary(self, out: str | os.PathLike) -> str:
        """The closing line: tasks, docs, videos written, and missing (doc, video) rows (distinct ones)."""
        distinct = len({path for _, _, path in self.missing})
        line = (
            f"[benchmark_videos] tasks={len(self.tasks)} docs={self.docs} videos={len(self.videos)} "
            f"missing={len(self.missing)} ({distinct} distinct) -> {out}"
        )
        return line + (f" (missing: {missing_path(out)})" if self.missing else "")


def missing_path(out: str | os.PathLike) -> Path:
    """Where the missing videos of the listing ``out`` are listed."""
    return Path(f"{out}.missing.txt")


def leaf_tasks(task_dict: dict) -> list[tuple[str, object]]:
    """``(task name, task)`` of every task in a ``get_task_dict`` result, groups expanded, in order.

    The name is ``task.config.task``, the one the evaluator puts in each request.
    """
    leaves = []
    for value in task_dict.values():
        if isinstance(value, dict):
            leaves += leaf_tasks(value)
        elif hasattr(value, "eval_docs"):
            leaves.append((value.config.task, value))
    return leaves


def load_tasks(
    names: list[str], include_path: list[str], verbosity: str = "WARNING"
) -> list[tuple[str, object]]:
    """The evaluation tasks behind ``names`` (tasks, groups or tags), loaded by lmms-eval.

    Raises :class:`UnknownTaskError` before loading anything when a name is unknown.
    """
    from lmms_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager(verbosity, include_path=include_path or None)
    unknown = [name for name in names if name not in manager.all_tasks]
    if unknown:
        folders = ", ".join(include_path) or "none"
        raise UnknownTaskError(
            f"unknown lmms-eval task(s): {', '.join(unknown)} (include path: {folders}); "
            "`python -m lmms_eval --tasks list` lists the names"
        )
    leaves: dict[str, object] = {}
    for name in names:  # one at a time: groups sharing a subtask must not trip lmms-eval's check
        for task_name, task in leaf_tasks(get_task_dict([name], manager)):
            leaves.setdefault(task_name, task)
    return list(leaves.items())


def evaluation_docs(task, split: str | None = None):
    """The docs the evaluator scores (``task.eval_docs``), or those of ``split`` of the task's dataset."""
    if split is None:
        return task.eval_docs
    if split not in task.dataset:
        raise ValueError(f"{task.config.task} has no split {split!r} (it has {', '.join(task.dataset)})")
    return task.dataset[split]


def include_folders(include_path: str | None) -> list[str]:
    """This project's task folder, then the ``:``-joined ``--include_path`` folders (absolute, once each)."""
    folders = [str(LOCAL_TASKS)] + [p for p in (include_path or "").split(os.pathsep) if p]
    return list(dict.fromkeys(str(Path(p).absolute()) for p in folders))


def _setup_environment(verbosity: str) -> None:
    """Make ``HF_HOME`` absolute (task utils read it when lmms-eval imports them); lmms-eval's log level."""
    if os.environ.get("HF_HOME"):
        os.environ["HF_HOME"] = str(Path(os.environ["HF_HOME"]).expanduser().absolute())
    from loguru import logger  # lmms-eval's logger

    logger.remove()
    logger.add(sys.stderr, level=verbosity)


def _root_cause(exc: BaseException) -> BaseException:
    """The error behind lmms-eval's retry wrapper (``tenacity.RetryError``), else ``exc``."""
    attempt = getattr(exc, "last_attempt", None)
    inner = attempt.exception() if attempt is not None and attempt.failed else None
    return inner if inner is not None else exc


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m llava.eval.benchmark_videos",
        description="List the video files of lmms-eval tasks (where lmms-eval keeps them) as a "
        "Stage-1/Stage-2 dataset: {id, video, task} per distinct video.",
    )
    ap.add_argument("--tasks", required=True, help="task, group or tag names, joined by ','")
    ap.add_argument("--out", required=True, help="output JSONL (missing videos: <out>.missing.txt)")
    ap.add_argument(
        "--include_path",
        default=None,
        help=f"more lmms-eval task folders, joined by '{os.pathsep}' ({LOCAL_TASKS} is always included)",
    )
    ap.add_argument(
        "--split", default=None, help="dataset split to read (default: the docs the evaluator scores)"
    )
    ap.add_argument("--verbosity", default="WARNING", help="lmms-eval's log level (default WARNING)")
    ap.add_argument("--no_progress", action="store_true", help="no progress bar")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    names = list(dict.fromkeys(name.strip() for name in args.tasks.split(",") if name.strip()))
    if not names:
        print("error: --tasks names no task", file=sys.stderr)
        return 2
    _setup_environment(args.verbosity)
    try:
        tasks = load_tasks(names, include_folders(args.include_path), args.verbosity)
    except UnknownTaskError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a dataset lmms-eval cannot load (offline, not downloaded)
        exc, hf_home = _root_cause(exc), os.environ.get("HF_HOME", "~/.cache/huggingface")
        hint = f"lmms-eval fetches a benchmark's dataset into HF_HOME={hf_home} on first use"
        print(
            f"error: lmms-eval could not load {', '.join(names)}: {type(exc).__name__}: {exc} ({hint})",
            file=sys.stderr,
        )
        return 1
    listing = VideoListing()
    for name, task in tasks:
        try:
            docs = evaluation_docs(task, args.split)
        except Exception as exc:  # noqa: BLE001
            print(f"error: cannot read the docs of {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        listing.add_task(name, docs, task.doc_to_visual, progress=not args.no_progress)
    listing.write(args.out)
    print(listing.summary(args.out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
