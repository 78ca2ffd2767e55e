"""Self-contained checkpoint folders: the processor, the model code with ``auto_map``, and a model card.

A folder written by :func:`save_folder` loads wherever ``transformers`` does, without this project:

    AutoProcessor.from_pretrained(CKPT, trust_remote_code=True)
    AutoModelForImageTextToText.from_pretrained(CKPT, trust_remote_code=True)
    pipeline("image-text-to-text", model=CKPT, trust_remote_code=True)

Every saving path calls it: the trainer's final save, ``llava.model.tiny``, the LoRA export and
``python -m llava.model.resave`` (which brings a folder written before the processor existed, or an
upstream LLaVA-OV checkpoint, to this layout). The model code is the package's self-contained files
(``CODE_FILES`` and the family's modeling file), copied as they are; nothing in the folder names a
path on the machine that wrote it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..processing.conversation import get_conv_template
from .families import llava_lm_for_model_type
from .processing_llava import IMAGE_PAD, LlavaOVProcessor, VisualLayout

HERE = Path(__file__).parent
CODE_FILES = (
    "configuration_onevision_encoder.py",
    "modeling_onevision_encoder.py",
    "image_processing_onevision_encoder.py",
    "image_processing_llava.py",
    "configuration_llava.py",
    "modeling_llava_vision.py",
    "modeling_llava.py",
    "processing_llava.py",
    "video_processing_llava.py",
    "video_utils_llava.py",
)
PROCESSOR_CLASS = "processing_llava.LlavaOVProcessor"
IMAGE_PROCESSOR_CLASS = "image_processing_onevision_encoder.OneVisionEncoderImageProcessor"


def ensure_image_token(tokenizer, model=None) -> int:
    """The id of ``<|image_pad|>`` (added as a special token when the tokenizer lacks it), written into
    ``model.config.image_token_id``; the embeddings grow when the new id is past them."""
    token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    if token_id is None or token_id == tokenizer.unk_token_id:
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_PAD]}, replace_extra_special_tokens=False)
        token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    if model is not None:
        if token_id >= model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
        model.config.image_token_id = token_id
    return token_id


def video_settings(config, patch_size: int, mode: str = "codec", frames_upbound: int = 16,
                   fps: float | None = None, force_sample: bool = False, codec: dict | None = None,
                   time_instruction: bool = False) -> dict:
    """The video processor's settings for a model of ``config`` (the codec's patch size is the encoder's)."""
    vision = config.vision_config or {}
    grid_t = vision.get("rope_temporal_size") if isinstance(vision, dict) else vision.rope_temporal_size
    return {"mode": mode, "frames_upbound": frames_upbound, "fps": fps, "force_sample": force_sample,
            "codec": {**(codec or {}), "patch_size": int(patch_size)}, "rope_temporal_size": grid_t,
            "time_instruction": bool(time_instruction)}


def build_processor(tokenizer, image_processor, config, video: dict | None = None,
                    conv_template: str | None = None) -> LlavaOVProcessor:
    """The processor of a model of ``config``: its chat template and stop string from ``conv_template`` (default
    the config's, else the family's), its visual layout from the config, ``video`` settings (default
    :func:`video_settings`)."""
    template = conv_template or config.conv_template or _family_template(config)
    conv = get_conv_template(template)
    layout = VisualLayout.from_config(config, image_processor.patch_size)
    return LlavaOVProcessor(
        image_processor, tokenizer, chat_template=conv.chat_template(), layout=vars(layout),
        video=video or video_settings(config, image_processor.patch_size), stop_string=conv.stop_string(),
    )


def _family_template(config) -> str:
    family = llava_lm_for_model_type(type(config).model_type)
    return family.conv_template if family is not None else "qwen_1_5"


