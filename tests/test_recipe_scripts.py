"""The training scripts: the tiny preset really learns (the README's main job, at a CI size), and the GPU
recipe's launch commands carry the seed recipe's settings, the environment's overrides and the launcher."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import HfArgumentParser

from llava.train.arguments import DataArguments, ModelArguments, TrainingArguments

REPO = Path(__file__).resolve().parents[1]


def _script(name: str, env: dict, *args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / name), *args], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "PYTHON": sys.executable, **env}, timeout=timeout)


# ---------------------------------------------------------------- the tiny preset (tiny_run: conftest.py)
def test_the_tiny_preset_loss_falls_clearly(tiny_run):
    out, stdout = tiny_run
    losses = [entry["loss"] for entry in json.loads((out / "trainer_state.json").read_text())["log_history"]
              if "loss" in entry]
    assert len(losses) >= 10
    assert losses[-1] < losses[0] / 5 and losses[-1] < 1.0, losses
    assert "[train] done:" in stdout and "bad records: 0 of" in stdout


def test_the_tiny_preset_answers_the_held_out_split_far_above_chance(tiny_run):
    out, stdout = tiny_run
    scores = json.loads((out / "heldout_scores.json").read_text())
    assert set(scores["per_task"]) == {"colour", "codec_colour", "video_colour", "text"}
    for task, score in scores["per_task"].items():
        assert score["total"] == 12 and score["chance"] == 0.25
        assert score["accuracy"] >= 0.5, (task, score)  # twice chance on every task, images to raw videos
    assert scores["overall"]["accuracy"] >= 0.75 and not scores["missing"]
    assert "overall" in stdout and "chance" in stdout


def test_the_tiny_checkpoint_chats_as_the_evaluator_answers(tiny_run):
    """The chat CLI loads the saved checkpoint and answers the held-out video question exactly as the
    batched evaluator did (both greedy; codec inputs computed online from the raw video)."""
    out, stdout = tiny_run
    heldout = [json.loads(line) for line in (out / "data" / "heldout.jsonl").read_text().splitlines()]
    record = next(r for r in heldout if r["task"] == "video_colour")
    predictions = {p["id"]: p["prediction"]
                   for p in map(json.loads, (out / "heldout_predictions.jsonl").open())}
    answer = next(line for line in stdout.splitlines() if line.startswith("assistant:"))
    assert answer.removeprefix("assistant:").strip() == predictions[record["id"]].strip()
    assert f"(held-out answer: {record['answer']})" in stdout


# ---------------------------------------------------------------- the GPU recipe's commands
def _dry_run(name: str, **env: str) -> list[str]:
    result = _script(name, {"DRY_RUN": "1", **env})
    assert result.returncode == 0, result.stderr
    return shlex.split(result.stdout)


def _train_flags(command: list[str]):
    start = command.index("llava.train.train") + 1 if "llava.train.train" in command else (
        command.index("llava/train/train.py") + 1)
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    return parser.parse_args(command[start:])  # names and types: no GPU checks on this CPU machine


def test_the_sft_script_defaults_are_the_seed_recipe():
    command = _dry_run("sft_ov_encoder.sh")
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert (command[command.index("--nproc_per_node") + 1] == "8"
            and command[command.index("--nnodes") + 1] == "1")
    flags = _train_flags(command)
    assert flags.model_name_or_path == "Qwen/Qwen3-4B-Instruct-2507"
    assert flags.vision_tower == "lmms-lab/onevision-encoder-large" and flags.version == "qwen_1_5"
    assert (flags.deepspeed == "scripts/zero3.json" and flags.bf16 is True
            and flags.gradient_checkpointing is True)
    assert flags.mm_tunable_parts == "mm_vision_tower,mm_mlp_adapter,mm_language_model"
    assert (flags.learning_rate, flags.mm_vision_tower_lr) == (1e-5, 2e-6)
    assert (flags.per_device_train_batch_size, flags.gradient_accumulation_steps) == (1, 16)
    assert (flags.save_steps, flags.save_total_limit, flags.num_train_epochs) == (500, 20, 1)
    assert flags.mm_projector_type == "mlp2x_gelu" and flags.mm_vision_select_layer == -2
    assert flags.group_by_modality_length is True and flags.image_aspect_ratio == "anyres"
    assert flags.attn_implementation == "auto" and flags.video_mode == "codec"  # flash-attn where installed
    # the projector the pre-training script writes by default is the one SFT starts from
    pretrain = _train_flags(_dry_run("pretrain_ov_encoder.sh"))
    assert flags.pretrain_mm_mlp_adapter == f"{pretrain.output_dir}/mm_projector.bin"
    assert pretrain.tune_mm_mlp_adapter is True and pretrain.mm_tunable_parts == "mm_mlp_adapter"
    assert pretrain.version == "plain" and pretrain.deepspeed == "scripts/zero2.json"
    assert (pretrain.learning_rate, pretrain.per_device_train_batch_size,
            pretrain.gradient_accumulation_steps) == (1e-3, 16, 2)


def test_the_environment_overrides_the_recipe_and_chooses_the_launcher():
    env = dict(LLM_VERSION="my/llm", VISION_MODEL_VERSION="my/encoder", DATA_PATH="d.yaml",
               IMAGE_FOLDER="img", VIDEO_FOLDER="vid", OUTPUT_DIR="out",
               DEEPSPEED="scripts/zero3_offload.json", NUM_GPUS="4",
               NNODES="2", NODE_RANK="1", MASTER_ADDR="10.0.0.7", MASTER_PORT="29601")
    command = _dry_run("sft_ov_encoder.sh", **env)
    for flag, value in [("--nproc_per_node", "4"), ("--nnodes", "2"), ("--node_rank", "1"),
                        ("--master_addr", "10.0.0.7"), ("--master_port", "29601")]:
        assert command[command.index(flag) + 1] == value
    flags = _train_flags(command)
    assert (flags.model_name_or_path, flags.vision_tower, flags.data_path) == (
        "my/llm", "my/encoder", "d.yaml")
    assert (flags.image_folder, flags.video_folder, flags.output_dir) == ("img", "vid", "out")
    assert flags.deepspeed == "scripts/zero3_offload.json"

    command = _dry_run("sft_ov_encoder.sh", LAUNCHER="deepspeed", HOSTFILE="hosts", NUM_GPUS="2")
    assert command[0] == "deepspeed" and command[command.index("--hostfile") + 1] == "hosts"
    assert command[command.index("--num_gpus") + 1] == "2"
    # extra flags win over the recipe's (HfArgumentParser keeps the last value)
    result = _script("sft_ov_encoder.sh", {"DRY_RUN": "1"}, "--learning_rate", "3e-5")
    assert _train_flags(shlex.split(result.stdout)).learning_rate == 3e-5


@pytest.mark.parametrize("env, message", [({"PRESET": "huge"}, "PRESET must be recipe"),
                                          ({"LAUNCHER": "slurm"}, "LAUNCHER must be torchrun or deepspeed")])
def test_the_scripts_refuse_unknown_choices(env, message):
    result = _script("sft_ov_encoder.sh", {"DRY_RUN": "1", **env})
    assert result.returncode == 2 and message in result.stderr
