"""The OpenAI-compatible server on loopback, driven by the ``openai`` client: images and videos (data URLs
and paths under the media root, codec and frames), multi-turn, sampling parameters, streaming equal to the
whole answer, usage counts, 8 concurrent requests, a client that leaves mid-stream, and every bad input
answered with a 4xx OpenAI error while the server keeps serving."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
import torch
import uvicorn
from PIL import Image
from train_helpers import sharpened, write_video

QUESTION = "What is in this picture?"
LIMITS = ["--max-media-mb", "1", "--max-body-mb", "3", "--max-video-seconds", "3", "--max-tokens", "64"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _png(seed: int, size=(48, 80)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from llava.model.builder import load_pretrained_model
    from llava.model.tiny import save_tiny_checkpoint
    from llava.serve.openai_api import build_parser, create_app

    root = tmp_path_factory.mktemp("server")
    checkpoint = save_tiny_checkpoint(root / "tiny-ckpt")
    _, model, _, _ = load_pretrained_model(str(checkpoint), torch_dtype=torch.float32)
    sharpened(model).save_pretrained(checkpoint)  # answers that differ from prompt to prompt
    media = root / "media"
    media.mkdir()
    (media / "photo.png").write_bytes(_png(1))
    write_video(media / "clip.mp4", frames=16)
    write_video(media / "long.mp4", frames=60)  # 5 s at 12 fps: over the 3 s limit
    (media / "big.png").write_bytes(_png(2, size=(700, 700)))  # ~1.4 MB of noise: over 1 MB
    (root / "secret.txt").write_text("outside the media root")
    port = _free_port()
    args = build_parser().parse_args(["--model-path", str(checkpoint), "--port", str(port), "--media-root",
                                      str(media), "--codec-frames", "8", "--codec-canvas", "64",
                                      "--codec-images", "2", "--frames", "4", *LIMITS])
    args.served_model_name = "tiny-llava"
    from llava.cli_options import load_checkpoint

    app = create_app(*load_checkpoint(args), args)
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not uv.started and time.time() < deadline:
        time.sleep(0.05)
    base = f"http://127.0.0.1:{port}"
    yield base, media, app
    uv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def _ask(client, content, **kwargs):
    kwargs.setdefault("temperature", 0)
    kwargs.setdefault("max_tokens", 12)
    return client.chat.completions.create(model="tiny-llava", messages=[{"role": "user", "content": content}],
                                          **kwargs)


def _image_part(url):
    return {"type": "image_url", "image_url": {"url": url}}


def _video_part(url):
    return {"type": "video_url", "video_url": {"url": url}}


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["tiny-llava"]
    before = httpx.get(server[0] + "/health").json()
    assert before["status"] == "ok" and before["model"] == "tiny-llava"
    _ask(client, "Hello?")
    list(_ask(client, "Hello again?", stream=True))
    after = httpx.get(server[0] + "/health").json()
    assert after["answered"] == before["answered"] + 2 and after["cancelled"] == before["cancelled"]
    missing = httpx.get(server[0] + "/v1/completions")
    assert missing.status_code in (404, 405) and set(missing.json()["error"]) == {"message", "type", "param",
                                                                                    "code"}


def test_an_image_question_streamed_equals_the_whole_answer(server, client):
    content = [_image_part(_data_url(_png(1), "image/png")), {"type": "text", "text": QUESTION}]
    whole = _ask(client, content)
    answer = whole.choices[0].message.content
    assert answer and whole.choices[0].finish_reason in ("stop", "length")
    text_only = _ask(client, QUESTION)
    # the prompt's count includes the visual tokens the language model sees
    assert whole.usage.prompt_tokens > text_only.usage.prompt_tokens + 10
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    chunks = list(_ask(client, content, stream=True, stream_options={"include_usage": True}))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed.strip() == answer
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # the same image as a path under the media root, and as a file:// URL
    for url in ("photo.png", f"file://{server[1] / 'photo.png'}"):
        again = _ask(client, [_image_part(url), {"type": "text", "text": QUESTION}])
        assert again.choices[0].message.content == answer


def test_videos_in_codec_and_frames_mode(server, client):
    data = (server[1] / "clip.mp4").read_bytes()
    for url in (_data_url(data, "video/mp4"), "clip.mp4"):
        codec = _ask(client, [_video_part(url), {"type": "text", "text": "What moves?"}])
        frames = _ask(client, [_video_part(url), {"type": "text", "text": "What moves?"}],
                      extra_body={"video_mode": "frames"})
        assert codec.choices[0].message.content and frames.choices[0].message.content
        assert codec.usage.prompt_tokens != frames.usage.prompt_tokens  # different visual inputs


def test_multi_turn_and_system_messages(client):
    messages = [{"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": [_image_part(_data_url(_png(3), "image/png")),
                                             {"type": "text", "text": QUESTION}]},
                {"role": "assistant", "content": "A square."}, {"role": "user", "content": "What colour?"}]
    reply = client.chat.completions.create(model="tiny-llava", messages=messages, temperature=0, max_tokens=8)
    first = _ask(client, messages[1]["content"])
    assert reply.choices[0].message.content and reply.usage.prompt_tokens > first.usage.prompt_tokens


def test_stop_max_tokens_and_seed(client):
    free = _ask(client, "Tell me a story.", max_tokens=20).choices[0].message.content
    assert len(free) > 6
    stop = free[3:5]
    cut = _ask(client, "Tell me a story.", max_tokens=20, stop=[stop]).choices[0].message.content
    assert cut == free[: free.index(stop)].strip() and stop not in cut
    short = _ask(client, "Tell me a story.", max_tokens=2)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2
    sampled = [_ask(client, "Tell me a story.", temperature=1.0, seed=seed, max_tokens=10)
               for seed in (7, 7, 8)]
    sampled = [s.choices[0].message.content for s in sampled]
    assert sampled[0] == sampled[1] != sampled[2]


def test_eight_concurrent_requests_are_all_answered_as_alone(client):
    questions = [f"Question number {i}?" for i in range(8)]
    alone = [_ask(client, q).choices[0].message.content for q in questions]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda q: _ask(client, q).choices[0].message.content, questions))
    assert together == alone and len(set(alone)) > 1


def test_a_client_that_leaves_mid_stream_frees_the_server(server, client):
    base, _, app = server
    before = httpx.get(base + "/health").json()
    body = {"model": "tiny-llava", "messages": [{"role": "user", "content": "Talk."}], "max_tokens": 64,
            "temperature": 1.0, "stream": True}
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")  # the role chunk; leave before the answer is done
    deadline = time.time() + 20
    while time.time() < deadline and httpx.get(base + "/health").json()["cancelled"] == before["cancelled"]:
        time.sleep(0.05)
    health = httpx.get(base + "/health").json()
    assert health["cancelled"] == before["cancelled"] + 1 and health["waiting"] == 0
    assert _ask(client, "Still there?").choices[0].message.content  # serving goes on


def _user(content) -> dict:
    return {"messages": [{"role": "user", "content": content}]}


HI = _user("hi")
BAD = [
    ("not json", None, 400, "not valid JSON"),
    ({**HI, "model": "gpt-4"}, None, 404, "does not exist"),
    ({"messages": []}, None, 400, "non-empty list"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, None, 400, "role"),
    (_user([{"type": "audio_url", "audio_url": {"url": "x"}}]), None, 400, "unsupported content part"),
    (_user([_image_part("https://example.com/cat.png")]), None, 400, "remote URLs are not fetched"),
    (_user([_image_part("data:image/png;base64,!!!")]), None, 400, "not valid base64"),
    (_user([_image_part(_data_url(b"not a png", "image/png"))]), None, 400, "not readable"),
    (_user([_video_part(_data_url(b"not a video", "video/mp4"))]), None, 400, "not readable"),
    (_user([_image_part("../secret.txt")]), None, 403, "outside the media"),
    (_user([_image_part("/etc/passwd")]), None, 403, "outside the media"),
    (_user([_image_part("missing.png")]), None, 400, "no such file"),
    (_user([_image_part("big.png")]), None, 413, "larger than"),
    (_user([_video_part("long.mp4")]), None, 413, "limit is 3 s"),
    ({**HI, "max_tokens": 65}, None, 400, "max_tokens"),
    ({**HI, "temperature": 3}, None, 400, "temperature"),
    ({**HI, "n": 2}, None, 400, "n=1"),
    ({**HI, "logit_bias": {}}, None, 400, "unsupported parameter"),
    ({**HI, "video_mode": "pixels"}, None, 400, "video_mode"),
    (_user("Look: <image> what is it?"), None, 400, "may not contain <image>"),
    (_user([{"type": "text", "text": "<image>"}, _image_part("photo.png")]), None, 400, "may not contain"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, None, 400, "last message must come from"),
    (None, 4 << 20, 413, "larger than 3"),
]


@pytest.mark.parametrize("body, padding, status, message", BAD, ids=range(len(BAD)))
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, client, body, padding, status,
                                                                    message):
    base = server[0]
    if body == "not json":
        response = httpx.post(base + "/v1/chat/completions", content=b"{oops", timeout=30,
                              headers={"content-type": "application/json"})
    elif padding:
        response = httpx.post(base + "/v1/chat/completions", content=b" " * padding, timeout=30,
                              headers={"content-type": "application/json"})
    else:
        response = httpx.post(base + "/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"] and set(error) == {"message", "type", "param", "code"}
    assert _ask(client, "Still there?").choices[0].message.content


def test_the_openai_client_raises_on_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="remote URLs"):
        _ask(client, [_image_part("http://example.com/a.png")])


def test_the_server_reads_no_files_without_a_media_root():
    from llava.serve.messages import MediaPolicy, RequestError, parse_messages

    messages = [{"role": "user", "content": [_image_part("/etc/hostname")]}]
    with pytest.raises(RequestError, match="reads no local files") as caught:
        parse_messages(messages, "qwen_1_5", processor=None, policy=MediaPolicy())
    assert caught.value.status == 403
    assert json.loads(json.dumps(caught.value.body()))["error"]["code"] == "local_files_disabled"


def test_the_waiting_line_is_bounded_from_arrival():
    """max_waiting counts requests from before their media are read; one more is refused, and counting
    a request out twice cannot free two places."""
    from llava.serve.engine import Busy, ChatEngine

    engine = ChatEngine(tokenizer=None, model=None, max_waiting=2)
    first, second = engine.admit(), engine.admit()
    with pytest.raises(Busy):
        engine.admit()
    first()
    first()
    assert engine.waiting == 1
    third = engine.admit()
    with pytest.raises(Busy):
        engine.admit()
    second(), third()
    assert engine.waiting == 0


@pytest.mark.parametrize("pieces, stops, sent", [
    (["Hel", "lo wor", "ld"], [], "Hello world"),
    (["Hel", "lo wor", "ld"], ["o w"], "Hell"),  # the stop string arrives split across pieces
    (["ab", "c", "STO", "P", "more"], ["STOP"], "abc"),
    (["abc"], ["c", "b"], "a"),  # the earliest stop wins
    (["a", "b"], ["xyz"], "ab"),  # held-back text is sent at the end
])
def test_stop_strings_are_never_sent(pieces, stops, sent):
    from llava.serve.engine import StopText

    stop = StopText(stops)
    out = "".join(stop.feed(p) for p in pieces) + stop.finish()
    assert out == sent and stop.stopped == any(s in "".join(pieces) for s in stops)
