"""Shared by the training, input and evaluation tests: a tiny training start, a small dataset of every
record kind (real files), and tiny models with lively answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from llava.model.tiny import save_tiny_parts
from llava.processing.video import LLAVA_CODEC
from llava.vllm_plugin.launch import free_port

REPO = Path(__file__).resolve().parents[1]
CODEC = LLAVA_CODEC.replace(sequence_length=8, square_size=64, keep_frames_equiv=2)
CODEC_FLAGS = ["--codec_frames", "8", "--codec_canvas", "64", "--codec_images", "2"]


def sharpened(model):
    """Larger weights, so greedy answers differ from token to token (a random tiny model repeats one)."""
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0, 0.3)
    return model


class _Script:
    """A logits processor that makes greedy decoding write ``ids`` (then repeat the last id)."""

    def __init__(self, ids: list[int]):
        self.ids, self.start = ids, None

    def __call__(self, input_ids, scores):
        if self.start is None:
            self.start = input_ids.shape[1]
        step = min(input_ids.shape[1] - self.start, len(self.ids) - 1)
        forced = torch.full_like(scores, float("-inf"))
        forced[:, self.ids[step]] = 0
        return forced


def scripted(model, tokenizer, text: str):
    """``model`` whose greedy ``generate`` writes ``text`` and goes on repeating its last token: where the
    answer ends is then decided only by the caller's stop settings (eos, stopping criteria)."""
    from transformers import LogitsProcessorList

    ids = tokenizer(text, add_special_tokens=False).input_ids
    generate = type(model).generate

    def generate_scripted(*args, **kwargs):
        return generate(model, *args, logits_processor=LogitsProcessorList([_Script(ids)]), **kwargs)

    model.generate = generate_scripted
    return model


def write_video(path: Path, frames: int = 16, width: int = 64, height: int = 48, codec: str = "libx264",
                seed: int = 0):
    """A clip with a bright square moving right over a noisy background."""
    rng = np.random.default_rng(seed)
    background = rng.integers(20, 90, (height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=12)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"x265-params": "log-level=none"} if codec == "libx265" else {}
        for i in range(frames):
            pixels = background.copy()
            x = (3 * i) % (width - 12)
            pixels[16:28, x : x + 12] = 240
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def conversation(question: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def write_records(root: Path) -> dict:
    """Media and one record of every kind under ``root``; returns the records by kind."""
    import cv_reader

    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate([(80, 48), (48, 64), (64, 64)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / f"image{i}.png")
    for i in range(8):
        Image.fromarray(np.full((32, 32, 3), 30 * i, np.uint8)).save(root / f"frame{i}.png")
    write_video(root / "clip.mp4")
    codec = cv_reader.codec_patchify(str(root / "clip.mp4"), CODEC)
    mosaics = []
    for i, mosaic in enumerate(codec.mosaics):  # lossless, so online and offline inputs are equal
        Image.fromarray(mosaic).save(root / f"mosaic{i}.png")
        mosaics.append(f"mosaic{i}.png")
    np.save(root / "positions_thw.npy", codec.positions)
    records = {
        "text": {"id": "text", "conversations": conversation("What is two plus two?", "Four.")},
        "image": {"id": "image", "image": "image0.png",
                  "conversations": conversation("<image>\nWhat is it?", "Noise.")},
        "images": {"id": "images", "image": ["image0.png", "image1.png"],
                   "conversations": conversation("<image>\n<image>\nSame?", "No.")},
        "codec": {"id": "codec", "image": mosaics, "positions_thw": str(root / "positions_thw.npy"),
                  "conversations": conversation("<image>\n<image>\nWhich way?", "Right.")},
        "clip": {"id": "clip", "image": [f"frame{i}.png" for i in range(8)],
                 "conversations": conversation("\n".join(["<image>"] * 8) + "\nBrighter?", "Yes.")},
        "video": {"id": "video", "video": "clip.mp4",
                  "conversations": conversation("<image>\nWhich way?", "Right.")},
    }
    return records


def write_jsonl(path: Path, records) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return str(path)


def tiny_start(root: Path) -> tuple[str, str]:
    llm, encoder = save_tiny_parts(root / "base")
    return str(llm), str(encoder)


def train_args(llm: str, encoder: str, data: str, folder: str, out: str, *extra: str) -> list[str]:
    """The flags of a small CPU run (extra flags win: they come last); the 8-frame ``clip`` record kind
    is a clip (``--images_as_clip 8``, upstream's video records)."""
    return [
        "--model_name_or_path", llm, "--vision_tower", encoder, "--data_path", data, "--image_folder", folder,
        "--video_folder", folder, "--output_dir", out, "--mm_projector_type", "mlp2x_gelu",
        "--per_device_train_batch_size", "2", "--learning_rate", "1e-3", "--logging_steps", "1",
        "--report_to", "none", "--save_strategy", "no", "--dataloader_num_workers", "0",
        "--mm_tunable_parts", "mm_vision_tower,mm_mlp_adapter,mm_language_model", "--seed", "0",
        "--disable_tqdm", "True", "--images_as_clip", "8", *CODEC_FLAGS, *extra,
    ]


def probe_inputs(records_root: Path, model, tokenizer) -> dict:
    """A fixed image prompt: the inputs whose logits checkpoints are compared on."""
    import torch

    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.inference.generation import expand_prompt
    from llava.model.builder import load_image_processor
    from llava.processing.media import VisualProcessor

    processor = load_image_processor(str(records_root), None, model)
    visual = VisualProcessor(processor, model.config)(str(Path(records_root) / "image1.png"))
    ids = torch.tensor([*tokenizer("look ").input_ids, IMAGE_TOKEN_INDEX, *tokenizer(" at it").input_ids])
    return dict(input_ids=expand_prompt(model, ids, visual)[None], **visual.model_kwargs())


def two_process_run(records_root: Path, argv: list[str], kill: str | None = None,
                    timeout: int = 600) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 tests/distributed_sft.py``: a real 2-process run of train.py with
    ``argv`` (``kill``: a rule of tests/kill_while_saving.py); its output is captured, not checked."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(free_port()), str(REPO / "tests" / "distributed_sft.py"),
               str(records_root), *(["--kill", kill] if kill else []), "--", *argv]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO,
                          check=False)


def stage2_pack(root: Path, video: Path, record_id: str, frames: int, canvas: int, images: int,
                out_image_root: Path | None = None) -> dict:
    """One video through the real Stage 1 + Stage 2 (``--preset llava``) at ``frames`` (T), ``canvas``
    (S) and ``images`` (N): its packed training record (``image``: N mosaic paths, ``positions_thw``)."""
    from cv_reader import stage1, stage2

    work = root / f"stages-{record_id}"
    work.mkdir(parents=True, exist_ok=True)
    dataset = work / "videos.jsonl"
    dataset.write_text(json.dumps({"id": record_id, "video": str(video),
                                   "conversations": conversation("<video>\nWhich way?", "Right.")}) + "\n")
    geometry = ["--square_size", str(canvas)]
    assert stage1.main(["--dataset_path", str(dataset), "--out_root", str(work / "stage1"),
                        "--preset", "llava", "--num_workers", "1", "--sequence_length", str(frames),
                        "--keep_frames_equiv", str(images), *geometry]) == 0
    out = work / "packed.jsonl"
    assert stage2.main(["--input_dataset", str(dataset), "--out_jsonl", str(out), "--visidx_root",
                        str(work / "stage1"), "--out_image_root", str(out_image_root or work / "packs"),
                        "--preset", "llava", "--T", str(frames), "--num_images", str(images), *geometry]) == 0
    return json.loads(out.read_text())
