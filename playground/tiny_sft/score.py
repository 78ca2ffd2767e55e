"""Score one-word answers against the tiny SFT held-out split.

    python playground/tiny_sft/score.py --heldout DIR/heldout.jsonl --predictions preds.jsonl \
        [--json] [--out FILE]

``preds.jsonl`` has one ``{"id": ..., "prediction": "..."}`` per line (the generated text as
it came out of the model). Why normalise: a tiny model may answer "Red.", "red<|im_end|>" or
"right, it moves right"; the task asks for one word, so the first word, lowercased and without
punctuation or special tokens, is what is compared (``llava.synthetic.tiny_sft.normalise``, which
the ``tiny_ov_free`` lmms-eval task uses too). Chance levels come from each held-out
record's ``choices`` (1 / number of classes), so the numbers say at a glance whether the model
learnt anything.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cv_reader.util import atomic_write_bytes

from llava.synthetic.tiny_sft import normalise  # the tiny_ov_free task scores with it too


def read_heldout(path: str | Path) -> list[dict]:
    """Held-out records (JSONL); each must have ``id``, ``task`` and ``answer``. Errors name the line."""
    records, seen = [], set()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not JSON ({error})") from None
            missing = [key for key in ("id", "task", "answer") if key not in record]
            if missing:
                raise ValueError(f"{path}:{number}: held-out record without {', '.join(missing)}")
            if str(record["id"]) in seen:
                raise ValueError(f"{path}:{number}: duplicate id {record['id']!r}")
            seen.add(str(record["id"]))
            records.append(record)
    return records


def read_predictions(path: str | Path) -> dict[str, str]:
    """``{id: prediction}`` from a JSONL of ``{"id", "prediction"}``; a repeated id is an error."""
    predictions: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                key, value = str(row["id"]), row["prediction"]
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ValueError(f"{path}:{number}: expected {{'id', 'prediction'}} ({error})") from None
            if key in predictions:
                raise ValueError(f"{path}:{number}: duplicate prediction for id {key!r}")
            predictions[key] = "" if value is None else str(value)
    return predictions


def _summary(correct: int, total: int, chance: float) -> dict:
    return {
        "correct": correct,
        "total": total,
        "accuracy": correct / total if total else 0.0,
        "chance": chance,
    }


def accuracy(predictions: dict[str, str], heldout_path: str | Path) -> dict:
    """Overall and per-task accuracy of ``predictions`` (``{id: text}``) on the held-out file.

    A held-out id without a prediction counts as wrong and is listed under ``missing``;
    predictions for ids not in the file are counted under ``unknown``. Per task, ``chance`` is
    1 / number of classes (the record's ``choices``; without them, the answers seen for the
    task); overall ``chance`` is what a uniform guesser would score on this file.
    """
    records = read_heldout(heldout_path)
    predictions = {str(key): value for key, value in predictions.items()}
    by_task: dict[str, dict] = {}
    missing = []
    for record in records:
        task = by_task.setdefault(str(record["task"]), {"correct": 0, "total": 0, "classes": set()})
        answer = normalise(record["answer"])
        task["classes"].update(normalise(c) for c in record.get("choices") or [answer])
        key = str(record["id"])
        if key not in predictions:
            missing.append(key)
        task["total"] += 1
        task["correct"] += normalise(predictions.get(key)) == answer
    per_task = {}
    for name, task in by_task.items():
        per_task[name] = _summary(task["correct"], task["total"], 1.0 / len(task["classes"]))
        per_task[name]["classes"] = sorted(task["classes"])
    total = sum(t["total"] for t in per_task.values())
    overall_chance = sum(t["chance"] * t["total"] for t in per_task.values()) / total if total else 0.0
    known = {str(record["id"]) for record in records}
    return {
        "overall": _summary(sum(t["correct"] for t in per_task.values()), total, overall_chance),
        "per_task": per_task,
        "missing": missing,
        "unknown": sum(key not in known for key in predictions),
    }


def format_report(result: dict) -> str:
    """A small table: accuracy, counts and chance per task, then overall."""
    lines = [f"{'task':14s} {'accuracy':>8s} {'correct':>9s} {'chance':>7s}"]
    rows = [*result["per_task"].items(), ("overall", result["overall"])]
    for name, row in rows:
        lines.append(
            f"{name:14s} {row['accuracy']:8.3f} {row['correct']:4d}/{row['total']:<4d} {row['chance']:7.3f}"
        )
    if result["missing"]:
        missing = result["missing"]
        lines.append(f"{len(missing)} held-out id(s) without a prediction, e.g. {missing[0]}")
    if result["unknown"]:
        lines.append(f"{result['unknown']} prediction(s) for ids not in the held-out file")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heldout", required=True, help="heldout.jsonl written by make_dataset.py")
    parser.add_argument("--predictions", required=True, help='JSONL of {"id", "prediction"}')
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    parser.add_argument("--out", default=None, help="also write the result as JSON to this file")
    args = parser.parse_args(argv)
    try:
        result = accuracy(read_predictions(args.predictions), args.heldout)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    if args.out:
        atomic_write_bytes(args.out, (json.dumps(result, indent=2) + "\n").encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
