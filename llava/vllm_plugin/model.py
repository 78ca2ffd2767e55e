"""LLaVA-OV in vLLM: vLLM's Qwen decoder, this project's OV-Encoder tower and projector, the checkpoint's processor.

vLLM finds this class through :func:`llava.vllm_plugin.register` (``architectures`` of ``config.json``). The
three parts vLLM asks of a multimodal model are here:

* :class:`LlavaOVProcessingInfo` / :class:`LlavaOVMultiModalProcessor`: media -> visual inputs with the
  checkpoint's own :class:`~llava.model.processing_llava.LlavaOVProcessor` (image settings, the saved video mode,
  the codec reader on a video file's bytes), and each ``<image>`` / ``<video>`` of the prompt replaced by
  the processor's expansion (its runs of ``<|image_pad|>``, a codec video's runs newline-separated, a saved
  time instruction after a video's tokens). The replacement is made on the prompt's text and the result
  tokenised in one pass, as the processor tokenises an expanded prompt: the token ids equal the project's.
* :class:`LlavaOVDummyInputsBuilder`: the largest inputs, for vLLM's memory profiling.
* :class:`LlavaOVForVLLM`: ``embed_multimodal`` encodes a batch's visual inputs in one packed tower pass with
  the project's code (``LlavaMetaForCausalLM.encode_visual_inputs``); the language model is vLLM's
  ``Qwen2ForCausalLM`` / ``Qwen3ForCausalLM`` (paged attention, continuous batching).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import BatchFeature
from vllm.config import VllmConfig
from vllm.config.multimodal import BaseDummyOptions
from vllm.model_executor.models.interfaces import MultiModalEmbeddings, SupportsMultiModal, SupportsPP
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    WeightsMapper,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems, MultiModalDataParser
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
    PromptUpdateDetails,
)
from vllm.multimodal.processing.processor import find_mm_placeholders
from vllm.sequence import IntermediateTensors

from llava.model.configuration_llava import LlavaQwen3Config
from llava.model.modeling_llava import LlavaMetaForCausalLM
from llava.model.modeling_llava_vision import build_vision_projector, build_vision_tower
from llava.model.processing_llava import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER, LlavaOVProcessor
from llava.model.video_processing_llava import LlavaOVVideoProcessor, VisualEntry

from . import FILE_BYTES, VIDEO_BACKEND

#: vLLM's frame count when a request names none (its ``VideoMediaIO`` default): the dummy video's length.
VLLM_DEFAULT_FRAMES = 32


# ---------------------------------------------------------------------------------------------- processing
class LlavaOVProcessingInfo(BaseProcessingInfo):
    """The checkpoint's processor and how many visual tokens inputs can make."""

    def get_hf_processor(self, **kwargs: object) -> LlavaOVProcessor:
        # the checkpoint's settings; a request's video_mode is read where videos are (video_mode below)
        return self.ctx.get_hf_processor(LlavaOVProcessor)

    def video_mode(self, hf_kwargs: Mapping[str, object]) -> str | None:
        """The ``video_mode`` of ``--mm-processor-kwargs`` / a request's ``mm_processor_kwargs`` (None: the saved)."""
        mode = self.ctx.get_merged_mm_kwargs(hf_kwargs).get("video_mode")
        if mode not in (None, "codec", "frames"):
            raise ValueError(f"video_mode must be 'codec' or 'frames', got {mode!r}")
        return mode

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"image": None, "video": None}

    def get_data_parser(self) -> MultiModalDataParser:
        # keep each video's metadata: it says whether the item is a file's bytes and the request's frame count
        return MultiModalDataParser(video_needs_metadata=True, expected_hidden_size=self._get_expected_hidden_size())

    def largest_image(self) -> tuple[int, int]:
        """``(width, height)`` of a square image at the image processor's largest area."""
        image_processor = self.get_hf_processor().image_processor
        side = math.isqrt(int(image_processor.max_pixels))
        return side, side

    def frame_tokens(self) -> int:
        """Visual tokens of one frame of the largest size."""
        processor = self.get_hf_processor()
        frame = processor.visual_layout.image_shape(self.largest_image(), processor.image_processor)[-2:]
        return processor.visual_layout.tokens((3, 1, *frame), "video")

    def max_video_frames(self, seq_len: int) -> int:
        """The most frames a frames-mode video can have: the encoder's temporal grid (else vLLM's default count
        or the checkpoint's, whichever is more), as many as ``seq_len`` holds."""
        video = self.get_hf_processor().video_processor
        frames = video.rope_temporal_size or max(VLLM_DEFAULT_FRAMES, video.frames_upbound)
        return max(1, min(frames, seq_len // self.frame_tokens()))

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int]) -> Mapping[str, int]:
        processor = self.get_hf_processor()
        layout = processor.visual_layout
        image_shape = layout.image_shape(self.largest_image(), processor.image_processor)
        video_tokens = layout.tokens((3, self.max_video_frames(seq_len), *image_shape[-2:]), "video")
        codec = codec_geometry(processor.video_processor)
        if codec is not None:
            mosaics, side = codec
            video_tokens = max(video_tokens, layout.tokens((3, mosaics, side, side), "codec"))
        largest = {"image": layout.tokens(image_shape, "image", self.largest_image()), "video": video_tokens}
        return {modality: min(tokens, seq_len) for modality, tokens in largest.items()}


