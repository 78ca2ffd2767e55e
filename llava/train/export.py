"""Merge a LoRA checkpoint into a full checkpoint that loads like any other.

    python -m llava.train.export --model-path LORA_CKPT [--model-base BASE] --out DIR [--overwrite]
        [--dtype auto|float32|bfloat16|float16]

A ``--lora_enable`` run saves the adapter (``adapter_config.json`` + ``adapter_model.safetensors``),
``non_lora_trainables.bin`` (the projector and the other parts trained in full), the LLaVA config,
the tokenizer and the image processor; loading it needs the base it was trained on (``--model-base``)
and PEFT. The export loads that pair exactly as ``load_pretrained_model`` does, folds the adapter into
the weights (``merge_and_unload``) and saves the result as a **full** checkpoint (``model.safetensors``
+ config + tokenizer + image processor): ``--model-path DIR`` alone then serves the chat CLI, the
evaluator and the server, without PEFT and without the base, and gives the LoRA model's logits.

Why a separate step: serving and evaluating a LoRA checkpoint pays for the base and the adapter on
every load, and a merged checkpoint is what other tools (and upstream's loaders) expect.

Rules: ``--model-base`` defaults to the base that ``adapter_config.json`` names
(``base_model_name_or_path``, the ``--model_name_or_path`` of the run), when that is a local folder.
The merge runs in float32 on the CPU (4 bytes per parameter of memory); ``--dtype auto`` then saves in
the dtype the checkpoint's config records (the training dtype, float32 when none). ``DIR`` is written
into a staging folder beside it, flushed to disk and renamed into place, so a failed or killed export
never leaves a half-written checkpoint; an existing non-empty ``DIR`` is refused unless
``--overwrite``, and the export never replaces its own input.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from llava.model.builder import load_pretrained_model
from llava.model.folder import ensure_image_token, write_checkpoint, write_directory_atomically
from llava.model.resave import saved_or_default_video
from llava.model.weights import PROJECTOR_FILES, find_file

ADAPTER_CONFIG = "adapter_config.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class NotALoraCheckpoint(ValueError):
    """``--model-path`` is not a LoRA checkpoint (the message says what it is and how to load it)."""


@dataclass(frozen=True)
class Exported:
    """What :func:`export_lora` wrote: the folder, the base used and where it came from, the saved dtype
    and the parameter count."""

    out: Path
    model_base: Path
    base_from: str  # "--model-base" or "adapter_config.json"
    dtype: torch.dtype
    parameters: int


def check_lora_checkpoint(path: str | os.PathLike) -> Path:
    """``path`` when it is a LoRA checkpoint (it has ``adapter_config.json``), else
    :class:`NotALoraCheckpoint` naming the folder, what it is and how that kind is loaded."""
    path = Path(path)
    if not path.is_dir():
        raise NotALoraCheckpoint(f"{path}: no such directory")
    if (path / ADAPTER_CONFIG).is_file():
        return path
    if any(path.glob("model*.safetensors")) or any(path.glob("pytorch_model*.bin")):
        raise NotALoraCheckpoint(
            f"{path} is a full checkpoint (its weights are model*.safetensors), not a LoRA one: there is "
            f"nothing to merge; load it as it is with --model-path {path}"
        )
    if find_file(path, PROJECTOR_FILES) is not None:
        raise NotALoraCheckpoint(
            f"{path} is a projector-only checkpoint (mm_projector.bin), not a LoRA one: load it with "
            f"--model-path {path} --model-base LLM; only LoRA checkpoints are exported"
        )
    raise NotALoraCheckpoint(
        f"{path} is not a LoRA checkpoint: it has no {ADAPTER_CONFIG} (a --lora_enable run saves the "
        f"adapter, {ADAPTER_CONFIG} and non_lora_trainables.bin into its --output_dir)"
    )


def resolve_base(path: Path, model_base: str | os.PathLike | None) -> tuple[Path, str]:
    """``(base folder, where it came from)``: ``model_base`` if given, else the local folder that the
    adapter config names (``base_model_name_or_path``); an error says to pass ``--model-base`` otherwise."""
    if model_base is not None:
        base = Path(model_base)
        if not base.is_dir():
            raise ValueError(f"--model-base {base}: no such directory")
        return base, "--model-base"
    config_file = path / ADAPTER_CONFIG
    try:
        named = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{config_file} is not readable JSON ({error})") from None
    if not named or not Path(named).is_dir():
        raise ValueError(
            f"{path}: pass --model-base (the checkpoint the adapter was trained on); {ADAPTER_CONFIG} "
            f"names {named!r} as its base, which is not a local directory"
        )
    return Path(named), ADAPTER_CONFIG


def _check_out(out: Path, inputs: dict[str, Path], overwrite: bool) -> None:
    """Refuse an ``out`` that is a file, a non-empty folder (without ``overwrite``), or that would
    replace one of the export's inputs."""
    target = out.resolve()
    for name, source in inputs.items():
        source = source.resolve()
        if source == target or source.is_relative_to(target):
            raise ValueError(f"--out {out} would replace the {name} being exported itself; choose another "
                             "folder")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"--out {out} exists and is not empty; pass --overwrite to replace it")


