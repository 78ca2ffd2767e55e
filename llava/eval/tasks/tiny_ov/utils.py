"""Offline lmms-eval tasks for the tiny LLaVA-OV checkpoint (``PRESET=tiny bash scripts/sft_ov_encoder.sh``).

    python llava/eval/tasks/tiny_ov/utils.py --write-data      # regenerate data.jsonl (same file every time)
    python -m lmms_eval --include_path llava/eval/tasks --tasks tiny_ov ...

The tiny model was trained on ``llava.synthetic.tiny_sft``'s colour questions (the data of
``playground/tiny_sft/make_dataset.py``); these tasks ask the same questions, with the same prompt
text, over fresh draws of the same media:

* ``tiny_ov_image_mc``: a 64 px image of one coloured shape (``draw_shape_image``), the ``colour``
  task's question, scored as multiple choice over the four colours (``acc``, chance 0.25);
* ``tiny_ov_video_mc``: a 16-frame clip of a moving coloured square (``moving_square_frames`` +
  ``encode_clip``, half H.264, half HEVC), ``CLIP_QUESTION``, multiple choice;
* ``tiny_ov_free``: the image question answered freely, scored by the first word of the reply
  (``normalise``, as the tiny run's held-out scorer does) against the answer (``exact_match``).

``data.jsonl`` holds text only: per doc its id, task, answer and the parameters its media are
drawn from (``seed`` for a fresh ``np.random.default_rng``, canvas, shape / frames, direction,
encoder), made by ``make_docs`` from ``EVAL_SEED``. The media are rendered on first use with
the generator's own functions into ``$TINY_OV_MEDIA`` (default ``~/.cache/llava-ov/tiny_ov``),
written atomically and reused afterwards; a file's name carries a hash of its parameters and of
the generator's source, so a changed doc or generator gets a new file instead of a stale one.
Everything comes from the package, so the tasks work from an installed wheel as from a checkout.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from llava.synthetic import tiny_sft
from llava.synthetic.tiny_sft import normalise

DATA = Path(__file__).with_name("data.jsonl")
DEFAULT_MEDIA = "~/.cache/llava-ov/tiny_ov"
IMAGE_MC, VIDEO_MC, FREE = "tiny_ov_image_mc", "tiny_ov_video_mc", "tiny_ov_free"
TASK_NAMES = (IMAGE_MC, VIDEO_MC, FREE)
#: The eval set's own seed; the tiny SFT data is drawn from small seeds (``SEED``, default 0).
EVAL_SEED = 20261201
PER_TASK = 32  # a multiple of 16: colours, codecs and directions all balanced
CANVAS, FRAMES = 64, 16  # the tiny preset's canvas and clip length
#: Every doc has all these keys (``None`` where they do not apply), so the JSON schema is explicit.
FIELDS = ("id", "task", "answer", "seed", "canvas", "shape", "frames", "direction", "encoder")


IMAGE_QUESTION = tiny_sft.TASKS["colour"].question
QUESTIONS = {IMAGE_MC: IMAGE_QUESTION, VIDEO_MC: tiny_sft.CLIP_QUESTION, FREE: IMAGE_QUESTION}
_GENERATOR = hashlib.sha256(Path(tiny_sft.__file__).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------- docs
def make_docs(per_task: int = PER_TASK, seed: int = EVAL_SEED) -> list[dict]:
    """The docs of all three tasks, in task order; the same arguments give the same docs.

    Colours cycle fastest, so every 4 consecutive docs of a task hold each colour once; images
    then cycle the shapes, clips the encoders and then the directions. Each doc gets its own
    media seed from a stream of ``seed`` and the task's index.
    """
    if per_task < 16 or per_task % 16:
        raise ValueError(f"per_task must be a positive multiple of 16, got {per_task}")
    docs = []
    for index, task in enumerate(TASK_NAMES):
        rng = np.random.default_rng([seed, index])
        if task == VIDEO_MC:
            plan = itertools.product(tiny_sft.DIRECTIONS, tiny_sft.ENCODERS, tiny_sft.COLOURS)
        else:
            plan = itertools.product(tiny_sft.SHAPES, tiny_sft.COLOURS)
        for i, combo in enumerate(itertools.islice(itertools.cycle(plan), per_task)):
            doc = dict.fromkeys(FIELDS)
            doc.update(id=f"{task}-{i:03d}", task=task, answer=combo[-1], seed=int(rng.integers(2**31)))
            doc.update(canvas=CANVAS)
            if task == VIDEO_MC:
                doc.update(frames=FRAMES, direction=combo[0], encoder=combo[1])
            else:
                doc["shape"] = combo[0]
            docs.append(doc)
    return docs


def write_data(path: Path = DATA) -> Path:
    """Write ``make_docs()`` as JSON lines to ``path`` (default: the tasks' data.jsonl)."""
    path.write_text("".join(json.dumps(doc) + "\n" for doc in make_docs()), encoding="utf-8")
    return path


def _select(dataset, task: str):
    return dataset.filter(lambda doc: doc["task"] == task)


def image_mc_docs(dataset):
    """``process_docs`` of tiny_ov_image_mc: its docs of the shared data.jsonl."""
    return _select(dataset, IMAGE_MC)


def video_mc_docs(dataset):
    """``process_docs`` of tiny_ov_video_mc."""
    return _select(dataset, VIDEO_MC)


def free_docs(dataset):
    """``process_docs`` of tiny_ov_free."""
    return _select(dataset, FREE)


# ---------------------------------------------------------------------------- media
def media_dir() -> Path:
    """The media cache: ``$TINY_OV_MEDIA`` or ``~/.cache/llava-ov/tiny_ov``, absolute."""
    return Path(os.environ.get("TINY_OV_MEDIA") or DEFAULT_MEDIA).expanduser().absolute()


def _cached(doc: dict, suffix: str, write: Callable[[Path], None]) -> Path:
    """The cached file of ``doc``, written first by ``write(temp_path)`` if absent.

    The temp file is renamed into place (``os.replace``), so neither a crash nor a concurrent
    rank rendering the same doc leaves a partial file under the final name.
    """
    params = json.dumps({key: doc[key] for key in FIELDS if key != "id"}, sort_keys=True)
    key = hashlib.sha256(f"{_GENERATOR}\n{params}".encode()).hexdigest()[:12]
    path = media_dir() / f"{doc['id']}-{key}{suffix}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
        os.close(fd)
        try:
            write(Path(tmp))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def render_image(doc: dict) -> Path:
    """The PNG of an image doc: ``draw_shape_image(shape, answer, default_rng(seed), canvas)``."""

    def write(path: Path) -> None:
        rng = np.random.default_rng(doc["seed"])
        pixels = tiny_sft.draw_shape_image(doc["shape"], doc["answer"], rng, doc["canvas"])
        Image.fromarray(pixels).save(path, format="PNG", optimize=False)

    return _cached(doc, ".png", write)


def render_video(doc: dict) -> Path:
    """The MP4 of a clip doc: ``moving_square_frames`` from ``default_rng(seed)``, then ``encode_clip``."""

    def write(path: Path) -> None:
        rng = np.random.default_rng(doc["seed"])
        colour, direction = doc["answer"], doc["direction"]
        frames = tiny_sft.moving_square_frames(colour, direction, rng, doc["canvas"], doc["frames"])
        tiny_sft.encode_clip(path, frames, doc["encoder"])

    return _cached(doc, ".mp4", write)


# ---------------------------------------------------------------------------- lmms-eval hooks
def doc_to_visual(doc: dict) -> list:
    """``[PIL RGB image]`` for the image tasks, ``[absolute video path]`` for the clip task."""
    if doc["task"] == VIDEO_MC:
        return [str(render_video(doc))]
    with Image.open(render_image(doc)) as image:
        return [image.convert("RGB")]


def doc_to_text(doc: dict) -> str:
    """The training prompt's question, without the ``<image>`` placeholder (the model adds it)."""
    return QUESTIONS[doc["task"]]


def doc_to_choice(doc: dict) -> list[str]:
    """The four colour words, in the generator's order."""
    return list(tiny_sft.COLOURS)


def doc_to_target(doc: dict) -> str:
    """The answer word (for multiple choice, lmms-eval looks it up in the choices)."""
    return doc["answer"]


def process_results(doc: dict, results: list[str]) -> dict:
    """tiny_ov_free: 1.0 if the reply's first word (normalised as the held-out scorer does) is the answer."""
    return {"exact_match": float(normalise(results[0]) == doc["answer"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate the tiny_ov tasks' data.jsonl.")
    parser.add_argument("--write-data", action="store_true", help=f"write {DATA.name} next to this file")
    if not parser.parse_args(argv).write_data:
        parser.error("nothing to do (pass --write-data)")
    print(f"wrote {write_data()} ({PER_TASK} docs per task, seed {EVAL_SEED})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
