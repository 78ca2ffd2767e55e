"""An OpenAI-compatible chat server for a LLaVA-OV checkpoint, and its web chat page.

    python -m llava.serve.openai_api --model-path CKPT [--host 127.0.0.1] [--port 8000]
        [--media-root DIR] [--video-mode codec|frames] [--max-tokens 1024] ...

``POST /v1/chat/completions`` takes OpenAI chat requests (text, ``image_url`` and ``video_url``
parts: ``llava.serve.messages``) with the fields vLLM takes (``llava.serve.protocol``), answers whole
or streamed (server-sent events ending in ``data: [DONE]``) with ``usage`` counts and, when asked,
``n`` answers and token log-probabilities; ``GET /v1/models``, ``GET /v1/models/{id}`` and
``GET /health`` report the model; ``GET /`` serves the chat page. Bad requests get a 4xx with an
OpenAI error body; the server keeps serving. Requests are answered one at a time
(``llava.serve.engine``), and a client that disconnects, streamed or not, stops its generation. Binds
loopback unless ``--host`` says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..cli_options import add_checkpoint_arguments, add_video_arguments, load_checkpoint, video_options
from ..inference.chat import default_conv_template
from ..processing.conversation import get_conv_template
from ..processing.media import VisualProcessor
from .engine import Answer, Busy, ChatEngine, Sampling
from .messages import MediaPolicy, RequestError, parse_messages
from .protocol import ChatCompletionRequest, ErrorResponse, InvalidRequest, parse_request

STATIC = Path(__file__).resolve().parent / "static"
logger = logging.getLogger("llava.serve")
ERROR_RESPONSES = {status: {"model": ErrorResponse} for status in (400, 403, 404, 413, 500, 503)}


class ServerSettings(argparse.Namespace):
    """The limits and names the app needs (the parsed command line, or set by tests)."""


def _sampling(request: ChatCompletionRequest, max_tokens_limit: int, vocab_size: int) -> Sampling:
    key = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
    max_tokens = request.max_completion_tokens or request.max_tokens or min(256, max_tokens_limit)
    if max_tokens > max_tokens_limit:
        raise RequestError(f"{key} must be at most {max_tokens_limit} (this server's --max-tokens), got "
                           f"{max_tokens}", key)
    if request.stream_options is not None and not request.stream:
        raise RequestError("stream_options is only allowed when stream is true", "stream_options")
    if request.top_logprobs and not request.logprobs:
        raise RequestError("top_logprobs needs logprobs: true", "top_logprobs")
    bias = {int(token): value for token, value in (request.logit_bias or {}).items()}
    unknown = sorted(token for token in bias if token >= vocab_size)
    if unknown:
        raise RequestError(f"logit_bias names token ids this model does not have ({unknown[:5]}; the "
                           f"vocabulary has {vocab_size})", "logit_bias")

    def given(value, default):
        return default if value is None else value

    return Sampling(
        max_tokens=max_tokens, temperature=given(request.temperature, 1.0), top_p=given(request.top_p, 1.0),
        stop=request.stops, seed=request.seed, n=given(request.n, 1), top_k=given(request.top_k, 0),
        min_p=given(request.min_p, 0.0), repetition_penalty=given(request.repetition_penalty, 1.0),
        presence_penalty=given(request.presence_penalty, 0.0),
        frequency_penalty=given(request.frequency_penalty, 0.0),
        logit_bias=bias, logprobs=bool(request.logprobs), top_logprobs=given(request.top_logprobs, 0),
    )


def _unknown_model(asked: str, served: str) -> RequestError:
    return RequestError(f"the model {asked!r} does not exist; this server serves {served!r}", "model",
                        status=404, code="model_not_found")


def _video_request(request: ChatCompletionRequest, server_mode: str) -> dict:
    """This request's video options: its ``video_mode``, and ``media_io_kwargs.video`` (vLLM's frame count and
    rate) for uniform frames; in codec mode the frame count is the checkpoint's own, so they are ignored."""
    mode = request.video_mode or server_mode
    video: dict = {"mode": mode}
    io = request.media_io_kwargs.video if request.media_io_kwargs is not None else None
    if io is not None and (io.num_frames is not None or io.fps is not None):
        if mode == "frames":
            video.update({key: value for key, value in (("frames_upbound", io.num_frames), ("fps", io.fps))
                          if value is not None})
        else:
            logger.warning("media_io_kwargs.video ignored: codec-mode videos are read with the checkpoint's "
                           "codec settings")
    return video


