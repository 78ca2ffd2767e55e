"""A run killed while writing a checkpoint resumes from the previous complete one
(llava/train/checkpoints.py). Real 2-process DeepSpeed ZeRO-2 runs are SIGKILLed, torchrun and both ranks,
at exact points of a save (tests/kill_while_saving.py); the rerun says which checkpoint it skipped and why,
and ends with the losses and the weights of an uninterrupted run. The completeness rules, the rotation and
an incomplete ``--resume_from_checkpoint`` are checked on folders made by hand."""

from __future__ import annotations

import json

import pytest
import torch
from train_helpers import (
    REPO,
    conversation,
    tiny_start,
    train_args,
    two_process_run,
    write_jsonl,
    write_records,
)

from llava.train import train as train_module
from llava.train.checkpoints import MARKER, checkpoint_folders, incomplete_reason, mark_complete, rotate

STEPS = 3  # 2 ranks x 2 samples a step: 12 records are one epoch


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    llm, encoder = tiny_start(root)
    write_records(root / "records")  # the probe image the final logits are compared on
    records = [{"id": f"t{i}", "conversations": conversation(f"What is {i} plus {i}?", f"{2 * i}.")}
               for i in range(12)]
    data = write_jsonl(root / "text.jsonl", records)
    return root, llm, encoder, data


def _argv(start, out, *extra: str) -> list[str]:
    root, llm, encoder, data = start
    return train_args(llm, encoder, data, str(root / "records"), str(out), "--max_steps", str(STEPS),
                      "--deepspeed", str(REPO / "scripts" / "zero2.json"), "--use_cpu", "True",
                      "--ddp_backend", "gloo", *extra)


def _losses(out) -> list[float]:
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in log if "loss" in entry]


@pytest.fixture(scope="module")
def uninterrupted(start):
    out = start[0] / "uninterrupted"
    result = two_process_run(start[0] / "records", _argv(start, out))
    assert result.returncode == 0, result.stderr[-4000:]
    return _losses(out), torch.load(out / "in_memory_logits.pt", weights_only=True)


SAVING_EVERY_STEP = ("--save_strategy", "steps", "--save_steps", "1")
# where in the save of checkpoint-2 the run is killed, its extra flags, what the rerun says is missing
KILLS = {
    "weights_written_optimizer_not": ("after:0:checkpoint-2/model.safetensors", (), "no trainer_state.json"),
    "optimizer_written_trainer_state_not": (
        "after:1:checkpoint-2/global_step2/zero_pp_rank_1_mp_rank_00_optim_states.pt", (),
        "no trainer_state.json"),
    # rank 0 wrote all of its part (trainer_state.json last) and went on; rank 1 had not saved its RNG
    # state yet. The Trainer's own rotation would already have deleted checkpoint-1.
    "rank_1_not_done_rotation_due": (
        "before:1:checkpoint-2/rng_state_1.pth:checkpoint-2/trainer_state.json", ("--save_total_limit", "1"),
        "no rng_state_1.pth"),
}


@pytest.mark.parametrize("point", list(KILLS))
def test_a_run_killed_while_saving_resumes_from_the_previous_complete_checkpoint(start, uninterrupted, point,
                                                                                 tmp_path):
    rule, extra, missing = KILLS[point]
    out = tmp_path / "out"
    argv = _argv(start, out, *SAVING_EVERY_STEP, *extra)
    killed = two_process_run(start[0] / "records", argv, kill=rule)
    assert killed.returncode != 0, "the run was not killed"
    assert (out / "checkpoint-1").is_dir(), "checkpoint-1 was deleted before checkpoint-2 was complete"
    assert incomplete_reason(out / "checkpoint-1", world_size=2) is None
    assert missing in incomplete_reason(out / "checkpoint-2", world_size=2)

    resumed = two_process_run(start[0] / "records", argv)
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-4000:]
    assert f"skipping {out / 'checkpoint-2'}: incomplete (" in log and missing in log
    assert f"resuming from {out / 'checkpoint-1'}" in log
    assert f"[train] done: {STEPS} steps, {(STEPS - 1) * 4} samples" in log  # it ran steps 2 and 3 only
    losses, logits = uninterrupted
    assert _losses(out) == pytest.approx(losses, rel=1e-6)
    trained = torch.load(out / "in_memory_logits.pt", weights_only=True)
    torch.testing.assert_close(trained, logits, rtol=0, atol=1e-6)
    left = checkpoint_folders(out)
    kept = [3] if "--save_total_limit" in extra else [1, 2, 3]
    assert [f.name for f in left] == [f"checkpoint-{step}" for step in kept]
    assert all((f / MARKER).exists() for f in left)


