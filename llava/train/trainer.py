"""The Hugging Face Trainer, taught what a LLaVA run needs.

* **Parameter groups**: the vision tower and the projector can have their own learning rates
  (``--mm_vision_tower_lr``, ``--mm_projector_lr``); biases and norm weights get no weight decay.
* **Sampler**: ``--group_by_modality_length`` uses :class:`~llava.train.sampler.ModalityGroupedSampler`
  with every record's true length, measured once before the first batch (each rank measures its
  share of the records in its data-loader workers; the shares are gathered).
* **Bad and over-length records**: each batch reports (``report``, a
  :class:`~llava.train.data.BatchReport`) the records the dataset skipped; they are logged, counted
  on every rank (all-reduced, so every rank stops together), and once at least
  ``min(50, dataset size)`` records were read the run stops with :class:`TooManyBadRecords` when
  the bad share exceeds ``--bad_record_limit``, or with :class:`TooManyOverLength` when most
  samples were over-length (their visual tokens and first answer do not fit ``--model_max_length``).
  The batch also names the geometry of each Stage-2 pack read (counted for the summary), and each
  logged loss gets ``supervised_tokens``: the labelled tokens of the steps it averages (all ranks).
* **Saving** (also under ZeRO-3, parameters gathered first): the full model, or only
  ``mm_projector.bin`` when only the projector trains, or the LoRA adapter plus
  ``non_lora_trainables.bin``; the config, tokenizer and image processor go with every kind, so
  ``load_pretrained_model`` and the chat CLI load any checkpoint of the run.
* **Complete checkpoints**: ``checkpoint-N`` gets :data:`~llava.train.checkpoints.MARKER` last, once
  every rank wrote its part; ``--save_total_limit`` rotates after that and counts complete ones only
  (:mod:`llava.train.checkpoints`).
* **Counters** for the closing summary: samples, LM tokens (text + visual, padding excluded),
  over-length samples and the longest, packs per geometry.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..constants import IGNORE_INDEX
from ..model.folder import build_processor, save_folder
from ..model.weights import (
    NON_LORA_FILES,
    PROJECTOR_FILES,
    find_file,
    load_non_lora_trainables,
    load_projector_weights,
    load_weights_file,
)
from . import checkpoints
from .data import BatchReport, modalities_and_lengths
from .sampler import ModalityGroupedSampler

logger = logging.getLogger("llava.train")

#: Below this many records read, the bad share is not judged yet (unless the dataset is smaller).
BAD_RECORD_WARMUP = 50
#: Over-length samples logged one by one on each rank; later ones are counted only.
OVER_LENGTH_LOGGED = 20


class TooManyBadRecords(RuntimeError):
    """More than ``--bad_record_limit`` of the records read so far could not be used."""


class TooManyOverLength(TooManyBadRecords):
    """Most samples read so far were over-length: the run would train on a few leftovers."""


def over_length_text(count: int, longest: int) -> str:
    """The one way over-length samples are reported (the summary, the stop)."""
    return (f"over-length: {count} samples, longest {longest} tokens; raise --model_max_length or lower "
            "the codec mosaics")


def _gathered(params):
    """Context in which ZeRO-3-partitioned ``params`` hold their full values (no-op otherwise)."""
    params = [p for p in params if hasattr(p, "ds_id")]
    if not params:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def gathered_state(named_params) -> dict[str, torch.Tensor]:
    """CPU copies of ``(name, parameter)`` pairs, gathered from all ranks under ZeRO-3."""
    named_params = list(named_params)
    with _gathered(p for _, p in named_params):
        return {name: param.detach().cpu().clone() for name, param in named_params}


def decay_parameter_names(model: torch.nn.Module) -> set[str]:
    """Parameters that get weight decay: all but biases and the weights of normalisation layers (any kind)."""
    names = set()
    for module_name, module in model.named_modules():
        is_norm = "Norm" in type(module).__name__
        for name, _ in module.named_parameters(recurse=False):
            if not is_norm and not name.endswith("bias"):
                names.add(f"{module_name}.{name}" if module_name else name)
    return names


class LLaVATrainer(Trainer):
    def __init__(self, *args, image_processor=None, projector_only: bool = False,
                 bad_record_limit: float = 0.1, malformed: int = 0, folder: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.image_processor = image_processor
        self.folder = folder  # video settings and model-card facts for self-contained checkpoints
        self.projector_only = projector_only
        self.bad_record_limit = bad_record_limit
        self.bad_seen: set[tuple[str, str]] = set()
        # records read / bad so far, this rank and all ranks (malformed lines count as bad records read)
        self.records_read, self.records_bad = malformed, malformed
        self.samples_seen = 0
        self.tokens_seen = 0
        self.records_over, self.longest_over = 0, 0  # all ranks / this rank's longest
        self.over_seen: set[tuple[str, str]] = set()
        self.packs_seen: Counter[str] = Counter()  # this rank's packs read, by geometry
        self.window_supervised = 0  # labelled tokens since the last logged loss, all ranks
        self._measured: tuple[list[str], list[int]] | None = None

    # ------------------------------------------------------------------ sampler and optimizer
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.args.group_by_modality_length or not hasattr(dataset, "modality_and_length"):
            return super()._get_train_sampler(train_dataset)
        modalities, lengths = self.modalities_and_lengths(dataset)
        return ModalityGroupedSampler(
            modalities, lengths, self.args.per_device_train_batch_size,
            world_size=self.args.world_size,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )

    def modalities_and_lengths(self, dataset) -> tuple[list[str], list[int]]:
        """Every record's modality and true length (``SupervisedDataset.modality_and_length``), measured
        once: rank ``r`` of ``W`` measures records ``r, r + W, ...`` in its data-loader workers and the
        ranks gather the shares, so every rank's sampler gets the same lists."""
        if self._measured is None:
            shared = self.args.world_size > 1 and dist.is_available() and dist.is_initialized()
            rank, world = (self.args.process_index, self.args.world_size) if shared else (0, 1)
            started = time.perf_counter()
            share = modalities_and_lengths(dataset, range(rank, len(dataset), world),
                                           self.args.dataloader_num_workers)
            shares = [share]
            if shared:
                shares = [None] * world
                dist.all_gather_object(shares, share)
            modalities, lengths = [""] * len(dataset), [0] * len(dataset)
            for r, (share_modalities, share_lengths) in enumerate(shares):
                modalities[r::world], lengths[r::world] = share_modalities, share_lengths
            self._measured = modalities, lengths
            if self.args.should_log:
                logger.info("measured the length of %d records in %.1f s (for --group_by_modality_length)",
                            len(dataset), time.perf_counter() - started)
        return self._measured

    def create_optimizer(self, model=None):
        """AdamW (or ``--optim``) over parameter groups: tower / projector / rest x decay / no decay."""
        if self.optimizer is not None:
            return self.optimizer
        model = model if model is not None else self.model
        decay = decay_parameter_names(model)
        special = {"vision_tower": self.args.mm_vision_tower_lr, "mm_projector": self.args.mm_projector_lr}
        groups: dict[tuple[str, bool], list] = {}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            part = next((key for key, lr in special.items() if lr is not None and key in name), "rest")
            groups.setdefault((part, name in decay), []).append(param)
        param_groups = []
        for (part, decays), params in groups.items():
            group = {"params": params, "weight_decay": self.args.weight_decay if decays else 0.0}
            if part != "rest":
                group["lr"] = special[part]
            param_groups.append(group)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    # ------------------------------------------------------------------ a training step
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        report = inputs.pop("report", None) or BatchReport()
        if model.training:  # one row per dataset index asked for; a skipped one names only itself
            supervised = int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
            self._count_records(report, read=inputs["input_ids"].shape[0], supervised=supervised)
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        if model.training:
            self.samples_seen += inputs["input_ids"].shape[0]
            if getattr(outputs, "num_tokens", None) is not None:
                self.tokens_seen += int(outputs.num_tokens)
        return (loss, outputs) if return_outputs else loss

    def _count_records(self, report: BatchReport, read: int, supervised: int = 0) -> None:
        """Add a batch's ``read`` records (the dataset indices it asked for), its bad and over-length ones
        (each reported by its own index only) and its ``supervised`` (labelled) tokens to the counts of all
        ranks; count its packs (this rank); stop the run past either limit."""
        for record in report.bad:
            key = (record.id, record.where)
            if key not in self.bad_seen:
                self.bad_seen.add(key)
                logger.warning("bad record skipped: %s", record)
        for record in report.over_length:
            self.longest_over = max(self.longest_over, record.length)
            key = (record.id, record.where)
            if key not in self.over_seen and len(self.over_seen) < OVER_LENGTH_LOGGED:
                self.over_seen.add(key)
                last = len(self.over_seen) == OVER_LENGTH_LOGGED
                logger.warning("over-length sample skipped: %s%s", record,
                               " (later ones are counted, not logged)" if last else "")
        self.packs_seen.update(report.packs)
        counts = torch.tensor([read, len(report.bad), len(report.over_length), supervised], dtype=torch.long)
        counts = self._all_ranks(counts, dist.ReduceOp.SUM)
        self.records_read += int(counts[0])
        self.records_bad += int(counts[1])
        self.records_over += int(counts[2])
        self.window_supervised += int(counts[3])
        warmup = min(BAD_RECORD_WARMUP, len(self.train_dataset) if self.train_dataset is not None else 0)
        if self.records_read < warmup:
            return
        if self.records_bad > self.bad_record_limit * self.records_read:
            raise TooManyBadRecords(
                f"{self.records_bad} of the {self.records_read} records read so far are unusable "
                f"({self.records_bad / self.records_read:.0%} > --bad_record_limit "
                f"{self.bad_record_limit:.0%}); "
                "see the 'bad record skipped' log lines for which and why"
            )
        if 2 * self.records_over > self.records_read:  # every rank decides alike: the max is collective
            raise TooManyOverLength(
                f"{over_length_text(self.records_over, self.longest_over_all_ranks())} "
                f"({self.records_over} of the {self.records_read} samples read so far cannot keep their "
                "visual tokens and first answer; see the 'over-length sample skipped' log lines)"
            )

    def _all_ranks(self, values: torch.Tensor, op) -> torch.Tensor:
        """``values`` reduced over the ranks with ``op`` (unchanged in a single process)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            device = self.args.device if dist.get_backend() == "nccl" else "cpu"
            values = values.to(device)
            dist.all_reduce(values, op=op)
        return values.cpu()

    def longest_over_all_ranks(self) -> int:
        """The longest over-length sample any rank read (a collective: every rank must call it)."""
        longest = torch.tensor([self.longest_over], dtype=torch.long)
        return int(self._all_ranks(longest, dist.ReduceOp.MAX)[0])

    def packs_all_ranks(self) -> Counter[str]:
        """Packs read by every rank, by geometry (a collective: every rank must call it)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            counters = [None] * dist.get_world_size()
            dist.all_gather_object(counters, dict(self.packs_seen))
            return sum((Counter(c) for c in counters), Counter())
        return Counter(self.packs_seen)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's log, each logged training loss with the labelled tokens of the steps it averages
        (``supervised_tokens``, all ranks): the summary's loss span skips a window without any."""
        if "loss" in logs:
            logs["supervised_tokens"] = self.window_supervised
            self.window_supervised = 0
        super().log(logs, start_time)

    # ------------------------------------------------------------------ saving and resuming
    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's ``checkpoint-N``, marked complete once every rank wrote its part, then the
        rotation (the Trainer's own would run before that, and count incomplete folders)."""
        run_dir = self._get_output_dir(trial=trial)
        folder = Path(run_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save and folder.exists():
            logger.info("replacing %s (left by an earlier run, perhaps killed while saving it)", folder)
            checkpoints.discard(folder)  # never mix its files with this save's
        self.accelerator.wait_for_everyone()
        limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # every rank's optimizer part and RNG state are written
        if not self.args.should_save:
            return
        if (folder / TRAINING_ARGS_NAME).exists():  # it was written with the limit lifted
            torch.save(self.args, folder / TRAINING_ARGS_NAME)
        checkpoints.mark_complete(folder, self.state.global_step, self.args.world_size)
        keep = self.state.best_model_checkpoint
        for old in checkpoints.rotate(run_dir, limit, self.args.world_size, keep=keep):
            logger.info("deleted %s (--save_total_limit %d)", old, limit)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        output_dir = output_dir or self.args.output_dir
        model = self.accelerator.unwrap_model(self.model)
        if self.projector_only:
            self._save_projector(model, output_dir)
        else:
            super().save_model(output_dir, _internal_call=_internal_call)
            if _is_peft(model):
                self._save_non_lora(model, output_dir)
        if self.args.should_save:
            llava = model.base_model.model if _is_peft(model) else model
            llava.config.save_pretrained(output_dir)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
            if self.image_processor is not None:
                self.image_processor.save_pretrained(output_dir)
            if self.folder is not None and not self.projector_only:
                processor = build_processor(self.processing_class, self.image_processor, llava.config,
                                            video=self.folder.get("video"))
                if _is_peft(model):  # the video settings, for the merge (llava.train.export)
                    processor.save_pretrained(output_dir)
                else:  # processor, model code + auto_map, model card: the folder loads without this project
                    save_folder(output_dir, llava.config, processor, self.folder.get("card"))

    def _save_projector(self, model, output_dir: str) -> None:
        keys = ("mm_projector", "image_newline")
        state = gathered_state(
            (name, p) for name, p in model.named_parameters() if any(k in name for k in keys)
        )
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            torch.save(state, os.path.join(output_dir, PROJECTOR_FILES[1]))

    def _save_non_lora(self, model, output_dir: str) -> None:
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad and "lora_" not in name]
        state = gathered_state(named)
        if self.args.should_save:
            torch.save(state, os.path.join(output_dir, NON_LORA_FILES[1]))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Also resume the checkpoints only this trainer writes (projector-only, LoRA's
        full-trained parts)."""
        model = model if model is not None else self.model
        unwrapped = self.accelerator.unwrap_model(model)
        checkpoint = Path(resume_from_checkpoint)
        projector = find_file(checkpoint, PROJECTOR_FILES)
        if self.projector_only and projector is not None:
            state = load_weights_file(projector)
            load_projector_weights(unwrapped, projector)
            for name, param in unwrapped.named_parameters():
                if "image_newline" in name and name in state:
                    param.data.copy_(state[name])
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        non_lora = find_file(checkpoint, NON_LORA_FILES)
        if non_lora is not None and _is_peft(unwrapped):
            load_non_lora_trainables(unwrapped.base_model.model, non_lora)


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config")


__all__ = [
    "BAD_RECORD_WARMUP",
    "LLaVATrainer",
    "TooManyBadRecords",
    "TooManyOverLength",
    "gathered_state",
    "over_length_text",
]
