"""playground/tiny_sft: the tiny preset's synthetic dataset and its held-out scorer.

The data must be readable by the trainer's reader, self-contained, balanced, deterministic,
and its answers must follow from the pixels (checked by measuring the pixels and the codec
positions, never by re-reading the generator's own labels); the scorer must normalise
answers and report chance levels.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
from collections import Counter
from pathlib import Path

import av
import cv_reader
import numpy as np
import pytest
import torch
from cv_reader.dataset import DatasetReader
from PIL import Image

from llava.batching import Example, collate
from llava.constants import IGNORE_INDEX
from llava.model.processing_llava import VisualLayout
from llava.model.tiny import build_tiny_model
from llava.processing.media import VisualProcessor
from llava.processing.prompts import tokenize_conversation
from llava.synthetic import tiny_sft as md

ROOT = Path(__file__).resolve().parents[1]
TRAIN, HELDOUT = 8, 4  # per task: balanced over 3 and 4 classes, both codecs in each split, still fast
CANVAS, FRAMES, MOSAICS = 64, 16, 4
CODEC = cv_reader.LLAVA_CODEC.replace(sequence_length=FRAMES, square_size=CANVAS, keep_frames_equiv=MOSAICS)


def _load(name: str):
    """A playground module by path (playground/ is not a package); registered so dataclasses work."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "playground" / "tiny_sft" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


cli = _load("make_dataset")  # the command line; the dataset itself is llava.synthetic.tiny_sft
score = _load("score")


def _jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _generate(root: Path, seed: int) -> dict:
    return md.make_dataset(root, seed=seed, train_per_task=TRAIN, heldout_per_task=HELDOUT)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny_sft")
    result = _generate(base / "seed0", 0)
    root = Path(result["out"])
    train = [r.data for r in DatasetReader(result["train_yaml"])]
    heldout = _jsonl(result["heldout"])
    return dict(result=result, root=root, base=base, train=train, heldout=heldout)


def _answer(record: dict) -> str:
    return record["conversations"][1]["value"]


def _inside(root: Path, path: str) -> Path:
    """The file a record path names (relative paths against ``root``), which must lie inside ``root``."""
    resolved = (root / path).resolve()
    assert resolved.is_relative_to(root), f"{path} is outside the dataset folder"
    assert resolved.is_file(), f"{path} does not exist"
    return resolved


def _media(record: dict) -> list[str]:
    images = record.get("image", [])
    paths = [images] if isinstance(images, str) else list(images)
    paths += [record[k] for k in ("video", "positions_thw", "source_video") if k in record]
    return paths


# ---------------------------------------------------------------- structure
def test_every_record_reads_and_points_inside_the_folder(data):
    root, result = data["root"], data["result"]
    for path in [result["train_yaml"], result["heldout"], *result["train"].values()]:
        reader = DatasetReader(path)
        assert sum(1 for _ in reader) > 0 and reader.bad_records == 0
    assert len(data["train"]) == TRAIN * len(md.TASKS) and len(data["heldout"]) == HELDOUT * len(md.TASKS)
    assert result["counts"] == {
        "train": {t: TRAIN for t in md.TASKS},
        "heldout": {t: HELDOUT for t in md.TASKS},
    }
    ids = [r["id"] for r in data["train"] + data["heldout"]]
    assert len(set(ids)) == len(ids)
    for record in data["train"] + data["heldout"]:
        task = md.TASKS[record["task"]]
        human, gpt = record["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        assert gpt["value"] in task.classes
        placeholders = {"image": 1, "video": 1, "codec": MOSAICS, "text": 0}[task.kind]
        assert human["value"].count("<image>") == placeholders and "<video>" not in human["value"]
        for path in _media(record):
            _inside(root, path)
        if task.kind == "codec":
            assert len(record["image"]) == MOSAICS and "video" not in record
        if task.kind in ("image", "video"):  # relative: the trainer joins them with --image/--video_folder
            assert not Path(_media(record)[0]).is_absolute()
    # Stage 2's own pack.json files were re-rooted too, and the staging folder is gone.
    for pack in root.glob("codec/*_packs/*/pack.json"):
        for path in _media(json.loads(pack.read_text())):
            _inside(root, path)
    assert sorted(p.name for p in data["base"].iterdir()) == ["seed0"]


def test_classes_are_balanced_and_heldout_is_separate(data):
    for split, records, count in (("train", data["train"], TRAIN), ("heldout", data["heldout"], HELDOUT)):
        for name, task in md.TASKS.items():
            answers = Counter(_answer(r) for r in records if r["task"] == name)
            assert sum(answers.values()) == count
            assert max(answers.values()) - min(answers.get(c, 0) for c in task.classes) <= 1, (split, name)
    for record in data["heldout"]:
        assert record["answer"] == _answer(record)
        assert record["choices"] == list(md.TASKS[record["task"]].classes)
    train_ids = {r["id"] for r in data["train"]}
    assert train_ids.isdisjoint(r["id"] for r in data["heldout"])
    train_files = {p for r in data["train"] for p in _media(r)}
    assert train_files.isdisjoint(p for r in data["heldout"] for p in _media(r))

    # Fresh draws, not copies: no held-out image or clip has the content of a train one.
    def contents(split):
        return {hashlib.sha256(p.read_bytes()).hexdigest() for p in data["root"].glob(f"*/{split}/*.*")}

    assert contents("train") and contents("heldout") and contents("train").isdisjoint(contents("heldout"))


# ---------------------------------------------------------------- answers follow the pixels
PALETTE = np.array([md.PALETTE[c] for c in md.COLOURS], np.float64)


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.float64)


