"""The server's chat page (``GET /``) in a real headless Chromium, driven through Selenium.

A tiny checkpoint with larger weights (``sharpened``: its greedy answers are visible text, not just
newlines) is served by the OpenAI-compatible app on a loopback port; the page uploads the demo video
and an image, streams answers, keeps the conversation's history and shows errors. Chromium and
chromedriver are required (``scripts/test.sh`` installs Debian's ``chromium chromium-driver``): the
test fails, rather than skips, without them.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from server_helpers import serve_tiny

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT_S = 30

# Records each request body the page sends (installed after every page load).
RECORD_FETCH = """
window.__bodies = [];
const realFetch = window.fetch;
window.fetch = (url, options) => {
  if (options && options.body) window.__bodies.push(options.body);
  return realFetch(url, options);
};
"""

# A stand-in server answer: a content chunk split in the middle of its line, then an error event.
FAKE_STREAM_ERROR = """
window.fetch = async () => new Response(new ReadableStream({start(c) {
  const e = new TextEncoder();
  c.enqueue(e.encode('data: {"choices": [{"delta": {"content": "Hel'));
  c.enqueue(e.encode('lo"}}]}\\n\\ndata: {"error": {"message": "generation failed: boom"}}\\n\\n'));
  c.close();
}}), {status: 200, headers: {"Content-Type": "text/event-stream"}});
"""


def _selenium():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: install the project's [dev] extra (bash scripts/test.sh)")
    return webdriver, Service


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The chat server for a sharpened tiny checkpoint: its base URL."""
    with serve_tiny(tmp_path_factory.mktemp("chat-page"), "--device", "cpu", "--codec-frames", "8",
                    "--codec-canvas", "64", "--codec-images", "2", name="tiny") as (base, _):
        yield base


@pytest.fixture(scope="module")
def browser():
    webdriver, Service = _selenium()
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (Path(p).is_file() and os.access(p, os.X_OK))]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: install Chromium (Debian: apt-get install chromium "
                    "chromium-driver; bash scripts/test.sh does it) or set CHROMIUM / CHROMEDRIVER")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1200,900", "--disable-extensions", "--no-first-run"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def page(server, browser):
    """The chat page, loaded fresh, with the model id read and request bodies recorded."""
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    _wait(browser, lambda d: d.find_element(By.ID, "model").text == "model: tiny")
    browser.execute_script(RECORD_FETCH)
    return browser


def _wait(driver, condition):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.05).until(condition)


def _set(driver, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By

    field = driver.find_element(By.ID, element_id)
    if not field.is_displayed():  # a setting: open the settings panel, as a user does
        driver.find_element(By.CSS_SELECTOR, "#settings summary").click()
    field.clear()
    field.send_keys(value)


def _attach(driver, path: Path) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "file").send_keys(str(path))


def _ask(driver, question: str, submit: str = "click") -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _set(driver, "question", question)
    if submit == "click":
        driver.find_element(By.ID, "send").click()
    else:
        driver.find_element(By.ID, "question").send_keys(Keys.ENTER)


def _answers(driver, count: int) -> list[str]:
    """Wait for ``count`` finished assistant messages and the send button being enabled again; their texts."""
    from selenium.webdriver.common.by import By

    def finished(d):
        done = d.find_elements(By.CSS_SELECTOR, "#messages .assistant[data-state='done']")
        return len(done) >= count and d.find_element(By.ID, "send").is_enabled() and done

    done = _wait(driver, finished)
    return [driver.execute_script("return arguments[0].textContent", a) for a in done]


def _bodies(driver) -> list[dict]:
    return [json.loads(b) for b in driver.execute_script("return window.__bodies")]


