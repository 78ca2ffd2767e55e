"""The tiny SFT preset's synthetic data: small visual tasks whose one-word answers depend on the
pixels, plus a text-only task, with a held-out split for scoring.

Here, in the package, because more than the dataset's command line uses it: the offline lmms-eval
tasks the package ships (``llava/eval/tasks/tiny_ov``) render fresh draws of the same media with
these functions and score free answers with :func:`normalise`, and the flash-events data
(:mod:`llava.synthetic.flash_events`) reuses the colours and :func:`encode_clip`; an installed
wheel has no ``playground/``. The command line is ``playground/tiny_sft/make_dataset.py``, the
held-out scorer ``playground/tiny_sft/score.py``.

Why synthetic: the tiny preset must show, on 2 CPU cores in minutes, that the whole training
path learns something (loss falls, held-out accuracy far above chance). Real data would need
downloads and far bigger models; these tasks are learnable by a 2-layer model and every
answer is a word from a small closed set, so accuracy has an obvious chance level.

Tasks (answers lowercase, one word):

* ``colour``: one filled shape on a plain or lightly noisy background, "What colour is the
  shape?" -> red | green | blue | yellow.
* ``codec_colour``: a clip where one coloured square moves steadily left or right (not asked)
  over a static grey texture (half H.264, half HEVC), turned into precomputed codec packs by
  the real Stage 1 and Stage 2 tools (``--preset llava`` with the tiny canvas), "What colour is
  the moving square?" -> red | green | blue | yellow.
* ``video_colour``: more such clips, as raw ``video`` records the trainer reads online.
* ``text``: a fixed partner mapping stated in the prompt (red <-> green, blue <-> yellow), "What
  is the partner of {word}?" in one of three phrasings -> the partner colour.

Why these tasks: an earlier version asked which way the square moves, and a random-initialised
tiny model stayed at chance on it after minutes of CPU training (left/right needs position
reasoning it does not find that fast), so the clips now ask for what it can learn quickly.

:func:`make_dataset` writes everything into a staging folder next to ``DIR`` and renames it at
the end, so a crash never leaves a half-written dataset behind. Output depends only on the
seed, the sizes and the folder's path (codec paths are absolute): the same call gives the same
files byte for byte (the encoder settings that make this so are in :func:`encode_clip`).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from cv_reader import stage1, stage2
from PIL import Image, ImageDraw

COLOURS = ("red", "green", "blue", "yellow")
SHAPES = ("circle", "square", "triangle")  # of the ``colour`` task's shape (not asked)
DIRECTIONS = ("left", "right")  # of the moving square (not asked)
#: Nominal RGB of each colour word; drawn with a little jitter so the model cannot key on one value.
PALETTE = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (235, 215, 40)}
JITTER = 15  # per channel, on every drawn palette colour
#: The ``text`` task's mapping: each colour's partner.
PARTNERS = {"red": "green", "green": "red", "blue": "yellow", "yellow": "blue"}
#: PyAV encoder name -> FFmpeg codec name the reader reports (Stage 1 ``meta.json``: ``codec``).
ENCODERS = {"libx264": "h264", "libx265": "hevc"}
FPS = 24
QUALITY = "qp=18:aq-mode=0"  # constant quantiser, no adaptive quantisation (see encode_clip)
TEXTURE = (20, 90)  # grey levels of the clips' background blocks (see moving_square_frames)


@dataclass(frozen=True)
class Task:
    """One task: how its records are made and the closed set of answer words.

    ``question`` is the prompt (a template with ``{word}`` for ``text``); ``variants`` are the
    other phrasings a record may get instead (chosen at random per record).
    """

    name: str
    kind: str  # image | codec | video | text
    question: str
    classes: tuple[str, ...]
    variants: tuple[str, ...] = ()


COLOUR_ANSWER = "Answer with one word: red, green, blue or yellow."
CLIP_QUESTION = f"What colour is the moving square? {COLOUR_ANSWER}"
TASKS = {
    task.name: task
    for task in (
        Task("colour", "image", f"What colour is the shape? {COLOUR_ANSWER}", COLOURS),
        Task("codec_colour", "codec", CLIP_QUESTION, COLOURS),
        Task("video_colour", "video", CLIP_QUESTION, COLOURS),
        Task(
            "text",
            "text",
            "In this game red and green are partners, and so are blue and yellow. "
            f"What is the partner of {{word}}? {COLOUR_ANSWER}",
            COLOURS,
            variants=(
                "Here red goes with green and blue goes with yellow. "
                f"Which colour goes with {{word}}? {COLOUR_ANSWER}",
                "Rule: red pairs with green, blue pairs with yellow. "
                f"What does {{word}} pair with? {COLOUR_ANSWER}",
            ),
        ),
    )
}
SPLITS = ("train", "heldout")
DEFAULT_TRAIN_PER_TASK = 200
DEFAULT_HELDOUT_PER_TASK = 40


# ---------------------------------------------------------------------------- randomness
def _rng(seed: int, task: str, split: str) -> np.random.Generator:
    """An independent stream per (seed, task, split): held-out draws never repeat train draws,
    and changing one task's count does not change another task's samples."""
    return np.random.default_rng([seed, list(TASKS).index(task), SPLITS.index(split)])


def _balanced(classes: tuple[str, ...], count: int, rng: np.random.Generator) -> list[str]:
    """``count`` labels, each class ``count // len(classes)`` times (+1 for the first few), shuffled."""
    labels = [classes[i % len(classes)] for i in range(count)]
    return [labels[i] for i in rng.permutation(count)]


