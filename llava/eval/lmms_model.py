"""The lmms-eval model ``llava_ov_encoder``: a LLaVA-OV checkpoint scored by stock lmms-eval.

    python -m lmms_eval --model llava_ov_encoder --tasks videomme --batch_size 4 \\
        --model_args pretrained=CKPT,video_mode=codec,codec_offline_root=/data/codec_assets

Registered through the ``lmms_eval.models`` entry point (``llava.eval.lmms_registration``), so no fork
of lmms-eval is needed. Every visual lmms-eval hands over (PIL images, several images, video paths,
lists of frames) goes through the one input layer (``llava.processing.media``) with the checkpoint's image
settings; prompts are rendered by the conversation template and tokenised as training tokenises them.

Videos in ``video_mode=codec`` (the default when the checkpoint saved none) are read from precomputed codec assets when a
``codec_offline_root`` has them (``llava.eval.codec_assets``: upstream's and this project's layouts; each
read at its own canvas, patch grid and mosaic count) and computed online by ``cv_reader`` otherwise (with
``codec_frames`` / ``codec_images`` / ``codec_canvas``); ``video_mode=frames`` samples ``max_frames``
uniform frames.
A visual that cannot be read is reported with its reason, its request answered empty (or scored as
never chosen), and the count of assets / online / failed videos is printed after every request type.

model_args: ``pretrained`` (required), ``model_base`` (LoRA / projector-only checkpoints),
``conv_template`` (default: the checkpoint's), ``device``, ``device_map``, ``torch_dtype``
(``auto`` | ``float32`` | ``bfloat16`` | ``float16``), ``attn_implementation``, ``batch_size``,
``video_mode`` (``codec`` | ``frames``), ``max_frames``, ``codec_frames``, ``codec_images``,
``codec_canvas``, ``time_instruction`` (a video file's time instruction after its placeholders; each not given:
the checkpoint's saved setting, what it was trained with), ``codec_offline_root`` (one or more folders joined
by ``:``).
"""

from __future__ import annotations

import copy
import logging
import os

import torch
from lmms_eval.api.instance import GenerationResult
from lmms_eval.api.model import lmms
from lmms_eval.utils import Collator
from tqdm import tqdm

from ..cli_options import resolve_video_options
from ..constants import DEFAULT_IMAGE_TOKEN
from ..inference.chat import default_conv_template
from ..inference.generation import continuation_logprobs, generate_batch
from ..model.builder import load_pretrained_model, saved_video_settings
from ..processing.conversation import get_conv_template
from ..processing.media import MediaError, VisualInputs, VisualProcessor, is_image_path
from ..processing.prompts import tokenize_prompt
from .codec_assets import CodecAssets, CodecAssetStats

logger = logging.getLogger("llava.eval")

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Docs whose visual inputs are kept for their next request.
RECENT_DOCS = 8
#: generate() arguments lmms-eval's gen_kwargs may carry; ``until`` is applied to the decoded text.
GENERATE_KEYS = ("max_new_tokens", "do_sample", "temperature", "top_p", "num_beams")


class MediaUnavailable(Exception):
    """A request's visual could not be turned into model inputs (the message says which and why)."""


def _flag(value: bool | str | None, name: str) -> bool | None:
    """A boolean model_arg as lmms-eval hands it (a bool, or the text ``true`` / ``false``)."""
    if value is None or isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"llava_ov_encoder: {name} must be true or false, got {value!r}")


