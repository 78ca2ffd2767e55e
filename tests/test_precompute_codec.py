"""scripts/precompute_codec_patch/preprocess_video_benchmark.sh and llava.eval.benchmark_videos.

Offline, on the repo's local task ``tiny_ov_video_mc`` (32 rendered clips) with small codec settings
(16 frames, 64 px canvas, 4 mosaics): the listing finds every video where the task keeps it; the packs
are complete, where ``CodecAssets`` looks for them, and hold the positions the model computes online;
a rerun recomputes nothing; two shards give the packs one run gives; a bad task name fails clearly;
videos the docs name but that are not on disk are counted and listed (function level: the tiny task
renders a missing clip again when asked for it).

Every script run starts lmms-eval (about 15 s of imports and task indexing), so the runs that do not
depend on each other run side by side.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llava.eval.benchmark_videos import VideoListing, sample_id
from llava.eval.codec_assets import CodecAssets
from llava.processing.video import LLAVA_CODEC, load_codec_inputs

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "precompute_codec_patch" / "preprocess_video_benchmark.sh"
TASK = "tiny_ov_video_mc"
SMALL = {"CODEC_FRAMES": "16", "CODEC_CANVAS": "64", "CODEC_IMAGES": "4"}
PARAMS = LLAVA_CODEC.replace(sequence_length=16, square_size=64, keep_frames_equiv=4)


def _tiny_utils():
    """The tiny task's utils.py by path, as lmms-eval's ``!function`` loads it."""
    path = REPO / "llava" / "eval" / "tasks" / "tiny_ov" / "utils.py"
    spec = importlib.util.spec_from_file_location("tiny_ov_utils_precompute", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _done_line(stdout: str, tool: str) -> str:
    lines = [line for line in stdout.splitlines() if line.startswith(f"[{tool}] DONE")]
    assert len(lines) == 1, stdout[-3000:]
    return lines[0]


def _count(line: str, name: str) -> int:
    return int(re.search(rf" {name}=(\d+)", line).group(1))


def _files(folder: Path) -> dict[str, int]:
    """``{relative path: mtime_ns}`` of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The script's runs: ``one`` (1 shard), ``shards`` (2 shards into another root, side by side with
    ``one``), then ``again`` (``one`` rerun) beside ``bad`` (an unknown task name). Also the expected
    video paths (the tiny task's clips, rendered here first) and the pack files' mtimes before the rerun."""
    base = tmp_path_factory.mktemp("precompute")
    media = base / "media"
    env = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(base / "hf"), "TINY_OV_MEDIA": str(media), "INCLUDE_PATH": "llava/eval/tasks",
           "NUM_WORKERS": "1", **SMALL}
    with pytest.MonkeyPatch.context() as patch:  # render the clips the task will name, before the runs
        patch.setenv("TINY_OV_MEDIA", str(media))
        utils = _tiny_utils()
        videos = [str(utils.render_video(doc)) for doc in utils.make_docs() if doc["task"] == TASK]

    def start(*args: str, **extra: str) -> subprocess.Popen:
        return subprocess.Popen(["bash", str(SCRIPT), *args], cwd=REPO, env={**env, **extra}, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
        out, err = proc.communicate(timeout=600)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    one, two = base / "one", base / "two"
    first = [start(TASK, OUT_ROOT=str(one)),
             start(TASK, OUT_ROOT=str(two), NUM_SHARDS="2", SHARD_ID="0"),
             start(TASK, OUT_ROOT=str(two), NUM_SHARDS="2", SHARD_ID="1")]
    result = dict(zip(("one", "shard0", "shard1"), map(finish, first)))
    before = _files(one / TASK)
    second = [start(TASK, OUT_ROOT=str(one)), start("no_such_task", OUT_ROOT=str(base / "bad"))]
    result.update(zip(("again", "bad"), map(finish, second)))
    return dict(result, root_one=one, root_two=two, videos=videos, before=before)


def test_listing_finds_every_video(runs):
    assert runs["one"].returncode == 0, runs["one"].stdout[-3000:] + runs["one"].stderr[-3000:]
    listing = runs["root_one"] / TASK / "videos.jsonl"
    records = [json.loads(line) for line in listing.read_text().splitlines()]
    assert [r["video"] for r in records] == runs["videos"]  # every clip, once, in doc order
    assert len(set(runs["videos"])) == 32
    assert all(Path(r["video"]).is_absolute() and Path(r["video"]).is_file() for r in records)
    assert {r["task"] for r in records} == {TASK}
    assert [r["id"] for r in records] == [Path(v).stem for v in runs["videos"]]
    assert (runs["root_one"] / TASK / "videos.jsonl.missing.txt").read_text() == ""
    assert "docs=32 videos=32 missing=0" in runs["one"].stdout
    # every shard lists the same file
    assert (runs["root_two"] / TASK / "videos.jsonl").read_bytes() == listing.read_bytes()


def test_packs_are_complete_where_the_model_looks(runs):
    assert runs["one"].returncode == 0, runs["one"].stdout[-3000:]
    stage1, stage2 = _done_line(runs["one"].stdout, "stage1"), _done_line(runs["one"].stdout, "stage2")
    assert (_count(stage1, "ok"), _count(stage1, "fail")) == (32, 0)
    assert (_count(stage2, "ok"), _count(stage2, "fail")) == (32, 0)
    assets = CodecAssets([runs["root_one"]])
    packs = runs["root_one"] / TASK / "packs"
    found = [assets.find(video, TASK) for video in runs["videos"]]
    assert all(asset is not None and Path(asset.source).parent == packs for asset in found)
    assert all(len(asset.mosaics) == 4 for asset in found)
    assert len({asset.source for asset in found}) == 32
    # the clips alternate H.264 / HEVC in pairs of colours: docs 0 and 4 differ in codec
    for index in (0, 4):
        video, asset = runs["videos"][index], found[index]
        online = load_codec_inputs(video, params=PARAMS)
        packed = load_codec_inputs(mosaic_paths=list(asset.mosaics), positions_path=asset.positions,
                                   params=PARAMS)  # checked against the configuration
        np.testing.assert_array_equal(packed.positions, online.positions)
        assert packed.mosaics.shape == online.mosaics.shape == (4, 64, 64, 3)


def test_rerun_recomputes_nothing(runs):
    again = runs["again"]
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    stage1, stage2 = _done_line(again.stdout, "stage1"), _done_line(again.stdout, "stage2")
    assert (_count(stage1, "resumed"), _count(stage1, "ok"), _count(stage1, "fail")) == (32, 0, 0)
    assert (_count(stage2, "ok"), _count(stage2, "fail")) == (32, 0)  # reused packs count ok
    after = _files(runs["root_one"] / TASK)
    outputs = [name for name in runs["before"]  # not the failure logs, which a run opens to append
               if name.startswith("packs/") or name.startswith("stage1/sample_")]
    assert len(outputs) == 32 * 3 + 32 * 6  # Stage 1: 3 files a video; packs: 4 mosaics, positions, pack.json
    assert {name: after[name] for name in outputs} == {name: runs["before"][name] for name in outputs}


def test_two_shards_make_the_packs_of_one(runs):
    for name in ("shard0", "shard1"):
        assert runs[name].returncode == 0, runs[name].stdout[-3000:] + runs[name].stderr[-3000:]
    picked = [_count(_done_line(runs[name].stdout, "stage1"), "picked") for name in ("shard0", "shard1")]
    assert sum(picked) == 32 and min(picked) > 0
    shard_jsonl = sorted((runs["root_two"] / TASK).glob("packed.jsonl.shard*of02.jsonl"))
    assert [len(p.read_text().splitlines()) for p in shard_jsonl] == picked
    bad = [_count(_done_line(runs[name].stdout, "stage2"), "bad_records") for name in ("shard0", "shard1")]
    assert bad == [0, 0]  # the listing's records have no conversations: --packs_only needs none
    one, two = runs["root_one"] / TASK / "packs", runs["root_two"] / TASK / "packs"
    names = sorted(p.name for p in one.iterdir())
    assert sorted(p.name for p in two.iterdir()) == names and len(names) == 32
    for name in names:
        for file in sorted((one / name).iterdir()):
            if file.name != "pack.json":  # pack.json names its own root
                assert (two / name / file.name).read_bytes() == file.read_bytes(), file


def test_bad_task_name_fails_clearly(runs):
    bad = runs["bad"]
    assert bad.returncode == 2
    assert "unknown lmms-eval task(s): no_such_task" in bad.stderr


def test_missing_videos_are_counted_and_listed(tmp_path):
    """Videos a doc names but that are not on disk stay out of the listing and go to <out>.missing.txt,
    however the task util reports them: a path that does not exist, ``sys.exit`` / an exception naming
    the path, or no visual at all. Images and repeated videos are not listed either."""
    present = tmp_path / "media" / "clip__a_.mp4"
    present.parent.mkdir()
    present.write_bytes(b"not decoded here")
    gone = tmp_path / "media" / "gone.mp4"

    def doc_to_visual(doc):
        if doc["kind"] == "exit":
            raise SystemExit(f"video path:{gone} does not exist, please check")
        if doc["kind"] == "raise":
            raise FileNotFoundError("no such video")
        return doc["visual"]

    docs = [{"kind": "ok", "visual": [str(present)]}, {"kind": "ok", "visual": str(present)},
            {"kind": "ok", "visual": [str(gone)]}, {"kind": "exit"}, {"kind": "raise"},
            {"kind": "ok", "visual": []}, {"kind": "ok", "visual": [str(tmp_path / "frame.png")]}]
    listing = VideoListing()
    listing.add_task("fake_task", docs, doc_to_visual, progress=False)
    out = tmp_path / "out" / "videos.jsonl"
    missing = listing.write(out)
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"id": "clip-_a-", "video": str(present), "task": "fake_task"}]
    rows = [line.split("\t") for line in missing.read_text().splitlines()]
    assert rows == [["fake_task", "2", str(gone)], ["fake_task", "3", str(gone)],
                    ["fake_task", "4", "doc_to_visual stopped: FileNotFoundError: no such video"],
                    ["fake_task", "5", "doc_to_visual gave no visual"]]
    assert "docs=7 videos=1 missing=4 (3 distinct)" in listing.summary(out)
    assert sample_id("x/a__b_.mp4") == "a-_b-"  # the pack folder sample_<id>__<stem>__<hash> parses back
