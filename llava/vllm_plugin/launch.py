"""Start an OpenAI-compatible server as a child process and wait until it answers: vLLM's on a checkpoint
(the venv ``scripts/setup_vllm_env.sh`` builds), or this project's; and pick a free loopback port. Used by
the tests and ``benchmarks/bench_serve.py``; needs neither vLLM nor torch in the calling process.

    with vllm_server(".venv-vllm/bin/python", CKPT, media_root=DIR, log=Path("vllm.log")) as base_url:
        ...  # base_url + "/v1/chat/completions"
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

#: What vLLM's CPU build needs on a small machine: a KV cache it can hold (GiB; its default asks for most of
#: the RAM and refuses to start) and the loopback address for its internal queue.
CPU_ENVIRONMENT = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_HOST_IP": "127.0.0.1"}
READY_S = 600


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def vllm_command(python: str | os.PathLike, checkpoint: str | os.PathLike, port: int, *, served_name: str,
                 media_root: str | os.PathLike | None = None, max_model_len: int = 4096,
                 extra: Sequence[str] = ()) -> list[str]:
    """vLLM's OpenAI server on ``checkpoint`` (float32, eager: exact and quick to start on CPU), loopback only;
    ``media_root``: the folder ``file://`` videos may come from."""
    command = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(checkpoint),
               "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port),
               "--dtype", "float32", "--enforce-eager", "--max-model-len", str(max_model_len), "--seed", "0"]
    if media_root is not None:
        command += ["--allowed-local-media-path", str(Path(media_root).resolve())]
    return command + list(extra)


def builtin_command(python: str | os.PathLike, checkpoint: str | os.PathLike, port: int, *, served_name: str,
                    media_root: str | os.PathLike | None = None, extra: Sequence[str] = ()) -> list[str]:
    """This project's server (``python -m llava.serve.openai_api``) on ``checkpoint``."""
    command = [str(python), "-m", "llava.serve.openai_api", "--model-path", str(checkpoint), "--port", str(port),
               "--served-model-name", served_name]
    if media_root is not None:
        command += ["--media-root", str(Path(media_root).resolve())]
    return command + list(extra)


@contextmanager
def running_server(command: Sequence[str], port: int, log: Path, env: dict[str, str] | None = None,
                   ready_s: float = READY_S) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``command`` (a server listening on ``port``), its output to ``log``; yields ``(base URL, process)``
    once ``GET /v1/models`` answers, and stops the server (SIGTERM, then SIGKILL) on exit. A server that exits
    or does not answer within ``ready_s`` raises ``RuntimeError`` with the end of its log."""
    base = f"http://127.0.0.1:{port}"
    with open(log, "wb") as output:
        process = subprocess.Popen(list(command), stdout=output, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        deadline = time.monotonic() + ready_s
        while not _answers(base):
            if process.poll() is not None or time.monotonic() > deadline:
                state = f"exited with {process.returncode}" if process.poll() is not None else "did not answer"
                raise RuntimeError(f"{command[0]} ... {state} within {ready_s:.0f} s; its log ends:\n"
                                   + log.read_text(errors="replace")[-4000:])
            time.sleep(0.5)
        yield base, process
    finally:
        _stop(process)


def _answers(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/v1/models", timeout=5) as response:
            return bool(json.loads(response.read()).get("data"))
    except (OSError, ValueError, urllib.error.URLError):
        return False


def _stop(process: subprocess.Popen) -> None:
    """The server and every process it started (vLLM runs its engine and workers in children)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # children left behind, if any
    except ProcessLookupError:
        pass
    process.wait()


@contextmanager
def vllm_server(python: str | os.PathLike, checkpoint: str | os.PathLike, *, log: Path, served_name: str = "llava-ov",
                media_root: str | os.PathLike | None = None, extra: Sequence[str] = ()) -> Iterator[str]:
    """vLLM serving ``checkpoint`` with the plugin, from the venv of ``python``; yields its base URL."""
    port = free_port()
    command = vllm_command(python, checkpoint, port, served_name=served_name, media_root=media_root, extra=extra)
    with running_server(command, port, log, env=CPU_ENVIRONMENT) as (base, _):
        yield base


__all__ = ["CPU_ENVIRONMENT", "builtin_command", "free_port", "running_server", "vllm_command", "vllm_server"]