# ---------------------------------------------------------------------------- images
def _fill(colour: str, rng: np.random.Generator) -> tuple[int, int, int]:
    """``colour``'s palette RGB with a jitter of up to ``JITTER`` per channel."""
    jitter = rng.integers(-JITTER, JITTER + 1, 3)
    return tuple(int(c) for c in np.clip(np.array(PALETTE[colour]) + jitter, 0, 255))


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A tinted grey (far from all four palette colours), plain for half the images and lightly
    noisy for the others, so "the non-background colour" is unambiguous."""
    grey = rng.integers(70, 191)
    background = np.clip(grey + rng.integers(-10, 11, 3), 0, 255)
    image = np.empty((size, size, 3), np.float32)
    image[:] = background
    if rng.random() < 0.5:
        image += rng.normal(0.0, 6.0, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def draw_shape_image(shape: str, colour: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """One filled ``shape`` of ``colour`` at a random place and size on a grey-ish background."""
    pil = _background(rng, size)
    fill = _fill(colour, rng)
    extent = int(rng.integers(size * 5 // 16, size * 5 // 8 + 1))  # 20..40 px on a 64 px image
    x0 = int(rng.integers(2, size - extent - 1))
    y0 = int(rng.integers(2, size - extent - 1))
    x1, y1 = x0 + extent - 1, y0 + extent - 1
    draw = ImageDraw.Draw(pil)
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif shape == "triangle":
        apex_up = rng.random() < 0.5
        mid = (x0 + x1) / 2
        points = [(mid, y0), (x0, y1), (x1, y1)] if apex_up else [(mid, y1), (x0, y0), (x1, y0)]
        draw.polygon(points, fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(pil)


# ---------------------------------------------------------------------------- videos
def moving_square_frames(
    colour: str, direction: str, rng: np.random.Generator, size: int, frames: int
) -> list[np.ndarray]:
    """RGB frames of one square of ``colour`` moving steadily ``direction`` over a static texture.

    The texture is dark-to-mid grey blocky noise (4x4 px blocks, no tint): enough detail for
    motion search to lock on, and the square is by far the most saturated thing in the clip.
    Speed 1.5..2.5 px per frame, so over 16 frames the square crosses about two 16 px patch
    columns; it stays fully inside the frame.
    """
    blocks = np.repeat(rng.integers(TEXTURE[0], TEXTURE[1] + 1, (size // 4 + 1, size // 4 + 1, 1)), 3, 2)
    background = np.repeat(np.repeat(blocks.astype(np.uint8), 4, 0), 4, 1)[:size, :size]
    fill = np.array(_fill(colour, rng), np.uint8)
    side = int(rng.integers(size * 5 // 32, size * 7 // 32 + 1))  # 10..14 px on 64 px
    speed = float(rng.uniform(1.5, 2.5))
    travel = speed * (frames - 1)
    room = max(size - side - travel, 0.0)  # range of start positions that keep it inside
    start = rng.uniform(0.0, room) if direction == "right" else rng.uniform(size - side - room, size - side)
    step = speed if direction == "right" else -speed
    y = int(rng.integers(2, size - side - 1))
    out = []
    for i in range(frames):
        frame = background.copy()
        x = int(np.clip(round(start + step * i), 0, size - side))
        frame[y : y + side, x : x + side] = fill
        out.append(frame)
    return out


def encode_clip(path: Path, frames: list[np.ndarray], encoder: str, fps: int = FPS) -> None:
    """Write RGB ``frames`` with ``encoder`` (libx264 / libx265) so the bytes depend on the frames only.

    One GOP per clip with B-frames, the structure real clips have, single-threaded, at a
    constant QP without adaptive quantisation. Why the other settings: "same seed, same
    files" failed without them. x264's macroblock tree gave different bytes for the same
    frames once an x265 encode had run earlier in the process; x265 with its default 64 px
    CTU (the whole 64 px frame in one CTU) gave different bytes for about 1 clip in 100
    when the machine was busy. ``no-mbtree`` and ``ctu=32`` removed both (checked on 1,200
    clips, four processes at once); constant QP keeps rate control out of it as well.
    """
    common = f"keyint={len(frames)}:min-keyint={len(frames)}:scenecut=0:bframes=3:{QUALITY}:log-level=none"
    if encoder == "libx264":
        options = {"x264-params": common + ":no-mbtree=1:threads=1"}
    elif encoder == "libx265":
        options = {"x265-params": common + ":cutree=0:ctu=32:pools=1:frame-threads=1"}
    else:
        raise ValueError(f"encoder must be one of {sorted(ENCODERS)}, got {encoder!r}")
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(encoder, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.thread_count = 1
        for frame in frames:
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# ---------------------------------------------------------------------------- records
def _record(task: Task, split: str, index: int, human: str, answer: str, **media) -> dict:
    """A LLaVA record; held-out ones also carry the answer, the task and the closed answer set."""
    record = {"id": f"{task.name}-{split}-{index:04d}", "task": task.name, **media}
    record["conversations"] = [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]
    if split == "heldout":
        record["answer"] = answer
        record["choices"] = list(task.classes)
    return record


def _image_records(task: Task, split: str, count: int, seed: int, root: Path, canvas: int) -> list[dict]:
    rng = _rng(seed, task.name, split)
    folder = root / "images" / split
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for i, label in enumerate(_balanced(task.classes, count, rng)):
        if task.name == "colour":
            image = draw_shape_image(SHAPES[int(rng.integers(len(SHAPES)))], label, rng, canvas)
        else:
            raise ValueError(f"no image generator for task {task.name!r}")
        name = f"images/{split}/{task.name}_{i:04d}.png"
        Image.fromarray(image).save(root / name, optimize=False)
        records.append(_record(task, split, i, f"<image>\n{task.question}", label, image=name))
    return records


def _clips(task: Task, split: str, count: int, seed: int, root: Path, canvas: int, frames: int) -> list[dict]:
    """Encode the task's clips; returns per clip its index, video path (relative), answer and codec.

    Colour (the answer), encoder and direction are balanced independently of each other, so
    neither the codec nor the motion gives the answer away: with the bits ``b0..b3`` of the
    index before the shuffle, colour = ``(b0, b1)``, encoder = ``b0 ^ b2``, direction =
    ``b1 ^ b2 ^ b3``. Every 4 consecutive indices hold each colour once, both encoders twice
    and both directions twice; every 8 give each colour both encoders and both directions;
    every 16 hold each (colour, encoder, direction) once.
    """
    rng = _rng(seed, task.name, split)
    folder = root / "videos" / split
    folder.mkdir(parents=True, exist_ok=True)
    encoders = list(ENCODERS)
    plan = [
        (task.classes[i % 4], encoders[(i + i // 4) % 2], DIRECTIONS[(i // 2 + i // 4 + i // 8) % 2])
        for i in range(count)
    ]
    plan = [plan[i] for i in rng.permutation(count)]
    out = []
    for i, (colour, encoder, direction) in enumerate(plan):
        name = f"videos/{split}/{task.name}_{i:04d}.mp4"
        encode_clip(root / name, moving_square_frames(colour, direction, rng, canvas, frames), encoder)
        out.append(dict(index=i, video=name, answer=colour, codec=ENCODERS[encoder]))
    return out


def _video_records(task: Task, split: str, count: int, seed: int, root: Path, canvas: int, frames: int):
    """Raw ``video`` records: one ``<image>`` placeholder, as LLaVA-NeXT's video data writes them.

    Read as frames, the video is one model input for that placeholder; read online as codec
    patches it becomes ``mosaics`` inputs' worth (one per mosaic), which the loader expands.
    """
    human = f"<image>\n{task.question}"
    return [
        _record(task, split, c["index"], human, c["answer"], video=c["video"], video_codec=c["codec"])
        for c in _clips(task, split, count, seed, root, canvas, frames)
    ]


def _quiet(tool, argv: list[str]) -> dict:
    """Run a batch tool in-process with its progress output captured (shown only if it fails)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        stats = tool.run(tool.build_parser().parse_args(argv))
    stats["output"] = buffer.getvalue()
    return stats