def _saved_dtype(path: Path, dtype: str) -> torch.dtype:
    """``dtype`` by name, or (``auto``) the one the LoRA checkpoint's config records, else float32."""
    if dtype != "auto":
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be auto or one of {sorted(DTYPES)}, got {dtype!r}")
        return DTYPES[dtype]
    config_file = path / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    recorded = config.get("dtype") or config.get("torch_dtype")
    return DTYPES.get(str(recorded), torch.float32)


def export_lora(
    model_path: str | os.PathLike,
    out: str | os.PathLike,
    model_base: str | os.PathLike | None = None,
    overwrite: bool = False,
    dtype: str = "auto",
) -> Exported:
    """Merge the LoRA checkpoint ``model_path`` (on ``model_base``) into a full checkpoint at ``out``.

    Everything is checked before the model is loaded: the checkpoint kind
    (:class:`NotALoraCheckpoint`), the base (``ValueError``), ``out`` (``FileExistsError`` when it is
    not empty and ``overwrite`` is false; ``ValueError`` when it would replace an input).
    """
    path = check_lora_checkpoint(model_path)
    base, base_from = resolve_base(path, model_base)
    out = Path(out)
    _check_out(out, {"LoRA checkpoint": path, "base checkpoint": base}, overwrite)
    saved_dtype = _saved_dtype(path, dtype)
    if importlib.util.find_spec("peft") is None:
        raise ValueError(f"{path}: merging a LoRA checkpoint needs peft (pip install -e '.[train]')")
    tokenizer, model, image_processor, _ = load_pretrained_model(
        str(path), str(base), torch_dtype=torch.float32, merge_lora=True
    )
    leftover = [name for name, _ in model.named_parameters() if "lora_" in name]
    if leftover or hasattr(model, "peft_config"):
        raise RuntimeError(f"{path}: the adapter did not merge (parameters left: {leftover[:3]})")
    model = model.to(saved_dtype)
    ensure_image_token(tokenizer, model)
    video = saved_or_default_video(path, model.config, image_processor.patch_size)
    write_directory_atomically(out, lambda staging: write_checkpoint(
        staging, model, tokenizer, image_processor, video, {"name": out.name, "base_model": base.name}))
    parameters = sum(p.numel() for p in model.parameters())
    return Exported(out=out, model_base=base, base_from=base_from, dtype=saved_dtype, parameters=parameters)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", required=True,
                        help="the LoRA checkpoint (a --lora_enable run's output)")
    parser.add_argument("--model-base", default=None,
                        help="the checkpoint the adapter was trained on (default: the one "
                             "adapter_config.json names)")
    parser.add_argument("--out", required=True,
                        help="folder for the merged full checkpoint (absent or empty)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                        help="dtype of the saved weights (auto: the one the checkpoint's config records)")
    args = parser.parse_args(argv)
    try:
        done = export_lora(args.model_path, args.out, args.model_base, args.overwrite, args.dtype)
    except (FileExistsError, ValueError) as error:
        parser.error(str(error))
    dtype = str(done.dtype).removeprefix("torch.")
    print(f"merged the LoRA checkpoint {args.model_path} (base {done.model_base}, from {done.base_from})"
          f" into {done.out}: a full checkpoint, {done.parameters:,} parameters in {dtype}")
    print(f"load it with: python -m llava.serve.cli --model-path {done.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