def create_app(tokenizer, model, image_processor, settings) -> FastAPI:
    """The app for a loaded checkpoint; ``settings`` carries the command line's names and limits."""
    app = FastAPI(title="LLaVA-OV", docs_url=None, redoc_url=None)
    engine = ChatEngine(tokenizer, model, max_waiting=settings.max_waiting)
    video = video_options(settings, image_processor.patch_size)
    processor = VisualProcessor(image_processor, model.config, video)
    policy = MediaPolicy(
        media_root=Path(settings.media_root).resolve() if settings.media_root else None,
        max_media_bytes=int(settings.max_media_mb * (1 << 20)), max_video_seconds=settings.max_video_seconds,
        max_image_pixels=int(settings.max_image_megapixels * 1e6),
        max_video_frame_pixels=int(settings.max_video_frame_megapixels * 1e6),
    )
    decodes = asyncio.Semaphore(settings.max_concurrent_decodes)  # requests decoding media at once
    template = settings.conv_mode or default_conv_template(model.config)
    get_conv_template(template)  # an unknown name fails at start-up
    model_name = settings.served_model_name
    app.state.engine = engine
    app.openapi = lambda: _openapi(app)

    @app.exception_handler(RequestError)
    async def request_error(_, error: RequestError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, error: StarletteHTTPException):  # unknown routes and methods, in OpenAI's shape
        body = RequestError(str(error.detail), status=error.status_code).body()
        return JSONResponse(body, status_code=error.status_code)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception):  # a fault of the server, not the request
        logger.error("%s %s failed: %s: %s", request.method, request.url.path, type(error).__name__, error)
        body = RequestError(f"internal server error ({type(error).__name__}); the server log has the details",
                            status=500, kind="server_error", code="internal_error").body()
        return JSONResponse(body, status_code=500)

    app.add_middleware(_DeclaredBodyLimit, max_body_mb=settings.max_body_mb)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "waiting": engine.waiting, "answered": engine.answered,
                "cancelled": engine.cancelled}

    model_card = {"id": model_name, "object": "model", "created": 0, "owned_by": "llava-ov-encoder"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{model_id:path}", responses=ERROR_RESPONSES)
    async def model(model_id: str):
        if model_id != model_name:
            raise _unknown_model(model_id, model_name)
        return model_card

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "chat.html", media_type="text/html")

    @app.post("/v1/chat/completions", responses=ERROR_RESPONSES, openapi_extra=_REQUEST_BODY)
    async def chat_completions(request: Request):
        """Answer an OpenAI chat request, whole or streamed (server-sent events)."""
        try:
            body = parse_request(await _read_body(request, settings.max_body_mb))
        except InvalidRequest as error:
            raise RequestError(str(error), error.param) from None
        if body.model not in (None, model_name):
            raise _unknown_model(body.model, model_name)
        refused, ignored = body.unhonoured()
        if refused:
            field, why = refused[0]
            raise RequestError(f"{field}: {why}, and ignoring it would change what the answer means",
                               field, code="unsupported_parameter")
        if ignored:
            logger.warning("ignored request fields (not used by this server): %s", ", ".join(ignored))
        sampling = _sampling(body, settings.max_tokens, len(tokenizer))
        video_request = _video_request(body, video.mode)
        try:
            release = engine.admit()
        except Busy as error:
            raise RequestError(f"the server is busy: {error}", status=503, kind="server_error",
                               code="busy") from None
        # From here every way out counts the request out (unless a started stream owns that) and
        # removes its temporary files.
        temporary: list[str] = []
        handed_to_stream = False
        try:
            async with decodes:
                parsed = await run_in_threadpool(parse_messages, body.messages, template, processor, policy,
                                                 video_request, temporary)
            _remove(temporary)  # decoded: the visual inputs no longer need the files
            created, request_id = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
            cancel = threading.Event()
            if body.stream:
                usage = body.stream_options is not None and body.stream_options.include_usage
                queue, answers, finished = _start_stream(engine, parsed, sampling, cancel, release)
                handed_to_stream = True
                return StreamingResponse(
                    _events(queue, answers, finished, cancel, request_id, created, model_name, usage,
                            sampling.logprobs),
                    media_type="text/event-stream",
                )
            work = asyncio.ensure_future(run_in_threadpool(_complete, engine, parsed, sampling, cancel))
            answers = await _unless_disconnected(request, work, cancel)
        finally:
            _remove(temporary)
            if not handed_to_stream:
                release()
        return {
            "id": request_id, "object": "chat.completion", "created": created, "model": model_name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": answer.text},
                         "finish_reason": answer.finish_reason,
                         "logprobs": None if answer.logprobs is None else {"content": answer.logprobs}}
                        for i, answer in enumerate(answers)],
            "usage": _usage(answers),
        }

    return app


