"""lmms-eval's own ``openai`` model, the client people already use, scoring a checkpoint through the built-in
server: with ``pass_video_url=True`` (videos go as ``video_url`` parts with vLLM's ``media_io_kwargs`` frame
count), on an image task and a video task, it gives the answers and the scores of this project's
``llava_ov_encoder`` model on the same checkpoint read the same way (uniform frames, 4 of them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from server_helpers import serve_checkpoint

REPO = Path(__file__).resolve().parents[1]
TASKS = "tiny_ov_free,flash_events_colour"
LIMIT = "6"


def _evaluate(out: Path, media: Path, model: str, model_args: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(out / "hf_home"),
           "TINY_OV_MEDIA": str(media / "tiny_ov"), "FLASH_EVENTS_MEDIA": str(media / "flash_events")}
    result = subprocess.run(
        [sys.executable, "-m", "llava.eval.run", "--model", model, "--model_args", model_args, "--tasks", TASKS,
         "--limit", LIMIT, "--batch_size", "1", "--output_path", str(out), "--log_samples"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (results,) = out.rglob("*_results.json")
    scores = json.loads(results.read_text())["results"]
    answers = {}
    for samples in out.rglob("*_samples_*.jsonl"):
        for line in samples.read_text().splitlines():
            sample = json.loads(line)
            answers[sample["doc_id"], samples.name.split("_samples_")[1]] = sample["filtered_resps"]
    metric = {"tiny_ov_free": "exact_match,none", "flash_events_colour": "acc,none"}
    return {"scores": {task: scores[task][metric[task]] for task in TASKS.split(",")}, "answers": answers}


def test_lmms_evals_openai_model_through_the_server_scores_as_the_projects_model(tiny_run, tmp_path):
    checkpoint, _ = tiny_run
    media = tmp_path / "media"
    ours = _evaluate(tmp_path / "ours", media, "llava_ov_encoder",
                     f"pretrained={checkpoint},video_mode=frames,max_frames=4")
    with serve_checkpoint(Path(checkpoint), "--media-root", str(media), "--video-mode", "frames",
                          "--max-tokens", "64") as (base, app):
        served = _evaluate(tmp_path / "openai", media, "openai",
                           f"model=tiny-llava,base_url={base}/v1,api_key=unused,pass_video_url=True,"
                           "max_frames_num=4,num_concurrent=1,timeout=300,max_retries=1")  # attempts: 0 sends none
        health = app.state.engine.answered
    assert len(ours["answers"]) == 2 * int(LIMIT) and served["answers"] == ours["answers"]
    assert served["scores"] == ours["scores"]
    assert health == 2 * int(LIMIT)  # every document reached the server, none failed
