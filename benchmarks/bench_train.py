"""LLaVA SFT training step: unpacked batch 1 vs packed rows, supervised-only LM head vs full logits.

    python benchmarks/bench_train.py                          # CPU defaults (about 8 minutes on 2 cores)
    python benchmarks/bench_train.py --write-docs             # also update docs/benchmarks.md
    python benchmarks/bench_train.py --device cuda --attn flash_attention_2 --write-docs
    python benchmarks/bench_train.py --attention-cost [--write-docs]   # packed attention alone (a minute)

What runs: the real LLaVA model (``LlavaQwenForCausalLM``: OV-Encoder tower, projector, Qwen2
decoder; random weights, every part trainable as in SFT) on real pixel inputs and token ids
built like the trainer's batches (``llava.train.data.DataCollator``). One *training step* is
forward + backward + ``torch.optim.AdamW`` step (+ ``zero_grad``). The shapes of the decoder
(``--hidden``, ``--layers``, ...) and of the tower are small on CPU; the vocabulary is Qwen's
(``--vocab 151936``), so what full-vocabulary logits cost is visible; the LM head is tied to the
embeddings by default, as in Qwen2-0.5B / 1.5B (``--no-tie-embeddings``: untied, as in Qwen2-7B).

The mix stands for the SFT set (``mix()``): four images of 1,024 / 1,536 / 2,048 / 3,072 visual
tokens (native resolution, patch 16), two codec videos of 10,368 visual tokens each (LLAVA_CODEC:
8 mosaics of 576 x 576 = 8 x 36 x 36 patches, 8 ``<image>`` placeholders, one attention span in
the tower) and four text-only samples of 250-600 tokens; only the answer tokens carry labels
(about 5 % of all positions). ``--scale`` multiplies every token count (image and mosaic sides by
its square root, text lengths and ``--max-length`` by it): the CPU default 0.125 keeps the
proportions with 8x fewer tokens (videos 8 x 13 x 13 = 1,352 visual tokens, images 121-391, rows
of 2,048): about 8 minutes on 2 busy cores; ``--scale 0.25`` took about 12 (its full-logits case
needs about 7.5 GiB).

Cases, each a pass over the whole mix, in one process, interleaved round by round:

  (a) unpacked  batch 1 per step, one step per sample (as upstream trains), supervised-only head
  (b) packed    ``llava.batching`` packing: the samples grouped first-fit-decreasing into rows of at
                most ``--max-length`` tokens, one row per step, supervised-only head
  (c) naive     the steps of (b), but full-vocabulary logits at every position and the loss from
                them (the plain Hugging Face forward on the same ``inputs_embeds``: upstream's way)
  (d) upstream  (optional, ``--cases``) the steps of (a) with full logits: upstream exactly

tokens/s = real tokens of the mix (text + visual, no padding) / median time of a pass. Before
timing, once: packed loss == unpacked loss (the supervised-token-weighted mean of the batch-1
losses of a row's samples) and naive loss == supervised loss, printed.

``--attention-cost`` times the decoder's attention alone (forward + backward of the attention function a
Qwen2 layer calls, ``--heads`` / ``--kv-heads`` heads of 64): one packed row of ``--samples`` samples of
``--sample-tokens`` tokens against the same samples one by one, for the two ways packed rows can be
attended: ``sdpa`` with the block-diagonal causal mask the model builds from ``segment_ids`` (a cost of the
row length squared) and ``varlen`` (each sample attends to itself: PyTorch's varlen kernels on CUDA,
one SDPA call per sample on the CPU). packed / alone is the price of packing.

Peak memory: each case in its own fresh process, after a warm-up step (weights, AdamW state
allocated): on CPU the rise of the peak RSS (reset through /proc/self/clear_refs; allocations
over 64 KiB served by mmap so freed tensors leave the RSS), on CUDA the rise of
torch.cuda.max_memory_allocated, over one pass. With ``--device cuda`` the steps run under
bf16 autocast (fp32 weights and AdamW state, fused AdamW) and MFU is reported: model FLOPs
(6 x parameters x tokens for decoder layers, tower layers up to the selected one, patch
embedding and projector; 6 x lm_head x supervised tokens; causal attention 6 n^2 d per layer
per sample, the tower's bidirectional 12 n^2 d per span) over ``--peak-tflops``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import platform
import re
import statistics
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from rss import reset_peak_rss, rss_bytes  # benchmarks/rss.py

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## SFT training step"
PATCH = 16
CASES = ("unpacked", "packed", "naive", "upstream")
DEFAULT_CASES = "unpacked,packed,naive"
LABELS = {
    "unpacked": "(a) unpacked, batch 1",
    "packed": "(b) packed rows",
    "naive": "(c) packed, full logits",
    "upstream": "(d) batch 1, full logits",
}
#: Shapes per device: (decoder hidden, layers, intermediate, heads, kv heads), tower (hidden, layers), scale.
PRESETS = {
    "cpu": {"hidden": 256, "layers": 2, "intermediate": 1408, "heads": 4, "kv_heads": 2, "vision_hidden": 128,
            "vision_layers": 2, "scale": 0.125},
    # Qwen2-1.5B's decoder shape and the ViT-L OV-Encoder: fits one 80+ GiB GPU without ZeRO.
    "cuda": {"hidden": 1536, "layers": 28, "intermediate": 8960, "heads": 12, "kv_heads": 2,
             "vision_hidden": 1024, "vision_layers": 24, "scale": 1.0},
}


@dataclass(frozen=True)
class SampleSpec:
    """One sample of the mix at full scale: visual tokens, prompt tokens and answer (supervised) tokens."""

    kind: str  # "image", "codec" or "text"
    grid: tuple[int, int] | None  # patch rows x columns of the image / of each codec mosaic
    prompt: int
    answer: int


def codec_shape() -> tuple[int, int]:
    """(mosaics, mosaic side in patches) of a codec video with the LLaVA codec configuration."""
    from llava.processing.video import LLAVA_CODEC

    return LLAVA_CODEC.keep_frames_equiv, LLAVA_CODEC.square_size // LLAVA_CODEC.patch_size


def mix() -> tuple[SampleSpec, ...]:
    mosaics, side = codec_shape()  # 8 mosaics of 36 x 36 patches: 10,368 visual tokens
    assert mosaics * side * side == 10368, (mosaics, side)
    return (
        SampleSpec("image", (32, 32), 60, 150),  # 1,024 visual tokens (512 x 512 pixels)
        SampleSpec("text", None, 150, 150),
        SampleSpec("image", (32, 48), 80, 60),  # 1,536
        SampleSpec("codec", (side, side), 70, 120),  # 10,368
        SampleSpec("text", None, 250, 250),
        SampleSpec("image", (32, 64), 50, 200),  # 2,048
        SampleSpec("image", (48, 64), 90, 100),  # 3,072
        SampleSpec("codec", (side, side), 60, 80),  # 10,368
        SampleSpec("text", None, 300, 300),
        SampleSpec("text", None, 125, 125),
    )


def resolve(args) -> None:
    """Fill the shape options left unset with the device's preset."""
    for key, value in PRESETS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.attn == "auto":  # as the trainer resolves it: flash-attn where installed on CUDA, else varlen
        from llava.train.model_setup import resolve_attention

        args.attn = resolve_attention("auto")
    args.capacity = max(64, round(args.max_length * args.scale))
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown or not args.cases:
        raise SystemExit(f"--cases: unknown {unknown}; choose from {', '.join(CASES)}")
    if args.device == "cpu" and args.attn == "flash_attention_2":
        raise SystemExit("--attn flash_attention_2 needs --device cuda")


