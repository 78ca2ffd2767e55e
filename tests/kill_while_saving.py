"""Test-only: kill a whole multi-process training run at an exact point of a checkpoint save.

Installed in every rank by ``distributed_sft.py --kill RULE``. It wraps the functions that write a
checkpoint's files (``torch.save``: optimizer shards, RNG states, scheduler; the safetensors writer of
``save_pretrained``: the weights; ``TrainerState.save_to_json``: ``trainer_state.json``) and, at the
point RULE names, SIGKILLs torchrun, every rank and itself — a ``kill -9`` of the job, nothing
cleaned up or flushed by Python. PATHs are relative to the run's output directory.

* ``after:RANK:PATH``: once rank RANK has written PATH.
* ``before:RANK:PATH:WAIT``: when rank RANK is about to write PATH, first wait until WAIT exists
  (another rank got that far) and a second more (let that rank go on as far as it can alone), then
  kill: RANK never writes PATH.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import torch


def kill_the_run() -> None:
    """SIGKILL torchrun (this process's parent), the other ranks, then this process."""
    me = psutil.Process()
    launcher = me.parent()
    others = [p for p in launcher.children(recursive=True) if p.pid != me.pid]
    for process in (launcher, *others):
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    os.kill(os.getpid(), signal.SIGKILL)


def install(rule: str, output_dir: str) -> None:
    when, rank, path, *wait = rule.split(":")
    if int(os.environ.get("RANK", "0")) != int(rank):
        return
    target = (Path(output_dir) / path).resolve()

    def hit(written) -> bool:
        return isinstance(written, (str, os.PathLike)) and Path(written).resolve() == target

    def watched(write, path_arg: int):
        def wrapper(*args, **kwargs):
            written = args[path_arg] if len(args) > path_arg else None
            if when == "before" and hit(written):
                deadline = time.time() + 120
                while not (Path(output_dir) / wait[0]).exists() and time.time() < deadline:
                    time.sleep(0.05)
                time.sleep(1.0)
                kill_the_run()
            result = write(*args, **kwargs)
            if when == "after" and hit(written):
                kill_the_run()
            return result

        return wrapper

    import transformers.modeling_utils
    from transformers.trainer_callback import TrainerState

    torch.save = watched(torch.save, 1)
    transformers.modeling_utils.safe_save_file = watched(transformers.modeling_utils.safe_save_file, 1)
    TrainerState.save_to_json = watched(TrainerState.save_to_json, 1)
