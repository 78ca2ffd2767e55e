"""The request bodies the server takes, as declared pydantic models (OpenAI's chat-completions shape).

Why declared models: every field is checked against one definition before the server does any work
(strict types: ``"stream": "false"`` is not ``false``, ``"n": true`` is not ``1``, a text part's
``text`` must be a string; numbers must be finite; strings, lists and the JSON's nesting are bounded),
the same definition is the server's OpenAPI schema (``/openapi.json``), and a request that does not
match gets one 400 naming the field. The request takes vLLM's fields (``n``, ``logprobs`` /
``top_logprobs``, the penalties, ``top_k``, ``min_p``, ``logit_bias``, ``media_io_kwargs``, the
``developer`` role); other top-level fields are ignored and logged, as vLLM does, except those that would
change what the answer means if ignored (:data:`REFUSED`: tools, JSON output, audio), refused by name.
Inside messages and parts, unknown fields are refused.

Bodies are parsed by pydantic's own JSON parser (:func:`parse_request`), which refuses ``NaN`` /
``Infinity``, numbers that overflow a float (``1e400``) and nesting deeper than its recursion limit,
so no request can reach code that would fail on them.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..processing.media import VIDEO_MODES

#: Bounds on what one request may hold (beyond them a request is refused, not cut).
MAX_MESSAGES = 256
MAX_PARTS = 64
MAX_TEXT_CHARS = 256 * 1024
MAX_URL_CHARS = 128 * 1024 * 1024  # a data URL: the body limit (--max-body-mb) is the real bound
MAX_NAME_CHARS = 256
MAX_STOPS = 4
MAX_SEED = 2**63 - 1
MAX_N = 8
MAX_TOP_LOGPROBS = 20
MAX_VIDEO_FRAMES = 1024
MAX_LOGIT_BIAS = 1024

#: Top-level fields this server cannot honour and may not ignore: ignoring them would change what the answer
#: means (a tool call or JSON the client relies on, audio). Any other unknown field is ignored and logged.
REFUSED = {
    "tools": "this server does not call tools",
    "functions": "this server does not call functions",
    "function_call": "this server does not call functions",
    "audio": "this server does not speak",
    "prediction": "predicted outputs are not supported",
}


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=True)


ShortText = Annotated[str, Field(max_length=MAX_NAME_CHARS)]
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]


class TextPart(_Strict):
    type: Literal["text"]
    text: Text


class MediaURL(_Strict):
    url: Annotated[str, Field(min_length=1, max_length=MAX_URL_CHARS)]
    detail: Literal["auto", "low", "high"] | None = None  # OpenAI's image detail: accepted, not used


class ImagePart(_Strict):
    type: Literal["image_url"]
    image_url: MediaURL


class VideoPart(_Strict):
    """vLLM's convention for a video: ``{"type": "video_url", "video_url": {"url": ...}}``."""

    type: Literal["video_url"]
    video_url: MediaURL


ContentPart = Annotated[Union[TextPart, ImagePart, VideoPart], Field(discriminator="type")]
TextParts = Annotated[list[TextPart], Field(max_length=MAX_PARTS)]


class SystemMessage(_Strict):
    role: Literal["system"]
    content: Text | TextParts
    name: ShortText | None = None


class DeveloperMessage(_Strict):
    """OpenAI's newer name for the system message; taken as one."""

    role: Literal["developer"]
    content: Text | TextParts
    name: ShortText | None = None


class UserMessage(_Strict):
    role: Literal["user"]
    content: Text | Annotated[list[ContentPart], Field(min_length=1, max_length=MAX_PARTS)]
    name: ShortText | None = None


class AssistantMessage(_Strict):
    role: Literal["assistant"]
    content: Text | TextParts | None = None
    name: ShortText | None = None


Message = Annotated[Union[SystemMessage, DeveloperMessage, UserMessage, AssistantMessage],
                    Field(discriminator="role")]


class StreamOptions(_Strict):
    include_usage: bool = False


class _Open(_Strict):
    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False, frozen=True)


class VideoIO(_Open):
    """``media_io_kwargs.video`` (vLLM): how this request's videos are read in ``frames`` mode."""

    num_frames: Annotated[int, Field(ge=1, le=MAX_VIDEO_FRAMES)] | None = None
    fps: Annotated[float, Field(gt=0.0, le=1000.0)] | None = None


class MediaIOKwargs(_Open):
    video: VideoIO | None = None


class ResponseFormat(_Open):
    type: Literal["text", "json_object", "json_schema"]


ToolChoice = Literal["none", "auto", "required"] | Annotated[dict, Field(max_length=8)]


