"""The OpenAI-compatible server on loopback, driven by the ``openai`` client: images and videos (data URLs
and paths under the media root, codec and frames), multi-turn, sampling parameters, streaming equal to the
whole answer, usage counts, 8 concurrent requests, a client that leaves mid-stream, and every bad input
answered with a 4xx OpenAI error while the server keeps serving."""

from __future__ import annotations

import io
import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
from PIL import Image
from server_helpers import data_url, flat_png, serve_tiny
from train_helpers import write_video

QUESTION = "What is in this picture?"
LIMITS = ["--max-media-mb", "1", "--max-body-mb", "3", "--max-video-seconds", "3", "--max-tokens", "64",
          "--max-image-megapixels", "10", "--max-video-frame-megapixels", "0.05"]


def _png(seed: int, size=(48, 80)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    media = root / "media"
    media.mkdir()
    (media / "photo.png").write_bytes(_png(1))
    write_video(media / "clip.mp4", frames=16)
    write_video(media / "long.mp4", frames=60)  # 5 s at 12 fps: over the 3 s limit
    write_video(media / "wide.mp4", frames=8, width=320, height=256)  # 81,920 pixels a frame: over 0.05 MP
    (media / "big.png").write_bytes(_png(2, size=(700, 700)))  # ~1.4 MB of noise: over 1 MB
    (media / "many-pixels.png").write_bytes(flat_png((4000, 3000)))  # 12 MP in a few kB: over 10 MP
    (media / "loop-a").symlink_to(media / "loop-b")
    (media / "loop-b").symlink_to(media / "loop-a")
    os.mkfifo(media / "fifo.png")
    (root / "secret.txt").write_text("outside the media root")
    with serve_tiny(root, "--media-root", str(media), "--codec-frames", "8", "--codec-canvas", "64",
                    "--codec-images", "2", "--frames", "4", *LIMITS) as (base, app):
        yield base, media, app


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
    content = [_image_part(data_url(_png(1), "image/png")), {"type": "text", "text": QUESTION}]
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
    for url in (data_url(data, "video/mp4"), "clip.mp4"):
        codec = _ask(client, [_video_part(url), {"type": "text", "text": "What moves?"}])
        frames = _ask(client, [_video_part(url), {"type": "text", "text": "What moves?"}],
                      extra_body={"video_mode": "frames"})
        assert codec.choices[0].message.content and frames.choices[0].message.content
        assert codec.usage.prompt_tokens != frames.usage.prompt_tokens  # different visual inputs


def test_multi_turn_and_system_messages(client):
    messages = [{"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": [_image_part(data_url(_png(3), "image/png")),
                                             {"type": "text", "text": QUESTION}]},
                {"role": "assistant", "content": "A square."}, {"role": "user", "content": "What colour?"}]
    reply = client.chat.completions.create(model="tiny-llava", messages=messages, temperature=0, max_tokens=8)
    first = _ask(client, messages[1]["content"])
    assert reply.choices[0].message.content and reply.usage.prompt_tokens > first.usage.prompt_tokens


def test_a_vanishing_temperature_is_greedy(client):
    """A temperature too small to divide the logits by (found by the fuzz test: it overflowed them and
    failed generation) samples greedily, as 0 does."""
    greedy = _ask(client, "Tell me a story.", temperature=0, max_tokens=8).choices[0].message.content
    for tiny in (1e-308, 1e-6):
        assert _ask(client, "Tell me a story.", temperature=tiny, max_tokens=8).choices[0].message.content == greedy


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
    base = server[0]
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
HI_JSON = '{"messages": [{"role": "user", "content": "hi"}]'
PNG_B64 = data_url(_png(4), "image/png").split(",", 1)[1]
BAD = [
    ("not json", None, 400, "not valid JSON"),
    ({**HI, "model": "gpt-4"}, None, 404, "does not exist"),
    ({"messages": []}, None, 400, "at least 1 item"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, None, 400, "role"),
    (_user([{"type": "audio_url", "audio_url": {"url": "x"}}]), None, 400, "unsupported type 'audio_url'"),
    (_user([_image_part("https://example.com/cat.png")]), None, 400, "remote URLs are not fetched"),
    (_user([_image_part("data:image/png;base64,!!!")]), None, 400, "not valid base64"),
    (_user([_image_part(data_url(b"not a png", "image/png"))]), None, 400, "not readable"),
    (_user([_video_part(data_url(b"not a video", "video/mp4"))]), None, 400, "not readable"),
    (_user([_image_part("../secret.txt")]), None, 403, "outside the media"),
    (_user([_image_part("/etc/passwd")]), None, 403, "outside the media"),
    (_user([_image_part("missing.png")]), None, 400, "no such file"),
    (_user([_image_part("big.png")]), None, 413, "larger than"),
    (_user([_video_part("long.mp4")]), None, 413, "limit is 3 s"),
    ({**HI, "max_tokens": 65}, None, 400, "max_tokens"),
    ({**HI, "temperature": 3}, None, 400, "temperature"),
    ({**HI, "n": 9}, None, 400, "n: Input should be less than or equal to 8"),
    ({**HI, "logit_bias": {"x": 1}}, None, 400, "logit_bias"),
    ({**HI, "logit_bias": {"999999999": 1}}, None, 400, "token ids this model does not have"),
    ({**HI, "top_logprobs": 2}, None, 400, "top_logprobs needs logprobs"),
    ({**HI, "top_logprobs": 21, "logprobs": True}, None, 400, "top_logprobs"),
    ({**HI, "presence_penalty": 2.5}, None, 400, "presence_penalty"),
    ({**HI, "repetition_penalty": 0}, None, 400, "repetition_penalty"),
    # fields whose meaning an answer would silently lose are refused, not ignored
    ({**HI, "tools": [{"type": "function", "function": {"name": "f"}}]}, None, 400, "does not call tools"),
    ({**HI, "tool_choice": "required"}, None, 400, "does not call tools"),
    ({**HI, "response_format": {"type": "json_object"}}, None, 400, "cannot hold its answer to json_object"),
    ({**HI, "audio": {"voice": "x"}}, None, 400, "does not speak"),
    ({**HI, "media_io_kwargs": {"video": {"num_frames": 0}}}, None, 400, "num_frames"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "developer", "content": "x"}]}, None, 400,
     "a developer message may only come first"),
    ({**HI, "video_mode": "pixels"}, None, 400, "video_mode"),
    (_user("Look: <image> what is it?"), None, 400, "may not contain <image>"),
    (_user([{"type": "text", "text": "<image>"}, _image_part("photo.png")]), None, 400, "may not contain"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, None, 400, "last message must come from"),
    (None, 4 << 20, 413, "larger than 3"),
    # a stream whose options are not an object (once a 500 that kept its place in the line)
    ({**HI, "stream": True, "stream_options": "yes"}, None, 400, "stream_options"),
    ({**HI, "stream_options": {"include_usage": True}}, None, 400, "only allowed when stream is true"),
    # special paths under the media root
    (_user([_image_part("loop-a")]), None, 400, "not a usable path"),
    (_user([_image_part("photo\x00.png")]), None, 400, "NUL byte"),
    (_user([_image_part("a" * 5000 + ".png")]), None, 400, "not a usable path"),
    (_user([_image_part("fifo.png")]), None, 400, "no such file"),
    (_user([_video_part("fifo.png")]), None, 400, "no such file"),
    # data URLs with odd MIME types (a video's type once named its temporary file)
    (_user([_video_part("data:video/x/../../y;base64,AAAA")]), None, 400, "data URL must be"),
    (_user([_video_part("data:video/" + "x" * 300 + ";base64,AAAA")]), None, 400, "data URL must be"),
    (_user([_image_part("data:image/p\x00ng;base64," + PNG_B64)]), None, 400, "data URL must be"),
    (_user([_image_part("data:;base64," + PNG_B64)]), None, 400, "data URL must be"),
    # numbers JSON cannot hold, and nesting beyond any request's shape
    (HI_JSON + ', "max_tokens": NaN}', None, 400, "max_tokens"),
    (HI_JSON + ', "temperature": Infinity}', None, 400, "temperature"),
    (HI_JSON + ', "max_tokens": 1e400}', None, 400, "max_tokens"),
    (HI_JSON + ', "seed": 1e400}', None, 400, "seed"),
    (HI_JSON + ', "seed": -Infinity}', None, 400, "seed"),
    ('{"messages": ' + "[" * 100000 + "]" * 100000 + "}", None, 400, "not valid JSON"),
    # types are checked, not coerced
    ({**HI, "stream": "false"}, None, 400, "stream: Input should be a valid boolean"),
    ({**HI, "n": True}, None, 400, "n: Input should be a valid integer"),
    ({**HI, "max_tokens": 5.0}, None, 400, "max_tokens"),
    (_user([{"type": "text", "text": 42}]), None, 400, "messages[0].content[0].text"),
    (_user([{"type": "text", "text": {"nested": "object"}}]), None, 400, "messages[0].content[0].text"),
    ({"messages": [{"role": "system", "content": 7}, {"role": "user", "content": "hi"}]}, None, 400,
     "messages[0].content"),
    # pixel budgets, read from the headers before decoding
    (_user([_image_part("many-pixels.png")]), None, 413, "more than the limit of 10,000,000"),
    (_user([_image_part(data_url(flat_png((4000, 3000)), "image/png"))]), None, 413, "more than the limit"),
    (_user([_video_part("wide.mp4")]), None, 413, "320x256"),
]


