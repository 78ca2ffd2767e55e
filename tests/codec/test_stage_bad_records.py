"""Hostile or careless records in the Stage-1/Stage-2 batch tools: each is a bad record of its own.

A field of the wrong type, a placeholder count that does not fit the video, a video record
without conversations: logged with ``file:line (id ...)`` and the problem, skipped, counted
(``bad_records=``) - in Stage 1 and in both Stage-2 modes - and the run goes on with the good
records. A video that cannot be opened (here a FIFO) fails that record alone, logged with its
place. Real files: one small H.264 clip through the real tools (T 8, canvas 192, 2 mosaics).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from codec_helpers import PKG
from cv_reader import records, stage1, stage2
from test_stage2_rewrite import PACK_LLAVA, S1_LLAVA, _fail_lines, _read_jsonl, _rewrite_args, _write_jsonl
from test_stage_cli import _conv

LOGGER = "cv_reader.dataset"


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def _done_line(text: str) -> list[str]:
    return next(line for line in text.splitlines() if line.startswith("[stage2] DONE")).split()


def _human(*turns: str) -> list[dict]:
    """A conversation whose human turns are ``turns``, each answered."""
    out = []
    for text in turns:
        out += [{"from": "human", "value": text}, {"from": "gpt", "value": "A square moves."}]
    return out


def _stage1(ds: str, out: Path, ok: int) -> Path:
    """Stage 1 (``--preset llava`` settings) of ``ds`` into ``out``; ``ok`` samples must succeed."""
    args = stage1.build_parser().parse_args(["--dataset_path", ds, "--out_root", str(out)] + S1_LLAVA)
    stats = stage1.run(args)
    assert stats["ok"] == ok, stats
    return out


@pytest.fixture(scope="module")
def clip(tmp_path_factory, h264_static):
    """Stage 1 and a ``--preset llava`` pack of one record (id ``clip``) of one real video."""
    root = tmp_path_factory.mktemp("bad_records")
    good = {"id": "clip", "video": h264_static.path, "conversations": _conv(0)}
    ds = _write_jsonl(root / "good.jsonl", [good])
    s1 = _stage1(ds, root / "s1", ok=1)
    img = root / "img"
    args = ["--mode", "pack", "--input_dataset", ds, "--out_jsonl", str(root / "good_packed.jsonl")]
    args += ["--visidx_root", str(s1), "--out_image_root", str(img)] + PACK_LLAVA
    assert stage2.run(stage2.build_parser().parse_args(args))["ok"] == 1
    packed = _read_jsonl(root / "good_packed.jsonl")[0]
    return dict(root=root, s1=s1, img=img, good=good, video=h264_static.path, packed=packed)


def _pack_args(ds: str, clip: dict, out: Path) -> list[str]:
    args = ["--mode", "pack", "--input_dataset", ds, "--out_jsonl", str(out)]
    return args + ["--visidx_root", str(clip["s1"]), "--out_image_root", str(clip["img"])] + PACK_LLAVA


# ---------------------------------------------------------------- fields of the wrong type
def _wrong_types(
    clip: dict, tmp_path: Path
) -> tuple[str, dict[int, tuple[str, str]], dict[int, tuple[str, str]]]:
    """A dataset of the good record and records with a field of the wrong type.

    Returns the path, the bad video records ``{line: (id text, problem fragment)}`` (bad in every
    tool) and the bad records without a video (bad where they are used: rewrite mode copies them).
    """
    video, conv = clip["video"], _conv(0)
    items = [
        clip["good"],  # 1
        {"id": "video_list", "video": [video], "conversations": conv},  # 2
        {"id": "video_number", "video": 7, "conversations": conv},  # 3
        {"id": ["a", "list"], "video": video, "conversations": conv},  # 4
        {"id": "conversations_string", "video": video, "conversations": "<video>\nWhat happens?"},  # 5
        {"id": "turn_string", "video": video, "conversations": ["<video>\nWhat happens?"]},  # 6
        {"id": "value_number", "video": video, "conversations": [{"from": "human", "value": 3}]},  # 7
        {"id": "image_number", "image": 3, "conversations": conv},  # 8
        {"id": "positions_number", "image": ["a.jpg"], "positions_thw": 5, "conversations": conv},  # 9
        {"id": "text", "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hi."}]},
    ]
    ds = _write_jsonl(tmp_path / "types.jsonl", items)
    videos = {
        2: ("video_list", "'video' must be a path (a non-empty string), got array"),
        3: ("video_number", "'video' must be a path (a non-empty string), got number"),
        4: ("['a', 'list']", "'id' must be a string or an integer, got array"),
        5: ("conversations_string", "'conversations' must be a non-empty array of turns, got string"),
        6: ("turn_string", "'conversations' turn 0 must be an object, got string"),
        7: ("value_number", "'conversations' turn 0: 'value' must be a string, got number"),
    }
    others = {
        8: ("image_number", "'image' must be a path or a non-empty array of paths, got number"),
        9: ("positions_number", "'positions_thw' must be a path (a non-empty string), got number"),
    }
    return ds, videos, others


def _assert_logged(caplog, ds: str, bad: dict[int, tuple[str, str]]) -> None:
    warned = _warnings(caplog)
    for line, (sid, problem) in bad.items():
        assert any(w.startswith(f"{ds}:{line} (id {sid}): ") and problem in w for w in warned), (line, warned)
    assert len(warned) == len(bad), warned


def test_stage1_records_with_fields_of_the_wrong_type_are_bad_records(clip, tmp_path, caplog, capsys):
    ds, videos, _ = _wrong_types(clip, tmp_path)
    out = tmp_path / "s1"
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        stats = stage1.run(
            stage1.build_parser().parse_args(["--dataset_path", ds, "--out_root", str(out)] + S1_LLAVA)
        )
    assert (stats["ok"], stats["fail"], stats["bad_records"], stats["skip"]) == (1, 0, len(videos), 3)
    assert len(list(out.glob("*.meta.json"))) == 1
    _assert_logged(caplog, ds, videos)
    text = capsys.readouterr().out
    assert f"bad_records={len(videos)}" in text.split() and f"{ds}:2 (id video_list): " in text  # the summary


def test_stage2_pack_records_with_fields_of_the_wrong_type_are_bad_records(clip, tmp_path, caplog):
    ds, videos, _ = _wrong_types(clip, tmp_path)
    out = tmp_path / "packed.jsonl"
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        stats = stage2.run(stage2.build_parser().parse_args(_pack_args(ds, clip, out)))
    assert (stats["ok"], stats["fail"], stats["bad_records"]) == (1, 0, len(videos))
    assert _read_jsonl(out) == [clip["packed"]]  # the JSONL is written, with the good record
    _assert_logged(caplog, ds, videos)


def test_stage2_rewrite_records_with_fields_of_the_wrong_type_are_bad_records(clip, tmp_path, caplog):
    ds, videos, others = _wrong_types(clip, tmp_path)
    out = tmp_path / "rewritten.jsonl"
    args = stage2.build_parser().parse_args(_rewrite_args(ds, clip["img"], out))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        stats = stage2.run(args)
    assert (stats["ok"], stats["fail"], stats["passthrough"]) == (1, 0, 1)
    assert stats["bad_records"] == len(videos) + len(others) and stage2.exit_status(args, stats) == 0
    assert [r["id"] for r in _read_jsonl(out)] == ["clip", "text"]
    assert _fail_lines(out) == []
    _assert_logged(caplog, ds, {**videos, **others})


# ---------------------------------------------------------------- placeholders, conversations
def _placeholders(clip: dict, tmp_path: Path) -> tuple[str, dict[int, str]]:
    """The clip's record with conversations that fit its 2 mosaics, and with ones that do not."""
    record = lambda convs: dict(clip["good"], conversations=convs)  # noqa: E731 - same pack for every line
    no_conversations = {k: v for k, v in clip["good"].items() if k != "conversations"}
    items = [
        record(_human("<video>\nWhat happens?")),  # 1: one <video>
        record(_human("<video>\n<video>\nWhat happens?")),  # 2
        record(_human("<video>\n<image>\nWhat happens?")),  # 3
        record(_human("<image>\n<image>\n<image>\nWhat happens?")),  # 4: three lines for two mosaics
        record(_human("<video>\nWhat happens?", "And <video>?")),  # 5: one more in a later turn
        record(_human("<image>\n<image>\nWhat happens?")),  # 6: already one line per mosaic
        no_conversations,  # 7
        record([]),  # 8
        record(_human("What happens?")),  # 9: none: the lines go in front
    ]
    bad = {
        2: "2 <video> and 0 <image> placeholders",
        3: "1 <video> and 1 <image> placeholders",
        4: "0 <video> and 3 <image> placeholders",
        5: "2 <video> and 0 <image> placeholders",
        7: "'conversations' is missing",
        8: "'conversations' must be a non-empty array of turns, got an empty array",
    }
    return _write_jsonl(tmp_path / "placeholders.jsonl", items), bad


