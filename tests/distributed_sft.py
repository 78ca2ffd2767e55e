"""Run by ``torchrun --nproc_per_node 2`` from tests/test_train_distributed.py: a real multi-process SFT run.

``distributed_sft.py RECORDS_DIR [--kill RULE] -- TRAIN FLAGS``: trains with the flags (DeepSpeed ZeRO-2 /
ZeRO-3 on the CPU accelerator, gloo), saves the checkpoint, then every rank runs the trained in-memory model
on a fixed input (ZeRO-3 gathers the partitioned weights inside the forward, so all ranks take part) and
rank 0 writes the logits to ``OUTPUT_DIR/in_memory_logits.pt`` for the test to compare with the checkpoint's.
``--kill RULE`` kills the whole run at a point of a checkpoint save (tests/kill_while_saving.py).
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))

from train_helpers import probe_inputs  # noqa: E402

from llava.train.train import run, setup  # noqa: E402


def main(records: str, argv: list[str], kill: str | None = None) -> None:
    if kill is not None:
        from kill_while_saving import install

        install(kill, argv[argv.index("--output_dir") + 1])
    trainer, kind = setup(argv)
    summary = run(trainer, kind)
    inputs = probe_inputs(Path(records), trainer.model, trainer.processing_class)
    with torch.no_grad():
        logits = trainer.model.eval()(**inputs).logits
    if dist.get_rank() == 0:
        torch.save(logits, Path(summary["output_dir"]) / "in_memory_logits.pt")


if __name__ == "__main__":
    separator = sys.argv.index("--")
    options = sys.argv[2:separator]
    main(sys.argv[1], sys.argv[separator + 1 :], options[1] if options[:1] == ["--kill"] else None)
