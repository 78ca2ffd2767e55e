"""llava.eval.predict: held-out records answered with the training pipeline's prompts;
batched = each alone."""

from __future__ import annotations

import json

import pytest
from train_helpers import write_jsonl, write_records

from llava.eval import predict
from llava.mm_inputs import VisualProcessor
from llava.model.builder import load_pretrained_model
from llava.model.tiny import save_tiny_checkpoint
from llava.train.arguments import DataArguments
from llava.train.data import SupervisedDataset, video_options

KINDS = ("text", "image", "images", "codec", "clip", "video")
PREDICT_CODEC = ["--codec-frames", "8", "--codec-canvas", "64", "--codec-images", "2"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    checkpoint = save_tiny_checkpoint(root / "checkpoint")
    records = write_records(root / "records")
    broken = {"id": "broken", "image": "missing.png", "conversations": records["image"]["conversations"]}
    data = write_jsonl(root / "heldout.jsonl", [records[kind] for kind in KINDS] + [broken])
    return root, str(checkpoint), data


def _run(setup, out_name, *extra):
    root, checkpoint, data = setup
    out = root / out_name
    code = predict.main(["--model-path", checkpoint, "--data", data, "--out", str(out), "--image-folder",
                         str(root / "records"), "--video-folder", str(root / "records"),
                         "--max-new-tokens", "6", *PREDICT_CODEC, *extra])
    return code, [json.loads(line) for line in out.read_text().splitlines()]


def test_batched_answers_equal_one_at_a_time_and_bad_records_are_skipped(setup, capsys):
    code, batched = _run(setup, "batched.jsonl", "--batch-size", "4")
    assert code == 0
    reported = capsys.readouterr()
    assert "answered 6 records (1 skipped)" in reported.out
    assert "heldout.jsonl:7 (id broken)" in reported.err and "missing.png" in reported.err
    code, alone = _run(setup, "alone.jsonl", "--batch-size", "1")
    assert code == 0
    assert [p["id"] for p in batched] == list(KINDS)
    assert batched == alone
    assert all(isinstance(p["prediction"], str) for p in batched)


def test_the_prompt_is_the_training_sample_up_to_the_reply(setup):
    """The model is asked exactly what it was trained on: prompt ids are a prefix of the training ids."""
    root, checkpoint, data = setup
    tokenizer, model, processor, _ = load_pretrained_model(checkpoint)
    data_args = DataArguments(data_path=data, image_folder=str(root / "records"),
                              video_folder=str(root / "records"), codec_frames=8, codec_canvas=64,
                              codec_images=2)
    visual = VisualProcessor(processor, model.config, video_options(data_args, processor.patch_size))
    dataset = SupervisedDataset(data, tokenizer, visual, data_args, "qwen_1_5")
    for i in range(len(KINDS)):
        prompt, _ = dataset.prompt(i)
        sample = dataset.build(i)
        assert prompt.tolist() == sample.input_ids[: len(prompt)].tolist(), KINDS[i]
        assert (sample.labels[: len(prompt)] == -100).all(), "the prompt is never supervised"


def test_an_unreadable_dataset_is_a_clear_error(setup, tmp_path, capsys):
    _, checkpoint, _ = setup
    code = predict.main(["--model-path", checkpoint, "--data", str(tmp_path / "none.jsonl"), "--out",
                         str(tmp_path / "p.jsonl")])
    assert code == 2
    assert "none.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "p.jsonl").exists()
