"""Synthetic "flash event" videos: a brief coloured square decides the answer.

Here, in the package, because the offline lmms-eval tasks it ships (``llava/eval/tasks/flash_events``)
plan and render the test split's videos with these functions, and an installed wheel has no
``playground/``. The command line is ``playground/flash_events/make_dataset.py --out DIR``; the
codec-vs-uniform benchmark on these videos is ``playground/flash_events/run.py``.

Each video (``frames`` frames of ``size`` x ``size`` px, 16 fps, half H.264, half HEVC) shows a
grey smooth-noise texture that pans a little every frame (plus faint per-frame grain), and, for
2-4 consecutive frames at a random time, one solid square of side ``size // 4`` in one of
red / green / blue / yellow, somewhere inside one of the four quadrants. Nothing else in the
video has any colour, so the answer is visible only in the flash frames. Every video gets two
questions (playground/flash_events/README.md):

* ``colour``: "What colour was the flash?" -> red | green | blue | yellow;
* ``where``: "Where did the flash appear?" -> top left | top right | bottom left | bottom right.

Colour, quadrant and encoder are balanced before the shuffle: entry ``i`` gets colour ``i % 4``,
quadrant ``i // 4 % 4`` and encoder ``(i + i // 4 + i // 16) % 2``, so every 4 consecutive entries
hold each colour once and both encoders twice, every 16 each (colour, quadrant) once and every 32
each combination once: every answer of both questions is equally frequent and neither the codec
nor one answer gives the other away.

Output, written into a staging folder next to ``DIR`` and renamed at the end (a crash leaves
no half-written dataset): ``videos/{train,test}/flash_NNNN.mp4``, ``train.jsonl`` and
``test.jsonl`` (LLaVA records, two per video, video paths relative to ``DIR``: train with
``--video_folder DIR``) and ``dataset.json`` (seed, sizes, questions, and every video's event
parameters). A video depends only on its parameters (:func:`render_frames` +
:func:`llava.synthetic.tiny_sft.encode_clip`); the llava/eval/tasks/flash_events tasks render the
test split of the default seed from the same parameters with the same functions.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from llava.synthetic import tiny_sft

#: The colour words and their nominal RGB: tiny_sft's, so a model sees the same colours there and here.
COLOURS = tiny_sft.COLOURS
PALETTE = tiny_sft.PALETTE
JITTER = 15  # per channel, on the flash colour
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")  # (row, column) = divmod(index, 2)
ENCODERS = tiny_sft.ENCODERS  # PyAV encoder -> codec name the reader reports
FPS = 16
LENGTHS = (2, 3, 4)  # frames the flash is visible
GREY = (70, 180)  # grey range of the background texture (before grain)
GRAIN = 2.0  # std of the per-frame grain, grey levels
PAN = (0.5, 1.5)  # background speed range, px per frame along each axis (random signs)
QUESTIONS = {
    "colour": ("What colour was the flash? Answer with one word: red, green, blue or yellow.", COLOURS),
    "where": (
        "Where did the flash appear? Answer with one of: top left, top right, bottom left, bottom right.",
        QUADRANTS,
    ),
}
SPLITS = ("train", "test")
DEFAULT_SEED = 0
DEFAULT_TRAIN, DEFAULT_TEST = 200, 64
DEFAULT_FRAMES, DEFAULT_SIZE = 128, 64


# ---------------------------------------------------------------------------- plan
def plan_videos(seed: int, split: str, count: int, frames: int = DEFAULT_FRAMES, size: int = DEFAULT_SIZE):
    """The event parameters of ``split``'s ``count`` videos; the same arguments give the same list.

    Each split draws from its own stream ``default_rng([seed, split index])``, so the test
    split does not depend on the train size. Per video: ``index``, ``colour``, ``quadrant``,
    ``encoder``, ``start`` (first flash frame, uniform in ``[margin, frames - length - margin]``
    with ``margin = frames // 16``, so neither the full first frame nor the sampler's end
    frames give the flash away trivially), ``length`` (uniform over ``LENGTHS``), the flash's
    ``x`` / ``y`` (top-left corner, uniform inside the quadrant) and ``side``, ``frames``,
    ``size`` and ``seed`` (of the background texture, its pan, the grain and the colour jitter).
    """
    if size % 16 or size < 32:
        raise ValueError(f"size must be a multiple of 16 and at least 32, got {size}")
    margin = frames // 16
    if frames - max(LENGTHS) - 2 * margin < 1:
        raise ValueError(f"frames must be at least {max(LENGTHS) + 2}, got {frames}")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    encoders = list(ENCODERS)
    combos = [
        (COLOURS[i % 4], QUADRANTS[i // 4 % 4], encoders[(i + i // 4 + i // 16) % 2]) for i in range(count)
    ]
    side, half = size // 4, size // 2
    plan = []
    for index, k in enumerate(rng.permutation(count)):
        colour, quadrant, encoder = combos[k]
        length = int(rng.choice(LENGTHS))
        row, col = divmod(QUADRANTS.index(quadrant), 2)
        plan.append(
            dict(
                index=index,
                colour=colour,
                quadrant=quadrant,
                encoder=encoder,
                start=int(rng.integers(margin, frames - length - margin + 1)),
                length=length,
                x=int(col * half + rng.integers(0, half - side + 1)),
                y=int(row * half + rng.integers(0, half - side + 1)),
                side=side,
                frames=frames,
                size=size,
                seed=int(rng.integers(2**31)),
            )
        )
    return plan


# ---------------------------------------------------------------------------- rendering
def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A periodic smooth-noise grey texture (float, ``GREY`` range): low-pass filtered white noise.

    Periodic (filtered in the Fourier domain), so rolling it pans without a seam.
    """
    freq = np.fft.fftfreq(size) * size  # cycles per texture
    radius2 = freq[:, None] ** 2 + freq[None, :] ** 2
    spectrum = np.fft.fft2(rng.normal(size=(size, size))) * np.exp(-radius2 / (2 * (size / 10) ** 2))
    noise = np.fft.ifft2(spectrum).real
    noise = (noise - noise.min()) / max(float(np.ptp(noise)), 1e-9)
    return GREY[0] + noise * (GREY[1] - GREY[0])