class ChatCompletionRequest(_Open):
    """``POST /v1/chat/completions``. ``max_tokens`` / ``max_completion_tokens`` are also bounded by the
    server's ``--max-tokens`` (checked when the request is answered). Unknown fields: module docstring."""

    messages: Annotated[list[Message], Field(min_length=1, max_length=MAX_MESSAGES)]
    model: ShortText | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    stop: Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)] | Annotated[
        list[Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]], Field(max_length=MAX_STOPS)
    ] | None = None
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N, description="answers, generated in turn")] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, le=2.0)] | None = None
    top_k: Annotated[int, Field(ge=-1, le=2**31 - 1, description="-1 or 0: off")] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    logit_bias: Annotated[dict[Annotated[str, Field(pattern=r"^[0-9]{1,9}$")],
                               Annotated[float, Field(ge=-100.0, le=100.0)]],
                          Field(max_length=MAX_LOGIT_BIAS)] | None = None
    media_io_kwargs: MediaIOKwargs | None = None
    response_format: ResponseFormat | None = None
    tool_choice: ToolChoice | None = None
    user: ShortText | None = None
    video_mode: Literal[VIDEO_MODES] | None = Field(  # type: ignore[valid-type]
        default=None, description="how this request's videos are read (default: the server's --video-mode)"
    )

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def unhonoured(self) -> tuple[list[tuple[str, str]], list[str]]:
        """``([(field, why it is refused)], [ignored fields])``: what this server cannot honour."""
        refused = [(name, REFUSED[name]) for name in sorted(self.model_extra or {})
                   if name in REFUSED and self.model_extra[name] not in (None, [], {})]
        if self.tool_choice not in (None, "none", "auto"):
            refused.append(("tool_choice", "this server does not call tools"))
        if self.response_format is not None and self.response_format.type != "text":
            kind = self.response_format.type
            refused.append(("response_format", f"this server cannot hold its answer to {kind} (it answers in "
                                               "plain text)"))
        modalities = (self.model_extra or {}).get("modalities")
        if isinstance(modalities, list) and "audio" in modalities:
            refused.append(("modalities", "this server does not speak"))
        ignored = sorted(set(self.model_extra or {}) - set(REFUSED) - {"modalities"})
        return refused, ignored


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The body of every 4xx / 5xx answer (OpenAI's error shape)."""

    error: ErrorDetail


class InvalidRequest(ValueError):
    """A body that is not a valid request: ``param`` names the first offending field (OpenAI's style)."""

    def __init__(self, message: str, param: str | None):
        super().__init__(message)
        self.param = param


def parse_request(raw: bytes) -> ChatCompletionRequest:
    """The request in ``raw`` (a JSON body), or :class:`InvalidRequest` saying what is wrong where."""
    try:
        return ChatCompletionRequest.model_validate_json(raw)
    except ValidationError as error:
        problems = error.errors(include_url=False, include_input=False)
        first = problems[0]
        if first["type"] in ("json_invalid", "json_type"):
            raise InvalidRequest(f"the request body is not valid JSON ({first['msg']})", None) from None
        if not first["loc"]:
            raise InvalidRequest("the request body must be a JSON object", None) from None
        problems.sort(key=lambda p: -len(p["loc"]))  # the most precise place first
        shown = list(dict.fromkeys(f"{_param(p['loc'])}: {_message(p)}" for p in problems))
        more = f" (and {len(shown) - 3} more)" if len(shown) > 3 else ""
        raise InvalidRequest("invalid request: " + "; ".join(shown[:3]) + more, _param(problems[0]["loc"])) from None


def _message(problem: dict) -> str:
    context = problem.get("ctx") or {}
    if problem["type"] == "extra_forbidden":
        return "unsupported parameter"
    if problem["type"] == "union_tag_invalid":
        field = str(context.get("discriminator", "type")).strip("'")
        return f"unsupported {field} {context.get('tag')!r}; expected one of {context.get('expected_tags')}"
    return problem["msg"]


#: Tags pydantic puts in an error's location after a list index to name the union member it tried.
_MEMBER_TAGS = {"system", "developer", "user", "assistant", "text", "image_url", "video_url"}


def _param(loc: tuple) -> str:
    """An error location as OpenAI names parameters: ``messages[0].content[1].image_url.url``
    (pydantic's union member labels, such as ``constrained-str`` or the ``user`` tag, dropped)."""
    out, after_index = "", False
    for part in loc:
        if isinstance(part, int):
            out, after_index = out + f"[{part}]", True
            continue
        member_tag = after_index and part in _MEMBER_TAGS
        after_index = False
        if member_tag or not part.isidentifier():
            continue
        out += f".{part}" if out else part
    return out


__all__ = [
    "AssistantMessage",
    "ChatCompletionRequest",
    "DeveloperMessage",
    "ErrorDetail",
    "ErrorResponse",
    "ImagePart",
    "InvalidRequest",
    "MediaIOKwargs",
    "MediaURL",
    "REFUSED",
    "StreamOptions",
    "SystemMessage",
    "TextPart",
    "UserMessage",
    "VideoIO",
    "VideoPart",
    "parse_request",
]
