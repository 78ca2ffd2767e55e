"""No step without supervision. Every sample's length is known before batching (visual tokens from the
media's geometry, text from the tokenizer) and equals what the model splices; a sample that cannot keep
its visual tokens and its first answer within --model_max_length is skipped and counted, never truncated
into a label-free sample; a run of mostly such samples stops; the grouped sampler sees the true lengths;
the loss summary spans only logged steps that had supervised tokens."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from train_helpers import (
    CODEC,
    conversation,
    stage2_pack,
    tiny_start,
    train_args,
    write_jsonl,
    write_records,
)

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.tiny import build_tiny_model
from llava.processing.media import VideoOptions, VisualProcessor
from llava.train import train as train_module
from llava.train.data import DataCollator

OVER_LENGTH = "raise --model_max_length or lower the codec mosaics"
PINPOINTS = [[32, 64], [64, 32], [64, 64]]
MODEL_CONFIGS = {
    "native": {},
    "pad": dict(image_aspect_ratio="pad"),
    "spatial-merge": dict(mm_projector_type="spatial_merge"),
    "pooled-video": dict(mm_spatial_pool_stride=2),
    "newline-one-token": dict(mm_patch_merge_type="spatial_unpad", mm_newline_position="one_token"),
    "anyres-unpad": dict(image_aspect_ratio="anyres", mm_patch_merge_type="spatial_unpad",
                         image_grid_pinpoints=PINPOINTS, image_tile_size=32),
    "anyres-max": dict(image_aspect_ratio="anyres_max_1", mm_patch_merge_type="spatial_unpad",
                       image_grid_pinpoints=PINPOINTS, image_tile_size=32),
}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    by_kind = write_records(root)
    Image.new("RGB", (200, 30), (9, 99, 199)).save(root / "wide.png")
    by_kind["wide"] = dict(by_kind["image"], id="wide", image="wide.png")
    small = stage2_pack(root, root / "clip.mp4", "small", frames=16, canvas=32, images=4)
    by_kind["small-pack"] = dict(small, id="small-pack")
    return root, by_kind


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    return tiny_start(tmp_path_factory.mktemp("start"))


@pytest.mark.parametrize("name", list(MODEL_CONFIGS))
def test_token_counts_from_geometry_equal_the_models(records, name):
    """The input layer's count of a visual input's tokens (shapes and positions only) is what the model
    splices, for every kind of input and every arrangement the config can ask for; an image's shape comes
    from its size alone (read from the header)."""
    root, by_kind = records
    _, model, processor = build_tiny_model("qwen2", seed=0, **MODEL_CONFIGS[name])
    for mode in ("codec", "frames"):
        visual = VisualProcessor(processor, model.config, VideoOptions(mode, frames_upbound=3, codec=CODEC))
        small = by_kind["small-pack"]
        inputs = [visual(str(root / f"image{i}.png")) for i in range(3)] + [
            visual(str(root / "wide.png")), visual(str(root / "clip.mp4")),
            visual.codec_pack(small["image"], small["positions_thw"]),
            visual.clip([str(root / f"frame{i}.png") for i in range(3)]),
        ]
        for got in inputs:
            features = model.encode_visual_inputs(got.images, got.modalities, got.image_sizes,
                                                  got.patch_positions)
            assert visual.token_count(got) == sum(f.shape[0] for f in features), (name, mode, got.modalities)
        for i, size in enumerate([(80, 48), (48, 64), (64, 64), (200, 30)]):
            assert visual.image_shape(size) == tuple(inputs[i].images[0].shape), (name, size)


def _spliced_lengths(trainer, indices) -> list[int]:
    """What the model really trains on: each built sample's length once collated (visual tokens in place), checked
    against what the model makes of its visual inputs."""
    dataset, model = trainer.train_dataset, trainer.model
    collate = DataCollator.for_model(trainer.processing_class, model)
    lengths = []
    with torch.no_grad():
        for i in indices:
            batch = collate([dataset[i]])
            embeds = model.scatter_visual_tokens(batch["input_ids"], batch.get("images"), batch.get("modalities"),
                                                 batch.get("image_sizes"), batch.get("patch_positions"))
            lengths.append(embeds.shape[1])
    return lengths


def test_the_grouped_sampler_sees_the_true_lengths(start, records, tmp_path):
    root, by_kind = records
    kinds = ["text", "image", "wide", "images", "codec", "small-pack", "clip", "video"]
    data = write_jsonl(tmp_path / "kinds.jsonl", [by_kind[k] for k in kinds])
    trainer, _ = train_module.setup(train_args(*start, data, str(root), str(tmp_path / "o"),
                                               "--group_by_modality_length", "True", "--max_steps", "1",
                                               "--images_as_clip", "8"))
    sampler = trainer._get_train_sampler()
    expected = _spliced_lengths(trainer, range(len(kinds)))
    assert sampler.lengths == expected
    assert sampler.modalities == ["text", "image", "image", "image", "video", "video", "video", "video"]
    assert expected[4] != expected[5]  # a 64 px pack and a 32 px one: each counted at its own canvas


def test_an_over_length_video_is_skipped_and_counted_never_trained_label_free(start, records, tmp_path,
                                                                             capsys):
    """The clip's codec input (2 mosaics of 4x4 patches) and its question leave no room for the answer in
    64 tokens: the record is skipped (replaced by the next one, as a bad record is) and counted; every
    logged step had supervised tokens, so the summary never starts at loss 0."""
    root, by_kind = records
    items = [by_kind["video"], *[dict(by_kind["text"], id=f"text{i}") for i in range(5)]]
    data = write_jsonl(tmp_path / "over.jsonl", items)
    out = tmp_path / "o"
    summary = train_module.train(train_args(*start, data, str(root), str(out), "--model_max_length", "64",
                                            "--per_device_train_batch_size", "1", "--max_steps", "6"))
    assert (summary["over_length"], summary["bad_records"], summary["records_read"]) == (1, 0, 6)
    trainer_state = json.loads((out / "trainer_state.json").read_text())
    logged = [e for e in trainer_state["log_history"] if "loss" in e]
    assert len(logged) == 6 and all(e["loss"] > 0 and e["supervised_tokens"] > 0 for e in logged)
    longest = summary["longest"]
    assert longest == 81  # 49 text tokens + 32 visual ones
    printed = capsys.readouterr()
    assert f"[train] over-length: 1 samples, longest {longest} tokens; {OVER_LENGTH}" in printed.out
    assert summary["first_loss"] == logged[0]["loss"] > 0


def test_a_sample_keeps_its_visual_tokens_and_first_answer_or_is_over_length(start, records, tmp_path):
    """Truncation only cuts text after the visual tokens and the first answer: a second turn that does not
    fit is cut; a sample whose first answer does not fit is over-length (no label-free sample is built)."""
    from llava.train.data import OverLength

    root, by_kind = records
    two_turns = dict(by_kind["video"], id="two-turns", conversations=[
        *conversation("<image>\nWhich way?", "Right."), *conversation("And then? " * 20, "Left. " * 20)])
    data = write_jsonl(tmp_path / "turns.jsonl", [two_turns, by_kind["text"]])
    for limit, fits in ((96, True), (64, False)):
        trainer, _ = train_module.setup(train_args(*start, data, str(root), str(tmp_path / f"o{limit}"),
                                                   "--model_max_length", str(limit), "--max_steps", "1"))
        dataset = trainer.train_dataset
        if not fits:
            with pytest.raises(OverLength, match=rf"first answer \(80\) exceed --model_max_length {limit}"):
                dataset.build(0)
            sample = dataset[0]  # replaced by the next record, reported by its own index
            assert [o.id for o in sample.over_length] == ["two-turns"] and sample.visual.modalities == []
            continue
        sample = dataset[0]
        assert sample.over_length == [] and sample.visual.modalities == ["codec"]
        (length,) = _spliced_lengths(trainer, [0])
        assert length == limit  # cut to the limit, visual tokens whole
        supervised = trainer.processing_class.decode(sample.labels[sample.labels != IGNORE_INDEX])
        assert supervised.startswith("Right.<|im_end|>")  # the first answer is kept
        assert int((sample.input_ids == IMAGE_TOKEN_INDEX).sum()) == 2


def test_a_run_of_mostly_over_length_samples_stops_with_the_message(start, records, tmp_path, capsys):
    root, by_kind = records
    items = [dict(by_kind["video"], id=f"video{i}") for i in range(4)] + [by_kind["text"]]
    data = write_jsonl(tmp_path / "mostly.jsonl", items)
    args = train_args(*start, data, str(root), str(tmp_path / "o"), "--model_max_length", "64",
                      "--per_device_train_batch_size", "1", "--max_steps", "5")
    assert train_module.main(args) == 3
    err = capsys.readouterr().err
    assert f"over-length: 4 samples, longest 81 tokens; {OVER_LENGTH}" in err


def test_the_loss_summary_spans_steps_with_supervised_tokens():
    from llava.train.train import loss_span

    history = [{"loss": 0.0, "supervised_tokens": 0}, {"loss": 5.0, "supervised_tokens": 12},
               {"learning_rate": 0.1}, {"loss": 2.0, "supervised_tokens": 9},
               {"loss": 0.0, "supervised_tokens": 0}, {"train_loss": 1.0}]
    assert loss_span(history) == (5.0, 2.0)
    assert loss_span([{"loss": 3.0}, {"loss": 1.0}]) == (3.0, 1.0)  # logs written before the count existed
    assert loss_span([{"loss": 0.0, "supervised_tokens": 0}]) == (None, None)
