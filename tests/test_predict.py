"""llava.eval.predict: held-out records answered with the training pipeline's prompts;
batched = each alone."""

from __future__ import annotations

import json

import pytest
from test_preprocess import decode
from train_helpers import scripted, write_jsonl, write_records

from llava.eval import predict
from llava.model.builder import load_pretrained_model
from llava.model.tiny import save_tiny_checkpoint
from llava.processing.media import VisualProcessor
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
                         "--max-new-tokens", "6", "--images-as-clip", "8", *PREDICT_CODEC, *extra])
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
                              codec_images=2, images_as_clip=8)
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


def _records(setup) -> dict:
    """The records of ``setup``'s held-out file, by id (one of every kind, written once for the module)."""
    return {r["id"]: r for r in map(json.loads, open(setup[2]).read().splitlines())}


def _dataset(setup, data: str, template: str = "qwen_1_5", **data_args):
    root, checkpoint, _ = setup
    tokenizer, model, processor, _ = load_pretrained_model(checkpoint)
    folder = str(root / "records")
    args = DataArguments(data_path=data, image_folder=folder, video_folder=folder, codec_frames=8,
                         codec_canvas=64, codec_images=2, **data_args)
    visual = VisualProcessor(processor, model.config, video_options(args, processor.patch_size))
    return SupervisedDataset(data, tokenizer, visual, args, template)


def test_system_turns_and_a_moved_image_are_the_same_in_training_and_in_the_prompt(setup):
    """A ShareGPT-style record (first turn "system", the <image> mid-question) is used, not a bad record."""
    root = setup[0]
    system = {"from": "system", "value": "You are a pirate."}
    records = [
        {"id": "sys", "image": "image0.png", "conversations": [
            system, {"from": "human", "value": "What is <image> this?"}, {"from": "gpt", "value": "Noise."}]},
        {"id": "late-sys", "conversations": [
            {"from": "human", "value": "Hi"}, system, {"from": "gpt", "value": "Ahoy."}]},
    ]
    dataset = _dataset(setup, write_jsonl(root / "system.jsonl", records))
    prompt, visual = dataset.prompt(0)
    sample = dataset[0]
    assert sample.bad == [] and len(visual) == 1
    assert prompt.tolist() == sample.input_ids[: len(prompt)].tolist()
    assert decode(dataset.tokenizer, prompt) == (
        "<|im_start|>system\nYou are a pirate.<|im_end|>\n"
        "<|im_start|>user\n<image>\nWhat is  this?<|im_end|>\n<|im_start|>assistant\n")
    late = dataset[1]  # replaced by the next good record, reported by its own id
    assert [b.id for b in late.bad] == ["late-sys"] and "turn 1 is a system turn" in late.bad[0].reason


def test_eight_images_stay_eight_images_unless_asked_for_a_clip(setup):
    """Upstream never turns images into a clip; --images_as_clip 8 opts in to its 8-frame video records."""
    root = setup[0]
    data = write_jsonl(root / "eight.jsonl", [_records(setup)["clip"]])
    assert DataArguments(data_path=data).images_as_clip == 0
    as_images = _dataset(setup, data)[0]
    assert as_images.bad == [] and as_images.visual.modalities == ["image"] * 8
    as_clip = _dataset(setup, data, images_as_clip=8)[0]
    assert as_clip.bad == [] and as_clip.visual.modalities == ["codec"]
    assert as_clip.visual.num_placeholders == 8
    assert as_images.input_ids.tolist() == as_clip.input_ids.tolist()  # the same 8 placeholders either way
    assert _dataset(setup, data).modality_and_length(0)[0] == "image"


# What the scripted model writes, and the answer each template's stop string leaves of it.
SCRIPT = "Yes.\nNo<|im_end|>More\nAgain"
STOPPED = {"qwen_1_5": "Yes.\nNo", "qwen3": "Yes.\nNo", "plain": "Yes."}


@pytest.mark.parametrize("template", sorted(STOPPED))
def test_answers_stop_where_the_template_says(setup, monkeypatch, template):
    root, checkpoint, _ = setup
    tokenizer, model, processor, _ = load_pretrained_model(checkpoint)
    monkeypatch.setattr(predict, "load_checkpoint",
                        lambda args: (tokenizer, scripted(model, tokenizer, SCRIPT), processor))
    records = _records(setup)
    code, answers = _run(setup, f"stop-{template}.jsonl", "--conv-mode", template, "--max-new-tokens", "12",
                         "--data", write_jsonl(root / "stop.jsonl", [records["text"], records["image"]]))
    assert code == 0
    assert [a["prediction"] for a in answers] == [STOPPED[template]] * 2