class _DeclaredBodyLimit:
    """Refuses a body whose declared length is over the limit before it is read (a plain ASGI middleware:
    Starlette's ``BaseHTTPMiddleware`` would hide a client's disconnect from the route, which watches it)."""

    def __init__(self, app, max_body_mb: float):
        self.app, self.max_body_mb = app, max_body_mb

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            declared = dict(scope["headers"]).get(b"content-length", b"")
            if declared.isdigit() and int(declared) > self.max_body_mb * (1 << 20):
                error = RequestError(f"the request body is larger than {self.max_body_mb} MB", status=413,
                                     code="body_too_large")
                await JSONResponse(error.body(), status_code=413)(scope, receive, send)
                return
        await self.app(scope, receive, send)


#: The chat route reads its body itself (bounded, parsed by pydantic); its schema is the request model's.
_REQUEST_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}}}}


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema of the routes, with the request model and the models it refers to as components."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        request = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(request.pop("$defs", {}))
        components["ChatCompletionRequest"] = request
        app.openapi_schema = schema
    return app.openapi_schema


async def _read_body(request: Request, max_body_mb: float) -> bytes:
    raw = bytearray()
    async for chunk in request.stream():  # chunked bodies have no content-length to check up front
        raw += chunk
        if len(raw) > max_body_mb * (1 << 20):
            raise RequestError(f"the request body is larger than {max_body_mb} MB", status=413,
                               code="body_too_large")
    return bytes(raw)


def _remove(paths: list[str]) -> None:
    while paths:
        try:
            os.unlink(paths.pop())
        except FileNotFoundError:
            pass


def _complete(engine: ChatEngine, parsed, sampling: Sampling, cancel: threading.Event) -> list[Answer]:
    with engine.slot():
        return engine.complete(parsed.conversation, parsed.visual, sampling, cancel)


async def _unless_disconnected(request: Request, work: asyncio.Future, cancel: threading.Event):
    """``work``'s result; if the client goes away first, its generation is cancelled (it stops at the next
    token and frees the model) and the answer goes nowhere."""
    while True:
        done, _ = await asyncio.wait({work}, timeout=0.25)
        if done:
            return work.result()
        if await request.is_disconnected():
            cancel.set()
            return await work


