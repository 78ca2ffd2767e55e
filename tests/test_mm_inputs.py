"""llava.processing.media: every kind of media becomes the model inputs an independent construction gives,
through generate(), alone and batched; the (width, height) size convention end to end."""

from __future__ import annotations

import av
import cv_reader
import numpy as np
import pytest
import torch
from PIL import Image
from train_helpers import sharpened

from llava.constants import IMAGE_TOKEN_INDEX
from llava.inference.generation import prompt_batch
from llava.model.image_processing_llava import process_images
from llava.model.tiny import TINY_ENCODER, build_tiny_model
from llava.processing.conversation import get_conv_template
from llava.processing.media import (
    CodecInputError,
    ImageReadError,
    VideoOptions,
    VideoReadError,
    VisualInputs,
    VisualProcessor,
)
from llava.processing.prompts import tokenizer_image_token
from llava.processing.video import LLAVA_CODEC
from llava.sample_data import sample_video_path

PATCH = TINY_ENCODER["patch_size"]
CODEC = LLAVA_CODEC.replace(sequence_length=16, square_size=64, keep_frames_equiv=2)
ANYRES = dict(
    image_aspect_ratio="anyres", mm_patch_merge_type="spatial_unpad",
    image_grid_pinpoints=[[32, 64], [64, 32], [64, 64]], image_tile_size=32,
)


@pytest.fixture(scope="module")
def tiny():
    tokenizer, model, processor = build_tiny_model("qwen2", seed=2, tokenizer_padding_side="left")
    return tokenizer, sharpened(model), processor


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    wide = root / "wide.png"
    Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(wide)
    tall = root / "tall.jpg"
    Image.fromarray(rng.integers(0, 256, (64, 40, 3), dtype=np.uint8)).save(tall)
    return {"wide": wide, "tall": tall, "video": sample_video_path("bikes.mp4")}


def prompt(tokenizer, placeholders: int) -> torch.Tensor:
    conv = get_conv_template("qwen_1_5")
    conv.append_message(conv.roles[0], "<image>\n" * placeholders + "What is it?")
    conv.append_message(conv.roles[1], None)
    return torch.tensor(tokenizer_image_token(conv.get_prompt(), tokenizer))