def _codec_records(
    task: Task, split: str, count: int, seed: int, root: Path, canvas: int, frames: int, mosaics: int
) -> list[dict]:
    """Clips -> Stage 1 (selection) -> Stage 2 (mosaics + positions) with the tools' llava preset.

    Stage 2 replaces the ``<video>`` of the human turn by ``mosaics`` ``<image>`` lines and keeps
    the other fields (``task``, ``source_video``, ``video_codec``, held-out ``answer`` / ``choices``).
    """
    clips = _clips(task, split, count, seed, root, canvas, frames)
    codec_dir = root / "codec"
    codec_dir.mkdir(parents=True, exist_ok=True)
    inputs, human = [], f"<video>\n{task.question}"
    for c in clips:
        record = _record(task, split, c["index"], human, c["answer"], video_codec=c["codec"])
        inputs.append({"id": record.pop("id"), "video": c["video"], "source_video": c["video"], **record})
    input_path = codec_dir / f"{split}_input.jsonl"
    _write_jsonl(input_path, inputs)
    stage1_root, pack_root = codec_dir / f"{split}_stage1", codec_dir / f"{split}_packs"
    out_jsonl = codec_dir / f"{split}_stage2.jsonl"
    common = ["--video_folder", str(root), "--preset", "llava"]
    runs = [
        (stage1, [
            "--dataset_path", str(input_path), "--out_root", str(stage1_root), *common,
            "--sequence_length", str(frames), "--square_size", str(canvas),
            "--keep_frames_equiv", str(mosaics), "--num_workers", "1",
        ]),
        (stage2, [
            "--mode", "pack", "--input_dataset", str(input_path), "--out_jsonl", str(out_jsonl),
            "--visidx_root", str(stage1_root), "--out_image_root", str(pack_root), *common,
            "--num_images", str(mosaics), "--T", str(frames), "--square_size", str(canvas),
            "--fail_txt", str(codec_dir / f"{split}_stage2_failed.txt"),
        ]),
    ]  # fmt: skip
    for tool, argv in runs:
        stats = _quiet(tool, argv)
        if stats["ok"] != len(inputs) or stats["bad_records"]:
            done = f"{stats['ok']} of {len(inputs)} {split} clips done"
            raise RuntimeError(f"{tool.__name__}: {done}\n{stats['output'][-4000:]}")
    records = _read_jsonl(out_jsonl)
    out_jsonl.unlink()  # its paths name the staging folder; the re-rooted records are written instead
    return records


