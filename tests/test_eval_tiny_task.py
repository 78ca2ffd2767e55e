"""llava/eval/tasks/tiny_ov: the offline lmms-eval tasks for the tiny SFT checkpoint.

Checked without a model: lmms-eval 0.7.3's TaskManager finds the tasks and the group under
``--include_path llava/eval/tasks``; the docs load from data.jsonl (reproducible from the eval
seed, balanced); the prompts and choices are the tiny SFT data's; the media are what the
answers say (measured from the pixels), PIL RGB images and decodable 16-frame H.264 / HEVC
files, rendered deterministically into ``$TINY_OV_MEDIA`` and reused.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import av
import lmms_eval  # the dev and eval extras install it; a missing one fails here
import numpy as np
import pytest
from PIL import Image
from task_helpers import import_by_path, offline_task_media

from llava.synthetic import tiny_sft

ROOT = Path(__file__).resolve().parents[1]
TASKS_DIR = ROOT / "llava" / "eval" / "tasks"
TASK_DIR = TASKS_DIR / "tiny_ov"
NAMES = ("tiny_ov_image_mc", "tiny_ov_video_mc", "tiny_ov_free")


# By path, as lmms-eval's ``!function`` loads it.
utils = import_by_path(TASK_DIR / "utils.py", "tiny_ov_utils")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Offline, with the datasets cache and the media cache in temporary folders."""
    with offline_task_media(tmp_path_factory, "TINY_OV_MEDIA") as folder:
        yield folder


@pytest.fixture(scope="module")
def manager(media):
    from lmms_eval.tasks import TaskManager

    # The built-in tasks are left out for speed; test_no_builtin_task_shadows covers the name clash.
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False)


@pytest.fixture(scope="module")
def tasks(manager):
    """``{name: ConfigurableTask}``, loaded through the group as ``--tasks tiny_ov`` loads them."""
    from lmms_eval.tasks import get_task_dict

    (group, subtasks), *others = get_task_dict(["tiny_ov"], manager).items()
    assert not others and group.group_name == "tiny_ov"
    return subtasks


def _dominant_colour(pixels: np.ndarray) -> str:
    """The palette word nearest the mean of the most saturated pixels (the shape / square)."""
    flat = pixels.reshape(-1, 3).astype(np.float64)
    saturation = flat.max(1) - flat.min(1)
    mean = flat[saturation > 0.6 * saturation.max()].mean(0)
    return min(tiny_sft.PALETTE, key=lambda word: float(np.sum((mean - tiny_sft.PALETTE[word]) ** 2)))


def test_task_manager_discovers_tasks_and_group(manager):
    assert set(NAMES) <= set(manager.all_subtasks)
    assert "tiny_ov" in manager.all_groups
    for name in NAMES:
        assert Path(manager.task_index[name]["yaml_path"]) == TASK_DIR / f"{name}.yaml"


def test_no_builtin_task_shadows():
    """A built-in task or group of the same name would win over the include path's."""
    builtin = Path(lmms_eval.__file__).parent / "tasks"
    texts = {path: path.read_text(encoding="utf-8", errors="replace") for path in builtin.rglob("*.yaml")}
    assert not [path for path, text in texts.items() if "tiny_ov" in text]


def test_tasks_load_their_docs(tasks):
    assert sorted(tasks) == sorted(NAMES)
    for name, task in tasks.items():
        docs = task.test_docs()
        assert len(docs) == utils.PER_TASK
        assert {doc["task"] for doc in docs} == {name}
    assert tasks["tiny_ov_image_mc"].OUTPUT_TYPE == tasks["tiny_ov_video_mc"].OUTPUT_TYPE == "multiple_choice"
    assert tasks["tiny_ov_free"].OUTPUT_TYPE == "generate_until"


