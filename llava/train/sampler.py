"""``--group_by_modality_length``: batches of one modality and similar lengths.

Why: a batch that mixes a 10,368-token codec video with a 40-token text sample pads (or packs)
badly, and the ranks of a step wait for the slowest. LLaVA-NeXT's sampler meant to fix this,
but it reads keys its own records do not have and counts every sample as text, so it groups
nothing. Here every record's modality (``text`` / ``image`` / ``video``) and true length (text
tokens plus the visual tokens the model splices in, measured before the first batch:
``SupervisedDataset.modality_and_length``) come from the dataset, and:

1. each modality's indices are shuffled and cut into megabatches of ``world_size x batch_size``
   samples, sorted by length inside, so the ``world_size`` device batches of one step hold one
   modality and similar lengths;
2. what is left of each modality fills mixed megabatches (sorted by length) at the end;
3. the order of the megabatches is shuffled.

The order is a pure function of ``seed`` and the epoch (``set_epoch``), so a resumed run
replays the same batches; every index appears exactly once per epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class ModalityGroupedSampler(Sampler[int]):
    def __init__(
        self,
        modalities: Sequence[str],
        lengths: Sequence[int],
        batch_size: int,
        world_size: int = 1,
        seed: int = 0,
    ):
        if len(modalities) != len(lengths):
            raise ValueError(f"{len(modalities)} modalities but {len(lengths)} lengths")
        if batch_size < 1 or world_size < 1:
            raise ValueError(f"batch_size and world_size must be >= 1, got {batch_size}, {world_size}")
        self.modalities = list(modalities)
        self.lengths = list(lengths)
        self.megabatch = batch_size * world_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def megabatches(self) -> list[list[int]]:
        """The epoch's megabatches (one step of all ranks each), in order."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        by_length = lambda index: -self.lengths[index]  # noqa: E731 - longest first inside a megabatch
        megabatches, leftovers = [], []
        for modality in sorted(set(self.modalities)):
            indices = [i for i, m in enumerate(self.modalities) if m == modality]
            order = [indices[j] for j in torch.randperm(len(indices), generator=generator).tolist()]
            full = len(order) - len(order) % self.megabatch
            megabatches += [
                sorted(order[k : k + self.megabatch], key=by_length) for k in range(0, full, self.megabatch)
            ]
            leftovers += order[full:]
        leftovers.sort(key=by_length)
        mixed = [leftovers[k : k + self.megabatch] for k in range(0, len(leftovers), self.megabatch)]
        order = torch.randperm(len(megabatches), generator=generator).tolist()
        return [megabatches[j] for j in order] + mixed

    def __iter__(self) -> Iterator[int]:
        for megabatch in self.megabatches():
            yield from megabatch


__all__ = ["ModalityGroupedSampler"]
