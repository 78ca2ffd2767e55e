"""OpenAI chat ``messages`` -> a conversation and its visual inputs, with the server's media rules.

The messages come validated (``llava.serve.protocol``): roles, part types and field types are
already right. Here: a URL is a ``data:`` URL (base64) or, when the server has a media root, a
``file://`` URL or a path inside that root; nothing else is read from disk and no remote URL is
fetched. Images are opened by ``cv_reader.read_image`` (regular files only, EXIF orientation,
high-bit-depth scaling) under the policy's pixel budget, checked from the header before decoding;
a video's frame size is checked the same way from its probe. Each visual's ``<image>``
placeholders go where its part stands in the message (a codec video takes one per mosaic), and
every visual goes through the one input layer (``llava.processing.media``), as in chat, training and
evaluation.

Every problem of a request raises :class:`RequestError` with the OpenAI error fields; the server turns
it into a 4xx answer and keeps serving. Temporary files (data-URL videos) are listed in the caller's
``temporary`` list as soon as they exist, so the caller removes them whatever happens.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from cv_reader import ImageTooLargeError, default_max_pixels, read_image
from PIL import Image

from ..constants import DEFAULT_IMAGE_TOKEN
from ..processing.conversation import Conversation, get_conv_template
from ..processing.media import MediaError, VisualInputs, VisualProcessor
from ..processing.video import probe
from .protocol import AssistantMessage, DeveloperMessage, ImagePart, SystemMessage, TextPart, UserMessage

#: ``type/subtype`` of a data URL (RFC 2045 tokens, bounded).
_MIME = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}")


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
    """What the server may read: ``media_root`` (``None``: data URLs only), the size limits and the
    pixel budgets (an image's ``width * height``; one video frame's, from the stream header)."""

    media_root: Path | None = None
    max_media_bytes: int = 64 << 20
    max_video_seconds: float = 600.0
    max_visuals: int = 16
    max_image_pixels: int = 0  # 0: cv_reader's default (PIL's decompression-bomb threshold)
    max_video_frame_pixels: int = 3840 * 2160

    def image_pixels(self) -> int:
        return self.max_image_pixels or default_max_pixels()


@dataclass
class ParsedChat:
    conversation: Conversation
    visual: VisualInputs


def _too_large(message: str, param: str) -> RequestError:
    return RequestError(message, param, status=413, code="media_too_large")


def _data_url(url: str, param: str, policy: MediaPolicy) -> tuple[bytes, str]:
    header, sep, payload = url.partition(",")
    mime = header[len("data:"):-len(";base64")] if header.endswith(";base64") else ""
    if not sep or not _MIME.fullmatch(mime):
        raise RequestError("a data URL must be data:<type>/<subtype>;base64,<data>", param)
    if len(payload) * 3 // 4 > policy.max_media_bytes:
        raise _too_large(f"media larger than the limit of {policy.max_media_bytes} bytes", param)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("the data URL's base64 payload is not valid base64", param) from None
    return data, mime.lower()


def _local_path(url: str, param: str, policy: MediaPolicy) -> Path:
    if policy.media_root is None:
        raise RequestError("this server reads no local files (start it with --media-root DIR)", param,
                           status=403, code="local_files_disabled")
    raw = unquote(urlparse(url).path) if url.startswith("file://") else url
    shown = raw if len(raw) <= 200 else raw[:200] + "..."
    root = policy.media_root.resolve()
    try:
        path = (root / raw).resolve()
        size = path.stat().st_size if path.is_file() else None
    except (OSError, ValueError, RuntimeError) as error:  # NUL bytes, symlink loops, over-long names
        why = "it holds a NUL byte" if "\0" in raw else (getattr(error, "strerror", None) or str(error))
        raise RequestError(f"{shown!r} is not a usable path ({why})", param, code="media_not_found") from None
    if path != root and root not in path.parents:
        raise RequestError(f"{shown} is outside the media root", param, status=403, code="outside_media_root")
    if size is None:
        raise RequestError(f"{shown}: no such file under the media root", param, code="media_not_found")
    if size > policy.max_media_bytes:
        raise _too_large(f"{shown} is larger than the limit of {policy.max_media_bytes} bytes", param)
    return path


def _image(url: str, param: str, policy: MediaPolicy) -> Image.Image:
    if url.startswith("data:"):
        data, _ = _data_url(url, param, policy)
        source, name = data, "the image"
    else:
        source = _local_path(url, param, policy)
        name = source.name
    try:
        return read_image(source, max_pixels=policy.image_pixels(), name=name)
    except ImageTooLargeError as error:
        raise _too_large(str(error), param) from None
    except MediaError as error:
        raise RequestError(f"{name} is not readable: {error.problem}", param, code="bad_media") from None


def _video(url: str, param: str, policy: MediaPolicy, temporary: list[str]) -> str:
    """A video file's path: the file under the media root, or a temporary copy of a data URL's bytes
    (listed in ``temporary`` before it is written)."""
    if not url.startswith("data:"):
        return str(_local_path(url, param, policy))
    data, mime = _data_url(url, param, policy)
    subtype = mime.split("/", 1)[1]
    suffix = "." + ("mov" if subtype == "quicktime" else subtype) if subtype.isalnum() else ".video"
    handle, path = tempfile.mkstemp(prefix="llava-serve-", suffix=suffix)
    temporary.append(path)
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    return path


def _check_video(path: str, param: str, policy: MediaPolicy) -> None:
    """Length and frame size from the stream header, before any frame is decoded."""
    try:
        index = probe(path)
    except MediaError as error:
        raise RequestError(f"the video is not readable: {error.problem}", param, code="bad_media") from None
    seconds = index.num_frames / index.fps if index.fps else 0.0
    if seconds > policy.max_video_seconds:
        limit = policy.max_video_seconds
        raise RequestError(f"the video is {seconds:.0f} s long; the limit is {limit:.0f} s", param,
                           status=413, code="video_too_long")
    if index.width * index.height > policy.max_video_frame_pixels:
        raise _too_large(f"the video's frames are {index.width}x{index.height}, more than the limit of "
                         f"{policy.max_video_frame_pixels:,} pixels per frame", param)


def _checked_text(text: str, param: str) -> str:
    """Message text, which must not hold the model's placeholder: visuals come only as parts."""
    if DEFAULT_IMAGE_TOKEN in text:
        raise RequestError(f"the text may not contain {DEFAULT_IMAGE_TOKEN}: send images and videos as "
                           "image_url / video_url parts", param)
    return text


