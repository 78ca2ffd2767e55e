"""Stage-2 SFT (and projector pre-training) of LLaVA-OV: OV-Encoder + projector + a Qwen LLM.

    python -m llava.train.train --model_name_or_path LLM --vision_tower ENCODER --data_path data.yaml \\
        --output_dir OUT [--deepspeed scripts/zero3.json] [every upstream / TrainingArguments flag]

or ``torchrun`` / ``deepspeed llava/train/train.py ...`` for several processes. This file only
orchestrates; the parts live beside it: ``arguments`` (flags), ``model_setup`` (model, tokenizer,
what trains, LoRA), ``data`` (records -> samples, collation), ``sampler`` (modality grouping),
``trainer`` (optimizer groups, bad records, saving). A run resumes from the newest complete
``OUTPUT/checkpoint-*`` (``checkpoints``) with the same data order, and ends with a summary of what it did.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import transformers
from transformers import HfArgumentParser, set_seed
from transformers.integrations import is_deepspeed_zero3_enabled

import llava  # noqa: F401  (registers the LLaVA and OV-Encoder classes)
from llava.model.builder import load_image_processor
from llava.model.folder import ensure_image_token, video_settings
from llava.train.arguments import DataArguments, ModelArguments, TrainingArguments, check_arguments
from llava.train.checkpoints import IncompleteCheckpoint, check_resumable, newest_complete
from llava.train.data import make_data_module
from llava.train.model_setup import apply_lora, build_model, build_tokenizer, projector_only, select_trainable
from llava.train.trainer import LLaVATrainer, TooManyBadRecords, over_length_text

logger = logging.getLogger("llava.train")


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    check_arguments(model_args, data_args, training_args)
    return model_args, data_args, training_args


class SetupError(Exception):
    """The run cannot start: a flag, a path or the dataset is wrong (the message says which)."""


def setup(argv: list[str] | None = None) -> tuple[LLaVATrainer, dict]:
    """Everything up to the first step: arguments, model, tokenizer, data, trainer."""
    try:
        model_args, data_args, training_args = parse_args(argv)
    except ValueError as error:
        raise SetupError(str(error)) from error
    logging.basicConfig(
        format="[%(name)s] %(message)s", level=logging.INFO if training_args.should_log else logging.WARNING
    )
    set_seed(training_args.seed)
    if training_args.deepspeed and training_args.world_size > 1:
        # ZeRO-3 partitions the weights while from_pretrained builds the model, so DeepSpeed's
        # communication must already know all ranks (torch.distributed is set up by the arguments).
        import deepspeed

        deepspeed.init_distributed(dist_backend=training_args.ddp_backend)
    try:
        tokenizer = build_tokenizer(model_args, training_args)
        model = build_model(model_args, data_args, training_args)
        ensure_image_token(tokenizer, model)  # the token the processor expands each visual token into
    except (ValueError, OSError) as error:
        raise SetupError(f"cannot build the model: {error}") from error
    newline = getattr(model.get_model(), "image_newline", None)
    if newline is not None and is_deepspeed_zero3_enabled():
        import deepspeed

        # used by the causal LM's forward, not by the module that owns it: ZeRO-3 must gather it there
        deepspeed.zero.register_external_parameter(model, newline)
    trainable = select_trainable(model, model_args, training_args)
    if training_args.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings still pass gradients to checkpointed layers
    if training_args.lora_enable:
        model = apply_lora(model, model_args, training_args)
    llava_model = model.base_model.model if training_args.lora_enable else model
    image_processor = load_image_processor(model_args.model_name_or_path, None, llava_model)
    try:
        data = make_data_module(
            tokenizer, llava_model, image_processor, data_args, model_args.version, training_args.packing,
            seed=training_args.data_seed if training_args.data_seed is not None else training_args.seed,
        )
    except (ValueError, OSError) as error:
        raise SetupError(f"cannot read the training data: {error}") from error
    dataset = data["train_dataset"]
    only_projector = projector_only(model_args, training_args)
    trainer = LLaVATrainer(
        model=model, args=training_args, processing_class=tokenizer, image_processor=image_processor,
        projector_only=only_projector, bad_record_limit=data_args.bad_record_limit,
        malformed=dataset.malformed_count, folder=folder_facts(argv, model_args, data_args, training_args,
                                                              llava_model.config, image_processor.patch_size),
        **data,
    )
    if training_args.should_log:
        logger.info(
            "%d records (%d malformed lines skipped); trainable parameters: %s",
            len(dataset), dataset.malformed_count, ", ".join(f"{k} {v:,}" for k, v in trainable.items()),
        )
    return trainer, "projector" if only_projector else ("lora" if training_args.lora_enable else "full")


def folder_facts(argv, model_args, data_args, training_args, config, patch_size: int) -> dict:
    """What a saved checkpoint folder records beyond the weights: the video settings the model is trained
    with (its processor reads videos the same way) and the model card's facts (names, never local paths)."""
    video = video_settings(
        config, patch_size, mode=data_args.video_mode, frames_upbound=data_args.frames_upbound,
        fps=data_args.video_fps, force_sample=data_args.force_sample,
        codec={"sequence_length": data_args.codec_frames, "keep_frames_equiv": data_args.codec_images,
               "square_size": data_args.codec_canvas},
        time_instruction=data_args.add_time_instruction,
    )
    data = [Path(part).name for part in str(data_args.data_path or "").split(",") if part]
    flags = [Path(arg).name if "/" in arg and not arg.startswith("--") else arg
             for arg in (sys.argv[1:] if argv is None else argv)]
    card = {"name": Path(training_args.output_dir).name, "base_model": Path(model_args.model_name_or_path).name,
            "data": data, "flags": flags}
    return {"video": video, "card": card}


