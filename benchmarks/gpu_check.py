"""The GPU check: every GPU path of the project in one run on one H100 / H200, one results file.

    python benchmarks/gpu_check.py --out gpu_check.json          (benchmarks/gpu_check.sh sets up and calls it)
    python benchmarks/gpu_check.py --smoke --out smoke.json      (the same steps at tiny sizes on the CPU)

Steps, each under its own time limit, each recorded whether it passes, fails or errs (a failed step does not
stop the others):

1. ``parity``: the OV-Encoder in bf16 on every attention backend present (eager, sdpa, varlen, and
   flash_attention_2 where flash-attn imports) against the published reference implementation
   (``tests/encoder_reference.py``) in float32, on an image, dense frames and a packed codec batch;
   passes when every backend is within bf16's tolerance.
2. ``encoder``: ``benchmarks/bench_encoder.py`` at the ViT-L shape in bf16: tokens/s and MFU, dense
   frames and codec patches (target: tower >= 50 % MFU).
3. ``sft_step``: ``benchmarks/bench_train.py`` at a Qwen2-1.5B-shaped LM with the ViT-L tower, bf16:
   one batch-1 step per sample and one packed step per row (``--attn auto``: flash-attn where
   installed, else PyTorch's varlen attention), tokens/s and MFU of each (targets: packed >= 45 % MFU and
   >= 2x the tokens/s of batch 1).
4. ``tiny_sft``: ``PRESET=tiny scripts/sft_ov_encoder.sh`` for 60 steps in bf16 with packing: passes when
   the training loss of the last 10 logged steps is at most half that of the first 10.

``--smoke`` runs the same code at CPU sizes (a 2-layer encoder, the CPU presets of the benchmarks, a short
tiny SFT in float32): tests/test_gpu_check.py runs it so the script is known to work before a GPU is lent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
sys.path[:0] = [str(BENCHMARKS), str(REPO / "tests")]

#: Against the float32 reference: the worst element of the last hidden state, relative to its largest, in bf16
#: (24 random layers) and in float32 (the smoke run on the CPU).
PARITY_TOLERANCE = {"bfloat16": 5e-2, "float32": 1e-4}


def run_step(name: str, function, results: dict, out: Path, **kwargs) -> None:
    """Run one step, record its result or its error, and write the results file (atomically) after it."""
    start = time.perf_counter()
    try:
        result = function(**kwargs)
        status = "pass" if result.pop("ok", True) else "fail"
    except Exception as error:  # the other steps still run; the error is in the results file
        result, status = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}, "error"
    results["steps"][name] = {"status": status, "seconds": round(time.perf_counter() - start, 1), **result}
    print(f"[gpu_check] {name}: {status} ({results['steps'][name]['seconds']} s)", flush=True)
    write_results(results, out)


def write_results(results: dict, out: Path) -> None:
    temporary = out.with_name(out.name + ".tmp")
    temporary.write_text(json.dumps(results, indent=2, default=str) + "\n")
    os.replace(temporary, out)


# ------------------------------------------------------------------------------------------------ 1. parity
def parity(device: str, smoke: bool) -> dict:
    """Each backend in bf16 (float32 on the CPU) on one packed batch (an image, dense frames, a codec sample) against
    the reference implementation in float32 on each sample alone."""
    import torch
    from encoder_reference import reference_forward  # tests/encoder_reference.py
    from encoder_utils import randomize_, tiny_encoder_config  # tests/encoder_utils.py

    from llava.model.modeling_onevision_encoder import OneVisionEncoderModel

    layers, hidden, heads, patch = (2, 64, 2, 4) if smoke else (24, 1024, 16, 16)
    config = tiny_encoder_config(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                                 num_attention_heads=heads, patch_size=patch, image_size=28 * patch,
                                 rope_temporal_size=16)
    model = randomize_(OneVisionEncoderModel(config), seed=0).eval()
    state = {key: value.clone() for key, value in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    side = 8 * patch
    codec = torch.randn(1, 3, 16, side, side, generator=generator)
    keep = torch.randperm(16 * 64, generator=generator)[:300].sort().values[None]
    samples = [  # (pixels of one sample, its visible indices)
        (torch.randn(1, 3, side, side + 2 * patch, generator=generator), None),
        (torch.randn(1, 3, 16, side // 2, side // 2, generator=generator), None),  # frames = the temporal grid
        (codec, keep),
    ]
    with torch.no_grad():
        want = [reference_forward(state, config, pixels, indices)[0][0] for pixels, indices in samples]
    backends = ["eager", "sdpa", "varlen"]
    if device == "cuda":
        try:
            import flash_attn  # noqa: F401

            backends.append("flash_attention_2")
        except ImportError:
            pass
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    errors = {}
    for backend in backends:
        model.config._attn_implementation = backend
        model.to(device=device, dtype=dtype)
        with torch.no_grad():
            out = model([pixels[0].to(device, dtype) for pixels, _ in samples],
                        visible_indices=[None if i is None else i[0].to(device) for _, i in samples])
        for (name, reference), got in zip(zip(("image", "dense frames", "codec"), want), out.split()):
            errors[f"{backend} / {name}"] = (got.float().cpu() - reference).abs().max().item() / reference.abs().max().item()
    worst, name = max(errors.values()), str(dtype).removeprefix("torch.")
    return {"ok": worst <= PARITY_TOLERANCE[name], "dtype": name, "backends": backends,
            "relative_error": errors, "tolerance": PARITY_TOLERANCE[name],
            "shape": f"{layers} layers, width {hidden}, {heads} heads, patch {patch}"}


# ------------------------------------------------------------------------------------------------ 2. encoder
def encoder(device: str, smoke: bool) -> dict:
    """bench_encoder's dense and codec cases: tokens/s and MFU (bf16 on CUDA)."""
    import bench_encoder

    args = argparse.Namespace(device=device, layers=2 if smoke else 24, repeats=1 if smoke else 5,
                              frame=64 if smoke else bench_encoder.FRAME)
    results = bench_encoder.time_cases(args)
    name = results["dense"]["device_name"]
    peak = next((v for k, v in bench_encoder.PEAK_BF16_TFLOPS.items() if k in name), None)
    cases = {}
    for case in ("dense", "codec"):
        r = results[case]
        cases[case] = {"tokens": r["tokens"], "seconds": r["seconds"], "tokens_per_s": r["tokens"] / r["seconds"],
                       "mfu": r["flops"] / r["seconds"] / (peak * 1e12) if peak else None}
    mfus = [c["mfu"] for c in cases.values() if c["mfu"] is not None]
    return {"ok": smoke or (bool(mfus) and min(mfus) >= 0.5), "device_name": name, "layers": args.layers,
            "target": "tower >= 50% bf16 MFU", **cases}