def render_frames(event: dict) -> list[np.ndarray]:
    """RGB uint8 frames of one video from its parameters (see :func:`plan_videos`).

    Background: the texture rolled by ``round(v * t)`` px (``v`` per axis in ``PAN`` with a
    random sign) plus grain, identical in R, G and B (no colour). Frames ``start`` to
    ``start + length - 1`` also show the flash square in its colour (palette + jitter).
    """
    rng = np.random.default_rng(event["seed"])
    size = event["size"]
    texture = _texture(rng, size)
    velocity = rng.uniform(*PAN, 2) * rng.choice((-1, 1), 2)
    jitter = rng.integers(-JITTER, JITTER + 1, 3)
    fill = np.clip(np.array(PALETTE[event["colour"]]) + jitter, 0, 255).astype(np.uint8)
    x, y, side = event["x"], event["y"], event["side"]
    flash = range(event["start"], event["start"] + event["length"])
    out = []
    for t in range(event["frames"]):
        dy, dx = (int(round(v * t)) for v in velocity)
        grey = np.roll(texture, (dy, dx), axis=(0, 1)) + rng.normal(0.0, GRAIN, (size, size))
        frame = np.repeat(np.clip(np.round(grey), 0, 255).astype(np.uint8)[:, :, None], 3, 2)
        if t in flash:
            frame[y : y + side, x : x + side] = fill
        out.append(frame)
    return out


def render_video(path: str | os.PathLike, event: dict) -> None:
    """Encode the event's frames to ``path`` with tiny_sft's byte-deterministic ``encode_clip``."""
    tiny_sft.encode_clip(Path(path), render_frames(event), event["encoder"], fps=FPS)


# ---------------------------------------------------------------------------- records
def video_name(split: str, index: int) -> str:
    """A video's path relative to the dataset folder."""
    return f"videos/{split}/flash_{index:04d}.mp4"


def records(split: str, event: dict) -> list[dict]:
    """The video's two LLaVA records (colour, then where), with ``task``, ``answer`` and ``choices``."""
    answers = {"colour": event["colour"], "where": event["quadrant"]}
    out = []
    for task, (question, choices) in QUESTIONS.items():
        out.append(
            {
                "id": f"flash-{split}-{event['index']:04d}-{task}",
                "video": video_name(split, event["index"]),
                "conversations": [
                    {"from": "human", "value": f"<image>\n{question}"},
                    {"from": "gpt", "value": answers[task]},
                ],
                "task": task,
                "answer": answers[task],
                "choices": list(choices),
            }
        )
    return out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def make_dataset(
    out_dir: str | os.PathLike,
    seed: int = DEFAULT_SEED,
    train: int = DEFAULT_TRAIN,
    test: int = DEFAULT_TEST,
    frames: int = DEFAULT_FRAMES,
    size: int = DEFAULT_SIZE,
    overwrite: bool = False,
) -> dict:
    """Write the dataset to ``out_dir`` (see the module docstring); returns its ``dataset.json`` content."""
    if train < 1 or test < 1:
        raise ValueError("train and test must be at least 1")
    counts = {"train": train, "test": test}
    plans = {split: plan_videos(seed, split, n, frames, size) for split, n in counts.items()}
    out = Path(out_dir).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True / --overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for split, plan in plans.items():
            (staging / "videos" / split).mkdir(parents=True)
            for event in plan:
                render_video(staging / video_name(split, event["index"]), event)
            _write_jsonl(staging / f"{split}.jsonl", [r for event in plan for r in records(split, event)])
        info = {
            "seed": seed,
            "frames": frames,
            "size": size,
            "fps": FPS,
            "counts": counts,
            "questions": {task: {"question": q, "choices": list(c)} for task, (q, c) in QUESTIONS.items()},
            "videos": {
                s: [{"video": video_name(s, e["index"]), **e} for e in plan] for s, plan in plans.items()
            },
        }
        (staging / "dataset.json").write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
        tiny_sft.replace_directory(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return info
