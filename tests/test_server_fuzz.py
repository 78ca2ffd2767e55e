"""Property-based requests against the live server on loopback (Hypothesis, derandomised, bounded).

Bodies are built from the request's own fields with values that are right, wrong in type, out of range,
non-finite, hostile (NUL bytes, ``<image>``, paths out of the media root, a FIFO, a symlink loop, odd
data-URL types, broken base64 and media) or arbitrary JSON, and some bodies are arbitrary JSON
altogether. Every answer must be a 2xx (a streamed one ends in ``[DONE]`` or an error event) or a 4xx
with the OpenAI error body; afterwards no request is waiting, no temporary file is left, and a normal
request is answered.
"""

from __future__ import annotations

import json
import os
import tempfile

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from server_helpers import data_url, flat_png, serve_tiny
from train_helpers import write_video

EXAMPLES = 150
ERROR_FIELDS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    media = root / "media"
    media.mkdir()
    (media / "photo.png").write_bytes(flat_png())
    write_video(media / "clip.mp4", frames=8)
    (media / "loop").symlink_to(media / "loop")
    os.mkfifo(media / "fifo.png")
    (root / "outside.png").write_bytes(flat_png())
    with serve_tiny(root, "--media-root", str(media), "--codec-frames", "8", "--codec-canvas", "64",
                    "--codec-images", "2", "--frames", "4", "--max-tokens", "4", "--max-media-mb", "1",
                    "--max-image-megapixels", "1", "--max-waiting", "4") as (base, _):
        yield base, media


# ---------------------------------------------------------------- strategies
hostile_text = st.sampled_from(["", "hi", "<image>", "a\x00b", "\u202e\ud7ff", "x" * 300, "NaN", "null", "📷"])
anything = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True, allow_infinity=True)
    | hostile_text | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def urls(media) -> tuple[st.SearchStrategy, st.SearchStrategy]:
    """``(good, hostile)`` media URLs for the server's media root."""
    photo = data_url(flat_png(), "image/png")
    good = st.sampled_from([
        "photo.png", "clip.mp4", f"file://{media / 'photo.png'}", photo, data_url(flat_png(mode="I;16"), "image/png"),
        data_url((media / "clip.mp4").read_bytes(), "video/mp4"),
    ])
    hostile = st.sampled_from([
        "../outside.png", "/etc/hostname", "loop", "fifo.png", "missing.png", "photo\x00.png", "a" * 5000,
        "http://example.com/x.png", "ftp://x/y", photo.replace("image/png", "image/png/../../x"),
        photo.replace("image/png", "x" * 200), "data:image/png;base64,!!!", "data:;base64,AAAA",
        data_url(b"not media", "video/mp4"), data_url(flat_png((1200, 1000)), "image/png"),
        "data:video/mp4;base64," + "A" * 40, "",
    ])
    return good, hostile | anything


def parts(url: st.SearchStrategy, text: st.SearchStrategy) -> st.SearchStrategy:
    def media(kind: str) -> st.SearchStrategy:
        return st.fixed_dictionaries({"type": st.just(kind), kind: st.fixed_dictionaries({"url": url})})

    return st.fixed_dictionaries({"type": st.just("text"), "text": text}) | media("image_url") | media("video_url")


def messages(media) -> st.SearchStrategy:
    """Well-formed conversations (answered), and conversations with hostile parts or messages."""
    good_url, hostile_url = urls(media)
    good_text = st.text(max_size=30).filter(lambda t: "<image>" not in t)
    good_parts = parts(good_url, good_text)
    odd_type = st.fixed_dictionaries({"type": st.sampled_from(["audio_url", "input_text", "", "image"])})
    hostile_parts = parts(hostile_url, hostile_text) | parts(hostile_url, anything) | odd_type | anything
    content = good_text | st.lists(good_parts, min_size=1, max_size=3)
    spoiled = st.lists(good_parts | hostile_parts | hostile_parts, min_size=1, max_size=3)
    role = st.sampled_from(["user", "system", "assistant"]) | st.sampled_from(["tool", "robot"]) | anything
    odd = st.fixed_dictionaries({"role": role}, optional={"content": spoiled | anything, "name": anything})
    user = st.fixed_dictionaries({"role": st.just("user"), "content": content})
    hostile_user = st.fixed_dictionaries({"role": st.just("user"), "content": spoiled})
    assistant = st.fixed_dictionaries({"role": st.just("assistant"), "content": good_text})
    system = st.fixed_dictionaries({"role": st.just("system"), "content": good_text})
    clean = st.tuples(st.lists(system, max_size=1), st.lists(user | assistant, max_size=2), user)
    hostile = st.tuples(st.lists(system, max_size=1), st.lists(user | odd, max_size=2), hostile_user)
    return (clean | hostile).map(lambda t: [*t[0], *t[1], t[2]])


