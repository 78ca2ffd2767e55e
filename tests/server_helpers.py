"""The OpenAI-compatible server for a sharpened tiny checkpoint, on a free loopback port, in this process
(shared by the server, fuzz and chat-page tests)."""

from __future__ import annotations

import base64
import io
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image
from train_helpers import sharpened

from llava.vllm_plugin.launch import free_port

WAIT_S = 60


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def flat_png(size=(40, 56), mode: str = "RGB") -> bytes:
    """A PNG of one grey level: a few kB, however many pixels ``size`` (width, height) holds."""
    out = io.BytesIO()
    Image.new(mode, size, 200).save(out, format="PNG")
    return out.getvalue()


@contextmanager
def serve_tiny(root: Path, *argv: str, name: str = "tiny-llava"):
    """Serve a tiny checkpoint saved under ``root`` with the command line ``argv`` (after ``--model-path``
    and ``--port``): yields ``(base URL, app)``; the server stops on exit."""
    from llava.model.builder import load_pretrained_model
    from llava.model.tiny import save_tiny_checkpoint

    checkpoint = save_tiny_checkpoint(root / "tiny-ckpt")
    _, model, _, _ = load_pretrained_model(str(checkpoint), torch_dtype=torch.float32)
    sharpened(model).save_pretrained(checkpoint)  # answers that differ from prompt to prompt
    with serve_checkpoint(checkpoint, *argv, name=name) as served:
        yield served


@contextmanager
def serve_checkpoint(checkpoint: Path, *argv: str, name: str = "tiny-llava"):
    """Serve ``checkpoint`` with the command line ``argv`` (after ``--model-path`` and ``--port``), in this
    process: yields ``(base URL, app)``; the server stops on exit."""
    import uvicorn

    from llava.cli_options import load_checkpoint
    from llava.serve.openai_api import build_parser, create_app

    port = free_port()
    args = build_parser().parse_args(["--model-path", str(checkpoint), "--port", str(port), *argv])
    args.served_model_name = name
    app = create_app(*load_checkpoint(args), args)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + WAIT_S
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=10)