# ---------------------------------------------------------------- folders made by hand
def _folder(path, *files):
    path.mkdir(parents=True)
    for name in files:
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(name)
    return path


def test_a_checkpoint_without_the_marker_is_judged_by_the_last_file_each_rank_writes(tmp_path):
    two_ranks = _folder(tmp_path / "checkpoint-1", "model.safetensors", "trainer_state.json",
                        "rng_state_0.pth", "rng_state_1.pth")
    assert incomplete_reason(two_ranks, world_size=2) is None
    assert incomplete_reason(two_ranks, world_size=1) is None
    assert "no rng_state_2.pth" in incomplete_reason(two_ranks, world_size=3)
    one_process = _folder(tmp_path / "checkpoint-2", "model.safetensors", "trainer_state.json",
                          "rng_state.pth")
    assert incomplete_reason(one_process, world_size=2) is None
    no_state = _folder(tmp_path / "checkpoint-3", "model.safetensors", "rng_state.pth")
    assert "no trainer_state.json" in incomplete_reason(no_state)
    assert "no such folder" in incomplete_reason(tmp_path / "checkpoint-4")


def test_the_marker_lists_every_file_and_a_changed_file_makes_the_checkpoint_incomplete(tmp_path):
    folder = _folder(tmp_path / "checkpoint-1", "model.safetensors", "global_step1/optim.pt")
    assert "no trainer_state.json" in incomplete_reason(folder)
    mark_complete(folder, step=1, world_size=1)
    assert json.loads((folder / MARKER).read_text())["files"] == {"global_step1/optim.pt": 21,
                                                                   "model.safetensors": 17}
    assert incomplete_reason(folder) is None
    (folder / "global_step1" / "optim.pt").write_text("cut")
    assert "global_step1/optim.pt has 3 bytes, 21 when it was saved" in incomplete_reason(folder)
    (folder / "global_step1" / "optim.pt").write_text("global_step1/optim.pt")
    assert incomplete_reason(folder) is None
    (folder / "model.safetensors").unlink()
    assert "model.safetensors is missing" in incomplete_reason(folder)


def test_rotation_keeps_the_newest_complete_checkpoints_and_never_counts_incomplete_ones(tmp_path):
    for step in (1, 2, 4, 10):
        mark_complete(_folder(tmp_path / f"checkpoint-{step}", "model.safetensors"), step, 1)
    _folder(tmp_path / "checkpoint-3", "model.safetensors")  # killed while saving, older than complete ones
    _folder(tmp_path / "checkpoint-20", "model.safetensors")  # killed while saving, the newest folder
    deleted = rotate(tmp_path, limit=2, keep=tmp_path / "checkpoint-1")
    assert sorted(f.name for f in deleted) == ["checkpoint-2", "checkpoint-3"]
    assert [f.name for f in checkpoint_folders(tmp_path)] == [
        "checkpoint-1", "checkpoint-4", "checkpoint-10", "checkpoint-20"]
    assert rotate(tmp_path, limit=1) and [f.name for f in checkpoint_folders(tmp_path)] == [
        "checkpoint-10", "checkpoint-20"]
    assert rotate(tmp_path, limit=None) == []


def test_an_incomplete_resume_from_checkpoint_stops_the_run_naming_it(start, tmp_path, capsys):
    root, llm, encoder, data = start
    out = tmp_path / "out"
    mark_complete(_folder(out / "checkpoint-1", "model.safetensors", "trainer_state.json"), 1, 1)
    half = _folder(out / "checkpoint-2", "model.safetensors")
    argv = train_args(llm, encoder, data, str(root / "records"), str(out), "--max_steps", "2",
                      "--resume_from_checkpoint", str(half))
    assert train_module.main(argv) == 2
    error = capsys.readouterr().err
    assert f"--resume_from_checkpoint {half} cannot be resumed: no {MARKER} and no trainer_state" in error
    assert f"resume from {out / 'checkpoint-1'} instead" in error