def _errors(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#messages .error[role='alert']")]


def _complete(server: str, body: dict) -> str:
    """The server's whole (not streamed) answer to the request body the page sent."""
    data = json.dumps({**body, "stream": False}).encode()
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(server + "/v1/chat/completions", data, headers)
    with urllib.request.urlopen(request, timeout=WAIT_S) as response:
        return json.load(response)["choices"][0]["message"]["content"]


def _data(url: str, mime: str) -> bytes:
    header, payload = url.split(",", 1)
    assert header == f"data:{mime};base64"
    return base64.b64decode(payload)


def test_video_conversation_streams_answers_and_sends_the_history(server, page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from llava.sample_data import sample_video_path

    video = sample_video_path()  # bigbuckbunny.mp4, 1 MB: a 1.4 MB data URL
    _set(page, "temperature", "0")
    _set(page, "max-tokens", "12")
    Select(page.find_element(By.ID, "video-mode")).select_by_value("codec")
    _attach(page, video)
    _wait(page, lambda d: video.name in d.find_element(By.ID, "file-name").text)
    assert page.find_elements(By.CSS_SELECTOR, "#preview video")
    _ask(page, "What happens in the video?")
    first = _answers(page, 1)[0]
    assert first.strip(), "the answer is empty"
    (body,) = _bodies(page)
    assert {k: body[k] for k in ("model", "stream", "temperature", "max_tokens", "video_mode")} == {
        "model": "tiny", "stream": True, "temperature": 0, "max_tokens": 12, "video_mode": "codec"}
    (message,) = body["messages"]
    assert message["role"] == "user" and [p["type"] for p in message["content"]] == ["video_url", "text"]
    assert _data(message["content"][0]["video_url"]["url"], "video/mp4") == video.read_bytes()
    assert message["content"][1]["text"] == "What happens in the video?"
    # the streamed text, pieced together from the SSE chunks, is the server's whole (greedy) answer
    assert first.strip() == _complete(server, body).strip()
    user_text = page.find_element(By.CSS_SELECTOR, "#messages .user").text
    assert f"video: {video.name}" in user_text and "What happens in the video?" in user_text

    # the media went with the first question; a follow-up (sent with Enter) carries the whole history
    assert not page.find_element(By.ID, "file").is_enabled()
    _ask(page, "And then?", submit="enter")
    second = _answers(page, 2)[1]
    assert second.strip()
    follow_up = _bodies(page)[1]
    assert follow_up["messages"] == [message, {"role": "assistant", "content": first},
                                     {"role": "user", "content": [{"type": "text", "text": "And then?"}]}]
    assert len(page.find_elements(By.CSS_SELECTOR, "#messages .user")) == 2
    assert not _errors(page)

    page.find_element(By.ID, "new-chat").click()
    assert not page.find_elements(By.CSS_SELECTOR, "#messages .message")
    assert page.find_element(By.ID, "file").is_enabled()
    assert not page.find_elements(By.ID, "file-name")
    _ask(page, "Hello?")
    _answers(page, 1)
    assert _bodies(page)[2]["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Hello?"}]}]


def test_image_question_gets_an_answer(server, page, tmp_path):
    from selenium.webdriver.common.by import By

    image = tmp_path / "gradient.png"
    Image.linear_gradient("L").resize((48, 32)).convert("RGB").save(image)
    _set(page, "temperature", "0")
    _set(page, "max-tokens", "8")
    _attach(page, image)
    _wait(page, lambda d: "gradient.png (image" in d.find_element(By.ID, "file-name").text)
    _ask(page, "What is in the image?")
    (answer,) = _answers(page, 1)
    assert answer.strip()
    (body,) = _bodies(page)
    parts = body["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "text"] and "video_mode" not in body
    assert _data(parts[0]["image_url"]["url"], "image/png") == image.read_bytes()
    assert answer.strip() == _complete(server, body).strip()
    assert page.find_elements(By.CSS_SELECTOR, "#messages .user .media img")
    assert not _errors(page)


def test_errors_are_shown(page, tmp_path):
    from selenium.webdriver.common.by import By

    notes = tmp_path / "notes.txt"
    notes.write_text("not a picture")
    _attach(page, notes)
    _wait(page, lambda d: any("notes.txt is not an image or a video" in e for e in _errors(d)))
    assert not page.find_elements(By.ID, "file-name") and not _bodies(page)

    # an unreadable image: the server's 400 JSON error is shown, and the turn is not kept
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG but not really")
    _attach(page, broken)
    _wait(page, lambda d: d.find_elements(By.ID, "file-name"))
    _ask(page, "What is this?")
    _wait(page, lambda d: any("the image is not readable" in e for e in _errors(d)))
    _wait(page, lambda d: d.find_element(By.ID, "send").is_enabled())
    assert not page.find_elements(By.CSS_SELECTOR, "#messages .assistant")
    assert page.find_element(By.ID, "file").is_enabled()  # nothing was answered: the media can change

    # out-of-range settings: another 400
    _set(page, "max-tokens", "100000")
    _ask(page, "Hi")
    _wait(page, lambda d: any("max_tokens must be at most 1024" in e for e in _errors(d)))

    # an error event in the middle of a stream: the partial answer stays, marked, and the error is shown
    page.execute_script(FAKE_STREAM_ERROR)
    _ask(page, "Hi again")
    _wait(page, lambda d: any("generation failed: boom" in e for e in _errors(d)))
    partial = page.find_elements(By.CSS_SELECTOR, "#messages .assistant[data-state='error']")
    assert [a.text for a in partial] == ["Hello"]
    assert page.find_element(By.ID, "send").is_enabled()
