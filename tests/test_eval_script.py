"""``scripts/eval/eval_ov_encoder.sh``: stock lmms-eval end to end on CPU, on the offline local tasks
(llava/eval/tasks/tiny_ov), with the checkpoint the tiny SFT preset trains (far above chance) and an
untrained one (near chance); the script exits non-zero when lmms-eval fails."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llava.vllm_plugin.launch import free_port

REPO = Path(__file__).resolve().parents[1]
TASKS = ("tiny_ov_image_mc", "tiny_ov_video_mc", "tiny_ov_free")
# the tiny preset's clips: 16 frames on a 64-px canvas, 4 mosaics. The trained checkpoint saved them and is
# evaluated without flags (as the demo does); an untrained checkpoint is given them.
CODEC_ARGS = "codec_frames=16,codec_canvas=64,codec_images=4"


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_ov_media")


def _evaluate(model_path, out: Path, media: Path, tasks="tiny_ov", **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(out / "hf_home"), "TINY_OV_MEDIA": str(media), "MODEL_PATH": str(model_path),
           "TASKS": tasks, "OUTPUT_PATH": str(out / "results"), "BATCH_SIZE": "4", "CODEC_OFFLINE_ROOT": "",
           **env}
    return subprocess.run(["bash", str(REPO / "scripts" / "eval" / "eval_ov_encoder.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


def _scores(out: Path) -> dict[str, float]:
    (path,) = (out / "results").rglob("*_results.json")
    results = json.loads(path.read_text())["results"]
    metric = {"tiny_ov_free": "exact_match,none"}
    return {task: results[task][metric.get(task, "acc,none")] for task in TASKS}


@pytest.fixture(scope="module")
def trained(tiny_run, media, tmp_path_factory):
    """The tiny SFT checkpoint scored on the tiny_ov group, recording the scores in its model card (a copy of
    it: the shared checkpoint stays as trained): ``(scored copy, scores, script output)``."""
    checkpoint, _ = tiny_run
    out = tmp_path_factory.mktemp("trained-eval")
    scored = shutil.copytree(checkpoint, out / "ckpt", ignore=shutil.ignore_patterns("checkpoint-*", "eval*"))
    result = _evaluate(scored, out, media, RECORD_CARD="1")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return scored, _scores(out), result


def test_the_scores_join_the_model_card_and_survive_a_resave(trained, tmp_path):
    """``RECORD_CARD=1``: the card's Evaluation section and ``eval_results.json`` hold the run's scores; a later
    record replaces a pair instead of repeating it, and ``python -m llava.model.resave`` keeps them."""
    from llava.model.folder import record_evaluation, saved_results
    from llava.model.resave import main as resave_main

    scored, scores, result = trained
    card = (scored / "README.md").read_text()
    assert f"model card: {scored / 'README.md'}" in result.stdout
    assert card.count("## Evaluation") == 1 and "## Recipe" in card  # the trainer's card, now with its scores
    for task, value in scores.items():
        metric = "exact_match" if task == "tiny_ov_free" else "acc"
        assert f"| {task} | {metric} | {value:.4f} |" in card
        assert [task, metric, f"{value:.4f}"] in saved_results(scored)
    record_evaluation(scored, [("tiny_ov_free", "exact_match", "0.1234")])
    again = (scored / "README.md").read_text()
    assert again.count("## Evaluation") == 1 and again.count("| tiny_ov_free | exact_match |") == 1
    assert "| tiny_ov_free | exact_match | 0.1234 |" in again and "## Recipe" in again
    assert resave_main([str(scored), str(tmp_path / "resaved")]) == 0
    assert saved_results(tmp_path / "resaved") == saved_results(scored)
    assert "| tiny_ov_free | exact_match | 0.1234 |" in (tmp_path / "resaved" / "README.md").read_text()


def test_the_tiny_sft_checkpoint_scores_far_above_chance_and_an_untrained_one_near_it(trained, media,
                                                                                       tmp_path):
    from llava.model.tiny import save_tiny_checkpoint

    _, trained_scores, result = trained
    untrained = save_tiny_checkpoint(tmp_path / "untrained-ckpt")
    result_untrained = _evaluate(untrained, tmp_path / "untrained", media, MODEL_ARGS=CODEC_ARGS)
    assert result_untrained.returncode == 0, result_untrained.stderr[-4000:]
    untrained_scores = _scores(tmp_path / "untrained")
    print("\nheld-out lmms-eval accuracy (chance 0.25 for the multiple-choice tasks)")
    for task in TASKS:
        print(f"  {task:18} tiny-SFT {trained_scores[task]:.3f}   untrained {untrained_scores[task]:.3f}")
    for task in TASKS:
        assert trained_scores[task] >= 0.75, (task, trained_scores)
        assert untrained_scores[task] <= 0.5, (task, untrained_scores)
    # the script's own table and the model's account of its video inputs
    assert "tiny_ov_video_mc  acc" in result.stdout and "results: " in result.stdout
    assert "32 codec computed online" in result.stdout and "0 failed" in result.stdout


def test_two_processes_under_torchrun_give_the_scores_of_one(trained, media, tmp_path):
    """NUM_GPUS=2: torchrun starts two ranks (gloo on CPU), lmms-eval shards the docs between them."""
    checkpoint, scores, _ = trained
    result = _evaluate(checkpoint, tmp_path / "two", media, NUM_GPUS="2", MASTER_PORT=str(free_port()))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert _scores(tmp_path / "two") == scores
    assert "(rank 1)" in result.stdout and "(rank 0)" in result.stdout


def test_precomputed_assets_are_what_the_evaluation_reads(trained, media, tmp_path):
    """preprocess_video_benchmark.sh writes the video task's packs; the evaluation then reads every video
    from them (none computed online) and scores as it does online."""
    checkpoint, scores, _ = trained
    env = {**os.environ, "PYTHON": sys.executable, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TINY_OV_MEDIA": str(media), "OUT_ROOT": str(tmp_path / "assets"), "NUM_WORKERS": "2",
           "CODEC_FRAMES": "16", "CODEC_CANVAS": "64", "CODEC_IMAGES": "4"}
    script = REPO / "scripts" / "precompute_codec_patch" / "preprocess_video_benchmark.sh"
    made = subprocess.run(["bash", str(script), "tiny_ov_video_mc"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    result = _evaluate(checkpoint, tmp_path / "eval", media, tasks="tiny_ov_video_mc",
                       CODEC_OFFLINE_ROOT=str(tmp_path / "assets"))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "32 from precomputed codec assets, 0 codec computed online" in result.stdout
    (path,) = (tmp_path / "eval" / "results").rglob("*_results.json")
    accuracy = json.loads(path.read_text())["results"]["tiny_ov_video_mc"]["acc,none"]
    assert accuracy >= 0.75 and abs(accuracy - scores["tiny_ov_video_mc"]) <= 0.1  # JPEG mosaics vs exact




def test_the_script_exits_non_zero_when_lmms_eval_fails(tmp_path, media):
    from llava.model.tiny import save_tiny_checkpoint

    missing = _evaluate(tmp_path / "no-such-checkpoint", tmp_path / "missing", media, tasks="tiny_ov_free")
    assert missing.returncode == 1
    assert "lmms-eval wrote no results" in missing.stderr
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt")
    unknown = _evaluate(checkpoint, tmp_path / "unknown", media, tasks="tiny_ov_free,no_such_task")
    assert unknown.returncode != 0
    no_model = subprocess.run(["bash", str(REPO / "scripts" / "eval" / "eval_ov_encoder.sh")], cwd=REPO,
                              env={k: v for k, v in os.environ.items() if k != "MODEL_PATH"},
                              capture_output=True, text=True, timeout=60)
    assert no_model.returncode != 0 and "set MODEL_PATH" in no_model.stderr