def _text_of(content: str | Sequence[TextPart] | None, param: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return _checked_text(content, param)
    return "".join(_checked_text(part.text, f"{param}.content[{j}]") for j, part in enumerate(content))


def parse_messages(messages: Sequence[SystemMessage | DeveloperMessage | UserMessage | AssistantMessage],
                   conv_template: str, processor: VisualProcessor, policy: MediaPolicy,
                   video: dict | None = None, temporary: list[str] | None = None) -> ParsedChat:
    """The conversation (ending in an open assistant turn) and visual inputs of validated ``messages``.

    ``video``: this request's video options (``VideoOptions`` fields: ``mode``, ``frames_upbound``, ``fps``),
    over the server's. A ``developer`` message is a system message (OpenAI's newer name). Temporary files
    made on the way are appended to ``temporary``; removing them is the caller's job (they back the visual
    inputs only until they are decoded, so it can be done right after)."""
    temporary = [] if temporary is None else temporary
    conv = get_conv_template(conv_template)
    visuals: list[VisualInputs] = []
    turns: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if isinstance(message, (SystemMessage, DeveloperMessage)):
            if i != 0:
                raise RequestError(f"a {message.role} message may only come first", param)
            conv.system = _text_of(message.content, param)
        elif isinstance(message, AssistantMessage):
            turns.append(("assistant", _text_of(message.content, param)))
        else:
            turns.append(("user", _user_text(message.content, param, processor, policy, video or {}, visuals,
                                             temporary)))
    if not turns or turns[-1][0] != "user":
        raise RequestError("the last message must come from the user", "messages")
    for role, text in _merged(turns):
        conv.append_message(conv.roles[0] if role == "user" else conv.roles[1], text)
    conv.append_message(conv.roles[1], None)
    return ParsedChat(conv, VisualInputs.concat(visuals))


def _user_text(content, param, processor, policy, video, visuals, temporary) -> str:
    if isinstance(content, str):
        return _checked_text(content, param)
    pieces = []
    for j, part in enumerate(content):
        where = f"{param}.content[{j}]"
        if isinstance(part, TextPart):
            pieces.append(_checked_text(part.text, where))
            continue
        if len(visuals) >= policy.max_visuals:
            raise RequestError(f"more than {policy.max_visuals} images and videos in one request", where)
        url = part.image_url.url if isinstance(part, ImagePart) else part.video_url.url
        if url.startswith(("http://", "https://", "ftp://")):
            raise RequestError("remote URLs are not fetched; send a data URL (or a path under the media root)",
                               where, code="remote_url")
        try:
            if isinstance(part, ImagePart):
                image = _image(url, where, policy)
                visual = processor.image(image)
            else:
                path = _video(url, where, policy, temporary)
                _check_video(path, where, policy)
                visual = processor.video(path, **video)
        except (MediaError, ValueError) as error:
            problem = error.problem if isinstance(error, MediaError) else str(error)
            raise RequestError(f"{where}: {problem}", where, code="bad_media") from None
        visuals.append(visual)
        pieces.append(visual.prompt_lead())
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