# ----------------------------------------------------------------------------- inputs
def scaled(n: int, scale: float) -> int:
    return max(1, round(n * scale))


def make_sample(spec: SampleSpec, scale: float, vocab: int, generator):
    """A :class:`llava.train.data.Sample`: random ids, labels on the answer only, random pixels."""
    import torch

    from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
    from llava.processing.media import VisualInputs
    from llava.train.data import Sample

    prompt, answer = scaled(spec.prompt, scale), scaled(spec.answer, scale)
    visual, placeholders, visual_tokens = VisualInputs(), 0, 0
    if spec.kind != "text":
        rows, cols = (max(1, round(side * math.sqrt(scale))) for side in spec.grid)
        height, width = rows * PATCH, cols * PATCH
        if spec.kind == "image":
            pixels = torch.randn(3, height, width, generator=generator)
            visual = VisualInputs([pixels], ["image"], [(width, height)], [None])
            placeholders, visual_tokens = 1, rows * cols
        else:
            mosaics, _ = codec_shape()
            count = mosaics * rows * cols
            pixels = torch.randn(3, mosaics, height, width, generator=generator)
            t = torch.randint(0, 64, (count,), generator=generator).sort().values
            cell = torch.arange(count) % (rows * cols)
            positions = torch.stack([t, cell // cols, cell % cols], dim=-1)  # (t, h, w) as positions_thw
            visual = VisualInputs([pixels], ["codec"], [(width, height)], [positions])
            placeholders, visual_tokens = mosaics, count
    head = max(1, prompt // 4)  # system prompt and question start before the placeholders
    ids = torch.cat([
        torch.randint(0, vocab - 2, (head,), generator=generator),
        torch.full((placeholders,), IMAGE_TOKEN_INDEX, dtype=torch.long),
        torch.randint(0, vocab - 2, (max(0, prompt - head) + answer,), generator=generator),
    ])
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[-answer:] = ids[-answer:]
    sample = Sample(ids, labels, visual)
    tokens = len(ids) - placeholders + visual_tokens
    return sample, {"kind": spec.kind, "tokens": tokens, "visual": visual_tokens, "supervised": answer}


def pack_groups(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing into rows of ``capacity`` tokens (the sampler's job); mix order inside a row."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fits = next((r for r, free in enumerate(room) if lengths[index] <= free), None)
        if fits is None:
            rows.append([index])
            room.append(capacity - lengths[index])
        else:
            rows[fits].append(index)
            room[fits] -= lengths[index]
    return [sorted(row) for row in rows]


def to_device(batch: dict, device: str) -> dict:
    import torch

    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.to(device)
        elif isinstance(value, list):
            out[key] = [v.to(device) if isinstance(v, torch.Tensor) else v for v in value]
        else:
            out[key] = value
    return out


def make_inputs(args, model):
    """Samples, their info, the packed groups and the batches of each case (on the device)."""
    from types import SimpleNamespace

    import torch

    from llava.train.data import DataCollator

    generator = torch.Generator().manual_seed(0)
    built = [make_sample(spec, args.scale, args.vocab, generator) for spec in mix()]
    samples, info = [s for s, _ in built], [i for _, i in built]
    too_long = [i["tokens"] for i in info if i["tokens"] > args.capacity]
    if too_long:
        raise SystemExit(f"samples of {too_long} tokens do not fit --max-length x --scale = {args.capacity}")
    groups = pack_groups([i["tokens"] for i in info], args.capacity)
    pad = args.vocab - 1

    def collate(indices: list[int], pack: bool) -> dict:
        collator = DataCollator.for_model(SimpleNamespace(pad_token_id=pad), model, pack=pack)
        batch = collator([samples[i] for i in indices])
        batch.pop("report")
        return to_device(batch, args.device)

    single = [collate([i], False) for i in range(len(samples))]
    packed = [collate(group, True) for group in groups]
    batches = {"unpacked": single, "upstream": single, "packed": packed, "naive": packed}
    return info, groups, batches


# ----------------------------------------------------------------------------- model
def build(args):
    """The LLaVA model (train mode, on the device) and its AdamW optimizer."""
    import torch

    from llava.model import LlavaQwenForCausalLM, OneVisionEncoderConfig
    from llava.model.tiny import tiny_llava_config, tiny_tokenizer

    encoder = OneVisionEncoderConfig(
        hidden_size=args.vision_hidden, intermediate_size=4 * args.vision_hidden,
        num_hidden_layers=args.vision_layers, num_attention_heads=max(1, args.vision_hidden // 64),
        patch_size=PATCH, image_size=384, rope_temporal_size=64,
    )
    config = tiny_llava_config(
        tiny_tokenizer("qwen2"), "qwen2",
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=max(32768, args.capacity), tie_word_embeddings=args.tie_embeddings,
        vision_config=encoder.to_dict(), mm_hidden_size=encoder.hidden_size,
        tokenizer_model_max_length=args.capacity, vision_attn_implementation=args.attn, use_cache=False,
        image_token_id=args.vocab - 2,  # random text never draws it (make_sample)
    )
    config._attn_implementation = args.attn  # the decoder's; the tower's is vision_attn_implementation
    torch.manual_seed(0)
    with torch.device(args.device):
        model = LlavaQwenForCausalLM(config)
    tower = model.get_model().vision_tower.vision_tower
    assert model.config._attn_implementation == args.attn == tower.config._attn_implementation
    if args.gradient_checkpointing:  # what --gradient_checkpointing True does in the SFT scripts
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:  # transformers >= 5.x
            enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    fused = {"fused": True} if args.device == "cuda" else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0, **fused)
    return model, optimizer


def supervised_loss(model, batch: dict):
    """The model's training forward: the LM head only where a label is (``_supervised_forward``)."""
    return model(**batch).loss


def full_logits_loss(model, batch: dict):
    """The naive way: the same (packed) inputs, full-vocabulary logits at every position, the loss from them
    (the Hugging Face causal-LM forward on ``inputs_embeds``, as upstream LLaVA)."""
    import torch.nn.functional as F

    embeds = model.scatter_visual_tokens(batch["input_ids"], batch.get("images"), batch.get("modalities"),
                                         batch.get("image_sizes"), batch.get("patch_positions"))
    segments = batch.get("segment_ids")
    mask = model.packed_attention_mask(segments, embeds.dtype) if segments is not None else batch["attention_mask"]
    logits = model(inputs_embeds=embeds, attention_mask=mask, position_ids=batch.get("position_ids"),
                   use_cache=False).logits
    labels = batch["labels"]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


LOSSES = {"unpacked": supervised_loss, "packed": supervised_loss, "naive": full_logits_loss,
          "upstream": full_logits_loss}


def autocast(device: str):
    import torch

    if device == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def train_pass(model, optimizer, batches: list[dict], loss_fn, device: str) -> tuple[float, float]:
    """One training step per batch; returns (forward + backward seconds, optimizer seconds)."""
    forward_backward = optimizer_time = 0.0
    for batch in batches:
        sync(device)
        start = time.perf_counter()
        with autocast(device):
            loss = loss_fn(model, batch)
        loss.backward()
        sync(device)
        middle = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        forward_backward += middle - start
        optimizer_time += time.perf_counter() - middle
    return forward_backward, optimizer_time


# ----------------------------------------------------------------------------- checks and FLOPs
def check_equivalence(model, info, groups, batches, device: str, upstream: bool) -> dict:
    """Packed loss vs the batch-1 losses of its samples; full-logits vs supervised-only loss (no grad)."""
    import torch

    with torch.no_grad(), autocast(device):
        alone = [float(supervised_loss(model, b)) for b in batches["unpacked"]]
        packed = [float(supervised_loss(model, b)) for b in batches["packed"]]
        naive = [float(full_logits_loss(model, b)) for b in batches["packed"]]
        upstream = [float(full_logits_loss(model, b)) for b in batches["unpacked"]] if upstream else alone
    weighted = [
        sum(alone[i] * info[i]["supervised"] for i in group) / sum(info[i]["supervised"] for i in group)
        for group in groups
    ]
    return {
        "packed_vs_unpacked": max(abs(p - w) for p, w in zip(packed, weighted, strict=True)),
        "naive_vs_supervised": max(abs(n - p) for n, p in zip(naive, packed, strict=True)),
        "upstream_vs_unpacked": max(abs(u - a) for u, a in zip(upstream, alone, strict=True)),
        "loss": statistics.fmean(packed),
    }


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def model_flops(model, info, groups) -> dict:
    """Model FLOPs of one pass over the mix (forward + backward), the same for every case."""
    config = model.config
    lm = model.get_model()
    tower = lm.vision_tower.vision_tower
    select = config.mm_vision_select_layer
    used = select if select >= 0 else len(tower.encoder.layers) + 1 + select  # tower layers the LM sees
    dense = count(lm.layers) + count(lm.norm)
    head = model.lm_head.weight.numel()
    vision = count(tower.embeddings) + count(tower.layernorm_pre) + sum(count(layer) for layer in
                                                                        tower.encoder.layers[:used])
    projector = count(lm.mm_projector)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    d_attn = config.num_attention_heads * head_dim
    tokens = sum(i["tokens"] for i in info)
    visual = sum(i["visual"] for i in info)
    supervised = sum(i["supervised"] for i in info)
    flops = 6 * dense * tokens + 6 * head * supervised + 6 * (vision + projector) * visual
    flops += sum(6 * i["tokens"] ** 2 * d_attn * config.num_hidden_layers for i in info)  # causal, per sample
    vision_d = tower.config.hidden_size
    flops += sum(12 * i["visual"] ** 2 * vision_d * used for i in info)  # bidirectional, one span per input
    return {
        "flops": flops, "tokens": tokens, "visual": visual, "supervised": supervised, "rows": len(groups),
        "row_tokens": [sum(info[i]["tokens"] for i in g) for g in groups], "params": count(model),
        "dense_params": dense, "head_params": head, "vision_params": count(tower),
        "projector_params": projector,
    }


# ----------------------------------------------------------------------------- timing and memory
def time_cases(args) -> dict:
    """All cases in one process, interleaved round by round, so drifting load hits each alike."""
    import torch

    model, optimizer = build(args)
    info, groups, batches = make_inputs(args, model)
    check = check_equivalence(model, info, groups, batches, args.device, "upstream" in args.cases)
    print(f"check: |packed - unpacked| loss {check['packed_vs_unpacked']:.2e}, "
          f"|full logits - supervised-only| {check['naive_vs_supervised']:.2e} (loss {check['loss']:.3f})",
          flush=True)
    times = {case: [] for case in args.cases}
    for case in args.cases:  # warm-up
        train_pass(model, optimizer, batches[case], LOSSES[case], args.device)
    for round_ in range(args.repeats):
        for case in args.cases:
            forward_backward, step = train_pass(model, optimizer, batches[case], LOSSES[case], args.device)
            times[case].append((forward_backward, step))
            print(f"  round {round_ + 1}: {case:9s} {forward_backward + step:8.2f} s "
                  f"(optimizer {step:.2f} s)", flush=True)
    results = {}
    for case in args.cases:
        totals = [f + s for f, s in times[case]]
        median = totals.index(statistics.median_low(totals))  # the median round (the lower one if even)
        results[case] = {
            "seconds": totals[median], "optimizer_seconds": times[case][median][1],
            "steps": len(batches[case]), "rounds": totals,
        }
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    return {"cases": results, "check": check, "flops": model_flops(model, info, groups), "info": info,
            "groups": groups, "device_name": name}


def peak_memory(case: str, args, queue) -> None:
    """Peak memory of one pass of ``case`` over what weights, AdamW state and inputs hold (own process)."""
    import torch

    model, optimizer = build(args)
    _, _, batches = make_inputs(args, model)
    smallest = min(batches[case], key=lambda b: b["input_ids"].numel())
    train_pass(model, optimizer, [smallest], LOSSES[case], args.device)  # AdamW state, one-time setup
    sync(args.device)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        base = rss_bytes("VmRSS")
    train_pass(model, optimizer, batches[case], LOSSES[case], args.device)
    sync(args.device)
    peak = torch.cuda.max_memory_allocated() if args.device == "cuda" else rss_bytes("VmHWM")
    queue.put(max(peak - base, 0))


def measure_peak(case: str, args) -> int:
    # Allocations over 64 KiB through mmap: freed tensors leave the RSS at once, so it tracks live tensors.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=peak_memory, args=(case, args, queue))
    process.start()
    peak = queue.get()
    process.join()
    return peak


# ----------------------------------------------------------------------------- report
def mib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f}"


def memory_ratio(top: dict, bottom: dict) -> str:
    """``top`` / ``bottom`` peak memory, ``n/a`` when it was not measured (``--no-memory``)."""
    if top["peak_bytes"] is None or bottom["peak_bytes"] is None:
        return "n/a"
    return f"{top['peak_bytes'] / max(bottom['peak_bytes'], 1):.2f}x"


def report(args, results: dict) -> tuple[str, list[str]]:
    """The markdown table and the ratio lines."""
    flops, cases = results["flops"], results["cases"]
    gpu = args.device == "cuda"
    header = "| case | steps | time / pass (s) | of it optimizer (s) | tokens/s | model TFLOP/s | peak MiB |"
    rule = "|---|---:|---:|---:|---:|---:|---:|"
    if gpu:
        header, rule = header + " MFU |", rule + "---:|"
    lines = [header, rule]
    for case in args.cases:
        r = cases[case]
        tflops = flops["flops"] / r["seconds"] / 1e12
        line = (f"| {LABELS[case]} | {r['steps']} | {r['seconds']:.2f} | {r['optimizer_seconds']:.2f} | "
                f"{flops['tokens'] / r['seconds']:,.0f} | {tflops:.3f} | {mib(r['peak_bytes'])} |")
        if gpu:
            line += f" {tflops / args.peak_tflops:.1%} |"
        lines.append(line)
    ratios = []
    if "unpacked" in cases and "packed" in cases:
        a, b = cases["unpacked"], cases["packed"]
        compute = (a["seconds"] - a["optimizer_seconds"]) / (b["seconds"] - b["optimizer_seconds"])
        ratios.append(
            f"packed / unpacked tokens/s: **{a['seconds'] / b['seconds']:.2f}x** (forward + backward alone "
            f"{compute:.2f}x; {a['steps']} optimizer steps vs {b['steps']}); peak memory packed / unpacked "
            f"{memory_ratio(b, a)}"
        )
    if "packed" in cases and "naive" in cases:
        b, c = cases["packed"], cases["naive"]
        ratios.append(
            f"full logits / supervised-only head, peak memory: **{memory_ratio(c, b)}** "
            f"({mib(c['peak_bytes'])} vs {mib(b['peak_bytes'])} MiB); time {c['seconds'] / b['seconds']:.2f}x"
        )
    if "upstream" in cases and "packed" in cases:
        b, d = cases["packed"], cases["upstream"]
        ratios.append(
            f"packed + supervised-only head / upstream (batch 1, full logits): tokens/s "
            f"{d['seconds'] / b['seconds']:.2f}x, peak memory {memory_ratio(b, d)}"
        )
    return "\n".join(lines), ratios


def describe(args, results: dict) -> str:
    import torch

    flops, info = results["flops"], results["info"]
    kinds = {kind: [i for i in info if i["kind"] == kind] for kind in ("image", "codec", "text")}
    rows = ", ".join(f"{n:,}" for n in flops["row_tokens"])
    fill = flops["tokens"] / (flops["rows"] * args.capacity)
    embeddings = "tied" if args.tie_embeddings else "untied"
    precision = "bf16 autocast, fp32 weights" if args.device == "cuda" else "float32"
    checkpointing = ", gradient checkpointing" if args.gradient_checkpointing else ""

    def million(n: int) -> str:
        return f"{n / 1e6:,.1f} M"

    def listed(kind: str, key: str) -> str:
        return ", ".join(f"{i[key]:,}" for i in kinds[kind])

    return (
        f"Decoder: Qwen2 shape, hidden {args.hidden}, {args.layers} layers, intermediate "
        f"{args.intermediate}, {args.heads} heads / {args.kv_heads} KV heads, vocabulary {args.vocab:,} "
        f"({embeddings} embeddings); tower: OV-Encoder, hidden {args.vision_hidden}, {args.vision_layers} "
        f"layers, patch {PATCH}, features of layer -2; projector mlp2x_gelu. {million(flops['params'])} "
        f"parameters ({million(flops['head_params'])} in the LM head, {million(flops['dense_params'])} in "
        f"the decoder layers, {million(flops['vision_params'])} in the tower), all trainable, AdamW "
        f"(lr 1e-5); attention {args.attn}{checkpointing}; {precision}; torch {torch.__version__}.\n\n"
        f"Mix at scale {args.scale:g}: {len(info)} samples, {flops['tokens']:,} tokens of which "
        f"{flops['visual']:,} visual and {flops['supervised']:,} supervised "
        f"({flops['supervised'] / flops['tokens']:.1%}): images of {listed('image', 'visual')} visual "
        f"tokens, codec videos of {listed('codec', 'visual')}, text-only samples of "
        f"{listed('text', 'tokens')} tokens. Packed: {flops['rows']} row{'s' if flops['rows'] > 1 else ''} "
        f"of at most {args.capacity:,} "
        f"tokens ({rows} tokens, {fill:.0%} full)."
    )


SECTION_INTRO = """\
`benchmarks/bench_train.py`: one SFT training step (forward + backward + AdamW step) of the
real LLaVA model — OV-Encoder tower on pixel inputs, projector, Qwen2 decoder, random weights,
every part trainable — on batches built by the trainer's `DataCollator`, over a mix shaped like
the SFT set: images of 1,024-3,072 visual tokens, codec videos of 10,368 visual tokens (8
mosaics of 36 x 36 patches, `LLAVA_CODEC`), text-only samples of 250-600 tokens, labels on the
answers only. The whole model runs, not the language model alone. Decoder and tower are small on
CPU; the vocabulary is Qwen's 151,936, so the cost of full-vocabulary logits shows. `--scale`
multiplies every token count (and the row length).

Cases, each a pass over the whole mix, interleaved round by round in one process (median of the
rounds): (a) batch 1 per step, one step per sample, as upstream trains; (b) packed rows (`llava.batching`),
samples grouped first-fit-decreasing into rows of at most `--max-length` tokens, one row per step;
(c) the steps of (b) with full-vocabulary logits at every position and the loss from them (the
plain Hugging Face forward on the same inputs, as upstream) instead of the supervised-only LM
head. tokens/s = real tokens of the mix (text + visual, no padding) / time of a pass. Peak MiB:
each case in a fresh process, the rise over what weights, AdamW state and inputs hold (CPU: peak
RSS, allocations over 64 KiB through mmap; CUDA: `torch.cuda.max_memory_allocated`). Before
timing the benchmark checks that the cases compute the same loss."""

NOT_MEASURED_GPU = """\
### GPU

**Not measured.** The GPU targets — packed rows at least 45 % MFU in bf16 and at least 2x the
tokens/s of batch 1 — were NOT measured, because no GPU was lent to the sessions that wrote this:
the `--device cuda` path (bf16 autocast over fp32 weights, fused AdamW, PyTorch's varlen attention
or flash-attn, MFU) has never run. To fill this in on one H100 / H200, run the prepared check,
`bash benchmarks/gpu_check.sh` (under 8 minutes; its smoke run passes on the CPU,
`tests/test_gpu_check.py`), or this benchmark alone:
`python benchmarks/bench_train.py --device cuda --attn auto --write-docs` (by default a
Qwen2-1.5B-shaped decoder, the ViT-L OV-Encoder, the mix at full scale in rows of 16,384 tokens,
MFU over `--peak-tflops` 989, H100 / H200 dense bf16; add `--gradient-checkpointing`, as the SFT
scripts do, if the full-logits case runs out of memory)."""


def wrap(text: str, item: bool = False) -> str:
    """A paragraph (or a list item) wrapped at 100 columns, like the rest of docs/benchmarks.md."""
    first, rest = ("- ", "  ") if item else ("", "")
    return textwrap.fill(text, 100, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False,
                         break_long_words=False)


def gpu_targets(args, results: dict) -> str:
    """Whether this GPU run meets the targets: packed >= 2x batch 1 tokens/s, >= 40 % MFU in bf16."""
    cases, flops = results["cases"], results["flops"]
    lines = []
    if "unpacked" in cases and "packed" in cases:
        speedup = cases["unpacked"]["seconds"] / cases["packed"]["seconds"]
        lines.append(f"packed >= 2x the tokens/s of batch 1: {speedup:.2f}x, "
                     f"{'met' if speedup >= 2 else '**not met**'}")
    best = max(flops["flops"] / r["seconds"] / 1e12 / args.peak_tflops for r in cases.values())
    lines.append(f">= 40 % MFU in bf16 (over {args.peak_tflops:g} TFLOP/s): best case {best:.1%}, "
                 f"{'met' if best >= 0.4 else '**not met**'}")
    return "Targets: " + "; ".join(lines) + "."


def docs_text(args, results: dict, table: str, ratios: list[str]) -> str:
    check = results["check"]
    command = "python benchmarks/bench_train.py " + " ".join(sys.argv[1:])
    machine = (f"{platform.machine()}, {os.cpu_count()} cores" if args.device == "cpu"
               else f"{results['device_name']}")
    title = "### CPU" if args.device == "cpu" else "### GPU"
    produced = (
        f"Produced by `{command.strip()}` ({time.strftime('%Y-%m-%d')}; {machine}, Python "
        f"{platform.python_version()}; median of {args.repeats} rounds after a warm-up round"
        + ("; the machine is shared, so times drift between runs; the ratios come from one run)."
           if args.device == "cpu" else ").")
    )
    upstream = ""
    if "upstream" in args.cases:
        upstream = f", |upstream - batch 1| {check['upstream_vs_unpacked']:.1e}"
    equivalence = (
        f"Equivalence (checked before timing, no grad): |packed - unpacked| loss "
        f"{check['packed_vs_unpacked']:.1e}, |full logits - supervised-only| "
        f"{check['naive_vs_supervised']:.1e}{upstream} (loss about {check['loss']:.2f})."
    )
    config, mix_line = describe(args, results).split("\n\n")
    lines = [
        title, "",
        wrap(produced), "",
        wrap(config), "",
        wrap(mix_line), "",
        table, "",
        "Ratios (same run):", "",
        *[wrap(line, item=True) for line in ratios], "",
        wrap(equivalence),
    ]
    if args.device == "cpu":
        lines += ["", wrap(cpu_notes(args, results))]
    else:
        lines += ["", wrap(gpu_targets(args, results))]
    return "\n".join(lines)


def cpu_notes(args, results: dict) -> str:
    flops = results["flops"]
    vocab_share = flops["head_params"] * (1 if args.tie_embeddings else 2) / flops["params"]
    return (
        f"On this CPU shape the vocabulary matrices are {vocab_share:.0%} of the parameters, so the AdamW "
        f"step (one per training step: {len(results['info'])} for batch 1, {flops['rows']} for packed rows) "
        "weighs far more than on a real model, where the decoder layers dominate: the forward + backward "
        "ratio is the closer guide. On SDPA a packed row gets a dense block-diagonal mask, so its attention "
        "costs (row length)^2, not the sum of (sample length)^2; `flash_attention_2` reads the sample "
        "boundaries from the position ids instead. The memory saved by the supervised-only head does not "
        f"depend on the small hidden size: full logits are tokens x {args.vocab:,} floats either way."
    )


def write_docs(text: str, device: str) -> None:
    """Update this benchmark's section of docs/benchmarks.md (its CPU or GPU part), keeping the others."""
    old = DOCS.read_text() if DOCS.is_file() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    found = pattern.search(old)
    parts = {}
    if found:
        for piece in re.split(r"(?m)^(?=### )", found.group(0)):
            if piece.startswith("### CPU"):
                parts["cpu"] = piece.strip()
            elif piece.startswith("### GPU") and "**Not measured.**" not in piece:  # keep real GPU results
                parts["gpu"] = piece.strip()
    parts["cpu" if device == "cpu" else "gpu"] = text.strip()
    parts.setdefault("gpu", NOT_MEASURED_GPU)
    body = [SECTION, SECTION_INTRO, *(parts[k] for k in ("cpu", "gpu") if k in parts)]
    block = "\n\n".join(body) + "\n"
    new = pattern.sub(lambda _: block + "\n", old).rstrip() + "\n" if found else old.rstrip() + "\n\n" + block
    tmp = DOCS.with_suffix(".md.tmp")
    tmp.write_text(new)
    os.replace(tmp, DOCS)


ATTENTION_SECTION = "## Packed attention"


def attention_cost(args) -> dict:
    """Seconds of the decoder's attention (forward + backward) for a packed row and for its samples alone."""
    from types import SimpleNamespace

    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from llava.model.modeling_llava import LlavaMetaForCausalLM, packed_sample_bounds
    from llava.model.modeling_onevision_encoder import varlen_attention_forward

    torch.manual_seed(0)
    heads, kv_heads, dim, n, count = args.heads or 4, args.kv_heads or 2, 64, args.sample_tokens, args.samples
    module = SimpleNamespace(is_causal=True, training=True, num_key_value_groups=heads // kv_heads)
    segment_ids = torch.arange(count).repeat_interleave(n)[None]

    def tensors(length: int):
        return [torch.randn(1, h, length, dim, device=args.device, requires_grad=True) for h in (heads, kv_heads, kv_heads)]

    row, alone = tensors(n * count), [tensors(n) for _ in range(count)]
    holder = SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa"))
    dense_mask = LlavaMetaForCausalLM.packed_attention_mask(holder, segment_ids.to(args.device), torch.float32)
    bounds = {key: value.to(args.device) if torch.is_tensor(value) else value
              for key, value in packed_sample_bounds(segment_ids).items()}
    scale = dim**-0.5

    def step(function, q, k, v, mask=None, **kwargs):
        out, _ = function(module, q, k, v, mask, scaling=scale, **kwargs)
        out.sum().backward()

    cases = {
        "sdpa, packed row (dense mask)": lambda: step(sdpa_attention_forward, *row, dense_mask),
        "varlen, packed row": lambda: step(varlen_attention_forward, *row, **bounds),
        "each sample alone": lambda: [step(sdpa_attention_forward, *sample, is_causal=True) for sample in alone],
    }
    seconds = {name: [] for name in cases}
    for round_ in range(args.repeats + 1):  # the first round warms up
        for name, run in cases.items():
            sync(args.device)
            start = time.perf_counter()
            run()
            sync(args.device)
            if round_:
                seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in seconds.items()}


def attention_report(args, seconds: dict) -> str:
    alone = seconds["each sample alone"]
    lines = ["| attention (forward + backward) | seconds | / samples alone |", "|---|---:|---:|"]
    lines += [f"| {name} | {value:.3f} | {value / alone:.2f}x |" for name, value in seconds.items()]
    heads, kv_heads = args.heads or 4, args.kv_heads or 2
    return (f"`python benchmarks/bench_train.py --attention-cost` on {args.device} ({os.cpu_count()} cores), float32: "
            f"one row of {args.samples} samples of {args.sample_tokens} tokens ({args.samples * args.sample_tokens} "
            f"tokens), {heads} query / {kv_heads} key-value heads of 64, median of {args.repeats} rounds.\n\n"
            + "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--attn", choices=["auto", "sdpa", "varlen", "flash_attention_2", "eager"], default="sdpa",
                        help="attention of the decoder and the tower")
    parser.add_argument("--scale", type=float, help="multiplies every token count (cpu 0.125, cuda 1)")
    parser.add_argument("--max-length", type=int, default=16384, help="packed row length at scale 1")
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, help="decoder hidden size (cpu 256, cuda 1536)")
    parser.add_argument("--layers", type=int, help="decoder layers (cpu 2, cuda 28)")
    parser.add_argument("--intermediate", type=int, help="decoder MLP size (cpu 1408, cuda 8960)")
    parser.add_argument("--heads", type=int, help="decoder attention heads (cpu 4, cuda 12)")
    parser.add_argument("--kv-heads", type=int, help="decoder KV heads (2)")
    parser.add_argument("--vision-hidden", type=int,
                        help="tower hidden size, heads of 64 (cpu 128, cuda 1024)")
    parser.add_argument("--vision-layers", type=int, help="tower layers (cpu 2, cuda 24)")
    parser.add_argument("--tie-embeddings", action=argparse.BooleanOptionalAction, default=True,
                        help="LM head tied to the embeddings, as in Qwen2-0.5B / 1.5B (default: tied)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--cases", default=DEFAULT_CASES, help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (after a warm-up round)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="peak dense bf16 TFLOP/s for MFU")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--json", action="store_true", help="also print the raw results as JSON")
    parser.add_argument("--write-docs", action="store_true", help="update the section of docs/benchmarks.md")
    parser.add_argument("--attention-cost", action="store_true", help="time the packed attention alone")
    parser.add_argument("--samples", type=int, default=16, help="--attention-cost: samples in the packed row")
    parser.add_argument("--sample-tokens", type=int, default=256, help="--attention-cost: tokens per sample")
    args = parser.parse_args()
    if args.attention_cost:
        text = attention_report(args, attention_cost(args))
        print(text)
        if args.write_docs:
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from docs_section import replace_section

            replace_section(ATTENTION_SECTION, text)
            print(f"\nupdated {DOCS}")
        return
    resolve(args)

    results = time_cases(args)
    if args.device == "cuda":  # the timing process's cached blocks must not crowd the memory processes
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()
    for case in args.cases:
        results["cases"][case]["peak_bytes"] = None if args.no_memory else measure_peak(case, args)
    table, ratios = report(args, results)
    print()
    print(describe(args, results))
    print()
    print(table)
    print("\nratios (same run):")
    for line in ratios:
        print(f"  {line.replace('**', '')}")
    tolerance = 1e-4 if args.device == "cpu" else 5e-2
    check = results["check"]
    worst = max(check["packed_vs_unpacked"], check["naive_vs_supervised"])
    if worst > tolerance * max(1.0, abs(check["loss"])):
        print(f"\nWARNING: the cases' losses differ by {worst:.2e} (> {tolerance:g} relative): "
              "they do not compute the same thing")
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    if args.write_docs:
        write_docs(docs_text(args, results, table, ratios), args.device)
        print(f"\nupdated {DOCS}")


if __name__ == "__main__":
    main()
