"""Stage-2 packs are data: each is read at its own canvas, patch grid and mosaic count, checked for
internal consistency, whatever the codec flags say (they govern only videos encoded online). Packs made
by the real Stage 1 + Stage 2 at two canvases; one training run mixes them and counts them per geometry;
chat (the input layer) reads them the same way. Evaluation: tests/test_lmms_model.py."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from train_helpers import CODEC, stage2_pack, tiny_start, train_args, write_jsonl, write_records, write_video

from llava.model.tiny import build_tiny_model
from llava.processing.media import CodecInputError, VisualProcessor
from llava.processing.video import load_codec_inputs
from llava.train import train as train_module


@pytest.fixture(scope="module")
def packs(tmp_path_factory):
    """The same clip packed at the tests' online configuration (T 8, 64 px canvas, 2 mosaics) and at
    another one (T 16, 32 px canvas, 4 mosaics), as Stage 2 writes them."""
    root = tmp_path_factory.mktemp("packs")
    write_video(root / "clip.mp4")
    big = stage2_pack(root, root / "clip.mp4", "big", frames=8, canvas=64, images=2)
    small = stage2_pack(root, root / "clip.mp4", "small", frames=16, canvas=32, images=4)
    return root, big, small


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_model("qwen2", seed=0)


def test_a_pack_is_read_at_its_own_canvas_whatever_the_codec_flags(packs, tiny):
    _, big, small = packs
    _, model, processor = tiny
    visual = VisualProcessor(processor, model.config, codec=CODEC)  # online: 64 px, T 8, 2 mosaics
    for record, (mosaics, side) in ((big, (2, 64)), (small, (4, 32))):
        got = visual.codec_pack(record["image"], record["positions_thw"])
        assert got.modalities == ["codec"] and got.images[0].shape == (3, mosaics, side, side)
        assert got.placeholder_counts == [mosaics]
        positions = np.load(record["positions_thw"])
        assert torch.equal(got.patch_positions[0], torch.as_tensor(positions).long())  # as written
        assert positions.shape == (mosaics * (side // 16) ** 2, 3)
        # chat hands packs over as a dict; the model encodes them (t on the encoder's temporal grid)
        chat = visual([{"image": record["image"], "positions_thw": record["positions_thw"]}])
        assert torch.equal(chat.images[0], got.images[0])
        features = model.encode_visual_inputs(got.images, got.modalities, got.image_sizes,
                                              got.patch_positions)
        assert features[0].shape[0] == positions.shape[0]
    # the reader's own entry point, with its default configuration (576 px canvas, T 64, 8 mosaics)
    pack = load_codec_inputs(mosaic_paths=small["image"], positions_path=small["positions_thw"])
    assert pack.mosaics.shape == (4, 32, 32, 3) and pack.num_images == 4
    assert (pack.meta["square_size"], pack.meta["patch_size"], pack.meta["num_images"]) == (32, 16, 4)
    assert pack.meta["frames"] == int(pack.positions[:, 0].max()) + 1 <= 16


def _broken_copy(record: dict, folder, mosaic=None, positions=None) -> dict:
    """A copy of a pack with one mosaic or the positions replaced."""
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i, path in enumerate(record["image"]):
        images.append(str(folder / f"m{i}.png"))
        shutil.copy(path, images[-1]) if not (mosaic and i == 1) else mosaic.save(images[-1])
    pos = folder / "positions_thw.npy"
    np.save(pos, np.load(record["positions_thw"]) if positions is None else positions)
    return dict(record, image=images, positions_thw=str(pos))


def test_a_pack_must_agree_with_itself(packs, tiny, tmp_path):
    _, _, small = packs
    _, model, processor = tiny
    visual = VisualProcessor(processor, model.config, codec=CODEC)
    good = np.load(small["positions_thw"])
    cases = {
        "not-square": (Image.new("RGB", (32, 16)), None, "m1.png: mosaic is 32x16; mosaics must be square"),
        "two-sizes": (Image.new("RGB", (64, 64)), None, "all the size of the first (32x32)"),
        "rows": (None, good[:-1], "K=15 rows but 4 mosaics of 2x2 patches need K=16"),
        "off-grid": (None, np.tile(np.int32([0, 2, 0]), (len(good), 1)),
                     "(h, w) must be < 2 (the 32px canvas in 16px patches)"),
        "beyond-the-encoder": (None, np.tile(np.int32([64, 0, 0]), (len(good), 1)),
                               "t must be < 64, the encoder's temporal RoPE grid"),
    }
    for name, (mosaic, positions, message) in cases.items():
        broken = _broken_copy(small, tmp_path / name, mosaic, positions)
        with pytest.raises(CodecInputError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
            visual.codec_pack(broken["image"], broken["positions_thw"])
        assert name in str(error.value)  # names the pack's file
    odd = tmp_path / "odd"  # a side that the encoder's 16 px patches do not tile
    odd.mkdir()
    Image.new("RGB", (40, 40)).save(odd / "m0.png")
    np.save(odd / "positions_thw.npy", np.zeros((4, 3), np.int32))
    with pytest.raises(CodecInputError, match="side 40 is not a multiple of the encoder's 16px patches"):
        visual.codec_pack([str(odd / "m0.png")], str(odd / "positions_thw.npy"))


def test_one_run_mixes_pack_geometries_and_counts_them(packs, tmp_path_factory, capsys):
    root, big, small = packs
    start = tiny_start(tmp_path_factory.mktemp("start"))
    text = write_records(tmp_path_factory.mktemp("records"))["text"]
    data = write_jsonl(root / "mixed.jsonl", [big, small, text, small])
    out = tmp_path_factory.mktemp("run")
    summary = train_module.train(train_args(*start, data, str(root), str(out / "o"),
                                            "--num_train_epochs", "1"))
    assert (summary["bad_records"], summary["records_read"]) == (0, 4)  # the 32 px packs are not bad records
    assert summary["codec_packs"] == {"2 mosaics of 64x64 px (4x4 patches of 16 px)": 1,
                                      "4 mosaics of 32x32 px (2x2 patches of 16 px)": 2}
    printed = capsys.readouterr().out
    assert ("[train] codec packs: 3 read: 2 mosaics of 64x64 px (4x4 patches of 16 px): 1, "
            "4 mosaics of 32x32 px (2x2 patches of 16 px): 2") in printed
    state = json.loads((out / "o" / "trainer_state.json").read_text())
    assert all(entry["loss"] > 0 for entry in state["log_history"] if "loss" in entry)


def test_two_ranks_count_the_packs_and_measure_the_lengths_together(packs, tmp_path_factory):
    """A real 2-process run (gloo): the grouped sampler's lengths are measured by both ranks (each its
    share, gathered) and the summary counts the packs every rank read, per geometry."""
    import deepspeed  # noqa: F401  (the dev and train extras install it)
    from train_helpers import REPO, two_process_run

    root, big, small = packs
    start = tiny_start(tmp_path_factory.mktemp("start2"))
    records = tmp_path_factory.mktemp("records2")
    text = write_records(records)["text"]
    data = write_jsonl(root / "ranks.jsonl", [big, small, text, small, big, text, small, text])
    out = tmp_path_factory.mktemp("ranks") / "o"
    argv = train_args(*start, data, str(root), str(out), "--num_train_epochs", "1",
                      "--group_by_modality_length", "True", "--use_cpu", "True", "--ddp_backend", "gloo",
                      "--deepspeed", str(REPO / "scripts" / "zero2.json"))
    result = two_process_run(records, argv)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "[train] done: 2 steps, 8 samples" in result.stdout
    assert ("[train] codec packs: 5 read: 2 mosaics of 64x64 px (4x4 patches of 16 px): 2, "
            "4 mosaics of 32x32 px (2x2 patches of 16 px): 3") in result.stdout
    assert "measured the length of 8 records" in result.stdout + result.stderr