def _leftover_temporary_files() -> list[str]:
    return sorted(f for f in os.listdir(tempfile.gettempdir()) if f.startswith("llava-serve-"))


def _post(base: str, body, padding=None):
    url = base + "/v1/chat/completions"
    headers = {"content-type": "application/json"}
    if body == "not json":
        return httpx.post(url, content=b"{oops", timeout=30, headers=headers)
    if padding:
        return httpx.post(url, content=b" " * padding, timeout=30, headers=headers)
    if isinstance(body, str):
        return httpx.post(url, content=body.encode(), timeout=30, headers=headers)
    return httpx.post(url, json=body, timeout=30)


@pytest.mark.parametrize("body, padding, status, message", BAD, ids=range(len(BAD)))
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, client, body, padding, status,
                                                                    message):
    base = server[0]
    before = _leftover_temporary_files()
    response = _post(base, body, padding)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"] and set(error) == {"message", "type", "param", "code"}
    assert httpx.get(base + "/health").json()["waiting"] == 0
    assert _leftover_temporary_files() == before
    assert _ask(client, "Still there?").choices[0].message.content


def test_bad_streams_never_fill_the_waiting_line(server, client):
    """More malformed streaming requests than --max-waiting (32): each is refused, none keeps a place."""
    for _ in range(40):
        response = _post(server[0], {**HI, "stream": True, "stream_options": ["include_usage"]})
        assert response.status_code == 400
    assert httpx.get(server[0] + "/health").json()["waiting"] == 0
    assert _ask(client, "Still there?").choices[0].message.content