class LlavaOVEncoder(lmms):
    is_simple = True

    def __init__(
        self,
        pretrained: str,
        model_base: str | None = None,
        conv_template: str | None = None,
        device: str | None = None,
        device_map: str | None = None,
        torch_dtype: str = "auto",
        attn_implementation: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        video_mode: str | None = None,
        max_frames: int | None = None,
        codec_frames: int | None = None,
        codec_images: int | None = None,
        codec_canvas: int | None = None,
        codec_offline_root: str | None = None,
        time_instruction: bool | str | None = None,
        max_new_tokens: int = 1024,
        **unknown,
    ) -> None:
        super().__init__()
        if unknown:
            raise ValueError(
                f"llava_ov_encoder: unknown model_args {sorted(unknown)}; see llava/eval/lmms_model.py"
            )
        if torch_dtype not in DTYPES:
            raise ValueError(
                f"llava_ov_encoder: torch_dtype must be one of {sorted(DTYPES)}, got {torch_dtype!r}"
            )
        if str(batch_size) == "auto":
            raise ValueError("llava_ov_encoder: batch_size=auto is not supported; give a number")
        self._rank = int(os.environ.get("RANK", 0))
        self._world_size = int(os.environ.get("WORLD_SIZE", 1))
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        if device is None or (self._world_size > 1 and str(device).startswith("cuda")):
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"  # each rank on its device
        self._device = torch.device(device)
        dtype = DTYPES[torch_dtype]
        if dtype == "auto" and self._device.type == "cpu":
            dtype = torch.float32  # bf16 / fp16 checkpoints are slow or unsupported on CPUs
        kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
        self.tokenizer, self.model, image_processor, _ = load_pretrained_model(
            pretrained, model_base, device_map=device_map, torch_dtype=dtype, **kwargs
        )
        if device_map is None:
            self.model.to(self._device)
        self.model.eval()
        self.conv_template = conv_template or default_conv_template(self.model.config)
        get_conv_template(self.conv_template)  # an unknown name fails here, naming the known ones
        # video options not given take the checkpoint's saved ones (what it was trained with)
        video = resolve_video_options(
            saved_video_settings(pretrained), image_processor.patch_size, video_mode,
            *(None if value is None else int(value) for value in (max_frames, codec_frames, codec_images, codec_canvas)),
            _flag(time_instruction, "time_instruction"),
        )
        self.processor = VisualProcessor(image_processor, self.model.config, video)
        self.batch_size_per_gpu = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.assets = CodecAssets(codec_offline_root)
        self.stats = CodecAssetStats()
        self._recent: dict[tuple, VisualInputs | MediaUnavailable] = {}

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    # ------------------------------------------------------------------ inputs
    def _doc_visual(self, doc_to_visual, task: str, split: str, doc_id: int) -> VisualInputs:
        """The visual inputs of a doc, built once for all its requests (a multiple-choice doc sends one
        per option, one after another): the last few docs' inputs are kept."""
        key = (task, split, doc_id)
        if key not in self._recent:
            try:
                self._recent[key] = self._visual(doc_to_visual(self._doc(task, split, doc_id)), task)
            except MediaUnavailable as error:
                self._recent[key] = error  # reported once, not once per option
            while len(self._recent) > RECENT_DOCS:
                self._recent.pop(next(iter(self._recent)))
        if isinstance(self._recent[key], MediaUnavailable):
            raise self._recent[key]
        return self._recent[key]

    def _visual(self, visuals, task: str) -> VisualInputs:
        """A request's visual inputs; videos from assets, online codec or frames (counted)."""
        if visuals is None:
            return VisualInputs()
        if not isinstance(visuals, (list, tuple)):
            visuals = [visuals]
        parts = []
        for visual in visuals:
            is_video = isinstance(visual, (str, os.PathLike)) and not is_image_path(visual)
            try:
                if is_video:
                    parts.append(self._video(str(visual), task))
                else:
                    parts.append(self.processor([visual]))
            except (MediaError, ValueError, OSError) as error:
                name = str(visual) if isinstance(visual, (str, os.PathLike)) else type(visual).__name__
                why = str(error).removeprefix(f"{name}: ")  # media errors already start with the path
                (self.stats.failed if is_video else self.stats.failed_images).append((name, why))
                raise MediaUnavailable(f"{name}: {why}") from error
        return VisualInputs.concat(parts)

    def _video(self, path: str, task: str) -> VisualInputs:
        if self.processor.video_options.mode == "frames":
            inputs = self.processor.video(path)
            self.stats.frames += 1
            return inputs
        asset = self.assets.find(path, task)
        if asset is not None:
            inputs = self.processor.codec_pack(list(asset.mosaics), asset.positions)  # at its own geometry
            self.stats.add_asset(self.processor.codec_geometry(inputs.images[0]))
            return inputs
        inputs = self.processor.video(path)
        self.stats.online += 1
        return inputs

    def _prompt(self, context: str, visual: VisualInputs) -> torch.Tensor:
        """The prompt ids: the context as the user turn (placeholders added first unless it has them)."""
        count = context.count(DEFAULT_IMAGE_TOKEN)
        if count == 0 and len(visual):
            context = visual.prompt_lead() + context
        elif count not in (0, visual.num_placeholders):
            if count != len(visual):
                raise MediaUnavailable(
                    f"the context has {count} {DEFAULT_IMAGE_TOKEN} placeholders but its visuals need "
                    f"{visual.num_placeholders}"
                )
            pieces = context.split(DEFAULT_IMAGE_TOKEN)  # one per visual: a codec video takes N
            context = pieces[0] + "".join(
                "\n".join([DEFAULT_IMAGE_TOKEN] * n) + piece
                for n, piece in zip(visual.placeholder_counts, pieces[1:])
            )
        conv = get_conv_template(self.conv_template)
        conv.append_message(conv.roles[0], context)
        conv.append_message(conv.roles[1], None)
        return tokenize_prompt(conv, self.tokenizer)

    def _doc(self, task: str, split: str, doc_id: int):
        return self.task_dict[task][split][doc_id]

    def _report(self, kind: str) -> None:
        stats = self.stats
        if stats.from_assets or stats.online or stats.frames or stats.failed or stats.failed_images:
            print(f"[llava_ov_encoder] after {kind} (rank {self._rank}): {self.stats.summary()}", flush=True)

    # ------------------------------------------------------------------ requests
    def generate_until(self, requests) -> list[str]:
        results: list[str] = [""] * len(requests)
        # batches of equal gen_kwargs, longest context first (lmms-eval's Collator keeps the input order)
        collator = Collator([(i, r.args) for i, r in enumerate(requests)], lambda x: (-len(x[1][0]), x[0]),
                            group_fn=lambda x: x[1][1], grouping=True)
        progress = tqdm(total=len(requests), disable=self._rank != 0, desc="llava_ov_encoder generate")
        for chunk in collator.get_batched(n=self.batch_size, batch_fn=None):
            prompts, indices = [], []
            gen_kwargs = copy.deepcopy(chunk[0][1][1])
            for index, (context, _, doc_to_visual, doc_id, task, split) in chunk:
                try:
                    visual = self._doc_visual(doc_to_visual, task, split, doc_id)
                    prompts.append((self._prompt(context, visual), visual))
                    indices.append(index)
                except MediaUnavailable as error:
                    logger.error("llava_ov_encoder: %s (doc %s of %s): answered empty", error, doc_id, task)
            if prompts:
                for index, answer in zip(indices, self._generate(prompts, gen_kwargs)):
                    results[index] = answer
            progress.update(len(chunk))
        progress.close()
        self._report("generate_until")
        return results

    def _generate(self, prompts, gen_kwargs: dict) -> list[str]:
        until = gen_kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        kwargs = {k: gen_kwargs[k] for k in GENERATE_KEYS if k in gen_kwargs}
        kwargs.setdefault("max_new_tokens", self.max_new_tokens)
        temperature = float(kwargs.get("temperature", 0) or 0)
        kwargs["do_sample"] = bool(kwargs.get("do_sample", False)) and temperature > 0
        if not kwargs["do_sample"]:
            kwargs.pop("temperature", None)
            kwargs.pop("top_p", None)
        answers = generate_batch(self.model, self.tokenizer, prompts, self.conv_template, **kwargs)
        return [_cut(answer, until) for answer in answers]

    def loglikelihood(self, requests) -> list:
        """``(mean negative log-likelihood per continuation token, is_greedy)`` per request.

        lmms-eval 0.7.3 scores multiple_choice tasks with ``argmin`` over this value (api/task.py): its own
        LLaVA models return the continuation's mean cross-entropy, a loss, not a log-probability, and so
        does this one. A request whose visual cannot be read scores ``inf`` (never chosen) and is reported.
        """
        results: list = [None] * len(requests)
        collator = Collator([(i, r.args) for i, r in enumerate(requests)], lambda x: (-len(x[1][0]), x[0]))
        progress = tqdm(total=len(requests), disable=self._rank != 0, desc="llava_ov_encoder loglikelihood")
        for chunk in collator.get_batched(n=self.batch_size, batch_fn=None):
            batch, indices = [], []
            for index, (context, continuation, doc_to_visual, doc_id, task, split) in chunk:
                if callable(continuation):  # doc_to_target handed over as a function
                    continuation = continuation(self._doc(task, split, doc_id))
                try:
                    visual = self._doc_visual(doc_to_visual, task, split, doc_id)
                    ids = torch.tensor(self.tokenizer(str(continuation), add_special_tokens=False).input_ids)
                    batch.append((self._prompt(context, visual), ids, visual))
                    indices.append(index)
                except MediaUnavailable as error:
                    logger.error("llava_ov_encoder: %s (doc %s of %s): scored as never chosen",
                                 error, doc_id, task)
                    results[index] = (float("inf"), False)
            if batch:
                scored = continuation_logprobs(self.model, self.tokenizer, batch)
                for index, (_, continuation, _), (logprob, greedy) in zip(indices, batch, scored):
                    results[index] = (-logprob / len(continuation), greedy)
            progress.update(len(chunk))
        progress.close()
        self._report("loglikelihood")
        # lmms-eval 0.7.3 turns every response that is not a str / GenerationResult / (str, dict) into its
        # str() (api/instance.py unwrap_generation_output), which breaks multiple_choice scoring of a plain
        # (score, is_greedy) tuple; a GenerationResult's payload is passed through unchanged.
        return [GenerationResult(text=result) for result in results]

    def generate_until_multi_round(self, requests) -> list[list[str]]:
        """Each round asks the context ``doc_to_text`` gives for it (with that round's visuals), as
        lmms-eval's reference LLaVA models do; returns the answers of all rounds of each request. A round
        with the previous round's visuals reuses their inputs (a video is read once per request)."""
        results = []
        for request in tqdm(requests, disable=self._rank != 0, desc="llava_ov_encoder multi-round"):
            context, gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args
            doc = self._doc(task, split, doc_id)
            visuals, answers, info, round_idx = doc_to_visual(doc), [], None, 0
            previous: tuple | None = None  # (visuals, their inputs) of the last round
            while True:
                if round_idx > 0:
                    visuals, context, finished, answers, info = doc_to_text(
                        doc, previous_output=answers, round_idx=round_idx, previous_round_info=info
                    )
                    answers = list(answers)
                    if finished:
                        break
                try:
                    if previous is not None and _same_visuals(visuals, previous[0]):
                        visual = previous[1]
                    else:
                        visual = self._visual(visuals, task)
                        previous = (visuals, visual)
                    prompt = (self._prompt(context, visual), visual)
                    answers.append(self._generate([prompt], copy.deepcopy(gen_kwargs))[0])
                except MediaUnavailable as error:
                    logger.error("llava_ov_encoder: %s (doc %s of %s): round answered empty",
                                 error, doc_id, task)
                    answers.append("")
                round_idx += 1
            results.append(answers)
        self._report("generate_until_multi_round")
        return results


def _same_visuals(a, b) -> bool:
    """The same visual objects, or the same file paths."""
    if a is b:
        return True
    a, b = (list(v) if isinstance(v, (list, tuple)) else [v] for v in (a, b))
    return len(a) == len(b) and all(x is y or (isinstance(x, str) and x == y) for x, y in zip(a, b))


def _cut(text: str, until: list[str]) -> str:
    """``text`` up to the first of the ``until`` strings."""
    for stop in until:
        if stop and stop in text:
            text = text.split(stop, 1)[0]
    return text.strip()


__all__ = ["LlavaOVEncoder", "MediaUnavailable"]