def _text_records(task: Task, split: str, count: int, seed: int) -> list[dict]:
    """The answer is balanced over the colours; the question names its partner, in a phrasing
    drawn at random from the task's question and its variants."""
    rng = _rng(seed, task.name, split)
    phrasings = (task.question, *task.variants)
    records = []
    for i, answer in enumerate(_balanced(task.classes, count, rng)):
        phrasing = phrasings[int(rng.integers(len(phrasings)))]
        records.append(_record(task, split, i, phrasing.format(word=PARTNERS[answer]), answer))
    return records


# ---------------------------------------------------------------------------- files
def _write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _relocate(value, old: str, new: str):
    """``value`` with every string that starts with ``old`` re-rooted at ``new`` (nested lists/dicts)."""
    if isinstance(value, str):
        return new + value[len(old) :] if value.startswith(old) else value
    if isinstance(value, list):
        return [_relocate(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: _relocate(v, old, new) for k, v in value.items()}
    return value


def replace_directory(staging: Path, out: Path) -> None:
    """Put the finished ``staging`` folder at ``out`` (an empty one, or one replaced on request) by
    renames, so readers never see a half-written dataset."""
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / "data")
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out)


def make_dataset(
    out_dir: str | os.PathLike,
    seed: int = 0,
    train_per_task: int = DEFAULT_TRAIN_PER_TASK,
    heldout_per_task: int = DEFAULT_HELDOUT_PER_TASK,
    canvas: int = 64,
    frames: int = 16,
    mosaics: int = 4,
    overwrite: bool = False,
) -> dict:
    """Write the dataset to ``out_dir``; returns the paths written and the record counts.

    Layout (playground/tiny_sft/README.md): ``train.yaml`` (mixture of the ``train_<task>.jsonl`` files),
    ``heldout.jsonl`` (all tasks, with ``answer`` / ``task`` / ``choices``), ``dataset.json``
    (seed, sizes, tasks, the codec configuration to read the packs with), ``images/``,
    ``videos/`` and ``codec/`` (Stage-1 outputs and Stage-2 packs). Image and video paths in
    records are relative to ``out_dir``; codec paths are absolute (Stage 2 writes its
    ``--out_image_root`` joined with the file names), re-rooted from the staging folder to
    ``out_dir``, so they stay valid after the rename.
    """
    if canvas % 16:
        raise ValueError(f"canvas must be a multiple of the 16 px patch, got {canvas}")
    if frames < mosaics:
        raise ValueError(f"frames ({frames}) must be at least mosaics ({mosaics})")
    if train_per_task < 1 or heldout_per_task < 1:
        raise ValueError("train_per_task and heldout_per_task must be at least 1")
    out = Path(out_dir).resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True / --overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    counts = {"train": {}, "heldout": {}}
    try:
        per_split = {"train": train_per_task, "heldout": heldout_per_task}
        split_records: dict[str, dict[str, list[dict]]] = {split: {} for split in SPLITS}
        for split in SPLITS:
            n = per_split[split]
            for task in TASKS.values():
                if task.kind == "image":
                    records = _image_records(task, split, n, seed, staging, canvas)
                elif task.kind == "codec":
                    records = _codec_records(task, split, n, seed, staging, canvas, frames, mosaics)
                    records = _relocate(records, str(staging), str(out))
                elif task.kind == "video":
                    records = _video_records(task, split, n, seed, staging, canvas, frames)
                else:
                    records = _text_records(task, split, n, seed)
                split_records[split][task.name] = records
                counts[split][task.name] = len(records)
        for pack_json in sorted((staging / "codec").glob("*_packs/*/pack.json")):
            pack = _relocate(json.loads(pack_json.read_text(encoding="utf-8")), str(staging), str(out))
            pack_json.write_text(json.dumps(pack), encoding="utf-8")
        train_files = {}
        for name, records in split_records["train"].items():
            train_files[name] = f"train_{name}.jsonl"
            _write_jsonl(staging / train_files[name], records)
        mixture = "datasets:\n" + "".join(
            f"  - json_path: {path}\n    sampling_strategy: all\n" for path in train_files.values()
        )
        (staging / "train.yaml").write_text(mixture, encoding="utf-8")
        _write_jsonl(staging / "heldout.jsonl", [r for rs in split_records["heldout"].values() for r in rs])
        info = {
            "seed": seed,
            "canvas": canvas,
            "frames": frames,
            "mosaics": mosaics,
            "fps": FPS,
            "counts": counts,
            "tasks": {
                name: {
                    "kind": t.kind,
                    "question": t.question,
                    "classes": list(t.classes),
                    **({"variants": list(t.variants)} if t.variants else {}),
                }
                for name, t in TASKS.items()
            },
            # How to read the codec packs and the raw videos: cv_reader.LLAVA_CODEC.replace(**codec).
            "codec": {"sequence_length": frames, "square_size": canvas, "keep_frames_equiv": mosaics},
        }
        (staging / "dataset.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        replace_directory(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {
        "out": str(out),
        "train_yaml": str(out / "train.yaml"),
        "heldout": str(out / "heldout.jsonl"),
        "info": str(out / "dataset.json"),
        "train": {name: str(out / path) for name, path in train_files.items()},
        "counts": counts,
    }


# ---------------------------------------------------------------------------- scoring
_SPECIAL_TOKEN = re.compile(r"<\|[^|<>]*\|>")  # <|im_end|>, <|endoftext|>, <|im_start|> ...
_STRIP = string.punctuation + "\u2018\u2019\u201c\u201d\u00ab\u00bb"


def normalise(text: str | None) -> str:
    """The first word of ``text``, lowercased, without special tokens or surrounding punctuation.

    ``"Red."`` -> ``"red"``, ``"  left<|im_end|>"`` -> ``"left"``, ``"- 3!"`` -> ``"3"``; no word -> ``""``.
    Why: a tiny model may answer "Red.", "red<|im_end|>" or "red, it is red"; the tasks ask for one
    word, so the held-out scorer and the ``tiny_ov_free`` task compare this word with the answer.
    """
    if text is None:
        return ""
    for word in _SPECIAL_TOKEN.sub(" ", str(text)).lower().split():
        word = word.strip(_STRIP)
        if word:
            return word
    return ""
