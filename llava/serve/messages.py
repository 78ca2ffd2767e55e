"""OpenAI chat ``messages`` -> a conversation and its visual inputs, with the server's media rules.

Content parts: ``{"type": "text"}``, ``{"type": "image_url", "image_url": {"url": ...}}`` and
``{"type": "video_url", "video_url": {"url": ...}}`` (vLLM's convention for videos). A URL is a
``data:`` URL (base64) or, when the server has a media root, a ``file://`` URL or a path inside that
root; nothing else is read from disk and no remote URL is fetched. Each visual's ``<image>``
placeholders go where its part stands in the message (a codec video takes one per mosaic), and every
visual goes through the one input layer (``llava.mm_inputs``), as in chat, training and evaluation.

Every problem of a request raises :class:`RequestError` with the OpenAI error fields; the server turns
it into a 4xx answer and keeps serving.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image, UnidentifiedImageError

from ..constants import DEFAULT_IMAGE_TOKEN
from ..conversation import Conversation, get_conv_template
from ..mm_inputs import MediaError, VisualInputs, VisualProcessor
from ..video_io import probe

ROLES = ("system", "user", "assistant")


class RequestError(Exception):
    """A request the server cannot answer: HTTP ``status`` and the OpenAI error body's fields."""

    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 kind: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.kind, self.code = message, param, status, kind, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class MediaPolicy:
    """What the server may read: ``media_root`` (``None``: data URLs only) and the size limits."""

    media_root: Path | None = None
    max_media_bytes: int = 64 << 20
    max_video_seconds: float = 600.0
    max_visuals: int = 16


@dataclass
class ParsedChat:
    conversation: Conversation
    visual: VisualInputs
    temporary_files: list[str] = field(default_factory=list)

    def cleanup(self) -> None:
        for path in self.temporary_files:
            Path(path).unlink(missing_ok=True)
        self.temporary_files.clear()


def _data_url(url: str, param: str, policy: MediaPolicy) -> tuple[bytes, str]:
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise RequestError("a data URL must be data:<mime type>;base64,<data>", param)
    if len(payload) * 3 // 4 > policy.max_media_bytes:
        raise RequestError(f"media larger than the limit of {policy.max_media_bytes} bytes", param,
                           status=413, code="media_too_large")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("the data URL's base64 payload is not valid base64", param) from None
    return data, header[len("data:"):-len(";base64")]


def _local_path(url: str, param: str, policy: MediaPolicy) -> Path:
    if policy.media_root is None:
        raise RequestError("this server reads no local files (start it with --media-root DIR)", param,
                           status=403, code="local_files_disabled")
    raw = unquote(urlparse(url).path) if url.startswith("file://") else url
    root = policy.media_root.resolve()
    path = (root / raw).resolve() if not os.path.isabs(raw) else Path(raw).resolve()
    if path != root and root not in path.parents:
        raise RequestError(f"{raw} is outside the media root", param, status=403, code="outside_media_root")
    if not path.is_file():
        raise RequestError(f"{raw}: no such file under the media root", param, code="media_not_found")
    if path.stat().st_size > policy.max_media_bytes:
        raise RequestError(f"{raw} is larger than the limit of {policy.max_media_bytes} bytes", param,
                           status=413, code="media_too_large")
    return path


def _media(url, kind: str, param: str, policy: MediaPolicy, temporary: list[str]):
    """A PIL image or a video file path for one content part's URL."""
    if not isinstance(url, str) or not url:
        raise RequestError(f"{kind}.url must be a non-empty string", param)
    if url.startswith(("http://", "https://", "ftp://")):
        raise RequestError("remote URLs are not fetched; send a data URL (or a path under the media root)",
                           param, code="remote_url")
    if url.startswith("data:"):
        data, mime = _data_url(url, param, policy)
        if kind == "image_url":
            return _open_image(io.BytesIO(data), "the image", param)
        suffix = "." + mime.split("/", 1)[1] if mime.startswith("video/") else ".mp4"
        handle, path = tempfile.mkstemp(prefix="llava-serve-", suffix=suffix.replace("quicktime", "mov"))
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        temporary.append(path)
        return path
    path = _local_path(url, param, policy)
    if kind == "image_url":
        return _open_image(path, path.name, param)
    return str(path)


