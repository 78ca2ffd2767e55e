"""Training data: LLaVA records -> token ids, labels and visual inputs; batches of them.

Records come from the one dataset reader (``cv_reader.dataset``: JSON / JSONL / brace lists /
YAML mixtures), media go through the one input layer (``llava.mm_inputs``) and conversations
through the one template renderer (``llava.preprocess``), so a sample is built exactly as chat
and evaluation build their prompts. Every record kind works:

====================================================  =========================================
record                                                visual inputs
====================================================  =========================================
no ``image`` / ``video``                              none (text only)
``"image": "a.jpg"`` or a list, one ``<image>`` each  images (native resolution or ``anyres``)
``"image": [N mosaics]`` + ``"positions_thw"``        one codec input, ``N`` placeholders
``"image": [8 frames]`` without positions             one clip at uniform ``t`` (upstream's videos)
``"video": "clip.mp4"``                               online: codec patches (``--video_mode codec``,
                                                      the placeholder becomes ``N`` lines) or frames
====================================================  =========================================

Videos are decoded in the data-loader workers, so raw videos train without Stage 1/2.
Paths are relative to ``--image_folder`` / ``--video_folder``; ``positions_thw`` is used as
written (upstream's rule). A record that cannot be used (a field of the wrong type, missing or
corrupt media, a malformed conversation, placeholders that do not match its media, positions
that do not fit the mosaics) is replaced by the next good one and reported with the batch
(``bad_records``) by its own index only, so the trainer counts each record read once, logs it
once and enforces ``--bad_record_limit``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from cv_reader.dataset import DatasetReader, check_record
from cv_reader.stage2 import VIDEO_TOKEN, placeholder_counts, rewrite_conversations
from torch.utils.data import Dataset

from ..constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from ..conversation import SeparatorStyle, get_conv_template
from ..mm_inputs import MediaError, VideoOptions, VisualInputs, VisualProcessor, codec_options
from ..preprocess import tokenize_conversation, tokenize_prompt
from .arguments import DataArguments

#: Problems of a record (its media, its conversation) rather than of the code: the record is skipped.
RECORD_ERRORS = (MediaError, ValueError, TypeError, KeyError, OSError)
MODALITIES = ("text", "image", "video")


@dataclass(frozen=True)
class BadRecord:
    """A record that was skipped: its id, where it is (``file:line``) and why."""

    id: str
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where} (id {self.id}): {self.reason}"


@dataclass
class Sample:
    input_ids: torch.Tensor
    labels: torch.Tensor
    visual: VisualInputs
    bad: list[BadRecord] = field(default_factory=list)  # the record asked for, if this sample replaces it


def video_options(data_args: DataArguments, patch_size: int) -> VideoOptions:
    """How raw videos become inputs, from the data arguments (codec cut in the encoder's patch size)."""
    codec = codec_options(data_args.codec_frames, data_args.codec_images, data_args.codec_canvas, patch_size)
    return VideoOptions(
        mode=data_args.video_mode,
        frames_upbound=data_args.frames_upbound,
        fps=data_args.video_fps,
        force_sample=data_args.force_sample,
        codec=codec,
    )


def expand_video_placeholder(conversations: list, count: int) -> list:
    """A raw video's placeholder becomes the ``count`` placeholders its input takes (as Stage 2 writes);
    ValueError when the conversation's placeholders do not fit one video."""
    return rewrite_conversations(conversations, count)


class SupervisedDataset(Dataset):
    """LLaVA records as :class:`Sample` objects, built when asked for (in the data-loader workers)."""

    def __init__(
        self,
        data_path: str,
        tokenizer,
        visual: VisualProcessor,
        data_args: DataArguments,
        template: str = "qwen_1_5",
        seed: int = 0,
    ):
        reader = DatasetReader(data_path, seed=seed)
        self.records: list[dict] = []
        self.where: list[str] = []
        for record in reader:
            self.records.append(record.data)
            self.where.append(record.where)
        self.malformed = [str(bad) for bad in reader.bad_examples]
        self.malformed_count = reader.bad_records
        if not self.records:
            raise ValueError(f"{data_path}: no usable records")
        self.tokenizer = tokenizer
        self.visual = visual
        self.data_args = data_args
        self.template = template
        self.plain = get_conv_template(template).sep_style == SeparatorStyle.PLAIN
        self.max_attempts = min(len(self.records), 100)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        """Record ``index``'s sample, or, when it is bad, the next good record's with ``bad`` naming it.

        Only the record asked for is reported: the bad records passed on the way to the
        replacement are reported when their own index is asked for, so every record read is
        counted once, whatever the sampler's order.
        """
        first: BadRecord | None = None
        for attempt in range(self.max_attempts):
            i = (index + attempt) % len(self.records)
            try:
                sample = self.build(i)
            except RECORD_ERRORS as error:
                if first is None:
                    first = self.bad_record(i, error)
                continue
            sample.bad = [] if first is None else [first]
            return sample
        raise RuntimeError(
            f"{self.max_attempts} records in a row from {self.where[index]} are unusable; first: {first}"
        )

    def bad_record(self, i: int, error: Exception) -> BadRecord:
        """Record ``i`` as a :class:`BadRecord` that says why ``error`` made it unusable."""
        record = self.records[i]
        sid = record.get("id")
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        return BadRecord(f"#{i}" if sid is None else str(sid), self.where[i], reason)

    # ------------------------------------------------------------------ one record
    def where_of(self, i: int) -> str:
        return f"{self.where[i]} (id {self.records[i].get('id', f'#{i}')})"

    def conversation_and_media(self, i: int) -> tuple[list, VisualInputs]:
        """Record ``i``'s turns, with its video placeholder expanded as its input needs, and its inputs."""
        record, where = self.records[i], self.where_of(i)
        try:
            check_record(record, required=("conversations",))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        conversations = record["conversations"]
        visual = self.media(record)
        if record.get("video") is not None:
            try:
                conversations = expand_video_placeholder(conversations, visual.num_placeholders)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
        elif placeholder_counts(conversations)[0]:
            videos = placeholder_counts(conversations)[0]
            raise ValueError(
                f"{where}: the conversation has {videos} {VIDEO_TOKEN} placeholder(s) but the record has "
                "no video"
            )
        if self.plain and len(visual):  # LLaVA pre-training: the caption follows the placeholders alone
            conversations = [dict(conversations[0], value=visual.placeholder_text()), *conversations[1:]]
        return conversations, visual

    def prompt(self, i: int) -> tuple[torch.Tensor, VisualInputs]:
        """Generation inputs for record ``i``: its first human turn and an open assistant turn.

        Tokenised exactly as training tokenises the record (``tokenize_prompt``), so the model is
        asked the question as it learnt it.
        """
        conversations, visual = self.conversation_and_media(i)
        human = next((t for t in conversations
                      if str(t.get("from", t.get("role", ""))).lower() in ("human", "user")), None)
        if human is None:
            raise ValueError(f"{self.where_of(i)}: no human turn to answer")
        conv = get_conv_template(self.template)
        conv.append_message(conv.roles[0], human.get("value", human.get("content")))
        conv.append_message(conv.roles[1], None)
        return tokenize_prompt(conv, self.tokenizer), visual

    def build(self, i: int) -> Sample:
        """The sample of record ``i``; raises one of ``RECORD_ERRORS`` when the record is unusable."""
        where = self.where_of(i)
        conversations, visual = self.conversation_and_media(i)
        input_ids, labels = tokenize_conversation(conversations, self.tokenizer, self.template, where)
        placeholders = int((input_ids == IMAGE_TOKEN_INDEX).sum())
        if placeholders != visual.num_placeholders:
            raise ValueError(
                f"{where}: the conversation has {placeholders} {DEFAULT_IMAGE_TOKEN} placeholders "
                f"but its media take {visual.num_placeholders} (a codec input one per mosaic)"
            )
        input_ids, labels = self._truncate_text(input_ids, labels)
        return Sample(input_ids, labels, visual)

    def media(self, record: dict) -> VisualInputs:
        """The visual inputs of a record whose fields passed ``check_record``."""
        images, video = record.get("image"), record.get("video")
        if video is not None:
            return self.visual.video(self._path(video, self.data_args.video_folder))
        if images is None:
            return VisualInputs()
        paths = [images] if isinstance(images, str) else list(images)
        paths = [self._path(p, self.data_args.image_folder) for p in paths]
        if record.get("positions_thw") is not None:
            return self.visual.codec_pack(paths, record["positions_thw"])
        if len(paths) > 1 and len(paths) == self.data_args.images_as_clip:
            return self.visual.clip(paths)
        return VisualInputs.concat(self.visual.image(path) for path in paths)

    @staticmethod
    def _path(path: str, folder: str | None) -> str:
        return os.path.join(folder, path) if folder and not os.path.isabs(path) else path

    def _truncate_text(self, input_ids: torch.Tensor, labels: torch.Tensor):
        """Cut text beyond ``model_max_length``, never a placeholder (the model cuts the spliced rest)."""
        limit = self.tokenizer.model_max_length
        if limit is None or len(input_ids) <= limit:
            return input_ids, labels
        slots = torch.nonzero(input_ids == IMAGE_TOKEN_INDEX).flatten()
        keep = max(limit, int(slots[-1]) + 1 if len(slots) else 0)
        return input_ids[:keep], labels[:keep]

    # ------------------------------------------------------------------ for the grouped sampler
    def modality_and_length(self, i: int) -> tuple[str, int]:
        """``(text | image | video, estimated tokens)`` of record ``i``, from the record alone (no I/O).

        A record whose fields have the wrong type counts as a short text: it is reported bad when read.
        """
        record = self.records[i]
        try:
            check_record(record)
        except ValueError:
            return "text", 1
        words = sum(len(str(turn.get("value", "")).split()) for turn in record.get("conversations") or []
                    if isinstance(turn, dict))
        per_image = self._tokens_per_image()
        codec = self.visual.video_options.codec
        codec_tokens = codec.keep_frames_equiv * (codec.square_size // codec.patch_size) ** 2
        if "video" in record:
            frames = self.visual.video_options.frames_upbound * per_image
            return "video", words + (codec_tokens if self.visual.video_options.mode == "codec" else frames)
        images = record.get("image")
        if images is None:
            return ("image" if self.data_args.early_mix_text else "text"), words
        count = 1 if isinstance(images, str) else len(images)
        if "positions_thw" in record:
            return "video", words + count * (codec.square_size // codec.patch_size) ** 2
        kind = "video" if count > 1 and count == self.data_args.images_as_clip else "image"
        return kind, words + count * per_image

    def _tokens_per_image(self) -> int:
        processor = self.visual.image_processor
        return max(1, int(processor.max_pixels) // processor.patch_size**2)


@dataclass
class DataCollator:
    """Right-padded ids / labels / mask and the flat visual lists of a batch of :class:`Sample`."""

    pad_token_id: int
    pack: bool = False

    def __call__(self, samples: Sequence[Sample]) -> dict:
        longest = max(len(s.input_ids) for s in samples)
        input_ids = torch.full((len(samples), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), longest), dtype=torch.long)
        for row, sample in enumerate(samples):
            n = len(sample.input_ids)
            input_ids[row, :n], labels[row, :n], attention_mask[row, :n] = sample.input_ids, sample.labels, 1
        batch = dict(input_ids=input_ids, labels=labels, attention_mask=attention_mask)
        batch.update(VisualInputs.concat(s.visual for s in samples).model_kwargs())
        if self.pack:
            batch["pack_sequences"] = True
        batch["bad_records"] = [bad for s in samples for bad in s.bad]
        return batch


def make_data_module(tokenizer, model, image_processor, data_args: DataArguments, template: str, pack: bool,
                     seed: int = 0) -> dict:
    """``train_dataset`` and ``data_collator`` for the Trainer."""
    visual = VisualProcessor(image_processor, model.config,
                             video_options(data_args, image_processor.patch_size))
    dataset = SupervisedDataset(data_args.data_path, tokenizer, visual, data_args, template, seed=seed)
    return dict(train_dataset=dataset, data_collator=DataCollator(tokenizer.pad_token_id, pack=pack))


__all__ = [
    "MODALITIES",
    "RECORD_ERRORS",
    "BadRecord",
    "DataCollator",
    "Sample",
    "SupervisedDataset",
    "expand_video_placeholder",
    "make_data_module",
    "video_options",
]