def train(argv: list[str] | None = None) -> dict:
    """Run one training job; returns its summary (also printed)."""
    return run(*setup(argv))


def run(trainer: LLaVATrainer, kind: str) -> dict:
    """Train (resuming from the newest complete checkpoint if there is one), save, summarise."""
    args = trainer.args
    output_dir = Path(args.output_dir)
    result = trainer.train(resume_from_checkpoint=resume_checkpoint(args))
    trainer.save_state()
    model = trainer.accelerator.unwrap_model(trainer.model)
    (model.base_model.model if hasattr(model, "peft_config") else model).config.use_cache = True
    trainer.save_model(str(output_dir))
    summary = _summary(trainer, result, kind)
    if args.should_log:
        print(_summary_text(summary), flush=True)
    return summary


def resume_checkpoint(args: TrainingArguments) -> str | None:
    """``--resume_from_checkpoint`` if it is complete (:class:`SetupError` if not), else the newest
    complete ``OUTPUT/checkpoint-*`` or None; logs the newer folders it skipped and why."""
    if args.resume_from_checkpoint:
        try:
            return str(check_resumable(args.resume_from_checkpoint, args.world_size))
        except IncompleteCheckpoint as error:
            raise SetupError(str(error)) from error
    folder, skipped = newest_complete(args.output_dir, args.world_size)
    if args.should_log:
        for path, reason in skipped:
            logger.warning("skipping %s: incomplete (%s)", path, reason)
        if folder is not None:
            logger.info("resuming from %s", folder)
        elif skipped:
            logger.warning("no complete checkpoint in %s: training from the start", args.output_dir)
    return str(folder) if folder is not None else None


def loss_span(log_history: list[dict]) -> tuple[float | None, float | None]:
    """The first and the last logged training loss of windows that had supervised tokens.

    Each logged ``loss`` is the mean over the steps since the previous log; the trainer adds the
    labelled tokens of those steps (``supervised_tokens``), and a window without any says nothing
    about learning (its loss is 0), so it is passed over. Logs written before that count existed
    are taken as they are. ``(None, None)`` when no window qualifies.
    """
    losses = [entry["loss"] for entry in log_history
              if "loss" in entry and entry.get("supervised_tokens", 1) > 0]
    return (losses[0], losses[-1]) if losses else (None, None)


def _summary(trainer: LLaVATrainer, result, kind: str) -> dict:
    """The run's totals over all ranks (every rank calls it: it gathers)."""
    args = trainer.args
    totals = torch.tensor([trainer.samples_seen, trainer.tokens_seen], dtype=torch.long)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        totals = totals.to(args.device) if dist.get_backend() == "nccl" else totals
        dist.all_reduce(totals)
    first_loss, last_loss = loss_span(trainer.state.log_history)
    runtime = result.metrics.get("train_runtime") or float("nan")
    return dict(
        steps=trainer.state.global_step, samples=int(totals[0]), tokens=int(totals[1]),
        tokens_per_second=int(totals[1]) / runtime, bad_records=trainer.records_bad,
        records_read=trainer.records_read, malformed_lines=trainer.train_dataset.malformed_count,
        over_length=trainer.records_over, longest=trainer.longest_over_all_ranks(),
        codec_packs=dict(sorted(trainer.packs_all_ranks().items())),
        first_loss=first_loss, last_loss=last_loss, output_dir=str(args.output_dir), kind=kind,
    )


def _summary_text(s: dict) -> str:
    loss = f", loss {s['first_loss']:.3f} -> {s['last_loss']:.3f}" if s["first_loss"] is not None else ""
    over = f"[train] {over_length_text(s['over_length'], s['longest'])}\n" if s["over_length"] else ""
    packs = s["codec_packs"]
    by_geometry = ", ".join(f"{geometry}: {count}" for geometry, count in packs.items())
    packs = f"[train] codec packs: {sum(packs.values())} read: {by_geometry}\n" if packs else ""
    load = {
        "full": f"python -m llava.serve.cli --model-path {s['output_dir']}",
        "lora": f"python -m llava.serve.cli --model-path {s['output_dir']} --model-base BASE",
        "projector": f"load_pretrained_model('{s['output_dir']}', model_base=LLM)  (mm_projector.bin)",
    }[s["kind"]]
    return (
        f"[train] done: {s['steps']} steps, {s['samples']} samples, {s['tokens']:,} LM tokens "
        f"({s['tokens_per_second']:.0f} tokens/s){loss}\n"
        f"[train] bad records: {s['bad_records']} of {s['records_read']} read "
        f"({s['malformed_lines']} malformed dataset lines)\n"
        f"{over}{packs}"
        f"[train] saved the {s['kind']} checkpoint in {s['output_dir']}; load it with: {load}"
    )


def main(argv: list[str] | None = None) -> int:
    try:
        train(argv)
    except SetupError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TooManyBadRecords as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    transformers.logging.set_verbosity_warning()
    sys.exit(main())