def test_an_internal_fault_is_a_500_body_that_frees_its_place_and_files(server, client, monkeypatch):
    """A fault of the server itself (here: the video check raises what no request should cause) is a 500
    with the OpenAI error body; the request's place in the line and its temporary video file are freed."""
    from llava.serve import messages

    def broken(path, param, policy):
        assert os.path.isfile(path)  # the data URL's bytes were written to a temporary file
        raise RuntimeError("a bug in the video check")

    monkeypatch.setattr(messages, "_check_video", broken)
    before = _leftover_temporary_files()
    video = data_url((server[1] / "clip.mp4").read_bytes(), "video/mp4")
    for stream in (False, True):
        response = _post(server[0], {**_user([_video_part(video)]), "stream": stream})
        assert response.status_code == 500, response.text
        assert response.json()["error"]["type"] == "server_error"
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(server[0] + "/health").json()["waiting"] == 0
    assert _leftover_temporary_files() == before
    monkeypatch.undo()
    assert _ask(client, [_video_part(video), {"type": "text", "text": "What moves?"}]).choices[0].message.content


def test_media_decodes_are_bounded(server, client, monkeypatch):
    """At most --max-concurrent-decodes (2) requests decode their media at once; the rest wait their turn."""
    import llava.serve.openai_api as api

    active, most = [0], [0]
    lock = threading.Lock()
    real = api.parse_messages

    def counted(*args, **kwargs):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            time.sleep(0.2)
            return real(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(api, "parse_messages", counted)
    content = [_image_part("photo.png"), {"type": "text", "text": QUESTION}]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: _ask(client, content, max_tokens=2), range(6)))
    assert all(a.choices[0].message.content is not None for a in answers)
    assert most[0] == 2


def test_the_openapi_schema_declares_the_request(server):
    schema = httpx.get(server[0] + "/openapi.json").json()
    operation = schema["paths"]["/v1/chat/completions"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    request = _resolve(schema, body)
    assert {"messages", "stream", "max_tokens", "temperature", "stop", "video_mode", "n", "logprobs", "top_k",
            "media_io_kwargs"} <= set(request["properties"])
    # other fields are ignored (as vLLM does), so the schema allows them; message parts allow none
    assert request["additionalProperties"] is True and request["required"] == ["messages"]
    assert _resolve(schema, {"$ref": "#/components/schemas/TextPart"})["additionalProperties"] is False
    assert {"400", "413", "500", "503"} <= set(operation["responses"])
    for ref in json.dumps(schema).split('"$ref": "')[1:]:  # every reference resolves inside the document
        _resolve(schema, {"$ref": ref.split('"', 1)[0]})


def _resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        assert node["$ref"].startswith("#/"), node
        target = schema
        for key in node["$ref"][2:].split("/"):
            target = target[key]
        node = target
    return node


def test_the_openai_client_raises_on_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="remote URLs"):
        _ask(client, [_image_part("http://example.com/a.png")])


