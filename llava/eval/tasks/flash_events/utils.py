"""Offline lmms-eval tasks over the flash-event videos' held-out split (``llava.synthetic.flash_events``).

    python llava/eval/tasks/flash_events/utils.py --write-data   # regenerate data.jsonl (same every time)
    python -m lmms_eval --include_path llava/eval/tasks --tasks flash_events ...

``flash_events_colour`` ("What colour was the flash?") and ``flash_events_where`` ("Where did
the flash appear?") ask the dataset's questions, with its prompt text and answer words, about
the videos of its **test split for the default seed and sizes**
(``playground/flash_events/make_dataset.py --out DIR`` with no options writes the same test
videos, byte for byte), so a model trained on that ``train.jsonl`` is scored on held-out videos.

Why not read ``DIR/test.jsonl``: ``DIR`` is chosen by the user, while lmms-eval resolves
``dataset_kwargs.data_files`` relative to the YAML. So ``data.jsonl`` (committed, text only)
holds per doc its id, question kind, answer and the video's event parameters
(``plan_videos``), and the video is rendered on first use with the generator's own
``render_video`` into ``$FLASH_EVENTS_MEDIA`` (default ``~/.cache/llava-ov/flash_events``),
written atomically and reused afterwards. A file's name carries a hash of the parameters and
of the generator's sources, so a changed doc or generator gets a new file, never a stale one.
Everything comes from the package, so the tasks work from an installed wheel as from a checkout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
from pathlib import Path

from llava.synthetic import flash_events as flash
from llava.synthetic import tiny_sft

DATA = Path(__file__).with_name("data.jsonl")
DEFAULT_MEDIA = "~/.cache/llava-ov/flash_events"

#: The rendered bytes depend on these two sources (render_frames there, encode_clip in tiny_sft).
_SOURCES = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (flash, tiny_sft))).hexdigest()
#: The keys of a doc's video parameters (``plan_videos``' entries).
EVENT_KEYS = tuple("index colour quadrant encoder start length x y side frames size seed".split())


# ---------------------------------------------------------------------------- docs
def make_docs() -> list[dict]:
    """Two docs per video of the default test split (colour, then where), as the dataset's records."""
    docs = []
    sizes = (flash.DEFAULT_TEST, flash.DEFAULT_FRAMES, flash.DEFAULT_SIZE)
    plan = flash.plan_videos(flash.DEFAULT_SEED, "test", *sizes)
    for event in plan:
        for record in flash.records("test", event):
            doc = {key: record[key] for key in ("id", "task", "answer", "video")}
            doc.update({key: event[key] for key in EVENT_KEYS})
            docs.append(doc)
    return docs


def write_data(path: Path = DATA) -> Path:
    """Write ``make_docs()`` as JSON lines to ``path`` (default: the tasks' data.jsonl)."""
    path.write_text("".join(json.dumps(doc) + "\n" for doc in make_docs()), encoding="utf-8")
    return path


def colour_docs(dataset):
    """``process_docs`` of flash_events_colour: its docs of the shared data.jsonl."""
    return dataset.filter(lambda doc: doc["task"] == "colour")


def where_docs(dataset):
    """``process_docs`` of flash_events_where."""
    return dataset.filter(lambda doc: doc["task"] == "where")


# ---------------------------------------------------------------------------- media
def media_dir() -> Path:
    """The media cache: ``$FLASH_EVENTS_MEDIA`` or ``~/.cache/llava-ov/flash_events``, absolute."""
    return Path(os.environ.get("FLASH_EVENTS_MEDIA") or DEFAULT_MEDIA).expanduser().absolute()


def render_video(doc: dict) -> Path:
    """The doc's MP4 in the media cache, rendered first (``flash.render_video``) if absent.

    Both docs of a video share one file. The temp file is renamed into place (``os.replace``),
    so neither a crash nor a concurrent rank rendering the same video leaves a partial file.
    """
    event = {key: doc[key] for key in EVENT_KEYS}
    key = hashlib.sha256(f"{_SOURCES}\n{json.dumps(event, sort_keys=True)}".encode()).hexdigest()[:12]
    path = media_dir() / f"flash_{doc['index']:04d}-{key}.mp4"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".mp4", dir=path.parent)
        os.close(fd)
        try:
            flash.render_video(tmp, event)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


# ---------------------------------------------------------------------------- lmms-eval hooks
def doc_to_visual(doc: dict) -> list[str]:
    """``[absolute video path]``, as lmms-eval's video tasks give it."""
    return [str(render_video(doc))]


def doc_to_text(doc: dict) -> str:
    """The training prompt's question, without the ``<image>`` placeholder (the model adds it)."""
    return flash.QUESTIONS[doc["task"]][0]


def doc_to_target(doc: dict) -> str:
    """The answer, one of the question's choices."""
    return doc["answer"]


_SPECIAL_TOKEN = re.compile(r"<\|[^|]*\|>")


def chosen(reply: str, choices) -> str | None:
    """The choice a reply gives: the one its first words are (lowercased, special tokens and
    punctuation dropped: ``"Top left."`` -> ``top left``), or ``None`` when it gives none."""
    words = re.sub(r"[^a-z]+", " ", _SPECIAL_TOKEN.sub(" ", reply).lower()).split()
    for choice in choices:
        if words[: len(choice.split())] == choice.split():
            return choice
    return None


def process_results(doc: dict, results: list[str]) -> dict:
    """``acc``: 1.0 when the greedy reply gives the right choice (a reply naming no choice is wrong)."""
    return {"acc": float(chosen(results[0], flash.QUESTIONS[doc["task"]][1]) == doc["answer"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the flash_events tasks' data.jsonl.")
    parser.add_argument("--write-data", action="store_true", help=f"write {DATA.name} next to this file")
    if not parser.parse_args(argv).write_data:
        parser.error("nothing to do (pass --write-data)")
    videos = f"{flash.DEFAULT_TEST} test videos, two questions each, seed {flash.DEFAULT_SEED}"
    print(f"wrote {write_data()} ({videos})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
