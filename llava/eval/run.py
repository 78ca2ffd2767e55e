"""Run stock lmms-eval and fail loudly: ``python -m llava.eval.run [lmms-eval flags]``.

What ``scripts/eval/eval_ov_encoder.sh`` launches (once, or once per rank under torchrun). It is the
lmms-eval command line with three differences:

* this project's local tasks (``llava/eval/tasks``) are always on the include path, and
  ``--include_path`` takes several folders joined by ``:``;
* lmms-eval prints a traceback and exits 0 when an evaluation fails (unless ``--verbosity DEBUG``):
  here the exit status is 1 unless a results file was written for this run and holds every
  requested task (3 when some tasks are missing from it);
* the end of the run prints the metrics of every task and where the results file is;
* ``--record_card``: the scores are added to the evaluated checkpoint folder's model card (its
  ``README.md`` Evaluation section and ``eval_results.json``; ``llava.model.folder.record_evaluation``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

LOCAL_TASKS = Path(__file__).resolve().parent / "tasks"


def _option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def _without(argv: list[str], name: str) -> list[str]:
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == name:
            skip = i + 1 < len(argv)
            continue
        if not arg.startswith(name + "="):
            out.append(arg)
    return out


def newest_results(output_path: str | os.PathLike, since: float) -> Path | None:
    """The newest ``*_results.json`` under ``output_path`` written at or after ``since``."""
    root = Path(output_path)
    found = [p for p in root.rglob("*_results.json") if p.stat().st_mtime >= since] if root.is_dir() else []
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def result_rows(results: dict) -> list[tuple[str, str, str, str]]:
    """``(task, metric, value, stderr)`` for every metric of every task (and group) in a results file."""
    rows = []
    for section in ("results", "groups"):
        for task, metrics in sorted(results.get(section, {}).items()):
            for key, value in sorted(metrics.items()):
                if "," not in key or "_stderr" in key or not isinstance(value, (int, float)):
                    continue
                metric, _, kind = key.partition(",")
                stderr = metrics.get(f"{metric}_stderr,{kind}")
                shown = f"{stderr:.4f}" if isinstance(stderr, (int, float)) and math.isfinite(stderr) else ""
                rows.append((task, metric, f"{value:.4f}", shown))
    return rows


def results_table(results: dict) -> str:
    """``task  metric  value  stderr`` for every metric of every task (and group) in a results file."""
    rows = [("task", "metric", "value", "stderr"), *result_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    record_card = "--record_card" in argv
    argv = [arg for arg in argv if arg != "--record_card"]
    tasks = [t for t in (_option(argv, "--tasks") or "").split(",") if t]
    output_path = _option(argv, "--output_path")
    if not tasks or not output_path:
        print("error: give --tasks and --output_path (the results file is how a run is checked)",
              file=sys.stderr)
        return 2
    include = [str(LOCAL_TASKS)] + [p for p in (_option(argv, "--include_path") or "").split(os.pathsep) if p]
    started = time.time()
    sys.argv = ["lmms_eval", *_without(argv, "--include_path")]  # lmms-eval parses sys.argv itself
    from lmms_eval.__main__ import cli_evaluate

    cli_evaluate(argparse.Namespace(include_path=include))
    if int(os.environ.get("RANK", 0)) != 0:
        return 0  # rank 0 writes and checks the results
    path = newest_results(output_path, started)
    if path is None:
        print(f"error: lmms-eval wrote no results under {output_path}: the evaluation failed (see above)",
              file=sys.stderr)
        return 1
    results = json.loads(path.read_text())
    scored = set(results.get("results", {})) | set(results.get("groups", {}))
    missing = [t for t in tasks if t not in scored]
    print(f"\n{results_table(results)}\n\nresults: {path}")
    if record_card:
        _record_card(_option(argv, "--model_args") or "", results)
    if missing:
        print(f"error: no results for {', '.join(missing)}", file=sys.stderr)
        return 3
    return 0


def _record_card(model_args: str, results: dict) -> None:
    """Add the scores to the model card of the checkpoint folder named by ``pretrained=`` in ``model_args``."""
    args = dict(part.split("=", 1) for part in model_args.split(",") if "=" in part)
    folder = Path(args.get("pretrained", ""))
    if not (folder / "config.json").is_file():
        print(f"warning: --record_card: pretrained={folder} is not a local checkpoint folder; no card updated",
              file=sys.stderr)
        return
    from llava.model.folder import record_evaluation

    try:
        card = record_evaluation(folder, [row[:3] for row in result_rows(results)])
    except OSError as error:
        print(f"warning: --record_card: {folder}: {error}; no card updated", file=sys.stderr)
        return
    print(f"model card: {card} (Evaluation)")


if __name__ == "__main__":
    sys.exit(main())