def test_the_server_reads_no_files_without_a_media_root():
    from llava.serve.messages import MediaPolicy, RequestError, parse_messages
    from llava.serve.protocol import UserMessage

    messages = [UserMessage(role="user", content=[_image_part("/etc/hostname")])]
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


# ---------------------------------------------------------------- the fields vLLM takes
def test_one_model_by_id(server, client):
    assert client.models.retrieve("tiny-llava").id == "tiny-llava"
    missing = httpx.get(server[0] + "/v1/models/gpt-4")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_ignored_fields_and_the_developer_role(client):
    """Fields the server has no use for are ignored (as vLLM does); a developer message is a system message."""
    plain = _ask(client, "Tell me a story.").choices[0].message.content
    extra = {"store": True, "metadata": {"a": "b"}, "parallel_tool_calls": False, "chat_template_kwargs": {},
             "response_format": {"type": "text"}, "tool_choice": "none"}
    assert _ask(client, "Tell me a story.", extra_body=extra).choices[0].message.content == plain
    as_system = client.chat.completions.create(model="tiny-llava", temperature=0, max_tokens=12, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a story."}])
    as_developer = client.chat.completions.create(model="tiny-llava", temperature=0, max_tokens=12, messages=[
        {"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Tell me a story."}])
    assert as_developer.choices[0].message.content == as_system.choices[0].message.content


def test_sampling_fields_are_honoured(server, client):
    tokenizer = server[2].state.engine.tokenizer
    greedy = _ask(client, "Tell me a story.", max_tokens=16).choices[0].message.content
    # top_k=1 and min_p=1 keep only the likeliest token: sampling at temperature 1 is then greedy
    for narrow in ({"top_k": 1}, {"min_p": 1.0}):
        sampled = _ask(client, "Tell me a story.", max_tokens=16, temperature=1.0, seed=3, extra_body=narrow)
        assert sampled.choices[0].message.content == greedy, narrow
    assert _ask(client, "Tell me a story.", max_tokens=16, temperature=1.0, seed=3).choices[0].message.content != greedy
    word = tokenizer(" cat", add_special_tokens=False).input_ids[0]
    biased = _ask(client, "Tell me a story.", max_tokens=4, logit_bias={str(word): 100})
    assert biased.choices[0].message.content == tokenizer.decode([word] * 4).strip()


def test_n_answers(client):
    greedy = _ask(client, "Tell me a story.", n=2)
    assert [c.index for c in greedy.choices] == [0, 1]
    assert greedy.choices[0].message.content == greedy.choices[1].message.content
    sampled = _ask(client, "Tell me a story.", n=3, temperature=1.0, seed=11, max_tokens=10)
    assert len({c.message.content for c in sampled.choices}) > 1
    assert sampled.usage.completion_tokens <= 30 and sampled.usage.completion_tokens > 10
    chunks = list(_ask(client, "Tell me a story.", n=3, temperature=1.0, seed=11, max_tokens=10, stream=True))
    streamed = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
                for i in range(3)]
    assert [s.strip() for s in streamed] == [c.message.content for c in sampled.choices]
    finishes = [c.choices[0] for c in chunks if c.choices and c.choices[0].finish_reason]
    assert sorted(choice.index for choice in finishes) == [0, 1, 2]


def test_logprobs(client):
    """Greedy answers pick the likeliest token: each token's log-probability is its top alternative's; the
    tokens spell the answer; streamed log-probabilities are the whole answer's."""
    whole = _ask(client, "Tell me a story.", logprobs=True, top_logprobs=3, max_tokens=10)
    entries = whole.choices[0].logprobs.content
    assert "".join(e.token for e in entries).strip() == whole.choices[0].message.content
    for entry in entries:
        assert len(entry.top_logprobs) == 3 and entry.logprob <= 0
        assert entry.top_logprobs[0].token == entry.token and entry.top_logprobs[0].logprob == entry.logprob
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob >= entry.top_logprobs[2].logprob
        assert bytes(entry.bytes).decode() == entry.token
    chunks = list(_ask(client, "Tell me a story.", logprobs=True, top_logprobs=3, max_tokens=10, stream=True))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, e.logprob) for e in streamed] == [(e.token, e.logprob) for e in entries]
    assert _ask(client, "Tell me a story.").choices[0].logprobs is None