def save_folder(directory: str | os.PathLike, config, processor: LlavaOVProcessor, card: dict[str, Any] | None = None
                ) -> None:
    """Add to ``directory`` (where the weights and ``config.json`` already are) the processor, the model code
    with ``auto_map`` in every config file, and the model card ``README.md`` (``card``: facts for it)."""
    directory = Path(directory)
    family = llava_lm_for_model_type(type(config).model_type)
    if family is None:
        raise ValueError(f"{config.model_type!r} is not a registered LLaVA-OV family (llava/model/families.py)")
    processor.save_pretrained(str(directory))
    modeling = family.modeling_file.removesuffix(".py")
    model_class = f"{modeling}.{family.causal_lm_class.__name__}"
    for name in (*CODE_FILES, family.modeling_file):
        shutil.copyfile(HERE / name, directory / name)
    _update_json(directory / "config.json", {"mm_vision_tower": _tower_name(config.mm_vision_tower), "auto_map": {
        "AutoConfig": f"configuration_llava.{family.config_class.__name__}",
        "AutoModel": f"{modeling}.{family.causal_lm_class.__name__}",
        "AutoModelForCausalLM": model_class,
        "AutoModelForImageTextToText": model_class,
        "AutoProcessor": PROCESSOR_CLASS,
    }})
    processor_map = {"AutoProcessor": PROCESSOR_CLASS, "AutoImageProcessor": IMAGE_PROCESSOR_CLASS}
    _update_json(directory / "processor_config.json", {"auto_map": processor_map}, nested="image_processor")
    if (directory / "preprocessor_config.json").exists():
        _update_json(directory / "preprocessor_config.json", {"auto_map": processor_map})
    # vLLM picks a video loader by this name: the plugin's hands the file's bytes to the processor (llava.vllm_plugin)
    _write_text(directory / VIDEO_PROCESSOR_CONFIG,
                json.dumps({"video_processor_type": type(processor.video_processor).__name__}, indent=2) + "\n")
    write_model_card(directory, config, processor, card or {})


