"""A checkpoint folder works wherever transformers works: loaded in a venv without this project.

The venv (``.venv-plain``: torch, transformers, PyAV, Pillow, numpy at the project venv's versions) is
built by ``scripts/test.sh`` (``scripts/setup_plain_env.sh``), which sets ``LLAVA_PLAIN_PYTHON``; run
alone without it, these tests skip. ``AutoProcessor`` + ``AutoModelForImageTextToText`` and
``pipeline("image-text-to-text")`` there must give the same greedy answers as ``python -m
llava.serve.cli`` on the same checkpoint, for an image and a uniform-frames video.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from train_helpers import write_video

from llava.model.tiny import save_tiny_checkpoint

PLAIN_PYTHON = os.environ.get("LLAVA_PLAIN_PYTHON")
SCRIPT = Path(__file__).with_name("plain_transformers_answers.py")
QUESTION = "What is happening here?"
MAX_NEW_TOKENS = 10

pytestmark = pytest.mark.skipif(
    not PLAIN_PYTHON or not Path(PLAIN_PYTHON).exists(),
    reason="no venv without the project: run scripts/test.sh (it builds .venv-plain)",
)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("plain")
    # untied head, wider init: a random tiny model whose greedy answers are varied text, not newlines
    checkpoint = save_tiny_checkpoint(root / "ckpt", seed=1, initializer_range=0.2, tie_word_embeddings=False)
    rng = np.random.default_rng(0)
    image = root / "photo.png"
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(image)
    video = write_video(root / "clip.mp4", frames=20)
    return root, checkpoint, image, video


def cli_answer(checkpoint: Path, *media_flags: str) -> str:
    """The chat CLI's greedy answer to QUESTION."""
    result = subprocess.run(
        [sys.executable, "-m", "llava.serve.cli", "--model-path", str(checkpoint), *media_flags,
         "--temperature", "0", "--max-new-tokens", str(MAX_NEW_TOKENS)],
        input=QUESTION + "\n", capture_output=True, text=True, timeout=300, check=True,
    )
    return result.stdout.split("assistant: ", 1)[1].strip()


def test_plain_transformers_answers_as_the_project_does(media):
    root, checkpoint, image, video = media
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run(
        [PLAIN_PYTHON, str(SCRIPT), str(checkpoint), str(image), str(video), QUESTION, str(MAX_NEW_TOKENS)],
        capture_output=True, text=True, timeout=600, cwd=root, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    plain = json.loads(result.stdout.strip().splitlines()[-1])
    assert plain["processor_class"] == "LlavaOVProcessor" and plain["model_class"] == "LlavaQwenForCausalLM"

    image_answer = cli_answer(checkpoint, "--image", str(image))
    video_answer = cli_answer(checkpoint, "--video", str(video), "--video-mode", "frames")
    assert image_answer and video_answer and image_answer != video_answer  # answers that depend on the media
    assert plain["image"] == image_answer
    assert plain["pipeline_image"] == image_answer
    assert plain["video_frames"] == video_answer
    assert "codec reader" in plain["codec_error"] and "pip install" in plain["codec_error"]


def test_the_folder_names_no_path_of_the_machine_that_wrote_it(media):
    root, checkpoint, _, _ = media
    for path in checkpoint.iterdir():
        if path.suffix in (".json", ".py", ".md", ".jinja"):
            assert str(root) not in path.read_text() and "/work/" not in path.read_text(), path.name
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_llava_qwen.LlavaQwenForCausalLM"
    assert config["vision_config"]["model_type"] == "onevision_encoder"
    card = (checkpoint / "README.md").read_text()
    assert "pipeline_tag: image-text-to-text" in card and "AutoModelForImageTextToText" in card