GOOD_FIELDS = {
    "stream": st.booleans(),
    "max_tokens": st.integers(1, 4),
    "max_completion_tokens": st.integers(1, 4),
    "temperature": st.floats(0, 2),
    "top_p": st.floats(0, 1),
    "stop": st.sampled_from(["x", ["a", "b"], []]),
    "seed": st.integers(0, 2**63 - 1),
    "n": st.integers(1, 2),
    "model": st.just("tiny-llava"),
    "video_mode": st.sampled_from(["codec", "frames"]),
    "logprobs": st.booleans(),
    "top_k": st.sampled_from([-1, 0, 5]),
    "min_p": st.floats(0, 1),
    "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2),
    "repetition_penalty": st.floats(0.5, 2),
    "media_io_kwargs": st.sampled_from([{"video": {"num_frames": 2}}, {"video": {"fps": 1.0}}, {}]),
    "store": st.booleans(),  # ignored, as vLLM ignores what it does not use
}
HOSTILE_FIELDS = {
    "stream": st.sampled_from(["false", 0, None, [True]]),
    "stream_options": st.sampled_from(["yes", ["include_usage"], {"include_usage": "yes"}, {"x": 1}, None]),
    "max_tokens": st.sampled_from([0, -1, 5, 2**70, 1.5, float("nan"), float("inf"), "3", True]),
    "temperature": st.sampled_from([-0.1, 2.5, float("nan"), float("-inf"), "0.2", None]),
    "seed": st.sampled_from([-1, 2**64, 1e400, float("nan"), "7", True]),
    "n": st.sampled_from([0, 9, True, 1.0, "1"]),
    "top_logprobs": st.sampled_from([21, -1, True, "3", 2]),
    "top_k": st.sampled_from([-2, 1.5, "5", 2**40]),
    "media_io_kwargs": anything,
    "tools": anything,
    "response_format": anything,
    "stop": st.sampled_from(["", ["a"] * 5, [1], {"a": 1}, "x" * 300]),
    "model": st.sampled_from(["gpt-4o", "", 5, "x" * 300]),
    "video_mode": st.sampled_from(["pixels", "", 1]),
    "logit_bias": anything,
}


def bodies(media) -> st.SearchStrategy:
    good = st.fixed_dictionaries({"messages": messages(media)}, optional=GOOD_FIELDS)
    field = st.sampled_from(sorted(HOSTILE_FIELDS)).flatmap(lambda k: st.tuples(st.just(k), HOSTILE_FIELDS[k]))
    streamed = st.booleans().map(lambda on: {"stream": True} if on else {})  # the streaming path half the time
    bad_fields = st.tuples(good, st.lists(field, min_size=1, max_size=3), streamed).map(
        lambda t: {**t[0], **t[2], **dict(t[1])})
    encoded = (good | bad_fields | bad_fields | anything).map(lambda body: json.dumps(body, allow_nan=True).encode())
    return encoded | st.binary(max_size=64)


def _leftovers() -> list[str]:
    return sorted(f for f in os.listdir(tempfile.gettempdir()) if f.startswith("llava-serve-"))


# ---------------------------------------------------------------- the test
def test_fuzzed_requests_are_answered_or_refused_and_leave_nothing_behind(server):
    base, media = server
    before = _leftovers()
    seen: dict[int, int] = {}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(body=bodies(media))
    def one_request(body: bytes):
        with httpx.stream("POST", base + "/v1/chat/completions", content=body, timeout=60,
                          headers={"content-type": "application/json"}) as response:
            raw = response.read()
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, raw[:500]
        if response.status_code >= 400:
            assert set(json.loads(raw)["error"]) == ERROR_FIELDS, raw[:500]
        elif response.headers["content-type"].startswith("text/event-stream"):
            events = [line for line in raw.decode().splitlines() if line.startswith("data: ")]
            assert events[-1] == "data: [DONE]" or "error" in json.loads(events[-1][6:]), raw[-500:]
        else:
            assert json.loads(raw)["object"] == "chat.completion"

    one_request()
    print('statuses', seen)
    health = httpx.get(base + "/health").json()
    assert health["waiting"] == 0
    assert _leftovers() == before
    assert seen.get(200, 0) >= 5 and sum(n for s, n in seen.items() if 400 <= s < 500) >= EXAMPLES // 2, seen
    answer = httpx.post(base + "/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "photo.png"}},
                                                  {"type": "text", "text": "What is it?"}]}],
        "max_tokens": 3, "temperature": 0})
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] is not None