def codec_geometry(video_processor: LlavaOVVideoProcessor) -> tuple[int, int] | None:
    """``(mosaics, side)`` of the codec inputs of a codec-mode checkpoint (None where the codec reader is absent)."""
    try:
        import cv_reader
    except ImportError:
        return None
    params = cv_reader.LLAVA_CODEC.replace(**video_processor.codec) if video_processor.codec else cv_reader.LLAVA_CODEC
    return int(params.keep_frames_equiv), int(params.square_size)


class LlavaOVDummyInputsBuilder(BaseDummyInputsBuilder[LlavaOVProcessingInfo]):
    """The largest image and the longest frames video, for vLLM's profiling run."""

    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return IMAGE_PLACEHOLDER * mm_counts.get("image", 0) + VIDEO_PLACEHOLDER * mm_counts.get("video", 0)

    def get_dummy_mm_data(self, seq_len: int, mm_counts: Mapping[str, int],
                          mm_options: Mapping[str, BaseDummyOptions] | None = None):
        width, height = self.info.largest_image()
        options = mm_options or {}
        videos = self._get_dummy_videos(width=width, height=height, num_frames=self.info.max_video_frames(seq_len),
                                        num_videos=mm_counts.get("video", 0), overrides=options.get("video"))
        return {
            "image": self._get_dummy_images(width=width, height=height, num_images=mm_counts.get("image", 0),
                                            overrides=options.get("image")),
            "video": [(frames, {}) for frames in videos],
        }