def _foreground(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pixels and the mask of pixels far from the background (the median of the border)."""
    pixels = _pixels(path)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    mask = np.linalg.norm(pixels - np.median(border, axis=0), axis=-1) > 60
    assert mask.sum() > 50, f"{path}: no shape found"
    return pixels, mask


def _nearest_colour(rgb: np.ndarray) -> np.ndarray:
    """Index into ``md.COLOURS`` of the palette colour nearest each RGB row."""
    return np.linalg.norm(rgb[:, None, :] - PALETTE[None], axis=-1).argmin(axis=1)


def _saturated_colours(pixels: np.ndarray, spread: float = 80) -> Counter:
    """How many saturated pixels (max - min channel > ``spread``) lie nearest each palette colour.

    The clips' texture is grey and the squares' colours have a spread of 110 or more (less the
    jitter), so only the square and the coding noise at its edges count.
    """
    rgb = pixels.reshape(-1, 3)
    saturated = rgb[np.ptp(rgb, axis=1) > spread]
    return Counter(md.COLOURS[i] for i in _nearest_colour(saturated))


def test_image_answers_follow_the_pixels(data):
    """The mean foreground colour is nearest the answer's palette colour."""
    images = [r for r in data["train"] + data["heldout"] if r["task"] == "colour"]
    assert images
    for record in images:
        pixels, mask = _foreground(data["root"] / record["image"])
        nearest = md.COLOURS[_nearest_colour(pixels[mask].mean(axis=0)[None])[0]]
        assert nearest == _answer(record), record["id"]


def _mosaics(root: Path, record: dict) -> list[np.ndarray]:
    return [_pixels(_inside(root, path)) for path in record["image"]]


def test_codec_answers_follow_the_patches_and_both_codecs_are_used(data):
    """Mosaic 0 is frame 0 whole; the later mosaics hold only the patches Stage 1 selected from
    frames 1.., i.e. where the square moved. In each of those, the most frequent saturated
    colour is the answer's, and it covers most of the saturated pixels. Codec balance is
    checked against what Stage 1 read from the bitstream, not the generator's label."""
    codecs, answers_by_codec = Counter(), {}
    for record in data["train"] + data["heldout"]:
        if record["task"] != "codec_colour":
            continue
        positions = np.load(_inside(data["root"], record["positions_thw"]))
        assert positions.shape == (MOSAICS * (CANVAS // 16) ** 2, 3)
        slots = (CANVAS // 16) ** 2
        assert (positions[:slots, 0] == 0).all() and (positions[slots:, 0] >= 1).all()
        mosaics = _mosaics(data["root"], record)
        assert len(mosaics) == MOSAICS
        for k, pixels in enumerate(mosaics):
            colours = _saturated_colours(pixels)
            assert sum(colours.values()) >= 40, (record["id"], k, colours)  # the square is in there
            (top, n), *_ = colours.most_common(1)
            assert top == _answer(record) and n >= 0.8 * sum(colours.values()), (record["id"], k, colours)
        (meta,) = data["root"].glob(f"codec/*_stage1/sample_{record['id']}__*.meta.json")
        codec = json.loads(meta.read_text())["codec"]
        assert codec == record["video_codec"]
        codecs[codec] += 1
        answers_by_codec.setdefault(codec, set()).add(_answer(record))
    assert codecs == {"h264": (TRAIN + HELDOUT) // 2, "hevc": (TRAIN + HELDOUT) // 2}
    # The codec does not give the answer away: each codec carries every colour.
    assert answers_by_codec == {"h264": set(md.COLOURS), "hevc": set(md.COLOURS)}


def _decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24").astype(np.float64) for f in container.decode(video=0)]


def test_raw_video_answers_follow_the_pixels(data):
    """The first decoded frame's saturated pixels are nearest the answer's palette colour (most
    of them, by a wide margin), and the square moves (the question asks about a moving one)."""
    codecs = Counter()
    for record in data["train"] + data["heldout"]:
        if record["task"] != "video_colour":
            continue
        path = _inside(data["root"], record["video"])
        frames = _decoded(path)
        assert len(frames) == FRAMES
        colours = _saturated_colours(frames[0])
        assert sum(colours.values()) >= 40, (record["id"], colours)  # most of a 10 px square at least
        (top, n), *_ = colours.most_common(1)
        # Chroma subsampling tints a few edge pixels (yellow next to dark grey decodes olive).
        assert top == _answer(record) and n >= 0.7 * sum(colours.values()), (record["id"], colours)

        def centre(frame):
            return np.nonzero((np.ptp(frame, axis=-1) > 80).any(axis=0))[0].mean()

        assert abs(centre(frames[-1]) - centre(frames[0])) > 8, record["id"]
        codecs[cv_reader.probe(str(path)).codec] += 1
    assert set(codecs) == {"h264", "hevc"}


PARTNER = {"red": "green", "green": "red", "blue": "yellow", "yellow": "blue"}
COLOUR_CHOICE = "Answer with one word: red, green, blue or yellow."


def test_text_answers_follow_the_partner_rule(data):
    """The colour named in the question sentence (the one ending in "?") and the answer are
    partners; the rule is stated in every prompt; more than one phrasing is used."""
    phrasings = set()
    for record in data["train"] + data["heldout"]:
        if record["task"] != "text":
            continue
        prompt = record["conversations"][0]["value"]
        rule, question = re.fullmatch(rf"(.*\.) ([^.]*\?) {re.escape(COLOUR_CHOICE)}", prompt).groups()
        for a, b in (("red", "green"), ("blue", "yellow")):
            assert re.search(rf"\b{a}\b[^.]*\b{b}\b", rule), rule
        (word,) = re.findall(r"\b(red|green|blue|yellow)\b", question)
        assert _answer(record) == PARTNER[word], record["id"]
        phrasings.add(question.replace(word, "{word}"))
    assert len(phrasings) >= 2


# ---------------------------------------------------------------- model inputs
def test_records_become_model_inputs_and_a_finite_loss(data):
    """Packs load through VisualProcessor with the tiny model's processor and the codec
    configuration (and equal what the online codec path computes from the clip); one record
    of each task goes through the tiny model's forward with its own placeholders."""
    tokenizer, model, processor = build_tiny_model()
    visual = VisualProcessor(processor, model.config, codec=CODEC)
    root = data["root"]
    first = {}
    for record in data["train"]:
        first.setdefault(record["task"], record)
    codec_record = first["codec_colour"]
    pack = visual.codec_pack(codec_record["image"], codec_record["positions_thw"])
    assert pack.modalities == ["codec"] and tuple(pack.images[0].shape) == (3, MOSAICS, CANVAS, CANVAS)
    assert tuple(pack.patch_positions[0].shape) == (MOSAICS * (CANVAS // 16) ** 2, 3)
    online = visual.video(str(root / codec_record["source_video"]))
    assert torch.equal(online.patch_positions[0], pack.patch_positions[0])

    # A raw video record has one placeholder: read as frames here (online codec inputs take one
    # placeholder per mosaic, which the trainer has to account for).
    inputs = [
        visual(str(root / first["colour"]["image"])),
        pack,
        visual.video(str(root / first["video_colour"]["video"]), mode="frames"),
    ]
    examples = []
    for name, media in zip(("colour", "codec_colour", "video_colour", "text"), [*inputs, None]):
        sample_ids, sample_labels = tokenize_conversation(first[name]["conversations"], tokenizer, where=name)
        assert (sample_labels != IGNORE_INDEX).sum() >= 2  # the answer word and <|im_end|>
        examples.append(Example(sample_ids, sample_labels, media))
    layout = VisualLayout.from_config(model.config, processor.patch_size)
    batch = collate(examples, layout, model.config.image_token_id, tokenizer.pad_token_id)  # the trainer's collation
    with torch.no_grad():
        out = model(**batch)
    assert torch.isfinite(out.loss)


# ---------------------------------------------------------------- determinism and the folder
def _fingerprint(root: Path) -> dict[str, str]:
    """Every file's hash, with the folder's own absolute path taken out of the JSON files."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.suffix in (".json", ".jsonl"):
            data = data.replace(str(root).encode(), b"<ROOT>")
        out[str(path.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


def test_same_seed_same_files_other_seed_other_records(data, tmp_path):
    again = Path(_generate(tmp_path / "again", 0)["out"])
    assert _fingerprint(again) == _fingerprint(data["root"])
    other = tmp_path / "other"
    argv = [
        "--out",
        str(other),
        "--seed",
        "1",
        "--train-per-task",
        str(TRAIN),
        "--heldout-per-task",
        str(HELDOUT),
    ]
    assert cli.main(argv) == 0
    other_train = [r.data for r in DatasetReader(other / "train.yaml")]
    mine_files, theirs_files = _fingerprint(data["root"]), _fingerprint(other)
    assert [r["id"] for r in other_train] == [r["id"] for r in data["train"]]
    for name in md.TASKS:
        mine = [(r["conversations"], r.get("image")) for r in data["train"] if r["task"] == name]
        theirs = [(r["conversations"], r.get("image")) for r in other_train if r["task"] == name]
        changed = [a != b for a, b in zip(mine, theirs)]
        first_files = [f"images/train/{name}_0000.png", f"videos/train/{name}_0000.mp4"]
        media = [mine_files[f] != theirs_files[f] for f in first_files if f in mine_files]
        assert any(changed) or any(media), f"seed 1 gave the same {name} samples as seed 0"


def test_refuses_a_non_empty_folder_and_leaves_nothing_behind(tmp_path, monkeypatch):
    target = tmp_path / "data"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        md.make_dataset(target, train_per_task=1, heldout_per_task=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]

    def broken(*args, **kwargs):
        raise RuntimeError("text generator failed")

    monkeypatch.setattr(md, "_text_records", broken)
    with pytest.raises(RuntimeError, match="text generator failed"):
        md.make_dataset(target, train_per_task=1, heldout_per_task=1, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no staging folder left
    assert [p.name for p in target.iterdir()] == ["keep.txt"]  # the old contents are untouched
    monkeypatch.undo()

    md.make_dataset(target, train_per_task=1, heldout_per_task=1, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "heldout.jsonl").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


# ---------------------------------------------------------------- scorer
@pytest.mark.parametrize(
    "text, word",
    [
        ("Red.", "red"),
        ("  left<|im_end|>", "left"),
        ("<|im_start|>RIGHT, it moves right", "right"),
        ("'Three'", "three"),
        ("- 3!", "3"),
        ("blue\n<|endoftext|>", "blue"),
        ("", ""),
        ("...", ""),
        (None, ""),
    ],
)
def test_normalise(text, word):
    assert score.normalise(text) == word


def test_accuracy_counts_per_task_and_chance(data, tmp_path, capsys):
    heldout = data["result"]["heldout"]
    records = data["heldout"]
    perfect = {r["id"]: r["answer"].capitalize() + ".<|im_end|>" for r in records}
    result = score.accuracy(perfect, heldout)
    assert result["overall"]["accuracy"] == 1.0 and result["missing"] == [] and result["unknown"] == 0
    chances = {name: row["chance"] for name, row in result["per_task"].items()}
    assert chances == pytest.approx(
        {"colour": 1 / 4, "codec_colour": 1 / 4, "video_colour": 1 / 4, "text": 1 / 4}
    )
    assert result["overall"]["chance"] == pytest.approx(np.mean(list(chances.values())))

    # Wrong on every colour record, one video record missing, one stray id.
    partial = {r["id"]: ("purple" if r["task"] == "colour" else r["answer"]) for r in records}
    dropped = next(r["id"] for r in records if r["task"] == "video_colour")
    del partial[dropped]
    partial["not-an-id"] = "red"
    result = score.accuracy(partial, heldout)
    assert result["per_task"]["colour"]["accuracy"] == 0.0
    assert result["per_task"]["video_colour"]["correct"] == HELDOUT - 1
    assert result["per_task"]["text"]["accuracy"] == 1.0
    assert result["overall"]["correct"] == len(records) - 2 * HELDOUT + HELDOUT - 1
    assert result["missing"] == [dropped] and result["unknown"] == 1

    predictions = tmp_path / "preds.jsonl"
    predictions.write_text("".join(json.dumps({"id": k, "prediction": v}) + "\n" for k, v in partial.items()))
    assert score.main(["--heldout", heldout, "--predictions", str(predictions)]) == 0
    report = capsys.readouterr().out
    assert "colour" in report and "0.000" in report and "overall" in report
    stray = json.dumps({"id": "not-an-id", "prediction": "x"})
    predictions.write_text(predictions.read_text() + stray + "\n")
    with pytest.raises(ValueError, match="duplicate"):
        score.read_predictions(predictions)