def write_checkpoint(directory: str | os.PathLike, model, tokenizer, image_processor, video: dict | None = None,
                     card: dict[str, Any] | None = None) -> None:
    """A complete self-contained checkpoint in ``directory``: weights, config and generation config, tokenizer,
    image processor, then :func:`save_folder` (processor with ``video``, model code, model card). A config
    without ``conv_template`` records its family's."""
    model.config.conv_template = model.config.conv_template or _family_template(model.config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    image_processor.save_pretrained(directory)
    model.generation_config.save_pretrained(directory)
    save_folder(directory, model.config, build_processor(tokenizer, image_processor, model.config, video), card)


def _fsync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder`` to disk, so the rename publishes complete files."""
    for path in sorted(folder.rglob("*"), reverse=True):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_directory_atomically(out: Path, write: Callable[[Path], None]) -> None:
    """Run ``write(staging)`` on a fresh folder beside ``out``, flush it to disk, then rename it to ``out``.

    An existing ``out`` (the caller has checked it may go) is first renamed aside and removed only
    after the new folder is in place; on any failure the staging folder is removed and ``out`` is
    left as it was.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        write(staging)
        _fsync_tree(staging)
        if not out.exists():
            os.replace(staging, out)
            return
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        try:
            os.replace(staging, out)
        except BaseException:
            os.replace(old / out.name, out)
            shutil.rmtree(old, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


EVAL_RESULTS = "eval_results.json"
VIDEO_PROCESSOR_CONFIG = "video_preprocessor_config.json"
EVALUATION_HEADING = "## Evaluation"


def _update_json(path: Path, values: dict, nested: str | None = None) -> None:
    data = json.loads(path.read_text())
    data.update(values)
    if nested is not None and isinstance(data.get(nested), dict):
        data[nested].update(values)
    _write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _write_text(path: Path, text: str) -> None:
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w") as file:
        file.write(text)
    os.replace(temp, path)


def write_model_card(directory: Path, config, processor: LlavaOVProcessor, card: dict[str, Any]) -> None:
    """``README.md``: what the model is built on, how it reads media, how it was trained, its scores."""
    vision = config.vision_config or {}
    video = processor.video
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: image-text-to-text",
        "tags: [llava, onevision-encoder, video, codec]",
        "---",
        "",
        f"# {card.get('name', directory.name)}",
        "",
        "A LLaVA-OV model: the OneVision-Encoder vision tower, a projector and a language model.",
        "",
        "## Built on",
        "",
        (f"- language model: `{card.get('base_model', config.model_type)}` "
         f"({config.num_hidden_layers} layers, hidden size {config.hidden_size})"),
        (f"- vision tower: `{_tower_name(config.mm_vision_tower)}` (OV-Encoder, {vision.get('num_hidden_layers')} "
         f"layers, hidden size {vision.get('hidden_size')}, patch {vision.get('patch_size')})"),
        f"- projector: `{config.mm_projector_type}`; conversation template `{config.conv_template}`",
        "",
        "## Media",
        "",
        f"- images: `image_aspect_ratio={config.image_aspect_ratio}`",
        (f"- videos: `{video.get('mode')}` mode (frames: up to {video.get('frames_upbound')} uniform frames; "
         f"codec: {json.dumps(video.get('codec', {}), sort_keys=True)})"),
        "",
        "## Use (transformers, no other package)",
        "",
        "```python",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        f'processor = AutoProcessor.from_pretrained("{card.get("name", directory.name)}", trust_remote_code=True)',
        (f'model = AutoModelForImageTextToText.from_pretrained("{card.get("name", directory.name)}", '
         "trust_remote_code=True)"),
        'messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]',
        "prompt = processor.apply_chat_template(messages, add_generation_prompt=True)",
        'inputs = processor(text=prompt, images=[image], return_tensors="pt")',
        "output = model.generate(**inputs, max_new_tokens=64)",
        'print(processor.answer(processor.decode(output[0, inputs["input_ids"].shape[1]:])))',
        "```",
        "",
        "Codec-mode video also needs the project's codec reader (`cv_reader`).",
    ]
    if card.get("data"):
        lines += ["", "## Training data", "", *[f"- `{item}`" for item in card["data"]]]
    if card.get("flags"):
        lines += ["", "## Recipe", "", "```", " ".join(card["flags"]), "```"]
    results = card.get("results") or saved_results(directory)
    if results:  # kept beside the card, so later saves of the folder keep them
        _save_results(directory, results)
    _write_text(directory / "README.md", "\n".join(lines) + "\n" + _evaluation_section(results))


def saved_results(directory: str | os.PathLike) -> list[list]:
    """The evaluation results recorded in ``directory`` (``[[task, metric, value], ...]``; none: ``[]``)."""
    path = Path(directory) / EVAL_RESULTS
    return json.loads(path.read_text())["results"] if path.is_file() else []


def _save_results(directory: Path, results: list) -> None:
    _write_text(directory / EVAL_RESULTS, json.dumps({"results": results}, indent=2) + "\n")


def _evaluation_section(rows: list) -> str:
    if not rows:
        return ""
    table = [f"| {task} | {metric} | {value} |" for task, metric, value in rows]
    return "\n".join(["", EVALUATION_HEADING, "", "| task | metric | value |", "|---|---|---:|", *table]) + "\n"


def record_evaluation(directory: str | os.PathLike, rows: list[tuple[str, str, str]]) -> Path:
    """Add evaluation results (``(task, metric, value)``; a pair already recorded is replaced) to the folder's
    ``eval_results.json`` and to its model card's Evaluation section (``README.md``, rewritten in place); returns
    the card. Later saves of the folder keep them (:func:`write_model_card` reads the file)."""
    directory = Path(directory)
    merged = {(task, metric): value for task, metric, value in saved_results(directory)}
    merged.update({(task, metric): value for task, metric, value in rows})
    results = [[task, metric, value] for (task, metric), value in sorted(merged.items())]
    _save_results(directory, results)
    card = directory / "README.md"
    text = card.read_text() if card.is_file() else f"# {directory.name}\n"
    start = text.find("\n" + EVALUATION_HEADING + "\n")
    if start >= 0:  # drop the old section (up to the next heading of its level, or the end)
        end = text.find("\n## ", start + 1)
        text = text[:start] + (text[end:] if end >= 0 else "\n")
    _write_text(card, text.rstrip("\n") + "\n" + _evaluation_section(results))
    return card


def _tower_name(name: str | None) -> str:
    """The tower's name without a local directory (a hub id stays whole)."""
    if name is None:
        return "none"
    path = Path(name)
    return path.name if path.is_absolute() or name.startswith((".", "~")) else name


__all__ = [
    "CODE_FILES", "EVAL_RESULTS", "build_processor", "ensure_image_token", "record_evaluation", "save_folder",
    "saved_results", "video_settings", "write_checkpoint", "write_directory_atomically", "write_model_card",
]
