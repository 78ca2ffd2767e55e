"""OV-Encoder cost: dense frames vs codec patches, and gather-then-embed vs the reference order.

    python benchmarks/bench_encoder.py [--device cpu|cuda] [--layers 24] [--repeats 3] [--frame 224]

On a ViT-L-shaped encoder (random weights, patch 16; 224x224 frames = 196 patches each, or
``--frame`` pixels square):

  (a) dense     8 frames, all their patches
  (b) codec     2048 patches chosen from 64 frames: only those are gathered and embedded
  (c) ref-order the same 2048 patches the reference way: embed all 64 frames, then gather

Times: one process, cases interleaved round by round, median of ``--repeats`` rounds.
Peak memory: each case in its own process, the forward's alone: on CPU the rise of the
process's peak RSS (reset through /proc/self/clear_refs) over what model and inputs hold, on CUDA the rise of
torch.cuda.max_memory_allocated. Ratios are printed side by side
from one run. With ``--device cuda`` the model runs in bfloat16 and tokens/s and MFU
(model FLOPs / peak bf16 FLOPs of the card) are reported.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import time

from rss import reset_peak_rss, rss_bytes  # benchmarks/rss.py

FRAME = 224
PATCH = 16
CODEC_FRAMES = 64
CODEC_TOKENS = 2048
DENSE_FRAMES = 8
CASES = ("dense", "codec", "ref-order")
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def vit_large(layers: int):
    from llava.model import OneVisionEncoderConfig

    return OneVisionEncoderConfig(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=layers, num_attention_heads=16,
        patch_size=PATCH, image_size=FRAME, rope_temporal_size=CODEC_FRAMES, use_head=True,
    )


def reference_order_forward(model, video, indices):
    """Embed every patch of every frame, normalise, then keep ``indices`` (the reference's order)."""

    from llava.model.modeling_onevision_encoder import _grid_coordinates, gather_patches

    config = model.config
    hidden = model.layernorm_pre(model.embeddings(gather_patches(video, config.patch_size, None)))
    hidden = hidden.gather(1, indices.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    grid = video.shape[-1] // config.patch_size
    angles = model.video_rope(_grid_coordinates(indices, grid, grid)).unsqueeze(2)
    cos, sin = angles.cos().to(hidden.dtype), angles.sin().to(hidden.dtype)
    sequence, _, _ = model.encoder(hidden, cos, sin, None, None, False, False)
    sequence = model.layernorm_post(sequence)
    return sequence, model.head(sequence)


def make_inputs(case: str, device, dtype, frame: int):
    import torch

    from llava.model.modeling_llava_vision import temporal_slots

    generator = torch.Generator().manual_seed(0)
    if case == "dense":
        video = torch.randn(1, 3, DENSE_FRAMES, frame, frame, generator=generator)
        slots = temporal_slots(DENSE_FRAMES, CODEC_FRAMES)
        per_frame = (frame // PATCH) ** 2
        indices = (slots[:, None] * per_frame + torch.arange(per_frame)).reshape(1, -1)
    else:
        video = torch.randn(1, 3, CODEC_FRAMES, frame, frame, generator=generator)
        total = CODEC_FRAMES * (frame // PATCH) ** 2
        indices = torch.randperm(total, generator=generator)[:CODEC_TOKENS].sort().values.unsqueeze(0)
    return video.to(device=device, dtype=dtype), indices.to(device)


def flops_per_forward(config, tokens: int) -> float:
    """Matmul FLOPs of one forward (projections, MLP, attention scores and values, patch embed)."""
    d, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_layer = 2 * tokens * (4 * d * d + 2 * d * inner) + 4 * tokens * tokens * d
    embed = 2 * tokens * d * 3 * config.patch_size**2
    return layers * per_layer + embed


def build(device: str, layers: int):
    import torch

    from llava.model import OneVisionEncoderModel

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = OneVisionEncoderModel(vit_large(layers)).to(device=device, dtype=dtype).eval()
    return model, dtype


def case_forward(case: str, model, device: str, dtype, frame: int):
    """A no-argument callable running one forward of ``case``, and its token count."""
    video, indices = make_inputs(case, device, dtype, frame)
    if case == "ref-order":
        return (lambda: reference_order_forward(model, video, indices)), int(indices.shape[1])
    return (lambda: model(video, visible_indices=indices)), int(indices.shape[1])


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def time_cases(args) -> dict[str, dict]:
    """All cases in one process, interleaved round by round, so drifting load hits each alike."""
    import torch

    model, dtype = build(args.device, args.layers)
    forwards = {case: case_forward(case, model, args.device, dtype, args.frame) for case in CASES}
    times = {case: [] for case in CASES}
    with torch.no_grad():
        for case, (forward, _) in forwards.items():  # warm-up
            forward()
        for _ in range(args.repeats):
            for case, (forward, _) in forwards.items():
                sync(args.device)
                start = time.perf_counter()
                forward()
                sync(args.device)
                times[case].append(time.perf_counter() - start)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    return {
        case: dict(tokens=tokens, seconds=statistics.median(times[case]), flops=flops_per_forward(model.config, tokens),
                   device_name=name)
        for case, (_, tokens) in forwards.items()
    }


def peak_memory(case: str, device: str, layers: int, frame: int, queue) -> None:
    """Peak memory of one forward over what the model and inputs already hold (own process)."""
    import torch

    model, dtype = build(device, layers)
    forward, _ = case_forward(case, model, device, dtype, frame)
    with torch.no_grad():
        forward()  # warm-up: one-time kernel and thread-pool setup is not the forward's cost
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        base = rss_bytes("VmRSS")
    with torch.no_grad():
        forward()
    sync(device)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = rss_bytes("VmHWM") - base
    queue.put(max(peak, 0))


def measure_peak(case: str, args) -> int:
    # Serve every allocation over 64 KiB with mmap so freed tensors leave the RSS at once:
    # the RSS then tracks live tensors instead of glibc's cached heap.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=peak_memory, args=(case, args.device, args.layers, args.frame, queue))
    process.start()
    peak = queue.get()
    process.join()
    return peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--layers", type=int, default=24, help="encoder depth (24 = ViT-L)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--frame", type=int, default=FRAME, help="frame side in pixels (a multiple of 16)")
    parser.add_argument("--json", action="store_true", help="also print the raw results as JSON")
    args = parser.parse_args()

    results = time_cases(args)
    for case in CASES:
        results[case]["peak_bytes"] = measure_peak(case, args)

    name = results["dense"]["device_name"]
    print(f"\nOV-Encoder ViT-L shape ({args.layers} layers, D=1024, patch {PATCH}, {args.frame}x{args.frame} frames) "
          f"on {name}")
    header = f"{'case':34s} {'tokens':>6s} {'frames':>6s} {'time s':>8s} {'peak MiB':>9s}"
    if args.device == "cuda":
        header += f" {'tokens/s':>10s} {'MFU':>6s}"
    print(header)
    labels = {
        "dense": ("(a) dense frames", DENSE_FRAMES),
        "codec": ("(b) codec patches, gather first", CODEC_FRAMES),
        "ref-order": ("(c) codec patches, reference order", CODEC_FRAMES),
    }
    peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    for case, (label, frames) in labels.items():
        r = results[case]
        line = f"{label:34s} {r['tokens']:6d} {frames:6d} {r['seconds']:8.3f} {r['peak_bytes'] / 2**20:9.1f}"
        if args.device == "cuda":
            mfu = r["flops"] / r["seconds"] / (peak_tflops * 1e12) if peak_tflops else float("nan")
            line += f" {r['tokens'] / r['seconds']:10.0f} {mfu:6.1%}"
        print(line)

    a, b, c = results["dense"], results["codec"], results["ref-order"]
    print("\nratios (same run):")
    print(f"  reference order / gather-first, time:   {c['seconds'] / b['seconds']:.2f}x")
    print(f"  reference order / gather-first, memory: {c['peak_bytes'] / max(b['peak_bytes'], 1):.2f}x")
    print(f"  codec (64 frames) / dense (8 frames), time: {b['seconds'] / a['seconds']:.2f}x "
          f"for {CODEC_FRAMES // DENSE_FRAMES}x the frames covered")
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
