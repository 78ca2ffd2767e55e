"""Training data: LLaVA records -> token ids, labels and visual inputs; batches of them.

Records come from the one dataset reader (``cv_reader.dataset``: JSON / JSONL / brace lists /
YAML mixtures), media go through the one input layer (``llava.processing.media``) and conversations
through the one template renderer (``llava.processing.prompts``), so a sample is built exactly as chat
and evaluation build their prompts. Every record kind works:

====================================================  =========================================
record                                                visual inputs
====================================================  =========================================
no ``image`` / ``video``                              none (text only)
``"image": "a.jpg"`` or a list, one ``<image>`` each  images (native resolution or ``anyres``)
``"image": [N mosaics]`` + ``"positions_thw"``        one codec input, ``N`` placeholders
``"image": [N frames]`` without positions and          one clip at uniform ``t`` (upstream's 8-frame
``--images_as_clip N`` (opt-in; off: N images)        videos)
``"video": "clip.mp4"``                               online: codec patches (``--video_mode codec``,
                                                      the placeholder becomes ``N`` lines) or frames
====================================================  =========================================

Videos are decoded in the data-loader workers, so raw videos train without Stage 1/2.
Paths are relative to ``--image_folder`` / ``--video_folder``; ``positions_thw`` is used as
written (upstream's rule). A Stage-2 pack is read at its own canvas, patch grid and mosaic count
(the codec flags govern only videos encoded online), so one run may mix pack geometries; the batch
reports each pack's geometry for the closing summary. A record that cannot be used (a field of the
wrong type, missing or corrupt media, a malformed conversation, placeholders that do not match its
media, a pack that does not agree with itself, no reply to learn) is replaced by the next good one
and reported with the batch (:class:`BatchReport`) by its own index only, so the trainer counts
each record read once, logs it once and enforces ``--bad_record_limit``.

**Lengths.** A sample's length is its text tokens plus the visual tokens the model splices in for
its placeholders (``VisualProcessor.token_count``, from shapes alone). A sample whose visual tokens
and first answer do not fit ``--model_max_length`` is *over-length*: it is replaced and reported as
a bad record is, counted apart (the trainer stops a run that is mostly over-length), and never cut
into a sample without labels; a sample that fits loses only text after both (its later turns).
Before batching, ``--group_by_modality_length`` needs every record's length:
:meth:`SupervisedDataset.modality_and_length` measures it without decoding any pixels (image sizes
from the headers, a pack's canvas from its first mosaic's header, online videos from the codec /
frames options) and tokenises the text; :func:`modalities_and_lengths` runs it over the data-loader
workers, each rank measuring its share (``llava.train.trainer``). Nothing is measured when the
sampler does not group, and no cache is kept: a measured record costs its tokenisation and one
header read (0.66 ms on one core: 1.5M records take 16 core-minutes, spread over ranks and workers).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from cv_reader import (
    VIDEO_TOKEN,
    BadRecord,
    DatasetReader,
    check_record,
    pack_geometry,
    placeholder_counts,
    rewrite_conversations,
    text_key,
)
from torch.utils.data import DataLoader, Dataset

from ..batching import Example, collate
from ..constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX
from ..model.processing_llava import VisualLayout
from ..processing.conversation import SeparatorStyle, get_conv_template
from ..processing.media import (
    MediaError,
    VideoOptions,
    VisualInputs,
    VisualProcessor,
    codec_options,
    read_image_size,
)
from ..processing.prompts import SYSTEM_ROLE, record_conversation, tokenize_conversation, tokenize_prompt
from ..processing.video import VideoTiming, time_instruction
from .arguments import DataArguments

logger = logging.getLogger("llava.train")

#: Problems of a record (its media, its conversation) rather than of the code: the record is skipped.
RECORD_ERRORS = (MediaError, ValueError, TypeError, KeyError, OSError)
MODALITIES = ("text", "image", "video")


@dataclass(frozen=True)
class OverLengthRecord:
    """A record skipped because its visual tokens and first answer do not fit ``--model_max_length``."""

    id: str
    where: str
    length: int  # its tokens, spliced (text + visual)
    needed: int  # tokens up to the end of its first answer (and its last visual token)

    def __str__(self) -> str:
        return f"{self.where} (id {self.id}): {self.length} tokens, {self.needed} to its first answer"


class OverLength(Exception):
    """Record's visual tokens and first answer are longer than ``--model_max_length`` (the sample would
    keep no label); ``record`` says which and how long."""

    def __init__(self, message: str, record: OverLengthRecord):
        super().__init__(message)
        self.record = record


@dataclass
class Sample:
    input_ids: torch.Tensor
    labels: torch.Tensor
    visual: VisualInputs
    bad: list[BadRecord] = field(default_factory=list)  # the record asked for, if this sample replaces it
    over_length: list[OverLengthRecord] = field(default_factory=list)  # the same, when it was over-length
    pack: str | None = None  # a Stage-2 pack's geometry (``PackGeometry``), for the closing summary


@dataclass
class BatchReport:
    """What a batch's samples say about the records read (the trainer pops it from the batch):
    the bad and over-length records asked for and replaced, and the geometry of each pack read."""

    bad: list[BadRecord] = field(default_factory=list)
    over_length: list[OverLengthRecord] = field(default_factory=list)
    packs: list[str] = field(default_factory=list)


def video_options(data_args: DataArguments, patch_size: int) -> VideoOptions:
    """How raw videos become inputs, from the data arguments (codec cut in the encoder's patch size)."""
    codec = codec_options(data_args.codec_frames, data_args.codec_images, data_args.codec_canvas, patch_size)
    return VideoOptions(
        mode=data_args.video_mode,
        frames_upbound=data_args.frames_upbound,
        fps=data_args.video_fps,
        force_sample=data_args.force_sample,
        codec=codec,
        time_instruction=data_args.add_time_instruction,
    )


def expand_video_placeholder(conversations: list, count: int) -> list:
    """A raw video's placeholder becomes the ``count`` placeholders its input takes (as Stage 2 writes);
    ValueError when the conversation's placeholders do not fit one video."""
    return rewrite_conversations(conversations, count)


def add_time_instruction(conversations: list, instruction: str) -> list:
    """LLaVA-NeXT's time instruction (``--add_time_instruction``) put after a raw video's placeholder.

    Upstream rewrites the first human turn as ``<placeholder>\n<instruction>\n<the turn without its
    placeholder>``; here the turn is the one that holds the video's placeholder (``<video>`` or
    ``<image>``; the first human turn when no turn has one, which then gets one), so the text is
    upstream's wherever the video is asked about. Placeholders that do not fit one video are left for
    :func:`expand_video_placeholder` to refuse. Returns a new list.
    """
    videos, images = placeholder_counts(conversations)
    if videos and images:
        return conversations
    tag = VIDEO_TOKEN if videos else DEFAULT_IMAGE_TOKEN
    out = [dict(turn) if isinstance(turn, dict) else turn for turn in conversations]
    holders = [t for t in out if (key := text_key(t)) and tag in t[key]]
    if not holders:
        holders = [t for t in out if text_key(t) and str(t.get("from", t.get("role", ""))).lower()
                   in ("human", "user")]
        if not holders:
            return conversations
    turn = holders[0]
    key = text_key(turn)
    count = max(1, turn[key].count(tag))
    placeholders = "\n".join([tag] * count)
    turn[key] = f"{placeholders}\n{instruction}\n{turn[key].replace(tag, '')}"
    return out


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
        self.lines: list[tuple[str, int]] = []  # each record's file and line
        for record in reader:
            self.records.append(record.data)
            self.where.append(record.where)
            self.lines.append((record.file, record.line))
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
        self.timed = visual.video_options.time_instruction  # --add_time_instruction (the predictor: the saved one)
        if self.timed:
            packs = sum(1 for r in self.records if isinstance(r, dict) and r.get("positions_thw") is not None)
            if packs:
                logger.warning(
                    "--add_time_instruction: %d of %d records are Stage-2 packs, which record no frame "
                    "times: they get no time instruction (as upstream, only video records do); encode them "
                    "online (their 'video') to give them one", packs, len(self.records),
                )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        """Record ``index``'s sample, or, when it is bad, the next good record's with ``bad`` naming it.

        Only the record asked for is reported: the bad records passed on the way to the
        replacement are reported when their own index is asked for, so every record read is
        counted once, whatever the sampler's order.
        """
        first: BadRecord | OverLengthRecord | None = None
        for attempt in range(self.max_attempts):
            i = (index + attempt) % len(self.records)
            try:
                sample = self.build(i)
            except OverLength as error:
                if first is None:
                    first = error.record
                continue
            except RECORD_ERRORS as error:
                if first is None:
                    first = self.bad_record(i, error)
                continue
            sample.bad = [first] if isinstance(first, BadRecord) else []
            sample.over_length = [first] if isinstance(first, OverLengthRecord) else []
            return sample
        raise RuntimeError(
            f"{self.max_attempts} records in a row from {self.where[index]} are unusable; first: {first}"
        )

    def bad_record(self, i: int, error: Exception) -> BadRecord:
        """Record ``i`` as a :class:`BadRecord` that says why ``error`` made it unusable."""
        record = self.records[i]
        sid = record.get("id")
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        return BadRecord(*self.lines[i], reason, f"#{i}" if sid is None else str(sid))

    # ------------------------------------------------------------------ one record
    def where_of(self, i: int) -> str:
        return f"{self.where[i]} (id {self.records[i].get('id', f'#{i}')})"

    def conversation_and_media(self, i: int, measure: bool = False) -> tuple[list, VisualInputs]:
        """Record ``i``'s turns, with its video placeholder expanded as its input needs (and the time
        instruction, with ``--add_time_instruction``), and its inputs.

        ``measure``: the inputs' shapes only (``meta`` tensors, no pixel decoded; see :meth:`media`).
        """
        record, where = self.records[i], self.where_of(i)
        try:
            check_record(record, required=("conversations",))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        conversations = record["conversations"]
        visual, instruction = self._media(record, measure)
        if instruction is not None:
            conversations = add_time_instruction(conversations, instruction)
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
            first = next(j for j, turn in enumerate(conversations)
                         if str(turn.get("from", turn.get("role", ""))).lower() != SYSTEM_ROLE)
            key = text_key(conversations[first]) or "value"
            caption_turn = dict(conversations[first], **{key: visual.placeholder_text()})
            conversations = [*conversations[:first], caption_turn, *conversations[first + 1:]]
        return conversations, visual

    def prompt(self, i: int) -> tuple[torch.Tensor, VisualInputs]:
        """Generation inputs for record ``i``: its turns up to the first human one (with its system
        turn as the system prompt) and an open assistant turn.

        Built by the same ``record_conversation`` as the training sample and tokenised as training
        tokenises it (``tokenize_prompt``), so the model is asked the question as it learnt it.
        """
        conversations, visual = self.conversation_and_media(i)
        conv = record_conversation(conversations, self.template, self.where_of(i), question_only=True)
        return tokenize_prompt(conv, self.tokenizer), visual

    def build(self, i: int) -> Sample:
        """The sample of record ``i``; raises one of ``RECORD_ERRORS`` when the record is unusable and
        :class:`OverLength` when its visual tokens and first answer do not fit ``--model_max_length``."""
        input_ids, labels, visual = self._tokens(i)
        input_ids, labels = self._fit(i, input_ids, labels, visual)
        sample = Sample(input_ids, labels, visual)
        if self.records[i].get("positions_thw") is not None:
            sample.pack = str(self.visual.codec_geometry(visual.images[0]))
        return sample

    def _tokens(self, i: int, measure: bool = False) -> tuple[torch.Tensor, torch.Tensor, VisualInputs]:
        """Record ``i``'s ids, labels and visual inputs (only their shapes with ``measure``), checked."""
        where = self.where_of(i)
        conversations, visual = self.conversation_and_media(i, measure)
        input_ids, labels = tokenize_conversation(conversations, self.tokenizer, self.template, where)
        placeholders = int((input_ids == IMAGE_TOKEN_INDEX).sum())
        if placeholders != visual.num_placeholders:
            raise ValueError(
                f"{where}: the conversation has {placeholders} {DEFAULT_IMAGE_TOKEN} placeholders "
                f"but its media take {visual.num_placeholders} (a codec input one per mosaic)"
            )
        if not (labels != IGNORE_INDEX).any():
            raise ValueError(f"{where}: no assistant reply to learn from (every token would be unlabelled)")
        return input_ids, labels, visual

    def _fit(self, i: int, input_ids: torch.Tensor, labels: torch.Tensor, visual: VisualInputs):
        """The sample cut to ``model_max_length`` tokens once spliced, or :class:`OverLength`.

        What must stay: every visual token (a placeholder is never cut, nor its input dropped) and the
        first answer (its last labelled token). Only text after both is cut, so a kept sample always
        has labels; a sample whose must-stay part is longer is over-length.
        """
        limit = self.tokenizer.model_max_length
        slots = torch.nonzero(input_ids == IMAGE_TOKEN_INDEX).flatten()
        extra = self.visual.token_count(visual) - len(slots)  # spliced length = len(input_ids) + extra
        length = len(input_ids) + extra
        if limit is None or length <= limit:
            return input_ids, labels
        supervised = torch.nonzero(labels != IGNORE_INDEX).flatten()
        breaks = torch.nonzero(supervised[1:] != supervised[:-1] + 1).flatten()
        first_answer_end = int(supervised[breaks[0]] if len(breaks) else supervised[-1])
        needed = max(first_answer_end, int(slots[-1]) if len(slots) else 0) + 1 + extra
        if needed > limit:
            record = self.records[i]
            over = OverLengthRecord(str(record.get("id", f"#{i}")), self.where[i], length, needed)
            raise OverLength(
                f"{self.where_of(i)}: over-length: {length} tokens ({extra + len(slots)} visual); its visual "
                f"tokens and first answer ({needed}) exceed --model_max_length {limit}", over,
            )
        return input_ids[: limit - extra], labels[: limit - extra]

    def media(self, record: dict, measure: bool = False) -> VisualInputs:
        """The visual inputs of a record whose fields passed ``check_record``.

        ``measure``: only their shapes, as ``meta`` tensors that hold no data, from what can be known
        without decoding pixels: an image's size from its header, a pack's canvas from its first
        mosaic's header and its mosaic count from its file list, a clip's frame size from its first
        frame's header, an online video from the options (codec: ``N`` mosaics of the canvas, exact;
        frames: ``frames_upbound`` frames of the largest size the processor gives, an estimate).
        """
        return self._media(record, measure)[0]

    def _media(self, record: dict, measure: bool = False) -> tuple[VisualInputs, str | None]:
        """:meth:`media` and, for a raw video read with the time instruction (``--add_time_instruction``), its
        text (when measuring: with zero times, as many as the options sample; the text's length is then about
        right)."""
        images, video = record.get("image"), record.get("video")
        if video is not None:
            path = self._path(video, self.data_args.video_folder)
            if measure:
                return self._video_shape(), time_instruction(self._timing_estimate()) if self.timed else None
            visual = self.visual.video(path)
            return visual, visual.time_instructions[0] if visual.time_instructions else None
        if images is None:
            return VisualInputs(), None
        paths = [images] if isinstance(images, str) else list(images)
        paths = [self._path(p, self.data_args.image_folder) for p in paths]
        if record.get("positions_thw") is not None:
            if measure:
                geometry = pack_geometry(paths, self.visual.image_processor.patch_size)
                side = geometry.square_size
                return _shaped((3, geometry.num_images, side, side), "codec", (side, side)), None
            return self.visual.codec_pack(paths, record["positions_thw"]), None
        if len(paths) > 1 and len(paths) == self.data_args.images_as_clip:
            if measure:
                width, height = read_image_size(paths[0])
                size = self.visual.image_processor.target_size(height, width)
                return _shaped((3, len(paths), *size), "codec", (width, height)), None
            return self.visual.clip(paths), None
        if measure:
            sizes = [read_image_size(path) for path in paths]
            return VisualInputs.concat(_shaped(self.visual.image_shape(s), "image", s) for s in sizes), None
        return VisualInputs.concat(self.visual.image(path) for path in paths), None

    def _video_shape(self) -> VisualInputs:
        options, processor = self.visual.video_options, self.visual.image_processor
        if options.mode == "codec":
            side = options.codec.square_size
            return _shaped((3, options.codec.keep_frames_equiv, side, side), "codec", (side, side))
        largest = math.isqrt(int(processor.max_pixels))
        return _shaped((3, options.frames_upbound, *processor.target_size(largest, largest)), "video",
                       (largest, largest))

    def _timing_estimate(self) -> VideoTiming:
        options = self.visual.video_options
        frames = options.codec.sequence_length if options.mode == "codec" else options.frames_upbound
        return VideoTiming(np.zeros(frames), 0.0)

    @staticmethod
    def _path(path: str, folder: str | None) -> str:
        return os.path.join(folder, path) if folder and not os.path.isabs(path) else path

    # ------------------------------------------------------------------ for the grouped sampler
    def modality_and_length(self, i: int) -> tuple[str, int]:
        """``(text | image | video, tokens)`` of record ``i`` before it is built: the length the model
        will see (spliced, cut to ``model_max_length``), measured without decoding pixels (:meth:`media`
        with ``measure``), the text tokenised as :meth:`build` tokenises it.

        A record that cannot be measured (a field of the wrong type, a missing file) counts as a short
        text: it is reported bad when read. An over-length record keeps its length: it is skipped then.
        """
        record = self.records[i]
        try:
            input_ids, _, visual = self._tokens(i, measure=True)
        except RECORD_ERRORS:
            return "text", 1
        length = len(input_ids) + self.visual.token_count(visual) - visual.num_placeholders
        limit = self.tokenizer.model_max_length
        if any(m in ("video", "codec") for m in visual.modalities):
            modality = "video"
        elif len(visual) or (record.get("image") is not None):
            modality = "image"
        else:
            modality = "image" if self.data_args.early_mix_text else "text"
        return modality, length if limit is None else min(length, limit)


def _shaped(shape: Sequence[int], modality: str, size: tuple[int, int]) -> VisualInputs:
    """One visual input of ``shape`` that holds no data (a ``meta`` tensor): what a sample's length needs."""
    return VisualInputs([torch.empty(tuple(shape), device="meta")], [modality], [tuple(size)], [None])


class _Measured(Dataset):
    """``dataset.modality_and_length`` of chosen indices, as a dataset the data-loader workers can share."""

    def __init__(self, dataset: SupervisedDataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int) -> tuple[str, int]:
        return self.dataset.modality_and_length(self.indices[j])


def _as_list(batch: list) -> list:
    return batch


def modalities_and_lengths(
    dataset: SupervisedDataset, indices: Sequence[int], workers: int = 0
) -> tuple[list[str], list[int]]:
    """:meth:`SupervisedDataset.modality_and_length` of ``indices`` (in order), measured in ``workers``
    data-loader processes (0: here)."""
    loader = DataLoader(_Measured(dataset, indices), batch_size=256, num_workers=workers, collate_fn=_as_list)
    pairs = [pair for chunk in loader for pair in chunk]
    return [m for m, _ in pairs], [n for _, n in pairs]


@dataclass
class DataCollator:
    """A batch of :class:`Sample` for the model (``llava.batching.collate``: placeholders expanded, padded on
    the right or packed), with the batch's :class:`BatchReport`."""

    pad_token_id: int
    layout: VisualLayout
    image_token_id: int
    max_length: int | None = None
    pack: bool = False
    one_row: bool = False  # flash / varlen attention: every sample of a packed batch in one row

    @classmethod
    def for_model(cls, tokenizer, model, pack: bool = False) -> DataCollator:
        """The collator of ``model`` (its visual layout, image token, maximum length, attention backend)."""
        config = model.config
        if config.image_token_id is None:
            raise ValueError("the model has no image_token_id: call llava.model.folder.ensure_image_token(tokenizer, "
                             "model) first (the trainer's set-up does)")
        return cls(
            tokenizer.pad_token_id, VisualLayout.from_config(config, model.get_vision_tower().config.patch_size),
            config.image_token_id, config.tokenizer_model_max_length, pack,
            one_row=config._attn_implementation in ("flash_attention_2", "varlen"),
        )

    def __call__(self, samples: Sequence[Sample]) -> dict:
        batch = collate(
            [Example(s.input_ids, s.labels, s.visual) for s in samples], self.layout, self.image_token_id,
            self.pad_token_id, self.max_length, pack=self.pack, one_row=self.one_row,
        )
        batch["report"] = BatchReport(
            bad=[bad for s in samples for bad in s.bad],
            over_length=[over for s in samples for over in s.over_length],
            packs=[s.pack for s in samples if s.pack is not None],
        )
        return batch


def make_data_module(tokenizer, model, image_processor, data_args: DataArguments, template: str, pack: bool,
                     seed: int = 0) -> dict:
    """``train_dataset`` and ``data_collator`` for the Trainer."""
    visual = VisualProcessor(image_processor, model.config,
                             video_options(data_args, image_processor.patch_size))
    dataset = SupervisedDataset(data_args.data_path, tokenizer, visual, data_args, template, seed=seed)
    return dict(train_dataset=dataset, data_collator=DataCollator.for_model(tokenizer, model, pack))


__all__ = [
    "MODALITIES",
    "RECORD_ERRORS",
    "BatchReport",
    "DataCollator",
    "OverLength",
    "OverLengthRecord",
    "Sample",
    "SupervisedDataset",
    "add_time_instruction",
    "expand_video_placeholder",
    "make_data_module",
    "modalities_and_lengths",
    "video_options",
]
