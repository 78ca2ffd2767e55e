"""Run by ``torchrun --nproc_per_node 2`` from tests/test_train_distributed.py: a real multi-process SFT run.

``distributed_sft.py RECORDS_DIR -- TRAIN FLAGS``: trains with the flags (DeepSpeed ZeRO-2 / ZeRO-3 on
the CPU accelerator, gloo), saves the checkpoint, then every rank runs the trained in-memory model on a
fixed input (ZeRO-3 gathers the partitioned weights inside the forward, so all ranks take part) and rank 0
writes the logits to ``OUTPUT_DIR/in_memory_logits.pt`` for the test to compare with the checkpoint's.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))

from train_helpers import probe_inputs  # noqa: E402

from llava.train.train import run, setup  # noqa: E402


def main(records: str, argv: list[str]) -> None:
    trainer, kind = setup(argv)
    summary = run(trainer, kind)
    inputs = probe_inputs(Path(records), trainer.model, trainer.processing_class)
    with torch.no_grad():
        logits = trainer.model.eval()(**inputs).logits
    if dist.get_rank() == 0:
        torch.save(logits, Path(summary["output_dir"]) / "in_memory_logits.pt")


if __name__ == "__main__":
    separator = sys.argv.index("--")
    main(sys.argv[1], sys.argv[separator + 1 :])
