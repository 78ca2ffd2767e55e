"""lmms-eval's own ``openai`` model, the client people already use, scoring a checkpoint through the built-in
server: with ``pass_video_url=True`` (videos go as ``video_url`` parts with vLLM's ``media_io_kwargs`` frame
count), on an image task and a video task, it gives the answers and the scores of this project's
``llava_ov_encoder`` model on the same checkpoint read the same way (uniform frames, 4 of them)."""

from __future__ import annotations

from pathlib import Path

from server_helpers import serve_checkpoint
from task_helpers import evaluate_local_tasks

LIMIT = 6


def test_lmms_evals_openai_model_through_the_server_scores_as_the_projects_model(tiny_run, tmp_path):
    checkpoint, _ = tiny_run
    media = tmp_path / "media"
    ours = evaluate_local_tasks(tmp_path / "ours", media, "llava_ov_encoder",
                                f"pretrained={checkpoint},video_mode=frames,max_frames=4", LIMIT)
    with serve_checkpoint(Path(checkpoint), "--media-root", str(media), "--video-mode", "frames",
                          "--max-tokens", "64") as (base, app):
        served = evaluate_local_tasks(tmp_path / "openai", media, "openai",
                                      f"model=tiny-llava,base_url={base}/v1,api_key=unused,pass_video_url=True,"
                                      "max_frames_num=4,num_concurrent=1,timeout=300,max_retries=1",  # 0 sends none
                                      LIMIT)
        health = app.state.engine.answered
    assert len(ours["answers"]) == 2 * LIMIT and served["answers"] == ours["answers"]
    assert served["scores"] == ours["scores"]
    assert health == 2 * LIMIT  # every document reached the server, none failed