def _open_image(source, name: str, param: str) -> Image.Image:
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except Image.DecompressionBombError as error:
        raise RequestError(f"{name} has too many pixels ({error})", param, status=413,
                           code="media_too_large") from None
    except (UnidentifiedImageError, OSError) as error:
        why = "not an image format PIL reads" if isinstance(error, UnidentifiedImageError) else str(error)
        raise RequestError(f"{name} is not readable: {why}", param, code="bad_media") from None


def _check_video(path: str, param: str, policy: MediaPolicy) -> None:
    try:
        index = probe(path)
    except MediaError as error:
        raise RequestError(f"the video is not readable: {error}".replace(path, "<video>"), param,
                           code="bad_media") from None
    seconds = index.num_frames / index.fps if index.fps else 0.0
    if seconds > policy.max_video_seconds:
        limit = policy.max_video_seconds
        raise RequestError(f"the video is {seconds:.0f} s long; the limit is {limit:.0f} s", param,
                           status=413, code="video_too_long")


def _checked_text(text, param: str) -> str:
    """Message text, which must not hold the model's placeholder: visuals come only as parts."""
    text = str(text)
    if DEFAULT_IMAGE_TOKEN in text:
        raise RequestError(f"the text may not contain {DEFAULT_IMAGE_TOKEN}: send images and videos as "
                           "image_url / video_url parts", param)
    return text


def _text_of(content, param: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return _checked_text(content, param)
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(_checked_text(p.get("text", ""), param) for p in content)
    raise RequestError("system and assistant content must be text", param)


def parse_messages(messages, conv_template: str, processor: VisualProcessor, policy: MediaPolicy,
                   video_mode: str | None = None) -> ParsedChat:
    """The conversation (ending in an open assistant turn) and visual inputs of an OpenAI ``messages``."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty list", "messages")
    conv = get_conv_template(conv_template)
    parsed = ParsedChat(conv, VisualInputs())
    visuals: list[VisualInputs] = []
    turns: list[tuple[str, str]] = []
    try:
        for i, message in enumerate(messages):
            param = f"messages[{i}]"
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                raise RequestError(f"{param} must be an object with a role in {ROLES}", param)
            role, content = message["role"], message.get("content")
            if role == "system":
                if i != 0:
                    raise RequestError("a system message may only come first", param)
                conv.system = _text_of(content, param)
                continue
            if role == "assistant":
                turns.append(("assistant", _text_of(content, param)))
                continue
            turns.append(("user", _user_text(content, param, processor, policy, video_mode, visuals, parsed)))
        if not turns or turns[-1][0] != "user":
            raise RequestError("the last message must come from the user", "messages")
        for role, text in _merged(turns):
            conv.append_message(conv.roles[0] if role == "user" else conv.roles[1], text)
        conv.append_message(conv.roles[1], None)
        parsed.visual = VisualInputs.concat(visuals)
        return parsed
    except BaseException:
        parsed.cleanup()
        raise


def _user_text(content, param, processor, policy, video_mode, visuals, parsed) -> str:
    if isinstance(content, str):
        return _checked_text(content, param)
    if not isinstance(content, list) or not content:
        raise RequestError(f"{param}.content must be a string or a non-empty list of parts", param)
    pieces = []
    for j, part in enumerate(content):
        where = f"{param}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            pieces.append(_checked_text(part.get("text", ""), where))
            continue
        if kind not in ("image_url", "video_url"):
            raise RequestError(f"{where}: unsupported content part type {kind!r} "
                               "(text, image_url and video_url are)", where)
        if len(visuals) >= policy.max_visuals:
            raise RequestError(f"more than {policy.max_visuals} images and videos in one request", where)
        spec = part.get(kind)
        url = spec.get("url") if isinstance(spec, dict) else spec
        media = _media(url, kind, where, policy, parsed.temporary_files)
        try:
            if kind == "image_url":
                visual = processor.image(media)
            else:
                _check_video(media, where, policy)
                visual = processor.video(media, mode=video_mode)
        except (MediaError, ValueError) as error:
            message = f"{where}: {error}".replace(str(media), "<media>")
            raise RequestError(message, where, code="bad_media") from None
        visuals.append(visual)
        pieces.append(visual.placeholder_text() + "\n")
    return "".join(pieces)


def _merged(turns: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Consecutive messages of one role become one turn (the templates alternate user / assistant)."""
    out: list[tuple[str, str]] = []
    for role, text in turns:
        if out and out[-1][0] == role:
            out[-1] = (role, out[-1][1] + "\n" + text)
        else:
            out.append((role, text))
    return out


__all__ = ["MediaPolicy", "ParsedChat", "RequestError", "parse_messages"]
