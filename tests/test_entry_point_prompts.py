"""Every entry point asks a checkpoint what its own processor would ask it.

The checkpoint's processor (``AutoProcessor``, ``LlavaOVProcessor``) is what users outside this project build
prompts with; inside, the entry points assemble the same parts (the template it was rendered from, its image
processor and video reader, ``VisualLayout``'s token counts, the time-instruction text). For one checkpoint
folder and one image or video question, the processor, the held-out predictor's dataset (the trainer's
sample), the chat session, the server's messages and the lmms-eval model must make exactly the same token
ids: for an image, a uniform-frames video and a codec video, with and without the time instruction a model
trained with ``--add_time_instruction`` saves.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from train_helpers import CODEC, write_jsonl, write_records
from transformers import AutoProcessor

from llava.cli_options import resolve_video_options
from llava.eval.lmms_model import LlavaOVEncoder
from llava.inference.chat import ChatSession
from llava.inference.generation import expand_prompt
from llava.model.builder import load_pretrained_model, saved_video_settings
from llava.model.resave import main as resave_main
from llava.model.tiny import save_tiny_checkpoint
from llava.processing.media import VisualProcessor
from llava.processing.prompts import tokenize_prompt
from llava.serve.messages import MediaPolicy, parse_messages
from llava.serve.protocol import UserMessage
from llava.train.arguments import DataArguments
from llava.train.data import SupervisedDataset

CASES = [("image", "frames", False), ("video", "frames", False), ("video", "codec", False),
         ("video", "frames", True), ("video", "codec", True)]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    return root, write_records(root)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny checkpoint re-saved with each case's video settings (as the trainer's final save writes them)."""
    root = tmp_path_factory.mktemp("folders")
    base = save_tiny_checkpoint(root / "base", seed=2)
    out = {}
    for mode, timed in {(mode, timed) for _, mode, timed in CASES}:
        out[mode, timed] = root / f"{mode}-{timed}"
        flags = ["--video-mode", mode, "--frames", "4", "--codec-frames", str(CODEC.sequence_length),
                 "--codec-images", str(CODEC.keep_frames_equiv), "--codec-canvas", str(CODEC.square_size)]
        assert resave_main([str(base), str(out[mode, timed]), *flags, "--time-instruction" if timed
                            else "--no-time-instruction"]) == 0
    return out


@pytest.mark.parametrize("kind, mode, timed", CASES)
def test_every_entry_point_makes_the_processors_ids(folders, media, tmp_path, kind, mode, timed):
    folder = folders[mode, timed]
    root, records = media
    record = records[kind]
    path = str(root / record[kind])
    question = record["conversations"][0]["value"].split("\n")[-1]
    tokenizer, model, image_processor, _ = load_pretrained_model(str(folder), torch_dtype=torch.float32)
    options = resolve_video_options(saved_video_settings(str(folder)), image_processor.patch_size)
    assert (options.mode, options.time_instruction) == (mode, timed)  # no flag: the saved settings

    processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": kind}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    media_kwargs = {"images": [Image.open(path)]} if kind == "image" else {"videos": [path]}
    expected = processor(text=text, **media_kwargs)["input_ids"][0].tolist()
    assert (processor.tokenizer.decode(expected).count("The video lasts for") == 1) == timed

    made = {}
    visual_processor = VisualProcessor(image_processor, model.config, options)
    data = write_jsonl(tmp_path / "data.jsonl", [record])  # the predictor: no data flag, the saved options
    dataset = SupervisedDataset(data, tokenizer, visual_processor, DataArguments(
        data_path=data, image_folder=str(root), video_folder=str(root)))
    made["predictor (the trainer's sample)"] = expand_prompt(model, *dataset.prompt(0)).tolist()

    generate, seen = model.generate, []

    def spy(input_ids, **kwargs):
        seen.append(input_ids[0].tolist())
        return generate(input_ids, **kwargs)

    model.generate = spy
    ChatSession(tokenizer, model, visual_processor(path), max_new_tokens=1).ask(question)
    made["chat session"] = seen[0]

    part = ({"type": "image_url", "image_url": {"url": path}} if kind == "image"
            else {"type": "video_url", "video_url": {"url": path}})
    user = UserMessage(role="user", content=[part, {"type": "text", "text": question}])
    parsed = parse_messages([user], model.config.conv_template, visual_processor, MediaPolicy(media_root=root))
    made["server"] = expand_prompt(model, tokenize_prompt(parsed.conversation, tokenizer), parsed.visual).tolist()

    lmms = LlavaOVEncoder(pretrained=str(folder))
    visual = lmms.processor(Image.open(path)) if kind == "image" else lmms.processor.video(path)
    made["lmms-eval model"] = expand_prompt(model, lmms._prompt(question, visual), visual).tolist()

    assert made == dict.fromkeys(made, expected)
