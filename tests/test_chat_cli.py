"""Chat CLI and tiny-checkpoint CLI: piped questions about real media, clear errors."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from llava.model import tiny
from llava.sample_data import sample_video_path
from llava.serve import cli


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny-llava"
    tiny.main(["--out", str(path)])
    return path


@pytest.fixture
def image_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "picture.png"
    Image.fromarray(rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)).save(path)
    return path


def chat(monkeypatch, capsys, argv, questions: str):
    monkeypatch.setattr(sys, "stdin", io.StringIO(questions))
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def answers(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("assistant: ")]


def test_tiny_checkpoint_cli_writes_a_loadable_checkpoint(checkpoint, capsys):
    files = {p.name for p in checkpoint.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= files
    assert sum(p.stat().st_size for p in checkpoint.iterdir()) < 8 * 2**20
    with pytest.raises(SystemExit):
        tiny.main(["--out", str(checkpoint)])  # refuses to overwrite
    assert "not empty" in capsys.readouterr().err


def test_piped_questions_about_an_image(checkpoint, image_file, monkeypatch, capsys):
    code, out, err = chat(
        monkeypatch, capsys,
        ["--model-path", str(checkpoint), "--image", str(image_file), "--max-new-tokens", "4", "--temperature", "0"],
        "What is in the picture?\n\nAnd what colour is it?\nexit\nnot asked\n",
    )
    assert code == 0, err
    assert out.count("assistant: ") == 2  # blank line skipped, "exit" ends before the last line


def test_streamed_answer_is_the_models_greedy_answer(checkpoint, image_file, monkeypatch, capsys):
    """What the CLI prints is what generate() produces for the same prompt and image."""
    import torch

    from llava.inference.generation import expand_prompt
    from llava.model.builder import load_pretrained_model
    from llava.model.image_processing_llava import process_images
    from llava.processing.conversation import get_conv_template
    from llava.processing.media import VisualInputs
    from llava.processing.prompts import tokenizer_image_token

    tokenizer, model, processor, _ = load_pretrained_model(str(checkpoint), torch_dtype=torch.float32)
    conv = get_conv_template("qwen_1_5")
    conv.append_message(conv.roles[0], "<image>\nName it.")
    conv.append_message(conv.roles[1], None)
    ids = torch.tensor([tokenizer_image_token(conv.get_prompt(), tokenizer)])
    image = Image.open(image_file).convert("RGB")
    pixels = process_images([image], processor, model.config)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    visual = VisualInputs([pixels[0]], ["image"], [image.size], [None])
    ids = expand_prompt(model, ids[0], visual)[None]
    output = model.generate(ids, **visual.model_kwargs(), max_new_tokens=5, do_sample=False, eos_token_id=im_end,
                            pad_token_id=tokenizer.pad_token_id)
    expected = tokenizer.decode(output[0, ids.shape[1]:], skip_special_tokens=True)

    code, out, err = chat(
        monkeypatch, capsys,
        ["--model-path", str(checkpoint), "--image", str(image_file), "--max-new-tokens", "5", "--temperature", "0"],
        "Name it.\n",
    )
    assert code == 0, err
    assert out == "assistant: " + expected + "\n"


@pytest.mark.parametrize("mode", ["frames", "codec"])
def test_piped_questions_about_a_real_sample_video(checkpoint, monkeypatch, capsys, mode):
    argv = ["--model-path", str(checkpoint), "--video", str(sample_video_path()), "--video-mode", mode,
            "--frames", "4", "--codec-frames", "16", "--codec-canvas", "64", "--max-new-tokens", "3",
            "--temperature", "0"]
    code, out, err = chat(monkeypatch, capsys, argv, "What happens in this video?\n")
    assert code == 0, err
    assert len(answers(out)) == 1


def test_a_question_with_the_placeholder_is_refused_and_the_chat_goes_on(checkpoint, image_file, monkeypatch,
                                                                        capsys):
    code, out, err = chat(
        monkeypatch, capsys,
        ["--model-path", str(checkpoint), "--image", str(image_file), "--max-new-tokens", "2",
         "--temperature", "0"],
        "Look at <image> here\nWhat is it?\n",
    )
    assert code == 0 and out.count("assistant: ") == 1 and "may not contain <image>" in err


def test_end_of_input_ends_the_chat(checkpoint, monkeypatch, capsys):
    code, out, _ = chat(monkeypatch, capsys, ["--model-path", str(checkpoint), "--max-new-tokens", "2"], "")
    assert code == 0 and answers(out) == []


def test_unreadable_media_is_a_clear_message(checkpoint, tmp_path, monkeypatch, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"definitely not a png")
    code, _, err = chat(monkeypatch, capsys, ["--model-path", str(checkpoint), "--image", str(broken)], "hi\n")
    assert code == 1 and f"error: {broken}: cannot read image" in err and "Traceback" not in err
    for mode in ("frames", "codec"):  # one line naming the file and the problem, whichever reader
        code, _, err = chat(monkeypatch, capsys, ["--model-path", str(checkpoint), "--video", str(broken),
                                                  "--video-mode", mode], "hi\n")
        assert code == 1 and f"error: {broken}: video stream has no frame size" in err and "Traceback" not in err
    code, _, err = chat(monkeypatch, capsys, ["--model-path", str(checkpoint), "--video", str(tmp_path / "gone.mp4")],
                        "hi\n")
    assert code == 1 and "gone.mp4: file not found" in err


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_bomb_or_a_fifo_as_the_image_is_a_clear_message(checkpoint, tmp_path, monkeypatch, capsys):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12_000, 10_000)).save(bomb)  # 120 megapixels in a few kB
    code, _, err = chat(monkeypatch, capsys, ["--model-path", str(checkpoint), "--image", str(bomb)], "hi\n")
    assert code == 1 and f"error: {bomb}: 12000x10000 is 120,000,000 pixels" in err and "Traceback" not in err
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # nothing ever writes to it: opening it for reading would block forever
    code, _, err = chat(monkeypatch, capsys, ["--model-path", str(checkpoint), "--image", str(fifo)], "hi\n")
    assert code == 1 and f"error: {fifo}: image is not a regular file (a FIFO)" in err


def test_a_path_that_is_not_a_checkpoint(tmp_path, monkeypatch, capsys):
    code, _, err = chat(monkeypatch, capsys, ["--model-path", str(tmp_path)], "hi\n")
    assert code == 2 and "not a model checkpoint" in err


def test_cli_as_a_process_with_piped_stdin(checkpoint, image_file):
    result = subprocess.run(
        [sys.executable, "-m", "llava.serve.cli", "--model-path", str(checkpoint), "--image", str(image_file),
         "--max-new-tokens", "3"],
        input="Describe it.\nexit\n", capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("assistant: ") == 1
