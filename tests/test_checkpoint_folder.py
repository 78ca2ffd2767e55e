"""Checkpoint folders: the processor saved with them, folders written before it still load, the re-save command.

The processor must make the ids the project's own prompt path makes (``tokenize_prompt`` + expansion), and
its visual inputs the ones ``llava.processing.media`` makes; a folder of the old layout (no processor, no code, no
image token in the config) loads and answers as the same weights in the new layout, and
``python -m llava.model.resave`` brings it to the new layout.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from llava.inference.generation import expand_prompt
from llava.model.builder import load_pretrained_model, saved_video_settings
from llava.model.folder import CODE_FILES
from llava.model.resave import main as resave_main
from llava.model.tiny import save_tiny_checkpoint
from llava.processing.conversation import get_conv_template
from llava.processing.media import VisualProcessor
from llava.processing.prompts import tokenize_prompt

QUESTION = "What is in the picture?"
NEW_FILES = ("processor_config.json", "README.md", "modeling_llava_qwen.py", *CODE_FILES)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    new = save_tiny_checkpoint(root / "new", seed=1, initializer_range=0.2, tie_word_embeddings=False)
    old = root / "old"
    shutil.copytree(new, old)
    for name in NEW_FILES:
        (old / name).unlink()
    config = json.loads((old / "config.json").read_text())
    for key in ("auto_map", "image_token_id", "conv_template"):
        config.pop(key)
    (old / "config.json").write_text(json.dumps(config))
    image = root / "photo.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(image)
    return root, new, old, image


def cli_answer(checkpoint, image) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "llava.serve.cli", "--model-path", str(checkpoint), "--image", str(image),
         "--temperature", "0", "--max-new-tokens", "8"],
        input=QUESTION + "\n", capture_output=True, text=True, timeout=300, check=True,
    )
    return result.stdout.split("assistant: ", 1)[1].strip()


def test_the_processor_makes_the_projects_ids_and_inputs(folders):
    _, new, _, image = folders
    tokenizer, model, image_processor, _ = load_pretrained_model(str(new), torch_dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(str(new), trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=prompt, images=[Image.open(image)])

    conv = get_conv_template("qwen_1_5")
    conv.append_message(conv.roles[0], "<image>\n" + QUESTION)
    conv.append_message(conv.roles[1], None)
    assert prompt == conv.get_prompt()  # the chat template writes the placeholder on its own line, as trained
    visual = VisualProcessor(image_processor, model.config).image(image)
    assert inputs["input_ids"][0].tolist() == expand_prompt(model, tokenize_prompt(conv, tokenizer), visual).tolist()
    torch.testing.assert_close(inputs["images"][0], visual.images[0], rtol=0, atol=0)
    assert inputs["image_sizes"] == visual.image_sizes and inputs["modalities"] == ["image"]


def test_the_processor_refuses_media_without_a_placeholder_and_placeholders_without_media(folders):
    _, new, _, image = folders
    processor = AutoProcessor.from_pretrained(str(new), trust_remote_code=True)
    with pytest.raises(ValueError, match="without a placeholder"):
        processor(text="no placeholder here", images=[Image.open(image)])
    with pytest.raises(ValueError, match="more <image> placeholders than images"):
        processor(text="<image>\n<image>\ntwo", images=[Image.open(image)])


def test_a_folder_of_the_old_layout_loads_and_answers_as_the_new_one(folders):
    _, new, old, image = folders
    tokenizer, model, _, _ = load_pretrained_model(str(old), torch_dtype=torch.float32)
    assert model.config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert saved_video_settings(old) == {}
    answer = cli_answer(old, image)
    assert answer and answer == cli_answer(new, image)


def test_resave_writes_the_new_layout_with_the_given_video_settings(folders, capsys):
    root, new, old, image = folders
    out = root / "resaved"
    assert resave_main([str(old), str(out), "--video-mode", "frames", "--frames", "8"]) == 0
    assert f"re-saved {old} as {out}" in capsys.readouterr().out
    files = {path.name for path in out.iterdir()}
    assert set(NEW_FILES) <= files
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoProcessor"] == "processing_llava.LlavaOVProcessor"
    assert config["conv_template"] == "qwen_1_5"
    video = saved_video_settings(out)
    assert video["mode"] == "frames" and video["frames_upbound"] == 8 and video["codec"]["patch_size"] == 16
    assert cli_answer(out, image) == cli_answer(new, image)

    assert resave_main([str(old), str(out)]) == 1  # never over a folder that has files
    assert "exists and is not an empty folder" in capsys.readouterr().err


def test_the_entry_points_default_to_the_saved_video_settings(folders):
    root, _, old, _ = folders
    from llava.cli_options import resolve_video_options

    out = root / "codec-settings"
    assert resave_main([str(old), str(out), "--codec-frames", "32", "--codec-images", "4",
                        "--codec-canvas", "64"]) == 0
    saved = saved_video_settings(out)
    options = resolve_video_options(saved, 16)
    assert (options.mode, options.codec.sequence_length, options.codec.keep_frames_equiv,
            options.codec.square_size) == ("codec", 32, 4, 64)
    flagged = resolve_video_options(saved, 16, mode="frames", codec_images=2)
    assert (flagged.mode, flagged.codec.keep_frames_equiv, flagged.codec.sequence_length) == ("frames", 2, 32)


def test_a_codec_video_through_the_processor_answers_as_the_cli_with_the_saved_settings(folders, tmp_path):
    """With the codec reader installed, the processor reads a codec-mode video with the folder's saved codec
    settings, and the chat CLI (no video flags) reads it the same way: the same answer."""
    from train_helpers import write_video
    from transformers import AutoModelForImageTextToText

    root, _, old, _ = folders
    out = root / "codec-small"
    if not out.exists():
        assert resave_main([str(old), str(out), "--codec-frames", "16", "--codec-images", "2",
                            "--codec-canvas", "64"]) == 0
    video = write_video(tmp_path / "clip.mp4", frames=24)
    processor = AutoProcessor.from_pretrained(str(out), trust_remote_code=True)
    model = AutoModelForImageTextToText.from_pretrained(str(out), trust_remote_code=True).eval()
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    inputs = processor(text=processor.apply_chat_template(messages, add_generation_prompt=True), videos=[str(video)])
    assert inputs["modalities"] == ["codec"] and inputs["images"][0].shape[:2] == (3, 2)  # 2 mosaics
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    answer = processor.answer(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))

    result = subprocess.run(
        [sys.executable, "-m", "llava.serve.cli", "--model-path", str(out), "--video", str(video),
         "--temperature", "0", "--max-new-tokens", "8"],
        input=QUESTION + "\n", capture_output=True, text=True, timeout=300, check=True,
    )
    assert answer and answer == result.stdout.split("assistant: ", 1)[1].strip()