class LlavaOVMultiModalProcessor(BaseMultiModalProcessor[LlavaOVProcessingInfo]):
    """Media -> the processor's visual inputs; ``<image>`` / ``<video>`` -> the processor's expansion."""

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        processor = self.info.get_hf_processor()
        mode = self.info.video_mode(hf_kwargs)
        data: dict[str, Any] = {}
        images = [processor.image_entry(image) for image in hf_data.get("images", [])]
        if images:
            data.update(pixel_values=[e.pixels for e in images], image_sizes=torch.tensor([e.size for e in images]))
        videos = [video_entry(processor, video, mode) for video in hf_data.get("videos", [])]
        if videos:
            data.update(
                pixel_values_videos=[e.pixels for e in videos],
                video_sizes=torch.tensor([e.size for e in videos]),
                video_positions=[e.positions if e.positions is not None else torch.zeros(0, 3, dtype=torch.long)
                                 for e in videos],
                video_is_codec=torch.tensor([e.modality == "codec" for e in videos]),
                video_instruction=[torch.tensor(list((e.instruction or "").encode()), dtype=torch.uint8)
                                   for e in videos],
            )
        return BatchFeature(data)

    def _get_mm_fields_config(self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]):
        return dict(
            pixel_values=MultiModalFieldConfig.batched("image"),
            image_sizes=MultiModalFieldConfig.batched("image", keep_on_cpu=True),
            pixel_values_videos=MultiModalFieldConfig.batched("video"),
            video_sizes=MultiModalFieldConfig.batched("video", keep_on_cpu=True),
            video_positions=MultiModalFieldConfig.batched("video"),
            video_is_codec=MultiModalFieldConfig.batched("video", keep_on_cpu=True),
            video_instruction=MultiModalFieldConfig.batched("video", keep_on_cpu=True),
        )

    def _get_prompt_updates(self, mm_items: MultiModalDataItems, hf_processor_mm_kwargs: Mapping[str, object],
                            out_mm_kwargs: MultiModalKwargsItems) -> Sequence[PromptUpdate]:
        processor = self.info.get_hf_processor()
        tokenizer = self.info.get_tokenizer()
        pad = processor.image_token_id

        def replacement(item_idx: int, modality: str) -> PromptUpdateDetails:
            entry = entry_of(out_mm_kwargs[modality][item_idx], modality)
            ids = tokenizer.encode(processor.placeholder_text(entry), add_special_tokens=False)
            return PromptUpdateDetails.select_token_id(ids, pad)

        def target(placeholder: str) -> list[int]:
            return tokenizer.encode(placeholder, add_special_tokens=False)

        return [
            PromptReplacement(modality="image", target=target(IMAGE_PLACEHOLDER),
                              replacement=lambda i: replacement(i, "image")),
            PromptReplacement(modality="video", target=target(VIDEO_PLACEHOLDER),
                              replacement=lambda i: replacement(i, "video")),
        ]

    def _apply_prompt_updates(self, token_ids: list[int], mm_prompt_updates):
        # Always on the text, then one tokenisation of the whole prompt, as the processor tokenises an
        # expanded prompt (vLLM's token-level splice would keep the tokens around a placeholder as they were
        # tokenised beside it, which can differ).
        new_ids, result = self._apply_prompt_updates_via_text(token_ids, mm_prompt_updates)
        updates = self._matched_updates_from_result(mm_prompt_updates, result)
        return new_ids, self._find_mm_placeholders(new_ids, updates)

    def _find_mm_placeholders(self, new_token_ids: list[int], mm_prompt_updates):
        # An item's placeholder is its visual tokens (from its first image token to its last): a time instruction
        # after them is text, and tokenised with the text that follows it.
        pad = self.info.get_hf_processor().image_token_id
        visual = {
            modality: [[update.with_content(visual_part(update.content, pad)) for update in item] for item in items]
            for modality, items in mm_prompt_updates.items()
        }
        return find_mm_placeholders(new_token_ids, visual)


def visual_part(content: PromptUpdateDetails, pad: int) -> PromptUpdateDetails:
    """``content`` up to its last image token."""
    last = max(i for i, token in enumerate(content.full) if token == pad)
    return PromptUpdateDetails.select_token_id(content.full[: last + 1], pad)


def video_entry(processor: LlavaOVProcessor, video: Any, mode: str | None = None) -> VisualEntry:
    """One video item of vLLM's: ``(a file's bytes, metadata)`` from the ``llava_ov`` loader (read in ``mode``,
    default the checkpoint's; frames mode at the request's frame count), or ``(frames, metadata)``."""
    frames, metadata = video if isinstance(video, tuple) else (video, {})
    metadata = metadata or {}
    settings = processor.video_processor.to_dict()
    settings["mode"] = mode or settings["mode"]
    if not metadata.get(FILE_BYTES):
        if settings["mode"] == "codec" and metadata.get("video_backend"):  # decoded by another vLLM loader
            loader = json.dumps({"video": {"video_backend": VIDEO_BACKEND}})
            raise ValueError(
                f"a codec-mode video needs the file's bytes, but vLLM decoded it with its "
                f"{metadata['video_backend']!r} loader: use the plugin's (--media-io-kwargs '{loader}', or re-save "
                "the checkpoint with python -m llava.model.resave), or read videos as frames (video_mode 'frames')"
            )
        return processor.video_processor.frames_entry(list(np.asarray(frames)))
    if settings["mode"] == "frames":
        if metadata.get("num_frames", -1) > 0:
            settings["frames_upbound"] = int(metadata["num_frames"])
        if metadata.get("fps", -1) > 0:
            settings["fps"] = float(metadata["fps"])
    reader = LlavaOVVideoProcessor(processor.image_processor, **settings)
    with tempfile.TemporaryDirectory(prefix="llava-ov-video-") as scratch:
        path = os.path.join(scratch, "video")
        with open(path, "wb") as file:
            file.write(np.asarray(frames, dtype=np.uint8).tobytes())
        return reader(path)