def test_data_jsonl_is_reproducible():
    lines = (TASK_DIR / "data.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == utils.make_docs()
    assert utils.EVAL_SEED not in range(100)  # not one of the tiny SFT run's seeds (SEED, default 0)


def test_answers_are_balanced():
    docs = utils.make_docs()
    for name in NAMES:
        answers = Counter(doc["answer"] for doc in docs if doc["task"] == name)
        assert answers == {colour: utils.PER_TASK // 4 for colour in tiny_sft.COLOURS}
    clips = [doc for doc in docs if doc["task"] == "tiny_ov_video_mc"]
    for key in ("encoder", "direction"):
        pairs = Counter((doc["answer"], doc[key]) for doc in clips)
        # every colour with every encoder (direction), equally often
        assert len(pairs) == 8 and len(set(pairs.values())) == 1, pairs


def test_requests_ask_the_training_questions(tasks):
    """The context is the training prompt's question; the four continuations are the bare colour words."""
    image = tiny_sft.TASKS["colour"].question
    questions = {"tiny_ov_image_mc": image, "tiny_ov_video_mc": tiny_sft.CLIP_QUESTION, "tiny_ov_free": image}
    assert tiny_sft.CLIP_QUESTION == tiny_sft.TASKS["video_colour"].question
    for name, task in tasks.items():
        task.build_all_requests(limit=2)
        for request in task.instances:
            assert request.args[0] == questions[name]
        if task.OUTPUT_TYPE == "multiple_choice":
            assert [r.args[1] for r in task.instances] == list(tiny_sft.COLOURS) * 2
        else:
            kwargs = task.instances[0].args[1]
            assert kwargs["max_new_tokens"] == 8 and kwargs["until"] == ["<|im_end|>"]
            assert kwargs["temperature"] == 0 and not kwargs["do_sample"]


def test_image_visuals_show_the_answer(tasks):
    for name in ("tiny_ov_image_mc", "tiny_ov_free"):
        task = tasks[name]
        for doc in task.test_docs():
            (image,) = task.doc_to_visual(doc)
            assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (64, 64)
            assert _dominant_colour(np.asarray(image)) == doc["answer"], doc["id"]


def test_video_visuals_are_decodable_clips_of_the_answer(tasks, media):
    task = tasks["tiny_ov_video_mc"]
    codecs = Counter()
    for doc in task.test_docs():
        (path,) = task.doc_to_visual(doc)
        assert isinstance(path, str) and Path(path).is_absolute() and Path(path).parent == media
        with av.open(path) as container:
            codec = container.streams.video[0].codec_context.name
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
        assert codec == tiny_sft.ENCODERS[doc["encoder"]]
        assert len(frames) == 16 and frames[0].shape == (64, 64, 3)
        assert _dominant_colour(frames[0]) == doc["answer"], doc["id"]
        codecs[codec] += 1
    assert codecs == {"h264": utils.PER_TASK // 2, "hevc": utils.PER_TASK // 2}


def test_rendering_is_deterministic_and_cached(tasks, media, tmp_path, monkeypatch):
    docs = utils.make_docs()
    picks = [docs[0]] + [next(d for d in docs if d["encoder"] == encoder) for encoder in tiny_sft.ENCODERS]
    for doc in picks:  # into the module's cache (through lmms-eval's copy of utils.py)
        tasks[doc["task"]].doc_to_visual(doc)
    first = {doc["id"]: utils.render_image(doc) if doc["shape"] else utils.render_video(doc) for doc in picks}
    assert all(path.parent == media for path in first.values())
    stamps = {key: path.stat().st_mtime_ns for key, path in first.items()}

    monkeypatch.setenv("TINY_OV_MEDIA", str(tmp_path))
    for doc in picks:
        again = utils.render_image(doc) if doc["shape"] else utils.render_video(doc)
        assert again.parent == tmp_path and again.read_bytes() == first[doc["id"]].read_bytes(), doc["id"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in first.values())  # no temps

    monkeypatch.setenv("TINY_OV_MEDIA", str(media))
    for doc in picks:  # reused, not rewritten
        path = utils.render_image(doc) if doc["shape"] else utils.render_video(doc)
        assert path == first[doc["id"]] and path.stat().st_mtime_ns == stamps[doc["id"]]


def test_free_answers_are_scored_by_their_first_word(tasks):
    task = tasks["tiny_ov_free"]
    doc = next(d for d in task.test_docs() if d["answer"] == "red")
    replies = {"Red.": 1.0, "red<|im_end|>": 1.0, " red, it is red": 1.0, "green": 0.0, "": 0.0}
    for reply, expected in replies.items():
        assert task.process_results(doc, [reply]) == {"exact_match": expected}, reply
