"""Real 2-process SFT runs of the tiny model through the Trainer with DeepSpeed ZeRO-2 and ZeRO-3 (CPU
accelerator, gloo): every record kind in one run, ranks with different batch kinds, and the saved checkpoint
loads with exactly the trained in-memory model's logits."""

from __future__ import annotations

import deepspeed  # noqa: F401  (the dev and train extras install it; a missing one fails here)
import pytest
import torch
from train_helpers import (
    REPO,
    probe_inputs,
    tiny_start,
    train_args,
    two_process_run,
    write_jsonl,
    write_records,
)

from llava.model.builder import load_pretrained_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    llm, encoder = tiny_start(root)
    records = write_records(root / "records")
    kinds = ("text", "image", "images", "codec", "clip", "video", "text", "codec")
    data = write_jsonl(root / "data.jsonl", [records[k] for k in kinds])
    return root, llm, encoder, data


@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_two_process_deepspeed_run_saves_a_checkpoint_with_the_trained_logits(setup, stage):
    root, llm, encoder, data = setup
    out = root / stage
    argv = train_args(llm, encoder, data, str(root / "records"), str(out), "--max_steps", "3",
                      "--deepspeed", str(REPO / "scripts" / f"{stage}.json"), "--use_cpu", "True",
                      "--ddp_backend", "gloo")
    result = two_process_run(root / "records", argv)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "[train] done: 3 steps, 12 samples" in result.stdout  # 2 ranks x 2 samples x 3 steps
    tokenizer, model, _, _ = load_pretrained_model(str(out), torch_dtype=torch.float32)
    with torch.no_grad():
        logits = model(**probe_inputs(root / "records", model, tokenizer)).logits
    trained = torch.load(out / "in_memory_logits.pt", weights_only=True)
    torch.testing.assert_close(logits, trained, rtol=0, atol=1e-6)
