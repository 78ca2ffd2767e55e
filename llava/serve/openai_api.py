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
import threading
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..chat import default_conv_template
from ..cli_options import add_checkpoint_arguments, add_video_arguments, load_checkpoint, video_options
from ..conversation import get_conv_template
from ..mm_inputs import VIDEO_MODES, VisualProcessor
from .engine import Answer, Busy, ChatEngine, Sampling
from .messages import MediaPolicy, RequestError, parse_messages

STATIC = Path(__file__).resolve().parent / "static"
SAMPLING_KEYS = {"temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed"}
ACCEPTED_KEYS = SAMPLING_KEYS | {"model", "messages", "stream", "stream_options", "n", "video_mode", "user"}


class ServerSettings(argparse.Namespace):
    """The limits and names the app needs (the parsed command line, or set by tests)."""


def _sampling(body: dict, max_tokens_limit: int) -> Sampling:
    def number(key, kind, low, high, default):
        value = body.get(key, default)
        if value is None:
            return default
        wrong_type = isinstance(value, bool) or not isinstance(value, (int, float))
        if wrong_type or (kind is int and int(value) != value):
            raise RequestError(f"{key} must be a {kind.__name__}", key)
        if not low <= value <= high:
            raise RequestError(f"{key} must be between {low} and {high}, got {value}", key)
        return kind(value)

    max_tokens = number("max_completion_tokens", int, 1, max_tokens_limit, None) or number(
        "max_tokens", int, 1, max_tokens_limit, min(256, max_tokens_limit)
    )
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise RequestError("stop must be a string or a list of up to 4 non-empty strings", "stop")
    return Sampling(max_tokens=max_tokens, temperature=number("temperature", float, 0.0, 2.0, 1.0),
                    top_p=number("top_p", float, 0.0, 1.0, 1.0), stop=stop,
                    seed=number("seed", int, 0, 2**63 - 1, None))


def create_app(tokenizer, model, image_processor, settings) -> FastAPI:
    """The app for a loaded checkpoint; ``settings`` carries the command line's names and limits."""
    app = FastAPI(title="LLaVA-OV", docs_url=None, redoc_url=None)
    engine = ChatEngine(tokenizer, model, max_waiting=settings.max_waiting)
    video = video_options(settings, image_processor.patch_size)
    processor = VisualProcessor(image_processor, model.config, video)
    policy = MediaPolicy(
        media_root=Path(settings.media_root).resolve() if settings.media_root else None,
        max_media_bytes=int(settings.max_media_mb * (1 << 20)), max_video_seconds=settings.max_video_seconds,
    )
    template = settings.conv_mode or default_conv_template(model.config)
    get_conv_template(template)  # an unknown name fails at start-up
    model_name = settings.served_model_name
    app.state.engine = engine

    @app.exception_handler(RequestError)
    async def request_error(_, error: RequestError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_, error: StarletteHTTPException):  # unknown routes and methods, in OpenAI's shape
        body = RequestError(str(error.detail), status=error.status_code).body()
        return JSONResponse(body, status_code=error.status_code)

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

    @app.get("/")
    async def page():
        return FileResponse(STATIC / "chat.html", media_type="text/html")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await _json_body(request, settings.max_body_mb)
        unknown = sorted(set(body) - ACCEPTED_KEYS)
        if unknown:
            raise RequestError(f"unsupported parameter(s): {', '.join(unknown)}", unknown[0])
        if body.get("model") not in (None, model_name):
            raise RequestError(f"the model {body.get('model')!r} does not exist; this server serves "
                               f"{model_name!r}", "model", status=404, code="model_not_found")
        if body.get("n", 1) != 1:
            raise RequestError("only n=1 is supported", "n")
        mode = body.get("video_mode")
        if mode is not None and mode not in VIDEO_MODES:
            raise RequestError(f"video_mode must be one of {VIDEO_MODES}", "video_mode")
        sampling = _sampling(body, settings.max_tokens)
        try:
            release = engine.admit()
        except Busy as error:
            raise RequestError(f"the server is busy: {error}", status=503, kind="server_error",
                               code="busy") from None
        try:
            parsed = await run_in_threadpool(parse_messages, body.get("messages"), template, processor,
                                             policy, mode)
        except BaseException:
            release()
            raise
        created, request_id = int(time.time()), f"chatcmpl-{uuid.uuid4().hex}"
        cancel = threading.Event()
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            queue, answer, finished = _start_stream(engine, parsed, sampling, cancel, release)
            return StreamingResponse(
                _events(queue, answer, finished, cancel, request_id, created, model_name, usage),
                media_type="text/event-stream",
            )
        try:
            answer = await run_in_threadpool(_complete, engine, parsed, sampling, cancel)
        finally:
            parsed.cleanup()
            release()
        return {
            "id": request_id, "object": "chat.completion", "created": created, "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.text},
                         "finish_reason": answer.finish_reason, "logprobs": None}],
            "usage": _usage(answer),
        }

    return app


async def _json_body(request: Request, max_body_mb: float) -> dict:
    raw = bytearray()
    async for chunk in request.stream():  # chunked bodies have no content-length to check up front
        raw += chunk
        if len(raw) > max_body_mb * (1 << 20):
            raise RequestError(f"the request body is larger than {max_body_mb} MB", status=413,
                               code="body_too_large")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RequestError(f"the request body is not valid JSON ({error})") from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    return body


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
            parsed.cleanup()
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