def generate(model, tokenizer, ids_list, kwargs):
    """Greedy new tokens of a left-padded batch (one prompt per row), batched as the entry points batch
    (``llava.inference.generation.prompt_batch``: each prompt with its placeholders' visual inputs, in order)."""
    entries = VisualInputs(**kwargs) if kwargs else VisualInputs()
    counts, prompts, start = entries.placeholder_counts, [], 0
    for ids in ids_list:
        wanted, stop = int((ids == IMAGE_TOKEN_INDEX).sum()), start
        while wanted > 0:
            wanted, stop = wanted - counts[stop], stop + 1
        prompts.append((ids, VisualInputs(*(getattr(entries, f)[start:stop] for f in (
            "images", "modalities", "image_sizes", "patch_positions")))))
        start = stop
    batch = prompt_batch(model, tokenizer, prompts)
    batch.pop("position_ids")
    out = model.generate(**batch, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[:, batch["input_ids"].shape[1]:].tolist()


def decode_uniform_frames(path, count: int) -> list[np.ndarray]:
    """Independent of cv_reader: decode every frame with PyAV, keep ``count`` spread from first to last."""
    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    return [frames[i] for i in np.linspace(0, len(frames) - 1, count).astype(int)]


# ---------------------------------------------------------------- each kind = an independent construction
def reference_inputs(kind: str, processor, config, media):
    """What the model gets for ``kind`` when built by hand from the processor and cv_reader."""
    if kind in ("image_path", "pil"):
        image = Image.open(media["wide"]).convert("RGB")
        return process_images([image], processor, config)[0], "image", image.size, None
    if kind in ("frames_list", "video_frames"):
        frames = decode_uniform_frames(media["video"], 4)
        pixels = processor(videos=[frames], return_tensors="pt")["pixel_values_videos"][0]
        return pixels, "video", (frames[0].shape[1], frames[0].shape[0]), None
    if kind in ("video_codec", "codec_pack", "codec_patches"):
        codec = cv_reader.codec_patchify(str(media["video"]), CODEC)
        pixels = processor(images=list(codec.mosaics), do_resize=False, return_tensors="pt")["pixel_values"]
        return pixels.transpose(0, 1), "codec", (64, 64), torch.as_tensor(codec.positions).long()
    raise ValueError(kind)


def layer_inputs(kind: str, visual: VisualProcessor, media, tmp_path) -> VisualInputs:
    """The same media through the input layer."""
    if kind == "image_path":
        return visual(str(media["wide"]))
    if kind == "pil":
        return visual([Image.open(media["wide"])])
    if kind == "frames_list":  # what lmms-eval hands a model: a list of PIL frames inside the visual list
        return visual([[Image.fromarray(f) for f in decode_uniform_frames(media["video"], 4)]])
    if kind == "video_frames":
        return visual.video(media["video"], mode="frames")
    if kind == "video_codec":
        return visual(str(media["video"]))
    codec = cv_reader.codec_patchify(str(media["video"]), CODEC)
    if kind == "codec_patches":
        return visual(codec)
    paths = []
    for i, mosaic in enumerate(codec.mosaics):  # a lossless pack, as Stage 2 would lay it out
        paths.append(tmp_path / f"mosaic_{i:03d}.png")
        Image.fromarray(mosaic).save(paths[-1])
    positions = tmp_path / "positions_thw.npy"
    np.save(positions, codec.positions)
    return visual([{"mosaics": [str(p) for p in paths], "positions_thw": str(positions)}])


KINDS = ["image_path", "pil", "frames_list", "video_frames", "video_codec", "codec_patches", "codec_pack"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_equals_the_hand_built_inputs_through_generate(tiny, media, tmp_path, kind):
    tokenizer, model, processor = tiny
    options = VideoOptions("codec", frames_upbound=4, codec=CODEC)
    visual = VisualProcessor(processor, model.config, options)
    got = layer_inputs(kind, visual, media, tmp_path)
    pixels, modality, size, positions = reference_inputs(kind, processor, model.config, media)
    assert got.modalities == [modality] and got.image_sizes == [size]
    torch.testing.assert_close(got.images[0], pixels, rtol=0, atol=0)
    if positions is None:
        assert got.patch_positions == [None]
    else:
        assert torch.equal(got.patch_positions[0], positions)
    ids = [prompt(tokenizer, got.num_placeholders)]
    assert got.num_placeholders == (CODEC.keep_frames_equiv if modality == "codec" else 1)
    by_hand = dict(images=[pixels], modalities=[modality], image_sizes=[size], patch_positions=[positions])
    expected = generate(model, tokenizer, ids, by_hand)
    assert generate(model, tokenizer, ids, got.model_kwargs()) == expected
    assert len(set(expected[0])) > 1


def test_anyres_image_equals_process_images(media):
    tokenizer, model, processor = build_tiny_model("qwen2", seed=2, **ANYRES)
    got = VisualProcessor(processor, model.config).image(media["tall"])
    image = Image.open(media["tall"]).convert("RGB")
    expected = process_images([image], processor, model.config)[0]
    assert got.images[0].shape == (1 + 4, 3, 32, 32)  # base view + 2 x 2 tiles of the 64 x 64 pinpoint
    torch.testing.assert_close(got.images[0], expected, rtol=0, atol=0)
    assert got.image_sizes == [(40, 64)]


def test_a_batch_of_every_kind_equals_each_sample_alone(tiny, media, tmp_path):
    """Batched generate (left padding, mixed kinds and placeholder counts) = one sample at a time."""
    tokenizer, model, processor = tiny
    visual = VisualProcessor(processor, model.config, video_mode="codec", frames_upbound=4, codec=CODEC)
    samples = [
        visual([str(media["wide"]), str(media["tall"])]),  # two images in one prompt
        VisualInputs(),  # text only
        visual.video(media["video"], mode="frames"),
        layer_inputs("codec_pack", visual, media, tmp_path),
        visual(str(media["video"])),  # online codec
    ]
    ids = [prompt(tokenizer, sample.num_placeholders) for sample in samples]
    alone = [generate(model, tokenizer, [i], sample.model_kwargs())[0] for i, sample in zip(ids, samples)]
    together = generate(model, tokenizer, ids, VisualInputs.concat(samples).model_kwargs())
    assert together == alone
    assert VisualInputs.concat(samples).modalities == ["image", "image", "video", "codec", "codec"]


def test_dispatch_of_lmms_eval_style_visual_lists(tiny, media):
    tokenizer, model, processor = tiny
    visual = VisualProcessor(processor, model.config, video_mode="frames", frames_upbound=3)
    frames = [Image.new("RGB", (32, 16), (i * 40, 0, 0)) for i in range(3)]
    clip = np.zeros((2, 16, 32, 3), np.uint8)
    got = visual([Image.open(media["wide"]), str(media["tall"]), str(media["video"]), frames, clip])
    assert got.modalities == ["image", "image", "video", "video", "video"]
    assert [tuple(t.shape) for t in got.images[2:]] == [(3, 3, 32, 96), (3, 3, 16, 32), (3, 2, 16, 32)]
    assert visual(None).model_kwargs() == {} and len(visual([])) == 0
    with pytest.raises(ValueError, match="visual 1: unsupported int"):
        visual([Image.open(media["wide"]), 7])


def test_visual_inputs_move_to_a_device(tiny, media):
    tokenizer, model, processor = tiny
    moved = VisualProcessor(processor, model.config, codec=CODEC)(str(media["video"])).to("meta")
    assert moved.images[0].device.type == "meta" and moved.patch_positions[0].device.type == "meta"


# ---------------------------------------------------------------- the size convention
def test_size_convention_from_processor_to_unpadded_anyres_grid(media):
    """A non-square image through anyres + spatial_unpad: the processor's image_sizes, forwarded as
    is, give the token count and unpadded grid computed by hand.

    80 x 48 image, pinpoints 32 x 64 / 64 x 32 / 64 x 64 in 32 px tiles: 64 x 64 keeps the most
    pixels (64 x 38), so 2 x 2 tiles of 2 x 2 patches make a 4 x 4 feature grid. The content
    is 48 * 4 / 80 = 2.4 -> 2 rows high, so rows 1..2 stay: 2 rows x 4 columns + a newline per
    row, after the 2 x 2 base view: 4 + 2 * (4 + 1) = 14 tokens. Read as (height, width), the
    size would keep 4 rows x 2 columns: 4 + 4 * 3 = 16.
    """
    _, model, processor = build_tiny_model("qwen2", seed=4, **ANYRES)
    image = Image.open(media["wide"]).convert("RGB")
    sizes = processor(images=[image])["image_sizes"].tolist()
    assert sizes == [[80, 48]]  # (width, height), the same as image.size
    tiles = process_images([image], processor, model.config)[0]
    with torch.no_grad():
        features = model.encode_visual_inputs([tiles], ["image"], image_sizes=[tuple(sizes[0])])[0]
        assert features.shape[0] == 14
        swapped = model.encode_visual_inputs([tiles], ["image"], image_sizes=[(48, 80)])[0]
        assert swapped.shape[0] == 16
        # Hand-placed grid: each tile alone gives its 2 x 2 projected tokens (+ a newline).
        per_tile = [model.encode_visual_inputs([tile], ["image"])[0][:4] for tile in tiles[1:]]
        newline = model.get_model().image_newline
        expected = [model.encode_visual_inputs([tiles[0]], ["image"])[0][:4]]
        for row in (1, 2):  # rows of the 4 x 4 grid that survive unpadding
            for col in range(4):
                tile = per_tile[(row // 2) * 2 + col // 2]
                expected.append(tile[(row % 2) * 2 + col % 2][None])
            expected.append(newline[None])
        torch.testing.assert_close(features, torch.cat(expected), atol=1e-5, rtol=1e-5)
    through_layer = VisualProcessor(processor, model.config).image(image)
    assert through_layer.image_sizes == [tuple(sizes[0])]


# ---------------------------------------------------------------- failures
def test_unreadable_media_name_the_file(tiny, tmp_path):
    tokenizer, model, processor = tiny
    visual = VisualProcessor(processor, model.config, codec=CODEC)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="broken.png: cannot read image"):
        visual(str(broken))
    with pytest.raises(VideoReadError, match="missing.mp4: file not found"):
        visual(str(tmp_path / "missing.mp4"))
    with pytest.raises(CodecInputError, match="m.png: mosaic image not found"):
        visual([{"mosaics": [str(tmp_path / "m.png")], "positions_thw": str(tmp_path / "positions.npy")}])
    mosaic = tmp_path / "mosaic.png"
    Image.new("RGB", (64, 64)).save(mosaic)
    with pytest.raises(CodecInputError, match="positions.npy: positions file not found"):
        visual.codec_pack([mosaic], tmp_path / "positions.npy")


def test_codec_patch_size_must_match_the_encoder(tiny, media):
    tokenizer, model, processor = tiny
    visual = VisualProcessor(processor, model.config, codec=CODEC.replace(patch_size=8))
    with pytest.raises(ValueError, match="codec configuration cuts 8px patches but the encoder's are 16px"):
        visual(str(media["video"]))
    with pytest.raises(ValueError, match="video mode must be one of"):
        VideoOptions(mode="dense")


def test_the_model_names_the_video_layout(tiny):
    tokenizer, model, processor = tiny
    frames_first = torch.zeros(4, 3, PATCH, PATCH)  # [T, C, H, W], the old layout
    with pytest.raises(ValueError, match=r"must be \[C=3, frames, H, W\].*looks like \[T, C, H, W\]"):
        model.encode_visual_inputs([frames_first], ["video"])


# ---------------------------------------------------------------- the LLaVA codec configuration
def test_stage_packs_with_the_llava_preset_are_the_online_codec_inputs(tiny, tmp_path):
    """Stage 1 + Stage 2 with --preset llava write the patches codec_patchify computes online with
    the default (LLaVA) configuration; the input layer reads the pack with that same default."""
    import json

    from cv_reader import stage1, stage2

    video = sample_video_path("carphone_pristine.mp4")
    dataset = tmp_path / "videos.jsonl"
    dataset.write_text(json.dumps({"id": "c", "video": str(video), "conversations": [
        {"from": "human", "value": "<video>\nWhat happens?"}, {"from": "gpt", "value": "A call."}]}) + "\n")
    assert stage1.main(["--dataset_path", str(dataset), "--out_root", str(tmp_path / "s1"), "--preset", "llava",
                        "--num_workers", "1"]) == 0
    meta = json.loads(next((tmp_path / "s1").glob("*.meta.json")).read_text())
    assert (meta["padding_policy"], meta["keep_first_full_frame"], meta["K"]) == ("zero", True, 8 * 36 * 36)
    assert stage2.main(["--input_dataset", str(dataset), "--out_jsonl", str(tmp_path / "packs.jsonl"),
                        "--visidx_root", str(tmp_path / "s1"), "--out_image_root", str(tmp_path / "img"),
                        "--preset", "llava"]) == 0
    record = json.loads((tmp_path / "packs.jsonl").read_text())
    online = cv_reader.codec_patchify(str(video))
    np.testing.assert_array_equal(np.load(record["positions_thw"]), online.positions)

    tokenizer, model, processor = tiny
    packed = VisualProcessor(processor, model.config)([record])  # default codec configuration
    assert torch.equal(packed.patch_positions[0], torch.as_tensor(online.positions).long())
    assert packed.images[0].shape == (3, 8, 576, 576)  # JPEG mosaics: pixels close to the online ones
    direct = VisualProcessor(processor, model.config).codec(online).images[0]
    assert (packed.images[0] - direct).abs().mean() < 0.05

    # The upstream preset (the default) stays the upstream CLI's; explicit flags beat the preset.
    stage1.main(["--dataset_path", str(dataset), "--out_root", str(tmp_path / "up"), "--num_workers", "1",
                 "--sequence_length", "8"])
    assert json.loads(next((tmp_path / "up").glob("*.meta.json")).read_text())["padding_policy"] == "exclude"
    stage1.main(["--dataset_path", str(dataset), "--out_root", str(tmp_path / "mix"), "--num_workers", "1",
                 "--preset", "llava", "--sequence_length", "8", "--no-keep_first_full_frame"])
    meta = json.loads(next((tmp_path / "mix").glob("*.meta.json")).read_text())
    assert (meta["T"], meta["padding_policy"], meta["keep_first_full_frame"]) == (8, "zero", False)


def test_images_as_one_clip_take_one_placeholder_each(tiny):
    """Upstream's records with 8 images and no positions_thw: one clip at t = 0, 9, ..., 63."""
    tokenizer, model, processor = tiny
    frames = [Image.new("RGB", (32, 16), (30 * i, 0, 0)) for i in range(8)]
    got = VisualProcessor(processor, model.config).clip(frames)
    assert got.modalities == ["codec"] and got.images[0].shape == (3, 8, 16, 32)
    assert got.placeholder_counts == [8] and got.placeholder_text().count("<image>") == 8
    positions = got.patch_positions[0]
    assert positions.shape == (8 * 1 * 2, 3)
    assert positions[::2, 0].tolist() == [0, 9, 18, 27, 36, 45, 54, 63]
    assert positions[:2, 1:].tolist() == [[0, 0], [0, 1]]
    ids = prompt(tokenizer, got.num_placeholders)
    out = generate(model, tokenizer, [ids], got.model_kwargs())
    assert len(out[0]) == 5