def test_media_io_kwargs_set_a_frames_videos_frame_count(client):
    """vLLM's ``media_io_kwargs.video.num_frames`` (what lmms-eval's openai model sends) sets how many uniform
    frames a ``frames``-mode video is read at; codec-mode videos keep the checkpoint's codec settings."""
    content = [_video_part("clip.mp4"), {"type": "text", "text": "What moves?"}]

    def prompt_tokens(**extra) -> int:
        return _ask(client, content, max_tokens=1, extra_body=extra).usage.prompt_tokens

    frames4 = prompt_tokens(video_mode="frames")
    frames2 = prompt_tokens(video_mode="frames", media_io_kwargs={"video": {"num_frames": 2}})
    assert frames2 < frames4
    assert prompt_tokens(media_io_kwargs={"video": {"num_frames": 2}}) == prompt_tokens()


def test_a_client_that_leaves_a_whole_answer_frees_the_server(server, monkeypatch):
    """A non-streamed request whose client goes away is cancelled like a streamed one."""
    base, _, app = server
    model = app.state.engine.model
    forward = model.forward

    def slow(*args, **kwargs):
        time.sleep(0.05)
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", slow)
    before = httpx.get(base + "/health").json()
    body = {"model": "tiny-llava", "messages": [{"role": "user", "content": "Talk."}], "max_tokens": 64,
            "temperature": 1.0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(base + "/v1/chat/completions", json=body, timeout=0.5)
    deadline = time.time() + 20
    while time.time() < deadline and httpx.get(base + "/health").json()["cancelled"] == before["cancelled"]:
        time.sleep(0.05)
    health = httpx.get(base + "/health").json()
    assert health["cancelled"] == before["cancelled"] + 1 and health["waiting"] == 0


def test_the_request_fields_reach_the_sampling():
    from llava.serve.openai_api import _sampling
    from llava.serve.protocol import parse_request

    body = {**HI, "n": 3, "top_k": 5, "min_p": 0.1, "presence_penalty": 0.5, "frequency_penalty": -1.0,
            "repetition_penalty": 1.2, "logit_bias": {"7": -100}, "logprobs": True, "top_logprobs": 2,
            "max_completion_tokens": 9}
    sampling = _sampling(parse_request(json.dumps(body).encode()), 64, vocab_size=100)
    assert (sampling.n, sampling.top_k, sampling.min_p, sampling.presence_penalty, sampling.frequency_penalty,
            sampling.repetition_penalty, sampling.logit_bias, sampling.logprobs, sampling.top_logprobs,
            sampling.max_tokens) == (3, 5, 0.1, 0.5, -1.0, 1.2, {7: -100.0}, True, 2, 9)


def test_openai_penalties_count_the_answers_tokens_only():
    import torch

    from llava.serve.engine import OpenAIPenalties

    ids = torch.tensor([[0, 1, 2, 2, 3]])  # a prompt of 2 tokens, then 2, 2, 3
    scores = OpenAIPenalties(prompt_length=2, presence=0.5, frequency=0.25)(ids, torch.zeros(1, 5))
    assert scores.tolist() == [[0.0, 0.0, -1.0, -0.75, 0.0]]


def test_the_penalties_push_generation_away_from_what_it_wrote(tmp_path):
    """A random tiny model's greedy answer repeats a token; each penalty makes it write more kinds of tokens."""
    import torch

    from llava.model.builder import load_pretrained_model
    from llava.model.tiny import save_tiny_checkpoint
    from llava.processing.conversation import get_conv_template
    from llava.processing.media import VisualInputs
    from llava.serve.engine import ChatEngine, Sampling

    tokenizer, model, _, _ = load_pretrained_model(str(save_tiny_checkpoint(tmp_path / "tiny")),
                                                   torch_dtype=torch.float32)
    engine = ChatEngine(tokenizer, model)
    conv = get_conv_template("qwen_1_5")
    conv.append_message(conv.roles[0], "Tell me a story.")
    conv.append_message(conv.roles[1], None)

    def entries(**penalty) -> list[dict]:
        sampling = Sampling(max_tokens=12, temperature=0, logprobs=True, **penalty)
        (answer,) = engine.complete(conv, VisualInputs(), sampling, threading.Event())
        return answer.logprobs

    plain = entries()
    assert len({entry["token"] for entry in plain}) <= 3
    for penalty in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}):
        assert len({entry["token"] for entry in entries(**penalty)}) > len({e["token"] for e in plain}), penalty
    # transformers' repetition penalty (prompt and answer) lowers the recurring token's probability
    repeated = entries(repetition_penalty=2.0)
    assert repeated[1]["token"] == plain[1]["token"] == plain[0]["token"]
    assert repeated[1]["logprob"] < plain[1]["logprob"] - 0.01
