"""An OpenAI-compatible chat server for a LLaVA-OV checkpoint, and its web chat page.

    python -m llava.serve.openai_api --model-path CKPT [--host 127.0.0.1] [--port 8000]
        [--media-root DIR] [--video-mode codec|frames] [--max-tokens 1024] ...

``POST /v1/chat/completions`` takes OpenAI chat requests (text, ``image_url`` and ``video_url``
parts: ``llava.serve.messages``), answers whole or streamed (server-sent events ending in
``data: [DONE]``) with ``usage`` counts; ``GET /v1/models`` and ``GET /health`` report the model;
``GET /`` serves the chat page. Bad requests get a 4xx with an OpenAI error body; the server keeps
serving. Requests are answered one at a time in arrival order (``llava.serve.engine``), and a client
that disconnects mid-stream stops its generation. Binds loopback unless ``--host`` says otherwise.
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


def _sampling(request: ChatCompletionRequest, max_tokens_limit: int) -> Sampling:
    key = "max_completion_tokens" if request.max_completion_tokens is not None else "max_tokens"
    max_tokens = request.max_completion_tokens or request.max_tokens or min(256, max_tokens_limit)
    if max_tokens > max_tokens_limit:
        raise RequestError(f"{key} must be at most {max_tokens_limit} (this server's --max-tokens), got "
                           f"{max_tokens}", key)
    if request.stream_options is not None and not request.stream:
        raise RequestError("stream_options is only allowed when stream is true", "stream_options")
    temperature = 1.0 if request.temperature is None else request.temperature
    top_p = 1.0 if request.top_p is None else request.top_p
    return Sampling(max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=request.stops,
                    seed=request.seed)


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

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_body_mb * (1 << 20):
            error = RequestError(f"the request body is larger than {settings.max_body_mb} MB", status=413,
                                 code="body_too_large")
            return JSONResponse(error.body(), status_code=413)
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "waiting": engine.waiting, "answered": engine.answered,
                "cancelled": engine.cancelled}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "llava-ov-encoder"}]}

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
            raise RequestError(f"the model {body.model!r} does not exist; this server serves {model_name!r}",
                               "model", status=404, code="model_not_found")
        sampling = _sampling(body, settings.max_tokens)
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
                                                 body.video_mode, temporary)
            _remove(temporary)  # decoded: the visual inputs no longer need the files
            created, request_id = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
            cancel = threading.Event()
            if body.stream:
                usage = body.stream_options is not None and body.stream_options.include_usage
                queue, answer, finished = _start_stream(engine, parsed, sampling, cancel, release)
                handed_to_stream = True
                return StreamingResponse(
                    _events(queue, answer, finished, cancel, request_id, created, model_name, usage),
                    media_type="text/event-stream",
                )
            answer = await run_in_threadpool(_complete, engine, parsed, sampling, cancel)
        finally:
            _remove(temporary)
            if not handed_to_stream:
                release()
        return {
            "id": request_id, "object": "chat.completion", "created": created, "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                         "finish_reason": answer.finish_reason, "logprobs": None}],
            "usage": _usage(answer),
        }

    return app


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


def _complete(engine: ChatEngine, parsed, sampling: Sampling, cancel: threading.Event) -> Answer:
    with engine.slot():
        return engine.complete(parsed.conversation, parsed.visual, sampling, cancel)


def _usage(answer: Answer) -> dict:
    return {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
            "total_tokens": answer.prompt_tokens + answer.completion_tokens}


def _start_stream(engine, parsed, sampling, cancel, release) -> tuple[asyncio.Queue, Answer, object]:
    """Start generating in a thread that hands text over through a queue (it ends with ``finished``).

    Started before the response is returned, so the request is counted out (``release``) when
    generation ends even if the response body is never read."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    finished = object()
    answer = Answer()

    def put(item) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down)
            cancel.set()

    def produce() -> None:
        try:
            with engine.slot():
                for text in engine.stream(parsed.conversation, parsed.visual, sampling, cancel, answer):
                    put(text)
        except Exception as error:  # noqa: BLE001 - reported to the client, the server goes on
            put(RequestError(f"generation failed: {error}", status=500, kind="server_error"))
        finally:
            release()
            put(finished)

    threading.Thread(target=produce, name="llava-stream", daemon=True).start()
    return queue, answer, finished


async def _events(queue, answer, finished, cancel, request_id, created, model_name, include_usage):
    """The server-sent events of a streamed answer. When the client goes away the response task is
    cancelled, which sets ``cancel``: generation stops at its next token and frees the model."""
    head = {"id": request_id, "object": "chat.completion.chunk", "created": created, "model": model_name}

    def chunk(delta: dict, finish=None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return f"data: {json.dumps(dict(head, choices=[choice]))}\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        while (item := await queue.get()) is not finished:
            if isinstance(item, RequestError):
                yield f"data: {json.dumps(item.body())}\n\n"
                return
            yield chunk({"content": item})
        yield chunk({}, finish=answer.finish_reason)
        if include_usage:
            yield f"data: {json.dumps(dict(head, choices=[], usage=_usage(answer)))}\n\n"
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