# ------------------------------------------------------------------------------------------------ 3. sft step
def sft_step(device: str, smoke: bool) -> dict:
    """bench_train's batch-1 and packed cases at the Qwen2-1.5B / ViT-L shape (the CPU preset in smoke mode)."""
    command = [sys.executable, str(BENCHMARKS / "bench_train.py"), "--device", device, "--cases", "unpacked,packed",
               "--no-memory", "--json", "--attn", "auto"]
    command += ["--scale", "0.02", "--repeats", "1"] if smoke else ["--repeats", "2"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"bench_train.py exited with {result.returncode}: {result.stderr[-3000:]}")
    lines = result.stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")  # the --json dump ends the output
    raw = json.loads("\n".join(lines[start:]))
    peak = 989e12  # bench_train's --peak-tflops default: H100 / H200 dense bf16
    cases = {}
    for case in ("unpacked", "packed"):
        seconds = raw["cases"][case]["seconds"]
        cases[case] = {"seconds": seconds, "steps": raw["cases"][case]["steps"],
                       "tokens_per_s": raw["flops"]["tokens"] / seconds,
                       "mfu": raw["flops"]["flops"] / seconds / peak if device == "cuda" else None}
    speedup = cases["packed"]["tokens_per_s"] / cases["unpacked"]["tokens_per_s"]
    packed_mfu = cases["packed"]["mfu"]
    ok = smoke or (packed_mfu is not None and packed_mfu >= 0.45 and speedup >= 2.0)
    attention = re.search(r"attention (\S+?);", result.stdout)
    return {"ok": ok, "attention": attention.group(1) if attention else None, "packed_over_batch1_tokens_per_s": speedup,
            "target": "packed >= 45% MFU and >= 2x the tokens/s of batch 1", **cases,
            "report": result.stdout[:start].strip()[-4000:]}


# ------------------------------------------------------------------------------------------------ 4. tiny sft
def tiny_sft(device: str, smoke: bool, scratch: Path) -> dict:
    """60 steps of the tiny preset (bf16 and packing on CUDA); the loss must halve."""
    steps = 10 if smoke else 60
    env = {**os.environ, "PRESET": "tiny", "PYTHON": sys.executable, "OUTPUT_DIR": str(scratch / "tiny-sft"),
           "TRAIN_PER_TASK": "16" if smoke else "300", "HELDOUT_PER_TASK": "2" if smoke else "40",
           "NUM_WORKERS": "0" if smoke else "2"}
    flags = ["--max_steps", str(steps), "--logging_steps", "1", "--packing", "True"]
    if device == "cuda":
        flags += ["--bf16", "True"]
    result = subprocess.run(["bash", str(REPO / "scripts" / "sft_ov_encoder.sh"), *flags], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"the tiny SFT exited with {result.returncode}: {result.stdout[-2000:]}{result.stderr[-2000:]}")
    state = json.loads((scratch / "tiny-sft" / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    first, last = sum(losses[:10]) / len(losses[:10]), sum(losses[-10:]) / len(losses[-10:])
    scores_file = scratch / "tiny-sft" / "heldout_scores.json"
    scores = json.loads(scores_file.read_text()) if scores_file.is_file() else None
    return {"ok": smoke or last <= 0.5 * first, "steps": len(losses), "first_10_loss": first, "last_10_loss": last,
            "heldout": scores, "target": "last 10 logged losses <= half the first 10"}


def environment() -> dict:
    import torch
    import transformers

    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.version.cuda, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    try:
        import flash_attn

        info["flash_attn"] = flash_attn.__version__
    except ImportError:
        info["flash_attn"] = None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                            check=False).stdout.strip()
    info["commit"] = commit or None
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the results file")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (checks the script itself)")
    parser.add_argument("--steps", default="parity,encoder,sft_step,tiny_sft", help="comma-separated, in order")
    args = parser.parse_args(argv)
    import torch

    steps = {"parity": parity, "encoder": encoder, "sft_step": sft_step, "tiny_sft": tiny_sft}
    chosen = args.steps.split(",")
    if not set(chosen) <= set(steps):
        parser.error(f"--steps: choose from {', '.join(steps)}, got {args.steps!r}")
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or --smoke to check the script on the CPU")
    results = {"smoke": args.smoke, "environment": environment(), "steps": {}}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as scratch:
        for name in chosen:
            extra = {"scratch": Path(scratch)} if name == "tiny_sft" else {}
            run_step(name, steps[name], results, args.out, device=device, smoke=args.smoke, **extra)
    failed = [name for name, step in results["steps"].items() if step["status"] != "pass"]
    print(f"[gpu_check] results in {args.out}; " + (f"not passed: {', '.join(failed)}" if failed else "all passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