def _check_placeholder_output(clip: dict, out: Path) -> None:
    lines = _read_jsonl(out)
    assert len(lines) == 3
    two = "<image>\n<image>\nWhat happens?"
    assert [r["conversations"][0]["value"] for r in lines] == [two, two, two]
    assert all(r["image"] == clip["packed"]["image"] for r in lines)
    for r in lines:
        assert not any("<video>" in turn["value"] for turn in r["conversations"])


def test_packs_only_packs_records_without_conversations(clip, tmp_path):
    """--packs_only (a benchmark's videos: scripts/precompute_codec_patch) needs no conversations: the line
    lists the pack and the record's other fields."""
    record = {k: v for k, v in clip["good"].items() if k != "conversations"}
    ds = _write_jsonl(tmp_path / "videos.jsonl", [record])
    out = tmp_path / "packs.jsonl"
    args = stage2.build_parser().parse_args([*_pack_args(ds, clip, out), "--packs_only"])
    stats = stage2.run(args)
    assert (stats["ok"], stats["bad_records"]) == (1, 0)
    (line,) = _read_jsonl(out)
    assert "conversations" not in line
    assert line["image"] == clip["packed"]["image"] and line["id"] == record["id"]


@pytest.mark.parametrize("mode", ["pack", "rewrite"])
def test_placeholders_that_do_not_fit_the_video_and_missing_conversations_are_bad_records(
    clip, tmp_path, caplog, capsys, mode
):
    ds, bad = _placeholders(clip, tmp_path)
    out = tmp_path / f"{mode}.jsonl"
    argv = _pack_args(ds, clip, out) if mode == "pack" else _rewrite_args(ds, clip["img"], out)
    args = stage2.build_parser().parse_args(argv)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        stats = stage2.run(args)
    assert (stats["ok"], stats["fail"], stats["bad_records"]) == (3, 0, len(bad))
    assert stage2.exit_status(args, stats) == 0
    _check_placeholder_output(clip, out)
    _assert_logged(caplog, ds, {line: ("clip", problem) for line, problem in bad.items()})
    assert f"bad_records={len(bad)}" in _done_line(capsys.readouterr().out)


