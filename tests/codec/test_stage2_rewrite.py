"""Stage 2 ``--mode rewrite``: annotation files pointed at existing packs, without decoding.

Real packs: Stage 1 and Stage 2 ``--mode pack --preset llava`` on small H.264 and HEVC
clips (T 8, canvas 192, 2 mosaics), made once per module. The annotation file mixes the
two packed videos with a video that has no pack, an image record, a text-only record
and a malformed line, as training annotation files do.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from codec_helpers import PKG
from cv_reader import packing, records, stage1, stage2
from test_stage_cli import _conv

S1_LLAVA = [
    "--preset",
    "llava",
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
]
PACK_LLAVA = ["--preset", "llava", "--num_images", "2", "--square_size", "192", "--T", "8", "--patch", "16"]


def _write_jsonl(path: Path, items: list) -> str:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in items))
    return str(path)


def _read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def _pack(ds: str, s1: Path, img: Path, out_jsonl: Path, extra: list[str] = ()) -> dict:
    args = ["--mode", "pack", "--input_dataset", ds, "--out_jsonl", str(out_jsonl)]
    args += ["--visidx_root", str(s1), "--out_image_root", str(img)] + PACK_LLAVA + list(extra)
    return stage2.run(stage2.build_parser().parse_args(args))


def _rewrite_args(ds: str | Path, img: Path, out: Path, *extra: str) -> list[str]:
    return ["--mode", "rewrite", "--input_dataset", str(ds), "--out_jsonl", str(out)] + [
        "--out_image_root",
        str(img),
        *extra,
    ]


def _fail_lines(out: Path) -> list[list[str]]:
    path = Path(f"{out}.fail.txt")
    return [line.split("\t") for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def packs(tmp_path_factory, h264_static, hevc_pan, h264_pan):
    """Two videos through Stage 1 + Stage 2 pack mode; a third video never packed."""
    root = tmp_path_factory.mktemp("rewrite")
    videos = [
        {"id": "vid/0", "video": h264_static.path, "conversations": _conv(0), "source": "h264"},
        {"id": "vid1", "video": hevc_pan.path, "conversations": _conv(1), "_row_idx": 7},
    ]
    ds = _write_jsonl(root / "videos.jsonl", videos)
    s1 = root / "s1"
    st1 = stage1.run(
        stage1.build_parser().parse_args(["--dataset_path", ds, "--out_root", str(s1)] + S1_LLAVA)
    )
    assert st1["ok"] == 2
    img = root / "img"
    packed_jsonl = root / "packed.jsonl"
    st2 = _pack(ds, s1, img, packed_jsonl)
    assert st2["ok"] == 2 and st2["fail"] == 0
    by_id = {r["id"]: r for r in _read_jsonl(packed_jsonl)}
    assert all(len(r["image"]) == 2 and "positions_thw" in r for r in by_id.values())
    text = {
        "id": "txt0",
        "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hi."}],
    }
    image = {"id": "img0", "image": "coco/000001.jpg", "conversations": _conv("img")}
    nopack = {"id": "nopack", "video": h264_pan.path, "conversations": _conv(2)}
    return dict(
        root=root,
        s1=s1,
        img=img,
        ds=ds,
        videos=videos,
        packed=by_id,
        text=text,
        image=image,
        nopack=nopack,
    )


@pytest.fixture()
def mixed(packs, tmp_path):
    """text, video (packed), image, malformed line, video (no pack), video (packed)."""
    v0, v1 = packs["videos"]
    lines = [packs["text"], v0, packs["image"], '{"id": "broken", "video": ', packs["nopack"], v1]
    return _write_jsonl(tmp_path / "ann.jsonl", lines)


@pytest.fixture()
def no_decoding(monkeypatch):
    """Any attempt to decode a video or build mosaics fails the test."""

    def forbidden(*a, **k):
        raise AssertionError("rewrite mode must not decode videos")

    monkeypatch.setattr(packing, "load_canvases", forbidden)
    monkeypatch.setattr(packing, "pack_mosaics", forbidden)


def test_rewrite_emits_pack_records_passes_others_and_fails_missing_pack(
    packs, mixed, tmp_path, capsys, no_decoding
):
    out = tmp_path / "out.jsonl"
    rc = stage2.main(_rewrite_args(mixed, packs["img"], out))
    assert rc == 1  # a record failed: the pipeline must notice
    got = _read_jsonl(out)
    want = [packs["text"], packs["packed"]["vid/0"], packs["image"], packs["packed"]["vid1"]]
    assert got == want  # pack-mode records for the videos, the others unchanged, input order
    assert list(got[0]) == list(packs["text"]) and list(got[2]) == list(packs["image"])
    fails = _fail_lines(out)
    assert len(fails) == 1
    sid, video, reason = fails[0]
    assert (sid, video) == ("nopack", packs["nopack"]["video"])
    assert "no complete pack" in reason and "pack.json not found" in reason
    assert "--skip_missing_packs" in reason and reason.endswith(f"({mixed}:5)")
    text = capsys.readouterr().out
    done = next(line for line in text.splitlines() if line.startswith("[stage2] DONE"))
    for part in ("ok=2", "fail=1", "skip=0", "passthrough=2", "bad_records=1", "seen=5"):
        assert part in done.split(), (part, done)
    assert f"{mixed}:4: invalid JSON" in text  # the malformed line is reported in the summary
    assert "1 record(s) failed" in text


def test_rewrite_cli_exit_status(packs, mixed, tmp_path, env_pythonpath):
    """The real command: non-zero when a pack is missing, 0 with --skip_missing_packs."""
    tool = str(PKG / "tool" / "stage2.py")
    out = tmp_path / "cli.jsonl"
    run = [sys.executable, tool] + _rewrite_args(mixed, packs["img"], out)
    failed = subprocess.run(run, env=env_pythonpath, capture_output=True, text=True)
    assert failed.returncode == 1, failed.stderr
    assert len(_read_jsonl(out)) == 4
    ok = subprocess.run(run + ["--skip_missing_packs"], env=env_pythonpath, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "skip=1" in ok.stdout and "fail=0" in ok.stdout
    assert (
        "exit status"
        in subprocess.run(
            [sys.executable, tool, "--help"], env=env_pythonpath, capture_output=True, text=True
        ).stdout
    )


def test_skip_missing_packs_leaves_the_record_out_without_failing(packs, mixed, tmp_path, no_decoding):
    out = tmp_path / "skip.jsonl"
    args = stage2.build_parser().parse_args(_rewrite_args(mixed, packs["img"], out, "--skip_missing_packs"))
    stats = stage2.run(args)
    assert stage2.exit_status(args, stats) == 0
    assert (stats["ok"], stats["fail"], stats["skip"], stats["passthrough"]) == (2, 0, 1, 2)
    assert [r["id"] for r in _read_jsonl(out)] == ["txt0", "vid/0", "img0", "vid1"]
    assert _fail_lines(out) == []


def test_num_images_must_match_the_packs(packs, mixed, tmp_path, no_decoding):
    out = tmp_path / "n3.jsonl"
    rc = stage2.main(_rewrite_args(mixed, packs["img"], out, "--num_images", "3", "--skip_missing_packs"))
    assert rc == 1  # a mismatch is a failure even with --skip_missing_packs
    assert [r["id"] for r in _read_jsonl(out)] == ["txt0", "img0"]
    fails = _fail_lines(out)
    assert [f[0] for f in fails] == ["vid/0", "vid1"]
    assert all("has 2 mosaics, not --num_images 3" in f[2] for f in fails)
    out2 = tmp_path / "n2.jsonl"
    rc = stage2.main(_rewrite_args(mixed, packs["img"], out2, "--num_images", "2", "--skip_missing_packs"))
    assert rc == 0 and _read_jsonl(out2)[1] == packs["packed"]["vid/0"]


def test_pack_without_positions_fails_with_the_repack_hint(packs, tmp_path):
    v0 = packs["videos"][0]
    ds = _write_jsonl(tmp_path / "v0.jsonl", [v0])
    img = tmp_path / "img"
    st = _pack(ds, packs["s1"], img, tmp_path / "nopos_packed.jsonl", ["--no-write_positions"])
    assert st["ok"] == 1
    assert "positions_thw" not in json.loads(next(img.glob("*/pack.json")).read_text())
    out = tmp_path / "nopos.jsonl"
    assert stage2.main(_rewrite_args(ds, img, out, "--skip_missing_packs")) == 1
    assert _read_jsonl(out) == []
    (fail,) = _fail_lines(out)
    assert fail[0] == "vid/0" and "no positions_thw.npy" in fail[2]
    assert "--write_positions" in fail[2] and "--preset llava" in fail[2]
    # the hint works: pack mode with --write_positions redoes the pack, then rewrite succeeds
    _pack(ds, packs["s1"], img, tmp_path / "repacked.jsonl")
    out2 = tmp_path / "repos.jsonl"
    assert stage2.main(_rewrite_args(ds, img, out2)) == 0
    (rec,) = _read_jsonl(out2)
    assert rec == _read_jsonl(tmp_path / "repacked.jsonl")[0] and Path(rec["positions_thw"]).is_file()


def test_incomplete_pack_counts_as_missing_in_both_modes(packs, tmp_path):
    """One definition of a complete pack: a listed mosaic gone means no pack (rewrite) and a
    re-pack (pack mode)."""
    v1 = packs["videos"][1]
    ds = _write_jsonl(tmp_path / "v1.jsonl", [v1])
    img = tmp_path / "img"
    _pack(ds, packs["s1"], img, tmp_path / "p.jsonl")
    (marker,) = img.glob("*/pack.json")
    listed = json.loads(marker.read_text())
    Path(listed["image"][1]).unlink()
    out = tmp_path / "inc.jsonl"
    assert stage2.main(_rewrite_args(ds, img, out)) == 1
    (fail,) = _fail_lines(out)
    assert "1 of 2 mosaics" in fail[2] and listed["image"][1] in fail[2]
    skipped = stage2.run(
        stage2.build_parser().parse_args(_rewrite_args(ds, img, out, "--skip_missing_packs"))
    )
    assert skipped["skip"] == 1 and skipped["fail"] == 0
    _pack(ds, packs["s1"], img, tmp_path / "p2.jsonl")  # pack mode sees the same gap and re-packs
    assert Path(listed["image"][1]).is_file()
    assert stage2.main(_rewrite_args(ds, img, tmp_path / "done.jsonl")) == 0


def test_yaml_mixture_input(packs, mixed, tmp_path, no_decoding):
    v0, v1 = packs["videos"]
    sub = tmp_path / "more"
    sub.mkdir()
    (sub / "more.json").write_text(json.dumps([v1, packs["text"], v0], indent=1))
    mix = tmp_path / "mix.yaml"
    mix.write_text(
        yaml.safe_dump(
            {
                "datasets": [
                    {"json_path": Path(mixed).name},  # relative: against the YAML's folder
                    {"json_path": "more/more.json", "sampling_strategy": "first:2"},
                ]
            }
        )
    )
    out = tmp_path / "mix.jsonl"
    assert stage2.main(_rewrite_args(mix, packs["img"], out, "--skip_missing_packs")) == 0
    want = [packs["text"], packs["packed"]["vid/0"], packs["image"], packs["packed"]["vid1"]]
    assert _read_jsonl(out) == want + [packs["packed"]["vid1"], packs["text"]]


def test_output_is_never_half_written(packs, mixed, tmp_path, monkeypatch):
    out = tmp_path / "atomic.jsonl"
    out.write_text("old output\n")
    real, calls = stage2.rewrite_record, []

    class Interrupted(BaseException):
        pass

    def interrupt_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise Interrupted  # like Ctrl-C in the middle of the run
        return real(*a, **k)

    monkeypatch.setattr(stage2, "rewrite_record", interrupt_second)
    with pytest.raises(Interrupted):
        stage2.main(_rewrite_args(mixed, packs["img"], out))
    assert len(calls) == 2  # it stopped after a line had been written to the temp file
    assert out.read_text() == "old output\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("atomic.jsonl")) == [
        "atomic.jsonl",
        "atomic.jsonl.fail.txt",
    ]
    monkeypatch.setattr(stage2, "rewrite_record", real)
    assert stage2.main(_rewrite_args(mixed, packs["img"], out, "--skip_missing_packs")) == 0
    assert len(_read_jsonl(out)) == 4


def test_shards_hold_every_record_once_and_match_pack_shards(packs, mixed, tmp_path):
    full = tmp_path / "full.jsonl"
    stage2.main(_rewrite_args(mixed, packs["img"], full, "--skip_missing_packs"))
    # enough copies that both shards get video and non-video records: the shard is a hash of the key
    # (video path | id | row), the paths are pytest's temporary ones, and vid1's copies share one key
    # (its _row_idx), so vid/0's copies must carry the odds: 12 rows leave shard 0 without a video once
    # in 8,192 runs (6 did once in 128)
    v0, v1 = packs["videos"]
    items = []
    for i in range(12):
        items += [dict(packs["text"], id=f"t{i}"), dict(packs["image"], id=f"i{i}"), v0, v1]
    ds = _write_jsonl(tmp_path / "many.jsonl", items)
    outs, pack_ids = [], []
    for shard in (0, 1):
        base = tmp_path / "many_out.jsonl"
        flags = ("--skip_missing_packs", "--num_shards", "2", "--shard_id", str(shard))
        assert stage2.main(_rewrite_args(ds, packs["img"], base, *flags)) == 0
        outs.append(_read_jsonl(f"{base}.shard{shard:02d}of02.jsonl"))
        st = _pack(
            ds,
            packs["s1"],
            packs["img"],
            tmp_path / "p.jsonl",
            ["--num_shards", "2", "--shard_id", str(shard)],
        )
        assert st["fail"] == 0
        pack_ids.append([r["id"] for r in _read_jsonl(f"{tmp_path / 'p.jsonl'}.shard{shard:02d}of02.jsonl")])
    assert all(outs) and all(pack_ids)
    merged = outs[0] + outs[1]
    key = lambda r: json.dumps(r, sort_keys=True)  # noqa: E731
    want = [packs["packed"].get(x.get("id"), x) if "video" in x else x for x in items]
    assert sorted(map(key, merged)) == sorted(map(key, want))  # each record exactly once
    for shard in (0, 1):  # a video lands in the shard pack mode gives it
        assert [r["id"] for r in outs[shard] if "positions_thw" in r] == pack_ids[shard]


def test_pack_mode_keeps_exit_status_0_with_failures(packs, tmp_path):
    ds = _write_jsonl(tmp_path / "p.jsonl", [packs["videos"][0], packs["nopack"]])
    args = ["--mode", "pack", "--input_dataset", ds, "--out_jsonl", str(tmp_path / "o.jsonl")]
    args += ["--visidx_root", str(packs["s1"]), "--out_image_root", str(packs["img"])] + PACK_LLAVA
    assert stage2.main(args) == 0
    assert [f[0] for f in _fail_lines(tmp_path / "o.jsonl")] == ["nopack"]


def test_mode_flag_errors_stop_before_any_work(packs, mixed, tmp_path):
    with pytest.raises(SystemExit, match="not a directory"):
        stage2.main(_rewrite_args(mixed, tmp_path / "nowhere", tmp_path / "o.jsonl"))
    pack = [
        "--input_dataset",
        mixed,
        "--out_jsonl",
        str(tmp_path / "p.jsonl"),
        "--out_image_root",
        str(tmp_path),
    ]
    with pytest.raises(SystemExit, match="needs --visidx_root"):
        stage2.main(pack)
    with pytest.raises(SystemExit, match="--skip_missing_packs is a --mode rewrite flag"):
        stage2.main(pack + ["--visidx_root", str(packs["s1"]), "--skip_missing_packs"])
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "p.jsonl").exists()


@pytest.mark.parametrize(
    "value, expected",
    [
        ("<video>\nWhat happens?", "<image>\n<image>\n<image>\nWhat happens?"),
        ("<image>\nWhat happens?", "<image>\n<image>\n<image>\nWhat happens?"),  # LLaVA-Video style
        ("What happens?", "<image>\n<image>\n<image>\nWhat happens?"),
        ("<image>\n<image>\n<image>\nWhat happens?", "<image>\n<image>\n<image>\nWhat happens?"),
    ],
)
def test_the_video_placeholder_becomes_one_line_per_mosaic(value, expected):
    convs = [{"from": "human", "value": value}, {"from": "gpt", "value": "A square moves."}]
    out = records.rewrite_conversations(convs, 3)
    assert out[0]["value"] == expected and out[1] == convs[1] and convs[0]["value"] == value


def test_the_one_placeholder_is_expanded_in_the_turn_that_holds_it():
    convs = [
        {"from": "human", "value": "Hi."},
        {"from": "gpt", "value": "Hi."},
        {"from": "human", "value": "<video>\nWhat happens?"},
        {"from": "gpt", "value": "A square moves."},
    ]
    out = records.rewrite_conversations(convs, 2)
    assert out[0] == convs[0] and out[2]["value"] == "<image>\n<image>\nWhat happens?"


def test_a_first_system_turn_is_a_good_record_and_gets_no_placeholders():
    """ShareGPT-style records start with a system turn: the stages keep it and use the first human turn."""
    from cv_reader.dataset import check_record

    system = {"from": "system", "value": "You are a careful observer."}
    convs = [system, {"from": "human", "value": "What happens?"}, {"from": "gpt", "value": "A square moves."}]
    check_record({"id": "s", "video": "clip.mp4", "conversations": convs}, required=("conversations",))
    out = records.rewrite_conversations(convs, 2)
    assert out[0] == system and out[1]["value"] == "<image>\n<image>\nWhat happens?"
    with_tag = [system, dict(convs[1], value="<video>\nWhat happens?"), convs[2]]
    assert records.rewrite_conversations(with_tag, 2)[1:] == out[1:]
