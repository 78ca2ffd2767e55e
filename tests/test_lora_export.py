"""``python -m llava.train.export``: a LoRA checkpoint merged into a full checkpoint.

The LoRA checkpoint comes from a real tiny training run saved by the trainer (adapter +
``non_lora_trainables.bin``, the tower and projector trained in full beside the adapter). Checked:
the exported folder is a plain full checkpoint (no adapter files) that ``load_pretrained_model``,
the chat CLI and the server's loader take without ``--model-base``; its logits equal the LoRA
model's (base + adapter, unmerged) on text, image and codec-video inputs; its LoRA-targeted weights
differ from the base's (the adapter was folded in); the output is written atomically, a non-empty
``--out`` is refused unless ``--overwrite``, and a checkpoint that is not LoRA is a clear error.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_helpers import CODEC, REPO, tiny_start, train_args, write_jsonl, write_records

from llava.cli_options import load_checkpoint
from llava.constants import IMAGE_TOKEN_INDEX
from llava.inference.generation import expand_prompt
from llava.model.builder import load_pretrained_model
from llava.model.tiny import save_tiny_checkpoint
from llava.processing.media import VideoOptions, VisualProcessor
from llava.serve import cli
from llava.serve.openai_api import build_parser
from llava.train import export
from llava.train import train as train_module

LORA_FLAGS = ["--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0.0",
              "--learning_rate", "1e-2"]


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    """``(LoRA checkpoint, base LLM, records folder)``: 3 steps of a real LoRA run, saved by the trainer."""
    base = tmp_path_factory.mktemp("lora")
    llm, encoder = tiny_start(base)
    records = write_records(base / "records")
    data = write_jsonl(base / "d.jsonl", [records[k] for k in ("text", "image", "codec", "video")])
    out = base / "lora-run"
    trainer, _ = train_module.setup(train_args(llm, encoder, data, str(base / "records"), str(out),
                                               "--max_steps", "3", *LORA_FLAGS))
    trainer.train()
    trainer.save_model(str(out))
    files = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "non_lora_trainables.bin"} <= files and "model.safetensors" not in files
    return out, llm, base / "records"


@pytest.fixture(scope="module")
def exported(lora, tmp_path_factory):
    """The command line, as a user runs it (no ``--model-base``: adapter_config.json names the base)."""
    path, _, _ = lora
    out = tmp_path_factory.mktemp("export") / "merged"
    result = subprocess.run([sys.executable, "-m", "llava.train.export", "--model-path", str(path), "--out",
                             str(out)], cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result.stdout


def _inputs(model, tokenizer, processor, records):
    """Text only, an image and a codec video (computed online), each a prompt around its placeholders."""
    visuals = VisualProcessor(processor, model.config, video=VideoOptions("codec", codec=CODEC))
    out = {"text": {"input_ids": torch.tensor([tokenizer("What is two plus two? Four.").input_ids])}}
    for name, media in (("image", records / "image1.png"), ("video", records / "clip.mp4")):
        visual = visuals(str(media))
        ids = torch.tensor([*tokenizer("look ").input_ids, *[IMAGE_TOKEN_INDEX] * visual.num_placeholders,
                            *tokenizer(" at it").input_ids])
        out[name] = {"input_ids": expand_prompt(model, ids, visual)[None], **visual.model_kwargs()}
    return out


def _all_logits(model, tokenizer, processor, records):
    with torch.no_grad():
        return {name: model.eval()(**kwargs).logits
                for name, kwargs in _inputs(model, tokenizer, processor, records).items()}


def test_the_export_is_a_full_checkpoint_with_the_lora_models_logits(lora, exported):
    path, llm, records = lora
    out, stdout = exported
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= files
    assert not files & {"adapter_config.json", "adapter_model.safetensors", "non_lora_trainables.bin"}
    assert not [p for p in out.parent.iterdir() if p != out]  # no staging folder left beside it
    assert f"--model-path {out}" in stdout and "from adapter_config.json" in stdout

    tokenizer, lora_model, processor, _ = load_pretrained_model(str(path), model_base=llm,
                                                                torch_dtype=torch.float32)
    assert hasattr(lora_model, "peft_config")  # the adapter unmerged: the reference is the LoRA model itself
    tokenizer_m, merged, processor_m, _ = load_pretrained_model(str(out), torch_dtype=torch.float32)
    assert not hasattr(merged, "peft_config") and merged.config.model_type == "llava_qwen"
    expected = _all_logits(lora_model, tokenizer, processor, records)
    got = _all_logits(merged, tokenizer_m, processor_m, records)
    assert set(got) == {"text", "image", "video"}
    for name in got:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-5, msg=name)

    # The adapter was folded in: the LoRA-targeted projections moved away from the base LLM's.
    weights = load_file(str(out / "model.safetensors"))
    base_weights = load_file(str(Path(llm) / "model.safetensors"))
    for key in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.v_proj.weight"):
        assert (weights[key] - base_weights[key]).abs().max() > 1e-3, key
    assert not any("lora_" in k for k in weights)


def test_the_chat_cli_answers_the_export_as_the_lora_checkpoint(lora, exported, monkeypatch, capsys):

    path, llm, records = lora
    out, _ = exported
    replies = []
    for argv in (["--model-path", str(path), "--model-base", llm], ["--model-path", str(out)]):
        monkeypatch.setattr(sys, "stdin", io.StringIO("What is in the picture?\nexit\n"))
        code = cli.main([*argv, "--image", str(records / "image1.png"), "--max-new-tokens", "6",
                         "--temperature", "0", "--device", "cpu"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        replies.append([line for line in captured.out.splitlines() if line.startswith("assistant: ")])
    assert replies[0] == replies[1] and len(replies[0]) == 1


def test_the_servers_loader_takes_the_export(exported):
    """The server parses its flags and loads through ``cli_options.load_checkpoint``, as the chat CLI."""
    args = build_parser().parse_args(["--model-path", str(exported[0]), "--device", "cpu"])
    _, model, _ = load_checkpoint(args)
    assert not hasattr(model, "peft_config") and model.config.model_type == "llava_qwen"


def test_a_non_empty_out_is_refused_unless_overwrite_and_replaced_atomically(lora, tmp_path, capsys):
    path, llm, _ = lora
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit) as stop:
        export.main(["--model-path", str(path), "--model-base", llm, "--out", str(out)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    argv = ["--model-path", str(path), "--model-base", llm, "--out", str(out), "--overwrite"]
    assert export.main(argv) == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]  # nothing left beside it


def test_a_failed_export_leaves_nothing_behind(lora, tmp_path, monkeypatch):
    path, llm, _ = lora
    out = tmp_path / "merged"

    def broken(staging, *args, **kwargs):
        (staging / "model.safetensors").write_bytes(b"half")  # a crash midway through the files
        raise OSError("disk full")

    monkeypatch.setattr(export, "write_checkpoint", broken)
    with pytest.raises(OSError, match="disk full"):
        export.export_lora(path, out, model_base=llm)
    assert list(tmp_path.iterdir()) == []


def test_checkpoints_that_are_not_lora_are_clear_errors(lora, tmp_path, capsys):
    path, llm, _ = lora
    full = save_tiny_checkpoint(tmp_path / "full")
    projector = tmp_path / "projector"
    projector.mkdir()
    (projector / "config.json").write_text((full / "config.json").read_text())
    torch.save({}, projector / "mm_projector.bin")
    cases = {
        full: ["full checkpoint", "--model-path"],
        projector: ["projector-only", "--model-base"],
        tmp_path / "missing": ["no such directory"],
        tmp_path: ["no adapter_config.json"],
    }
    for folder, words in cases.items():
        with pytest.raises(SystemExit) as stop:
            export.main(["--model-path", str(folder), "--out", str(tmp_path / "never")])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert str(folder) in err and all(word in err for word in words), err
    assert not (tmp_path / "never").exists()

    # A LoRA checkpoint whose adapter_config.json names no usable base, and no --model-base.
    copy = tmp_path / "lora-copy"
    copy.mkdir()
    for file in path.iterdir():
        if file.is_file():
            (copy / file.name).write_bytes(file.read_bytes())
    config = json.loads((copy / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (copy / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit):
        export.main(["--model-path", str(copy), "--out", str(tmp_path / "never")])
    err = capsys.readouterr().err
    assert "--model-base" in err and str(tmp_path / "gone") in err
    # The export cannot replace its own input.
    with pytest.raises(SystemExit):
        export.main(["--model-path", str(path), "--model-base", llm, "--out", str(path), "--overwrite"])
    assert "adapter_config.json" in {p.name for p in path.iterdir()}
    assert "itself" in capsys.readouterr().err