@pytest.mark.parametrize(
    "value, answer",
    [
        ("<video>\n<video>\nWhat happens?", "A square."),
        ("<video>\n<image>\nWhat happens?", "A square."),
        ("<image>\n<image>\nWhat happens?", "A square."),  # two lines for three mosaics
        ("<video>\nWhat happens?", "It is the <video> above."),
    ],
)
def test_rewrite_conversations_refuses_placeholders_that_do_not_fit(value, answer):
    convs = [{"from": "human", "value": value}, {"from": "gpt", "value": answer}]
    with pytest.raises(ValueError, match="placeholders"):
        records.rewrite_conversations(convs, 3)


# ---------------------------------------------------------------- media that cannot be opened
def test_a_video_that_cannot_be_opened_fails_that_record_alone_with_its_place(clip, tmp_path, env_pythonpath):
    """The video turned into a FIFO after Stage 1 (which would hang a reader that opens it blindly):
    the real tools fail that record alone, logged with its id, file:line and the problem, and go on."""
    video = tmp_path / "gone.mp4"
    shutil.copy(clip["video"], video)
    ds = _write_jsonl(
        tmp_path / "fifo.jsonl",
        [{"id": "gone", "video": str(video), "conversations": _conv(1)}, clip["good"]],
    )
    s1 = _stage1(ds, tmp_path / "s1", ok=2)
    video.unlink()
    os.mkfifo(video)
    tools, run = PKG / "tool", dict(env=env_pythonpath, capture_output=True, text=True, timeout=120)
    again = tmp_path / "s1_again"
    done = subprocess.run(
        [sys.executable, str(tools / "stage1.py"), "--dataset_path", ds, "--out_root", str(again)] + S1_LLAVA,
        **run,
    )
    assert done.returncode == 0, done.stderr
    assert "ok=1" in done.stdout.split() and "fail=1" in done.stdout.split()
    (fail,) = [
        line.split("\t") for line in (again / "stage1_failed.shard00of01.txt").read_text().splitlines()
    ]
    assert (
        fail[:2] == ["gone", str(video)] and "not a regular file" in fail[2] and fail[2].endswith(f"({ds}:1)")
    )
    out = tmp_path / "packed.jsonl"
    done = subprocess.run(
        [sys.executable, str(tools / "stage2.py"), *_pack_args(ds, dict(clip, s1=s1), out)], **run
    )
    assert done.returncode == 0, done.stderr
    assert "ok=1" in done.stdout.split() and "fail=1" in done.stdout.split()
    assert [r["id"] for r in _read_jsonl(out)] == ["clip"]
    (fail,) = _fail_lines(out)
    assert (
        fail[:2] == ["gone", str(video)] and "not a regular file" in fail[2] and fail[2].endswith(f"({ds}:1)")
    )