def _usage(answers: list[Answer]) -> dict:
    prompt = answers[0].prompt_tokens if answers else 0
    completion = sum(answer.completion_tokens for answer in answers)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _start_stream(engine, parsed, sampling, cancel, release) -> tuple[asyncio.Queue, list[Answer], object]:
    """Start generating in a thread that hands the answers' pieces over through a queue (it ends with
    ``finished``).

    Started before the response is returned, so the request is counted out (``release``) when
    generation ends even if the response body is never read."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    finished = object()
    answers: list[Answer] = []

    def put(item) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down)
            cancel.set()

    def produce() -> None:
        try:
            with engine.slot():
                for delta in engine.stream(parsed.conversation, parsed.visual, sampling, cancel, answers):
                    put(delta)
        except Exception as error:  # noqa: BLE001 - reported to the client, the server goes on
            put(RequestError(f"generation failed: {error}", status=500, kind="server_error"))
        finally:
            release()
            put(finished)

    threading.Thread(target=produce, name="llava-stream", daemon=True).start()
    return queue, answers, finished


async def _events(queue, answers, finished, cancel, request_id, created, model_name, include_usage,
                  with_logprobs):
    """The server-sent events of streamed answers (answer 0's pieces, then answer 1's, ...). When the client
    goes away the response task is cancelled, which sets ``cancel``: generation stops at its next token and
    frees the model."""
    head = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model_name}

    def chunk(index: int, delta: dict, finish=None, logprobs=None) -> str:
        choice = {"index": index, "delta": delta, "finish_reason": finish,
                  "logprobs": {"content": logprobs} if logprobs is not None else None}
        return f"data: {json.dumps(dict(head, choices=[choice]))}\n\n"

    try:
        yield chunk(0, {"role": "assistant", "content": ""})
        started = {0}
        while (item := await queue.get()) is not finished:
            if isinstance(item, RequestError):
                yield f"data: {json.dumps(item.body())}\n\n"
                return
            if item.index not in started:
                started.add(item.index)
                yield chunk(item.index, {"role": "assistant", "content": ""})
            yield chunk(item.index, {"content": item.text}, logprobs=item.logprobs if with_logprobs else None)
        for index, answer in enumerate(answers):
            yield chunk(index, {}, finish=answer.finish_reason)
        if include_usage:
            yield f"data: {json.dumps(dict(head, choices=[], usage=_usage(answers)))}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        cancel.set()  # no-op when generation has ended; stops it when the client left early


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_checkpoint_arguments(parser)
    add_video_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", default=None, help="the model id clients use (default: the "
                        "checkpoint directory's name)")
    parser.add_argument("--conv-mode", default=None, help="conversation template (default: the checkpoint's)")
    parser.add_argument("--media-root", default=None,
                        help="files under this folder may be sent as paths or file:// URLs (default: none)")
    parser.add_argument("--max-tokens", type=int, default=1024, help="the most tokens one answer may have")
    parser.add_argument("--max-body-mb", type=float, default=100.0)
    parser.add_argument("--max-media-mb", type=float, default=64.0, help="per image or video")
    parser.add_argument("--max-video-seconds", type=float, default=600.0)
    parser.add_argument("--max-waiting", type=int, default=32, help="requests waiting beyond this get a 503")
    parser.add_argument("--max-concurrent-decodes", type=int, default=2,
                        help="requests decoding their media at once (the others wait their turn)")
    parser.add_argument("--max-image-megapixels", type=float, default=50.0,
                        help="an image's width x height, checked from its header before decoding")
    parser.add_argument("--max-video-frame-megapixels", type=float, default=8.3,
                        help="one video frame's width x height (8.3: 3840x2160), checked before decoding")
    return parser


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    args = build_parser().parse_args(argv)
    args.served_model_name = args.served_model_name or Path(args.model_path).resolve().name
    tokenizer, model, image_processor = load_checkpoint(args)
    app = create_app(tokenizer, model, image_processor, args)
    print(f"[serve] {args.served_model_name} on http://{args.host}:{args.port} (chat page: /, API: /v1)",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
