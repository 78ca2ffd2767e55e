"""--add_time_instruction: upstream's time instruction (the video's length and the sampled frames' times)
after the video's placeholders in the turn that holds them, in frames mode and in codec mode (the times
of the codec's T sampled frames), checked on the rendered prompt of training and of the predictor."""

from __future__ import annotations

import logging

import pytest
import torch
from train_helpers import CODEC, conversation, write_jsonl, write_records

from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.tiny import build_tiny_model
from llava.processing.media import VisualProcessor
from llava.train.arguments import DataArguments
from llava.train.data import SupervisedDataset, video_options

# write_video: 16 frames at 12 fps -> 1.33 s
FRAMES_4 = "0.00s,0.42s,0.83s,1.25s"  # frames 0, 5, 10, 15 of 16
CODEC_8 = "0.00s,0.17s,0.33s,0.50s,0.67s,0.83s,1.00s,1.25s"  # frames 0, 2, 4, 6, 8, 10, 12, 15


def instruction(frames: int, times: str) -> str:
    return (f"The video lasts for 1.33 seconds, and {frames} frames are uniformly sampled from it. "
            f"These frames are located at {times}.Please answer the following questions related to "
            "this video.")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    return root, write_records(root)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_model("qwen2", seed=0)


def _dataset(tiny, records, items, tmp_path, **data):
    tokenizer, model, processor = tiny
    root, _ = records
    path = write_jsonl(tmp_path / "data.jsonl", items)
    data_args = DataArguments(data_path=path, image_folder=str(root), video_folder=str(root),
                              codec_frames=CODEC.sequence_length, codec_images=CODEC.keep_frames_equiv,
                              codec_canvas=CODEC.square_size, **data)
    visual = VisualProcessor(processor, model.config, video_options(data_args, processor.patch_size))
    return SupervisedDataset(path, tokenizer, visual, data_args)


def rendered(tokenizer, ids: torch.Tensor) -> str:
    """The prompt text of ``ids`` with each placeholder written back as ``<image>``."""
    ids, text, run = ids.tolist(), [], []
    for token in ids + [None]:
        if token is None or token == IMAGE_TOKEN_INDEX:
            text.append(tokenizer.decode(run))
            run = []
            if token is not None:
                text.append("<image>")
        else:
            run.append(token)
    return "".join(text)


@pytest.mark.parametrize("mode, expected", [
    ("frames", "<image>\n" + instruction(4, FRAMES_4) + "\n\nWhich way?"),
    ("codec", "<image>\n<image>\n" + instruction(8, CODEC_8) + "\n\nWhich way?"),
])
def test_the_time_instruction_follows_the_video_placeholders(tiny, records, tmp_path, mode, expected):
    tokenizer = tiny[0]
    _, by_kind = records
    video = by_kind["video"]  # "<image>\nWhich way?" -> "Right."
    later = dict(video, id="later", conversations=[*conversation("Hello.", "Hi."),
                                                   *conversation("<video>\nWhich way?", "Right.")])
    dataset = _dataset(tiny, records, [video, later, by_kind["text"]], tmp_path, video_mode=mode,
                       frames_upbound=4, add_time_instruction=True)
    sample = dataset[0]
    assert sample.bad == []
    assert f"<|im_start|>user\n{expected}<|im_end|>\n<|im_start|>assistant\nRight." in rendered(
        tokenizer, sample.input_ids)
    prompt, _ = dataset.prompt(0)  # the held-out predictor asks the question as training shows it
    assert rendered(tokenizer, prompt).endswith(f"<|im_start|>user\n{expected}<|im_end|>\n"
                                                "<|im_start|>assistant\n")
    second = rendered(tokenizer, dataset[1].input_ids)  # in the turn that holds the video
    assert "user\nHello.<|im_end|>" in second and f"user\n{expected}<|im_end|>" in second
    plain = _dataset(tiny, records, [video], tmp_path, video_mode=mode, frames_upbound=4)
    assert "The video lasts" not in rendered(tokenizer, plain[0].input_ids)  # off by default


def test_packs_record_no_frame_times_and_say_so(tiny, records, tmp_path, caplog):
    """A Stage-2 pack is an ``image`` record without frame times: like upstream's image records it gets
    no time instruction, and the dataset says how many such records the flag does not reach."""
    tokenizer = tiny[0]
    _, by_kind = records
    with caplog.at_level(logging.WARNING, logger="llava.train"):
        dataset = _dataset(tiny, records, [by_kind["codec"], by_kind["video"]], tmp_path,
                           add_time_instruction=True)
    assert "The video lasts" not in rendered(tokenizer, dataset[0].input_ids)
    assert "The video lasts" in rendered(tokenizer, dataset[1].input_ids)
    assert "--add_time_instruction: 1 of 2 records are Stage-2 packs" in caplog.text


def test_the_flag_parses_in_both_video_modes(tmp_path):
    from llava.train import train as train_module

    for mode in ("frames", "codec"):
        _, data_args, _ = train_module.parse_args(["--model_name_or_path", "m", "--data_path", "d",
                                                   "--output_dir", str(tmp_path), "--report_to", "none",
                                                   "--video_mode", mode, "--add_time_instruction", "True"])
        assert data_args.add_time_instruction and data_args.video_mode == mode

