"""LLaVA-NeXT's input helpers: image-token tokenisation (``llava.processing.prompts``), pad / anyres / native
preprocessing (``llava.model.image_processing_llava``), stopping criteria (``llava.inference.generation``) and
model names (``llava.model.builder``)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from llava.constants import IMAGE_TOKEN_INDEX
from llava.inference.generation import KeywordsStoppingCriteria
from llava.model import OneVisionEncoderImageProcessor
from llava.model.builder import get_model_name_from_path
from llava.model.image_processing_llava import (
    divide_to_patches,
    expand2square,
    get_anyres_image_grid_shape,
    parse_anyres_max,
    parse_grid_pinpoints,
    process_anyres_image,
    process_images,
    resize_and_pad_image,
    select_best_resolution,
    unpad_image,
)
from llava.processing.prompts import tokenizer_image_token
from llava.synthetic.tokenizer import build_tiny_qwen_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_qwen_tokenizer()


def bos_tokenizer() -> PreTrainedTokenizerFast:
    """A Llama-like tokenizer that prepends <s> to every encoding."""
    vocab = {"<s>": 0, "</s>": 1, "<unk>": 2, "hello": 3, "world": 4, "image": 5}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


# ----------------------------------------------------------- tokenizer_image_token
def test_image_placeholders_become_the_image_index(tokenizer):
    prompt = "<|im_start|>user\n<image>\nWhat is in <image> here?<|im_end|>"
    ids = tokenizer_image_token(prompt, tokenizer)
    pieces = prompt.split("<image>")
    expected = (
        tokenizer(pieces[0]).input_ids
        + [IMAGE_TOKEN_INDEX]
        + tokenizer(pieces[1]).input_ids
        + [IMAGE_TOKEN_INDEX]
        + tokenizer(pieces[2]).input_ids
    )
    assert ids == expected
    assert ids.count(IMAGE_TOKEN_INDEX) == 2
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")  # no BOS for Qwen


def test_prompt_edges_and_tensor_output(tokenizer):
    assert tokenizer_image_token("<image>", tokenizer) == [IMAGE_TOKEN_INDEX]
    assert tokenizer_image_token("<image><image>", tokenizer, image_token_index=-7) == [-7, -7]
    assert tokenizer_image_token("no image", tokenizer) == tokenizer("no image").input_ids
    tensor = tokenizer_image_token("<image>\nhi", tokenizer, return_tensors="pt")
    assert tensor.dtype == torch.long and tensor.ndim == 1 and tensor[0].item() == IMAGE_TOKEN_INDEX
    with pytest.raises(ValueError, match="np"):
        tokenizer_image_token("x", tokenizer, return_tensors="np")


def test_bos_is_added_once_for_tokenizers_that_add_it():
    tok = bos_tokenizer()
    assert tok("hello").input_ids == [0, 3]
    assert tokenizer_image_token("hello <image> world <image>", tok) == [
        0,
        3,
        IMAGE_TOKEN_INDEX,
        4,
        IMAGE_TOKEN_INDEX,
    ]
    assert tokenizer_image_token("<image> world", tok) == [0, IMAGE_TOKEN_INDEX, 4]


# ----------------------------------------------------------- expand2square
def test_expand2square_centres_content_on_background():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    square = expand2square(image, (1, 2, 3))
    pixels = np.asarray(square)
    assert square.size == (40, 40)
    assert (pixels[10:30] == (255, 0, 0)).all()
    assert (pixels[:10] == (1, 2, 3)).all() and (pixels[30:] == (1, 2, 3)).all()
    tall = expand2square(Image.new("RGB", (10, 30), (9, 9, 9)), (0, 0, 0))
    assert tall.size == (30, 30) and (np.asarray(tall)[:, 10:20] == 9).all()
    same = Image.new("RGB", (8, 8))
    assert expand2square(same, (0, 0, 0)) is same


# ----------------------------------------------------------- anyres geometry
def test_select_best_resolution_prefers_kept_pixels_then_less_waste():
    candidates = [(448, 448), (896, 448), (448, 896), (896, 896)]
    assert select_best_resolution((800, 600), candidates) == (896, 896)
    assert select_best_resolution((100, 100), candidates) == (448, 448)  # all keep everything: least waste
    assert select_best_resolution((1200, 500), candidates) == (896, 448)  # (width, height) convention
    with pytest.raises(ValueError, match="original_size"):
        select_best_resolution((0, 10), candidates)


def test_grid_pinpoints_formats():
    expected = [(28, 28), (28, 56), (56, 28), (56, 56)]
    assert parse_grid_pinpoints("(1x1),...,(2x2)", 28) == expected
    assert parse_grid_pinpoints([[28, 28], [28, 56], [56, 28], [56, 56]], 999) == expected
    assert parse_grid_pinpoints("[[28, 28], [28, 56], [56, 28], [56, 56]]", 999) == expected
    assert len(parse_grid_pinpoints("(1x1),...,(6x6)", 448)) == 36
    for bad in ("nonsense", [[28]], [[28, -1]], []):
        with pytest.raises(ValueError, match="image_grid_pinpoints"):
            parse_grid_pinpoints(bad, 28)


def test_anyres_max_names():
    assert parse_anyres_max("anyres_max_9") == 9
    assert parse_anyres_max("anyres") is None and parse_anyres_max(None) is None


def test_anyres_grid_shape_is_width_then_height():
    assert get_anyres_image_grid_shape((1000, 400), "(1x1),...,(3x3)", 448) == (3, 1)
    assert get_anyres_image_grid_shape((400, 1000), "(1x1),...,(3x3)", 448) == (1, 3)


def test_resize_and_pad_then_divide():
    image = Image.new("RGB", (60, 30), (200, 100, 50))
    padded = resize_and_pad_image(image, (56, 56))
    pixels = np.asarray(padded)
    assert padded.size == (56, 56)
    assert (pixels[:14] == 0).all() and (pixels[42:] == 0).all() and (pixels[14:42] == (200, 100, 50)).all()
    tiles = divide_to_patches(
        Image.fromarray(np.arange(56 * 28 * 3, dtype=np.uint32).reshape(28, 56, 3).astype(np.uint8)), 28
    )
    assert [t.size for t in tiles] == [(28, 28), (28, 28)]
    tall = divide_to_patches(Image.new("RGB", (28, 56)), 28)
    assert len(tall) == 2


def test_unpad_image_removes_the_padding_resize_and_pad_added():
    image = Image.new("RGB", (60, 30), (255, 255, 255))
    padded = torch.from_numpy(np.asarray(resize_and_pad_image(image, (56, 56))).copy()).permute(2, 0, 1)
    unpadded = unpad_image(padded, (60, 30))
    assert unpadded.shape == (3, 28, 56) and bool((unpadded == 255).all())
    tall = torch.zeros(5, 4, 4)
    assert unpad_image(tall, (50, 100)).shape == (5, 4, 2)  # (width, height): padded left/right
    assert unpad_image(tall, (40, 40)).shape == (5, 4, 4)


# ----------------------------------------------------------- process_anyres_image / process_images
def small_processor(**kwargs) -> OneVisionEncoderImageProcessor:
    return OneVisionEncoderImageProcessor(patch_size=14, **kwargs)


def test_process_anyres_image_is_base_view_then_raster_tiles():
    processor = small_processor()
    image = rgb(60, 30)
    out = process_anyres_image(image, processor, "(1x1),...,(2x2)", 28)
    assert out.shape == (3, 3, 28, 28)  # base + 2x1 tiles
    fixed = {"size": {"height": 28, "width": 28}}
    base = processor(images=[image.resize((28, 28), Image.BICUBIC)], return_tensors="pt", **fixed)[
        "pixel_values"
    ]
    tiles = divide_to_patches(resize_and_pad_image(image, (56, 28)), 28)
    tiles = processor(images=tiles, return_tensors="pt", **fixed)["pixel_values"]
    torch.testing.assert_close(out, torch.cat([base, tiles]))
    with pytest.raises(ValueError, match="multiples of the tile size"):
        process_anyres_image(image, processor, [[30, 30]], 28)


def test_process_images_pad_uses_mean_colour_and_square_output():
    processor = small_processor(size={"height": 28, "width": 28})
    out = process_images(
        [Image.new("RGB", (40, 20), (255, 0, 0))], processor, SimpleNamespace(image_aspect_ratio="pad")
    )
    assert out.shape == (1, 3, 28, 28)
    corner = out[0, :, 0, 0]  # padding: the processor's mean colour normalises to ~0
    assert corner.abs().max() < 0.02
    assert out[0, 0, 14, 14] > 1.5  # red content survives in the middle


def test_process_images_native_passes_through_the_processor():
    processor = small_processor()
    images = [rgb(56, 28, 1), rgb(42, 70, 2)]
    for aspect in (None, "native", "square"):
        out = process_images(images, processor, SimpleNamespace(image_aspect_ratio=aspect))
        assert isinstance(out, list) and [tuple(x.shape) for x in out] == [(3, 28, 56), (3, 70, 42)]
    same = process_images([rgb(28, 28, 1), rgb(28, 28, 2)], processor, SimpleNamespace())
    assert same.shape == (2, 3, 28, 28)
    torch.testing.assert_close(
        same, processor(images=[rgb(28, 28, 1), rgb(28, 28, 2)], return_tensors="pt")["pixel_values"]
    )


def test_process_images_anyres_tile_size_sources():
    cfg = SimpleNamespace(image_aspect_ratio="anyres_max_4", image_grid_pinpoints="(1x1),...,(2x2)")
    fixed = process_images([rgb(60, 30)], small_processor(size={"height": 28, "width": 28}), cfg)
    assert fixed.shape == (1, 3, 3, 28, 28)
    cfg.image_tile_size = 42
    from_cfg = process_images([rgb(60, 30), rgb(30, 60)], small_processor(), cfg)
    assert from_cfg.shape == (2, 3, 3, 42, 42)
    ragged = process_images([rgb(60, 30), rgb(40, 40)], small_processor(), cfg)
    assert isinstance(ragged, list) and [x.shape[0] for x in ragged] == [3, 2]
    default = process_images(
        [rgb(20, 20)],
        small_processor(),
        SimpleNamespace(image_aspect_ratio="anyres", image_grid_pinpoints=[[448, 448]]),
    )
    assert default.shape == (1, 2, 3, 448, 448)


def test_process_images_errors():
    processor = small_processor()
    with pytest.raises(ValueError, match="image_grid_pinpoints"):
        process_images([rgb(28, 28)], processor, SimpleNamespace(image_aspect_ratio="anyres"))
    with pytest.raises(ValueError, match="empty"):
        process_images([], processor, SimpleNamespace())
    with pytest.raises(ValueError, match=r"images\[1\]"):
        process_images([rgb(28, 28), "not an image"], processor, SimpleNamespace())


# ----------------------------------------------------------- misc
@pytest.mark.parametrize(
    "path, name",
    [
        ("/ckpts/llava-ov-encoder-qwen2-7b", "llava-ov-encoder-qwen2-7b"),
        ("/ckpts/llava-ov-encoder-qwen2-7b/", "llava-ov-encoder-qwen2-7b"),
        ("runs/sft/checkpoint-500", "sft_checkpoint-500"),
        ("checkpoint-7", "checkpoint-7"),
        ("lmms-lab/llava-onevision-qwen2-0.5b-ov", "llava-onevision-qwen2-0.5b-ov"),
    ],
)
def test_get_model_name_from_path(path, name):
    assert get_model_name_from_path(path) == name


def test_keywords_stopping_criteria_per_row(tokenizer):
    prompt = torch.tensor([tokenizer("<|im_start|>user\nsay ### now<|im_end|>\n").input_ids] * 2)
    criteria = KeywordsStoppingCriteria(["<|im_end|>", "###"], tokenizer, prompt)
    assert criteria(prompt, None).tolist() == [False, False]  # keywords in the prompt do not count
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    text = tokenizer("Hello there", add_special_tokens=False).input_ids
    rows = torch.tensor([text + [im_end], text + text[:1]])
    assert criteria(torch.cat([prompt, rows], dim=1), None).tolist() == [True, False]
    inside = tokenizer(
        "and ### end", add_special_tokens=False
    ).input_ids  # keyword in the tail, not at the end
    plain = tokenizer("and so on end", add_special_tokens=False).input_ids
    width, filler = max(len(inside), len(plain)), tokenizer.convert_tokens_to_ids("a")
    rows = torch.tensor([[filler] * (width - len(row)) + row for row in (inside, plain)])
    assert criteria(torch.cat([prompt, rows], dim=1), None).tolist() == [True, False]
    embeds_mode = KeywordsStoppingCriteria("<|im_end|>", tokenizer, None)
    assert embeds_mode(torch.tensor([text + [im_end]]), None).tolist() == [True]
    with pytest.raises(ValueError, match="keywords"):
        KeywordsStoppingCriteria([""], tokenizer, None)


def test_keywords_stopping_criteria_stops_generate(tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config).eval()
    prompt = torch.tensor([tokenizer("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n").input_ids])
    kwargs = {
        "do_sample": False,
        "max_new_tokens": 12,
        "min_new_tokens": 12,
        "pad_token_id": tokenizer.pad_token_id,
    }
    free = model.generate(prompt, **kwargs)[0, prompt.shape[1] :]
    keyword = tokenizer.decode(free[5:6])
    stopped = model.generate(
        prompt,
        stopping_criteria=[KeywordsStoppingCriteria([keyword], tokenizer, prompt)],
        **{**kwargs, "min_new_tokens": 0},
    )
    new = stopped[0, prompt.shape[1] :]
    assert 1 <= len(new) <= 6 and torch.equal(new, free[: len(new)])
    assert keyword in tokenizer.decode(new) and keyword not in tokenizer.decode(new[:-1])