def entry_of(item, modality: str) -> VisualEntry:
    """The :class:`VisualEntry` (shapes, positions, time instruction) of one processed item."""
    if modality == "image":
        width, height = item["image_sizes"].data.tolist()
        return VisualEntry(item["pixel_values"].data, "image", (width, height))
    width, height = item["video_sizes"].data.tolist()
    codec = bool(item["video_is_codec"].data)
    instruction = bytes(item["video_instruction"].data.tolist()).decode() or None
    positions = item["video_positions"].data if codec else None
    return VisualEntry(item["pixel_values_videos"].data, "codec" if codec else "video", (width, height),
                       positions, instruction)


# ---------------------------------------------------------------------------------------------- model
class LlavaOVVisual(nn.Module, LlavaMetaForCausalLM):
    """The checkpoint's vision side (``vision_tower``, ``mm_projector``, ``image_newline``) with the project's
    encoding code: the same features as the project's model for the same inputs."""

    def __init__(self, config):
        nn.Module.__init__(self)
        self.config = config
        self.vision_tower = build_vision_tower(config, delay_load=True)
        self.mm_projector = build_vision_projector(config)
        if "unpad" in config.mm_patch_merge_type:
            self.image_newline = nn.Parameter(torch.zeros(config.hidden_size))

    def get_model(self) -> LlavaOVVisual:
        return self

    def get_vision_tower(self):
        return self.vision_tower


@MULTIMODAL_REGISTRY.register_processor(
    LlavaOVMultiModalProcessor, info=LlavaOVProcessingInfo, dummy_inputs=LlavaOVDummyInputsBuilder
)
class LlavaOVForVLLM(nn.Module, SupportsMultiModal, SupportsPP):
    """A LLaVA-OV checkpoint (``llava_qwen`` / ``llava_qwen3``) in vLLM."""

    # checkpoint keys -> this module's (the decoder's keys are LLaVA-NeXT's ``model.*`` / ``lm_head.*``)
    hf_to_vllm_mapper = WeightsMapper(orig_to_new_prefix={
        "model.vision_tower.": "visual.vision_tower.",
        "model.mm_projector.": "visual.mm_projector.",
        "model.image_newline": "visual.image_newline",
        "model.": "language_model.model.",
        "lm_head.": "language_model.lm_head.",
    })

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("image"):
            return IMAGE_PLACEHOLDER
        if modality.startswith("video"):
            return VIDEO_PLACEHOLDER
        raise ValueError(f"LLaVA-OV takes images and videos, not {modality!r}")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        with self._mark_tower_model(vllm_config, {"image", "video"}):
            self.visual = LlavaOVVisual(config)
        architecture = "Qwen3ForCausalLM" if isinstance(config, LlavaQwen3Config) else "Qwen2ForCausalLM"
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config, hf_config=config, prefix=maybe_prefix(prefix, "language_model"),
                architectures=[architecture],
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        """One ``[tokens, hidden]`` tensor per image / video, in the order the kwargs hold them."""
        images, modalities, sizes, positions = [], [], [], []
        for key in kwargs:
            if key == "pixel_values":
                for pixels, size in zip(kwargs["pixel_values"], kwargs["image_sizes"]):
                    images.append(pixels)
                    modalities.append("image")
                    sizes.append(tuple(int(v) for v in size))
                    positions.append(None)
            elif key == "pixel_values_videos":
                for pixels, size, codec, where in zip(kwargs["pixel_values_videos"], kwargs["video_sizes"],
                                                      kwargs["video_is_codec"], kwargs["video_positions"]):
                    images.append(pixels)
                    modalities.append("codec" if bool(codec) else "video")
                    sizes.append(tuple(int(v) for v in size))
                    positions.append(where if bool(codec) else None)
        if not images:
            return []
        return tuple(self.visual.encode_visual_inputs(images, modalities, sizes, positions))

    def forward(self, input_ids: torch.Tensor | None, positions: torch.Tensor,
                intermediate_tensors: IntermediateTensors | None = None, inputs_embeds: torch.Tensor | None = None,
                **kwargs: object) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return AutoWeightsLoader(self).load_weights(weights, mapper=self.hf_to_vllm_mapper)


__all__ = ["LlavaOVForVLLM", "LlavaOVMultiModalProcessor", "LlavaOVProcessingInfo"]
