"""The LLaVA-OV model: splicing, losses, batching, checkpoints (full / LoRA / projector-only), generate."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from llava.batching import Example, collate
from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.builder import load_pretrained_model
from llava.model.processing_llava import VisualLayout
from llava.model.tiny import TINY_ENCODER, build_tiny_model, save_tiny_checkpoint
from llava.model.weights import load_projector_weights
from llava.processing.conversation import get_conv_template
from llava.processing.media import VisualInputs
from llava.processing.prompts import tokenize_conversation

PATCH = TINY_ENCODER["patch_size"]


def codec_positions(mosaics: int, grid: int, seed: int) -> torch.Tensor:
    """Sorted positions_thw rows for ``mosaics`` full mosaics of ``grid x grid`` patches."""
    generator = torch.Generator().manual_seed(seed)
    count = mosaics * grid * grid
    t = torch.randint(0, 64, (count,), generator=generator).sort().values
    h = torch.arange(count) // grid % grid
    w = torch.arange(count) % grid
    return torch.stack([t, h, w], dim=-1)


def visual(kind: str, seed: int = 0):
    """(entry, modality, positions, expected token count) for one visual input."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "image":
        return torch.randn(3, 2 * PATCH, 3 * PATCH, generator=generator), "image", None, 6
    if kind == "video":  # [C, T, H, W]: 4 frames of 1 x 2 patches
        return torch.randn(3, 4, PATCH, 2 * PATCH, generator=generator), "video", None, 8
    if kind == "codec":  # [C, N, S, S]: 2 mosaics of 2 x 2 patches
        positions = codec_positions(2, 2, seed)
        return torch.randn(3, 2, 2 * PATCH, 2 * PATCH, generator=generator), "codec", positions, 8
    raise ValueError(kind)


def prompt_ids(tokenizer, text: str) -> torch.Tensor:
    from llava.processing.prompts import tokenizer_image_token

    return torch.tensor(tokenizer_image_token(text, tokenizer), dtype=torch.long)


@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def tiny(request):
    tokenizer, model, processor = build_tiny_model(request.param, seed=1)
    return tokenizer, model


def sample_visual(kinds) -> VisualInputs:
    """The visual inputs of one sample: ``(kind, seed)`` pairs."""
    out = VisualInputs()
    for kind, seed in kinds:
        entry, modality, pos, _ = visual(kind, seed)
        out = out + VisualInputs([entry], [modality], [(entry.shape[-1], entry.shape[-2])], [pos])
    return out


def batch_for(model, ids_list, kinds_per_sample, labels_list=None, pad_id=0, pack=False, side="right"):
    """The model's inputs for a batch of prompts with ``-200`` placeholders (``llava.batching.collate``); labels
    default to the ids (every text token supervised)."""
    examples = [
        Example(ids, labels_list[i] if labels_list is not None else ids.clamp(min=0), sample_visual(kinds))
        for i, (ids, kinds) in enumerate(zip(ids_list, kinds_per_sample))
    ]
    layout = VisualLayout.from_config(model.config, PATCH)
    return collate(examples, layout, model.config.image_token_id, pad_id, model.config.tokenizer_model_max_length,
                   side=side, pack=pack)


def run(model, ids_list, kinds_per_sample, labels_list=None, pad_id=0):
    """Right-pad a batch of id tensors and run the model with the visual inputs of each sample."""
    return model(**batch_for(model, ids_list, kinds_per_sample, labels_list, pad_id))


# --- losses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, kinds",
    [
        ("a caption without pictures", []),
        ("<image>\nwhat is this?", [("image", 0)]),
        ("<image> and <image>: compare", [("image", 0), ("image", 1)]),
        ("<image>\nwhat happens in the video?", [("video", 0)]),
        ("<image>\n<image>\nwhere does it move?", [("codec", 0)]),  # one placeholder per mosaic
    ],
)
def test_loss_on_every_sample_kind(tiny, text, kinds):
    tokenizer, model = tiny
    out = run(model, [prompt_ids(tokenizer, text)], [kinds])
    assert torch.isfinite(out.loss)
    model.zero_grad()
    out.loss.backward()
    grads = [p.grad for p in model.get_model().mm_projector.parameters()]
    if kinds:
        assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_loss_on_a_mixed_batch(tiny):
    tokenizer, model = tiny
    texts = ["just text", "<image>\nimage", "<image>\nvideo", "<image>\n<image>\ncodec", "<image><image><image> two"]
    kinds = [[], [("image", 0)], [("video", 1)], [("codec", 2)], [("image", 3), ("codec", 4)]]
    out = run(model, [prompt_ids(tokenizer, t) for t in texts], kinds)
    assert torch.isfinite(out.loss) and out.logits.shape[0] == 5


# --- labels -----------------------------------------------------------------------


@pytest.mark.parametrize("template", ["qwen_1_5", "qwen3"])
def test_labels_cover_exactly_the_replies(tiny, template):
    tokenizer, _ = tiny
    conversations = [
        {"from": "human", "value": "<image>\nWhat is shown?"},
        {"from": "gpt", "value": "A red ball."},
        {"from": "human", "value": "Where is it going?"},
        {"from": "gpt", "value": "To the left."},
    ]
    input_ids, labels = tokenize_conversation(conversations, tokenizer, template)
    assert input_ids.shape == labels.shape
    assert (input_ids == IMAGE_TOKEN_INDEX).sum() == 1
    assert labels[input_ids == IMAGE_TOKEN_INDEX].eq(IGNORE_INDEX).all()

    # The ids render exactly the template's prompt.
    conv = get_conv_template(template)
    for turn in conversations:
        conv.append_message(conv.roles[0] if turn["from"] == "human" else conv.roles[1], turn["value"])
    rendered = tokenizer.decode(input_ids.clamp(min=0).masked_fill(input_ids < 0, tokenizer.pad_token_id))
    expected = conv.get_prompt().replace("<image>", tokenizer.pad_token)
    assert rendered == expected

    # Supervised spans are the replies, each closed by <|im_end|>; nothing else.
    supervised = labels != IGNORE_INDEX
    spans, current = [], []
    for token, keep in zip(input_ids.tolist(), supervised.tolist()):
        if keep:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    # (qwen3: the empty thought block is context, the same text the generation prompt gives)
    assert spans == ["A red ball.<|im_end|>", "To the left.<|im_end|>"]
    system = conv.system
    if system:
        assert system not in "".join(spans)


def test_plain_template_supervises_the_caption(tiny):
    tokenizer, _ = tiny
    ids, labels = tokenize_conversation(
        [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a cat on a mat"}], tokenizer, "plain"
    )
    assert ids[0] == IMAGE_TOKEN_INDEX and labels[0] == IGNORE_INDEX
    assert tokenizer.decode(labels[labels != IGNORE_INDEX]) == "a cat on a mat\n"


def test_bad_conversation_is_named(tiny):
    tokenizer, _ = tiny
    with pytest.raises(ValueError, match="record-7: turn 0"):
        tokenize_conversation([{"from": "robot", "value": "hi"}], tokenizer, where="record-7")


# --- visual tokens in the prompt -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["image", "video", "codec"])
def test_spliced_token_count_equals_encoder_output(tiny, kind):
    """Each placeholder gets its tokens: the whole input, or (codec) one mosaic's patches each."""
    from llava.model.modeling_llava import placeholder_count

    tokenizer, model = tiny
    entry, modality, positions, expected = visual(kind)
    count = placeholder_count(entry, modality)
    ids = prompt_ids(tokenizer, "look " + " and ".join(["<image>"] * count) + " here")
    batch = batch_for(model, [ids], [[(kind, 0)]])
    embeds, labels = model.scatter_visual_tokens(batch["input_ids"], [entry], [modality], None, [positions]), \
        batch["labels"]
    assert embeds.shape[1] == len(ids) - count + expected
    assert (labels == IGNORE_INDEX).sum() == expected
    features = model.encode_visual_inputs([entry], [modality], None, [positions])[0]
    per_placeholder = expected // count
    slots = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
    for j, slot in enumerate(slots):  # placeholder j sits after j earlier placeholders' tokens
        start = slot + j * (per_placeholder - 1)
        torch.testing.assert_close(embeds[0, start : start + per_placeholder],
                                   features[j * per_placeholder : (j + 1) * per_placeholder])


def test_spatial_merge_projector_and_video_pooling_shrink_tokens():
    tokenizer, model, _ = build_tiny_model(
        "qwen2", mm_projector_type="spatial_merge", mm_spatial_pool_stride=None
    )
    entry, modality, positions, _ = visual("image")  # 2 x 3 patches -> 1 x 2 merged groups
    assert model.encode_visual_inputs([entry], [modality])[0].shape[0] == 2
    entry, modality, positions, _ = visual("codec")  # 2 mosaics of 2 x 2 -> one group per (t, 0, 0)
    merged = model.encode_visual_inputs([entry], [modality], None, [positions])[0]
    assert merged.shape[0] == positions[:, 0].unique().numel()

    _, pooled_model, _ = build_tiny_model("qwen2", mm_spatial_pool_stride=2, mm_spatial_pool_mode="average")
    video = torch.randn(3, 3, 2 * PATCH, 4 * PATCH)  # [C, T, H, W]: 3 frames of 2 x 4 patches -> 1 x 2 pooled
    assert pooled_model.encode_visual_inputs([video], ["video"])[0].shape[0] == 3 * 2


def test_anyres_spatial_unpad_adds_row_newlines():
    _, model, _ = build_tiny_model(
        "qwen2", image_aspect_ratio="anyres", mm_patch_merge_type="spatial_unpad",
        image_grid_pinpoints=[[32, 64], [64, 32]],
    )
    tiles = torch.randn(3, 3, 32, 32)  # base + 2 tiles of 2 x 2 patches, image 64 wide x 32 high
    features = model.encode_visual_inputs([tiles], ["image"], image_sizes=[(64, 32)])[0]
    # base 4 tokens + a 2 x 4 grid (no padding to remove) + one newline per row
    assert features.shape[0] == 4 + 2 * 4 + 2
    newline = model.get_model().image_newline
    torch.testing.assert_close(features[4 + 4], newline)


def test_batched_equals_each_sample_alone(tiny):
    tokenizer, model = tiny
    texts = ["only words here, a longer one", "<image>\nimage", "<image>\n<image>\ncodec one", "<image> video",
             "<image><image>\nc2"]
    kinds = [[], [("image", 0)], [("codec", 1)], [("video", 2)], [("codec", 3)]]
    ids = [prompt_ids(tokenizer, t) for t in texts]
    with torch.no_grad():
        batched = run(model, ids, kinds, pad_id=tokenizer.pad_token_id)
        for i in range(len(texts)):
            alone = run(model, [ids[i]], [kinds[i]])
            n = alone.logits.shape[1]
            torch.testing.assert_close(batched.logits[i, :n], alone.logits[0], atol=1e-4, rtol=1e-4)


def test_truncation_to_tokenizer_model_max_length(tiny):
    tokenizer, model = tiny
    ids = prompt_ids(tokenizer, "<image>\n" + "word " * 20)
    model.config.tokenizer_model_max_length = 10
    try:
        out = run(model, [ids], [[("image", 0)]])
    finally:
        model.config.tokenizer_model_max_length = 2048
    assert out.logits.shape[1] == 10


@pytest.mark.parametrize(
    "texts, kinds, message",
    [
        (["<image> one", "<image> two"], [[("image", 0)], []],
         r"sample 1: the prompt has 1 <image> placeholders but its visual inputs take 0"),
        (["no placeholder"], [[("image", 0)]], r"sample 0: the prompt has 0 <image> placeholders but its visual"),
        (["<image> one mosaic only"], [[("codec", 0)]],
         r"has 1 <image> placeholders but its visual inputs take 2 \(a codec input one per mosaic\)"),
    ],
)
def test_placeholder_count_mismatch_names_the_sample(tiny, texts, kinds, message):
    tokenizer, model = tiny
    with pytest.raises(ValueError, match=message):
        run(model, [prompt_ids(tokenizer, t) for t in texts], kinds)


def test_codec_positions_must_match_mosaics(tiny):
    tokenizer, model = tiny
    entry, _, positions, _ = visual("codec")
    with pytest.raises(ValueError, match=r"positions_thw must be \[8, 3\]"):
        model.encode_visual_inputs([entry], ["codec"], None, [positions[:5]])
    with pytest.raises(ValueError, match="needs its positions_thw"):
        model.encode_visual_inputs([entry], ["codec"], None, [None])


# --- checkpoints ------------------------------------------------------------------------


def logits_for(model, tokenizer):
    ids = prompt_ids(tokenizer, "<image>\ndescribe <image><image>")
    batch = batch_for(model, [ids], [[("image", 5), ("codec", 6)]])
    batch.pop("labels")
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("llm", ["qwen2", "qwen3"])
def test_full_checkpoint_round_trip(tmp_path, llm):
    path = save_tiny_checkpoint(tmp_path / "ckpt", llm=llm, seed=3)
    tokenizer, model, processor, context_len = load_pretrained_model(str(path), None, "tiny", torch_dtype=torch.float32)
    _, reference, _ = build_tiny_model(llm, seed=3)
    torch.testing.assert_close(logits_for(model, tokenizer), logits_for(reference, tokenizer), rtol=0, atol=0)
    assert context_len == 2048 and processor.patch_size == PATCH
    assert json.loads((path / "config.json").read_text())["model_type"] == ("llava_qwen" if llm == "qwen2" else "llava_qwen3")


def test_lora_checkpoint_round_trip(tmp_path):
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import save_file

    base_dir = save_tiny_checkpoint(tmp_path / "base", seed=4)
    tokenizer, model, _, _ = load_pretrained_model(str(base_dir), torch_dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                  exclude_modules=r".*vision_tower.*"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.05)
        projector = peft_model.base_model.model.get_model().mm_projector
        for param in projector.parameters():
            param.add_(0.01)
    lora_dir = tmp_path / "lora"
    peft_model.save_pretrained(lora_dir)
    peft_model.base_model.model.config.save_pretrained(lora_dir)
    non_lora = {f"model.mm_projector.{k}": v.clone() for k, v in projector.state_dict().items()}
    save_file(non_lora, str(lora_dir / "non_lora_trainables.safetensors"))
    tokenizer.save_pretrained(lora_dir)
    expected = logits_for(peft_model, tokenizer)

    for merge in (False, True):
        _, loaded, _, _ = load_pretrained_model(str(lora_dir), str(base_dir), torch_dtype=torch.float32,
                                                merge_lora=merge)
        torch.testing.assert_close(logits_for(loaded, tokenizer), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="LoRA checkpoint: pass model_base"):
        load_pretrained_model(str(lora_dir))


def test_projector_only_checkpoint(tmp_path):
    tokenizer, model, _ = build_tiny_model("qwen2", seed=5)
    encoder_dir = tmp_path / "encoder"
    model.get_vision_tower().vision_tower.save_pretrained(encoder_dir)
    llm_config = Qwen2Config(**{k: v for k, v in model.config.to_dict().items()
                                if k in Qwen2Config().to_dict() and k not in ("model_type", "architectures")})
    llm = Qwen2ForCausalLM(llm_config)
    llm.load_state_dict({k: v for k, v in model.state_dict().items()
                         if not k.startswith(("model.vision_tower", "model.mm_projector"))}, strict=True)
    llm_dir = tmp_path / "llm"
    llm.save_pretrained(llm_dir)
    tokenizer.save_pretrained(llm_dir)

    projector_dir = tmp_path / "projector"
    projector_dir.mkdir()
    model.config.mm_vision_tower = str(encoder_dir)
    model.config.save_pretrained(projector_dir)
    state = {f"model.mm_projector.{k}": v for k, v in model.get_model().mm_projector.state_dict().items()}
    torch.save(state, projector_dir / "mm_projector.bin")

    _, loaded, _, _ = load_pretrained_model(str(projector_dir), str(llm_dir), torch_dtype=torch.float32)
    torch.testing.assert_close(logits_for(loaded, tokenizer), logits_for(model, tokenizer), atol=1e-5, rtol=1e-5)


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        load_pretrained_model(str(tmp_path))
    with pytest.raises(ValueError, match="no such directory"):
        load_pretrained_model(str(tmp_path / "missing"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="'bert' checkpoint"):
        load_pretrained_model(str(tmp_path))


# --- generation ------------------------------------------------------------------------


def test_generate_stops_at_im_end(tiny):
    tokenizer, model = tiny
    ids = prompt_ids(tokenizer, "<|im_start|>user\n<image>\nhi<|im_end|>\n<|im_start|>assistant\n")
    batch = batch_for(model, [ids], [[("image", 0)]])
    batch.pop("labels"), batch.pop("position_ids")
    n = batch["input_ids"].shape[1]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    options = dict(max_new_tokens=6, do_sample=False, eos_token_id=im_end, pad_token_id=tokenizer.pad_token_id)
    output = model.generate(**batch, **options)
    assert output[0, :n].tolist() == batch["input_ids"][0].tolist()  # Hugging Face's form: prompt + new tokens
    free = output[:, n:]
    assert free.shape[1] == 6 and im_end not in free[0].tolist()
    first = int(free[0, 0])
    after_first = (int(batch["input_ids"][0, -1]), first, im_end)  # the prompt's last token, then the first new one
    stopped = model.generate(**batch, **options, sequence_bias={after_first: 100.0})[:, n:]
    assert stopped[0].tolist() == [first, im_end]
    text_only = model.generate(ids[None][:, :3], max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert text_only.shape == (1, 6) and text_only[0, :3].tolist() == ids[:3].tolist()


def test_llava_next_placeholders_are_refused_with_what_to_do(tiny):
    """The model takes prompts as the processor writes them; a -200 placeholder says where to expand it."""
    tokenizer, model = tiny
    ids = prompt_ids(tokenizer, "<image>\nhi")
    entry, modality, _, _ = visual("image")
    with pytest.raises(ValueError, match=r"placeholders \(-200\).*LlavaOVProcessor.*llava.batching.collate"):
        model(input_ids=ids[None], images=[entry], modalities=[modality])
    with pytest.raises(ValueError, match=r"placeholders \(-200\)"):
        model.generate(ids[None], images=[entry], modalities=[modality], max_new_tokens=2)


def test_attach_a_pretrained_encoder_to_a_text_only_model(tmp_path):
    """The training start: plain LLM + pretrained OV-Encoder -> LLaVA-OV checkpoint that loads back."""
    from llava.model import LlavaQwenConfig, LlavaQwenForCausalLM

    tokenizer, reference, _ = build_tiny_model("qwen2", seed=7)
    encoder_dir = tmp_path / "encoder"
    reference.get_vision_tower().vision_tower.save_pretrained(encoder_dir)
    projector_file = tmp_path / "mm_projector.bin"
    torch.save({f"model.mm_projector.{k}": v for k, v in reference.get_model().mm_projector.state_dict().items()},
               projector_file)

    text_config = {k: v for k, v in reference.config.to_dict().items() if not k.startswith(("mm_", "vision_"))}
    for key in ("model_type", "architectures", "image_aspect_ratio", "image_grid_pinpoints", "use_mm_proj",
                "tokenizer_model_max_length", "tokenizer_padding_side"):
        text_config.pop(key, None)
    model = LlavaQwenForCausalLM(LlavaQwenConfig(**text_config))
    assert model.get_vision_tower() is None
    model.load_state_dict(reference.state_dict(), strict=False)
    model.get_model().initialize_vision_modules(str(encoder_dir), mm_projector_type="mlp2x_gelu",
                                                mm_vision_select_layer=-2)
    load_projector_weights(model, projector_file)
    assert model.config.mm_hidden_size == reference.config.mm_hidden_size
    torch.testing.assert_close(logits_for(model.eval(), tokenizer), logits_for(reference, tokenizer))

    out = tmp_path / "llava"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _, loaded, _, _ = load_pretrained_model(str(out), torch_dtype=torch.float32)
    torch.testing.assert_close(logits_for(loaded, tokenizer), logits_for(reference, tokenizer))


def test_left_padded_batch_generation_matches_each_prompt():
    """Batched generation (left padding, per-sample images of different sizes) = one prompt at a time."""
    from llava.inference.generation import prompt_batch

    tokenizer, model, _ = build_tiny_model("qwen2", seed=1)
    torch.manual_seed(3)
    with torch.no_grad():  # larger weights so greedy outputs differ from token to token
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.normal_(0, 0.3)
    generator = torch.Generator().manual_seed(0)
    images = [torch.randn(3, 2 * PATCH, 3 * PATCH, generator=generator), torch.randn(3, PATCH, 2 * PATCH,
                                                                                      generator=generator)]
    prompts = ["<|im_start|>user\n<image>\nwhat is it, tell me more<|im_end|>\n<|im_start|>assistant\n",
               "<|im_start|>user\n<image>\nhi<|im_end|>\n<|im_start|>assistant\n"]
    samples = [(prompt_ids(tokenizer, p), VisualInputs([image], ["image"], [(image.shape[-1], image.shape[-2])],
                                                        [None])) for p, image in zip(prompts, images)]
    options = dict(max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)

    def new_tokens(batch):
        batch.pop("position_ids")
        return model.generate(**batch, **options)[:, batch["input_ids"].shape[1]:].tolist()

    alone = [new_tokens(prompt_batch(model, tokenizer, [sample]))[0] for sample in samples]
    together = new_tokens(prompt_batch(model, tokenizer, samples))
    assert together == alone
    assert len(set(alone[0])) > 1


# --- the model code the trainer drives -------------------------------------------------


def test_config_declares_the_multimodal_defaults_once(tmp_path):
    """An older / upstream config without the mm_* keys loads with the declared defaults."""
    from llava.model import LlavaQwenConfig

    config = LlavaQwenConfig()
    assert (config.mm_vision_select_layer, config.mm_vision_select_feature, config.mm_patch_merge_type) == (
        -2, "patch", "flat")
    assert (config.mm_projector_type, config.mm_spatial_pool_mode, config.tokenizer_padding_side) == (
        "linear", "average", "right")
    path = save_tiny_checkpoint(tmp_path / "ckpt", seed=8)
    raw = json.loads((path / "config.json").read_text())
    for key in ("mm_vision_select_layer", "mm_patch_merge_type", "mm_newline_position", "tokenizer_padding_side"):
        raw.pop(key)
    raw["mm_resampler_type"] = None  # an upstream key this project does not use: kept as an attribute
    (path / "config.json").write_text(json.dumps(raw))
    _, model, _, _ = load_pretrained_model(str(path), torch_dtype=torch.float32)
    assert model.config.mm_vision_select_layer == -2 and model.config.mm_patch_merge_type == "flat"
    assert model.get_vision_tower().select_layer == -2 and model.config.mm_resampler_type is None


def test_the_tower_is_not_frozen_when_built():
    _, model, _ = build_tiny_model("qwen2", seed=1)
    assert all(p.requires_grad for p in model.get_vision_tower().parameters())
    assert all(p.requires_grad for p in model.get_model().mm_projector.parameters())


def _upstream_layout(tmp_path, mm_vision_tower: str):
    """A tiny checkpoint laid out as the upstream code saves it: no embedded vision_config,
    the encoder named in mm_vision_tower, no preprocessor_config.json of its own."""
    from safetensors.torch import load_file

    path = save_tiny_checkpoint(tmp_path / "upstream", seed=9)
    keys = load_file(str(path / "model.safetensors")).keys()
    assert any(k.startswith("model.vision_tower.vision_tower.embeddings.patch_embedding") for k in keys)
    assert any(k.startswith("model.mm_projector.0.") for k in keys)
    raw = json.loads((path / "config.json").read_text())
    del raw["vision_config"]
    raw["mm_vision_tower"] = mm_vision_tower
    (path / "config.json").write_text(json.dumps(raw))
    (path / "preprocessor_config.json").unlink()
    return path


def _save_encoder(directory, seed: int = 9):
    from llava.model import OneVisionEncoderImageProcessor

    _, reference, _ = build_tiny_model("qwen2", seed=seed)
    reference.get_vision_tower().vision_tower.save_pretrained(directory)
    OneVisionEncoderImageProcessor(patch_size=PATCH, max_pixels=48 * 48).save_pretrained(directory)
    return reference


def test_upstream_checkpoint_with_a_local_encoder_directory(tmp_path):
    reference = _save_encoder(tmp_path / "encoder")
    path = _upstream_layout(tmp_path, str(tmp_path / "encoder"))
    tokenizer, model, processor, _ = load_pretrained_model(str(path), torch_dtype=torch.float32)
    torch.testing.assert_close(logits_for(model, tokenizer), logits_for(reference, tokenizer), rtol=0, atol=0)
    assert processor.max_pixels == 48 * 48  # the encoder's own processor
    assert model.config.vision_config["hidden_size"] == TINY_ENCODER["hidden_size"]  # embedded from now on


def test_upstream_checkpoint_with_a_hub_id_in_the_local_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--lmms-lab--tiny-ov-encoder" / "snapshots" / ("0" * 40)
    reference = _save_encoder(snapshot)
    (cache / "models--lmms-lab--tiny-ov-encoder" / "refs").mkdir()
    (cache / "models--lmms-lab--tiny-ov-encoder" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    path = _upstream_layout(tmp_path, "lmms-lab/tiny-ov-encoder")
    tokenizer, model, _, _ = load_pretrained_model(str(path), torch_dtype=torch.float32)
    torch.testing.assert_close(logits_for(model, tokenizer), logits_for(reference, tokenizer), rtol=0, atol=0)

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ValueError, match=r"mm_vision_tower='lmms-lab/tiny-ov-encoder'.*neither a local directory"
                                         r".*huggingface-cli download lmms-lab/tiny-ov-encoder"):
        load_pretrained_model(str(path), torch_dtype=torch.float32)


def test_a_language_model_family_is_explicit_classes_and_one_record(tmp_path):
    """Adding a family (here Llama) is its explicit classes and one ``register_llava_lm`` call; the result
    trains, saves and loads like the Qwen ones."""
    from torch import nn
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel

    from llava.model.configuration_llava import LlavaConfigMixin
    from llava.model.families import LLAVA_LMS, LlavaLM, register_llava_lm
    from llava.model.modeling_llava import LlavaMetaForCausalLM, LlavaMetaModel, MultimodalCausalLMMixin

    class LlavaLlamaTestConfig(LlavaConfigMixin, LlamaConfig):
        model_type = "llava_llama_test"

    class LlavaLlamaTestModel(LlavaMetaModel, LlamaModel):
        config_class = LlavaLlamaTestConfig

    class LlavaLlamaTestForCausalLM(MultimodalCausalLMMixin, LlamaForCausalLM, LlavaMetaForCausalLM):
        config_class = LlavaLlamaTestConfig

        def __init__(self, config):
            super(LlamaForCausalLM, self).__init__(config)
            self.model = LlavaLlamaTestModel(config)
            self.vocab_size = config.vocab_size
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
            self.post_init()

        def get_model(self):
            return self.model

    register_llava_lm(LlavaLM("llama_test", LlavaLlamaTestConfig, LlavaLlamaTestModel,
                      LlavaLlamaTestForCausalLM, "qwen_1_5", "llama", "test_llava_model.py"))
    try:
        tokenizer, model, _ = build_tiny_model("llama_test", seed=2)
        out = run(model, [prompt_ids(tokenizer, "<image>\nwhat is this?")], [[("image", 0)]])
        assert torch.isfinite(out.loss)
        model.save_pretrained(tmp_path / "llama")
        tokenizer.save_pretrained(tmp_path / "llama")
        _, loaded, _, _ = load_pretrained_model(str(tmp_path / "llama"), torch_dtype=torch.float32)
        assert type(loaded) is LlavaLlamaTestForCausalLM
        torch.testing.assert_close(logits_for(loaded, tokenizer), logits_for(model, tokenizer), rtol=0, atol=0)
    finally:
        LLAVA_LMS.pop("llama_test")


# --- packing, supervised-only loss, truncation ------------------------------------------


def batch_of(model, tokenizer, texts, kinds, pack=False):
    """Right-padded (or packed) inputs with every text token labelled, through ``llava.batching``."""
    return batch_for(model, [prompt_ids(tokenizer, t) for t in texts], kinds, pad_id=tokenizer.pad_token_id, pack=pack)


PACK_TEXTS = ["a text-only sample that is a little longer than the rest", "<image>\nimage",
              "words first, then no picture", "<image>\n<image>\ncodec", "<image> video here"]
PACK_KINDS = [[], [("image", 0)], [], [("codec", 1)], [("video", 2)]]


@pytest.mark.parametrize("attention", ["sdpa", "eager", "varlen"])
def test_packed_loss_equals_unpacked_loss(tiny, attention):
    tokenizer, model = tiny
    model.set_attn_implementation(attention)
    try:
        model.train()
        with torch.no_grad():
            unpacked = model(**batch_of(model, tokenizer, PACK_TEXTS, PACK_KINDS)).loss
            packed_inputs = batch_of(model, tokenizer, PACK_TEXTS, PACK_KINDS, pack=True)
            packed = model(**packed_inputs).loss
            model.config.tokenizer_model_max_length = 40  # several rows
            row_inputs = batch_of(model, tokenizer, PACK_TEXTS, PACK_KINDS, pack=True)
            rows = model(**row_inputs).loss
    finally:
        model.config.tokenizer_model_max_length = 2048
        model.eval()
        model.set_attn_implementation("sdpa")
    assert packed_inputs["input_ids"].shape[0] == 1 and row_inputs["input_ids"].shape[0] > 1
    torch.testing.assert_close(packed, unpacked, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rows, unpacked, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "eager", "varlen"])
def test_packed_gradients_equal_unpacked_gradients(tiny, attention, monkeypatch):
    """Training on packed rows is training on the samples alone: the same loss and the same gradient for every
    weight; ``varlen`` runs its packed path (no mask) and only for the packed batch."""
    import llava.model.modeling_onevision_encoder as encoder_module

    tokenizer, model = tiny
    calls = []
    real = encoder_module.per_sample_sdpa  # what varlen runs on the CPU

    def counted(*args, **kwargs):
        if (args[6] if len(args) > 6 else kwargs.get("causal", False)):  # the LM's (the tower's is not causal)
            calls.append(args[3])
        return real(*args, **kwargs)

    monkeypatch.setattr(encoder_module, "per_sample_sdpa", counted)

    def loss_and_grads(pack: bool):
        model.zero_grad()
        loss = model(**batch_of(model, tokenizer, PACK_TEXTS, PACK_KINDS, pack=pack)).loss
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    model.set_attn_implementation(attention)
    model.train()
    try:
        unpacked, unpacked_grads = loss_and_grads(False)
        packed_calls = len(calls)
        packed, packed_grads = loss_and_grads(True)
    finally:
        model.zero_grad()
        model.eval()
        model.set_attn_implementation("sdpa")
    torch.testing.assert_close(packed, unpacked, atol=1e-5, rtol=1e-5)
    assert packed_grads.keys() == unpacked_grads.keys() and len(packed_grads) > 10
    for name, grad in unpacked_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)
    layers = model.config.num_hidden_layers
    if attention == "varlen":  # once per LM layer for the packed batch, with the samples' bounds; never unpacked
        assert packed_calls == 0 and len(calls) == layers and calls[0].numel() == len(PACK_TEXTS) + 1
    else:
        assert not calls


@pytest.mark.parametrize("attention", ["sdpa", "eager", "varlen"])
def test_packed_samples_do_not_see_each_other(tiny, attention):
    """Changing one sample's tokens leaves the others' logits as they are; each equals the sample alone."""
    tokenizer, model = tiny
    model.set_attn_implementation(attention)

    def logits(texts, kinds, pack):
        inputs = batch_of(model, tokenizer, texts, kinds, pack=pack)
        inputs.pop("labels")
        return model(**inputs).logits

    try:
        with torch.no_grad():
            first = logits(PACK_TEXTS, PACK_KINDS, True)
            changed_texts = [PACK_TEXTS[0].replace("longer", "shorter"), *PACK_TEXTS[1:]]
            second = logits(changed_texts, PACK_KINDS, True)
            alone = logits(PACK_TEXTS[-1:], PACK_KINDS[-1:], False)[0]
    finally:
        model.set_attn_implementation("sdpa")
    assert first.shape[0] == 1  # one row: the whole batch fits in 2048 tokens
    n0 = len(prompt_ids(tokenizer, PACK_TEXTS[0]))
    n0_changed = len(prompt_ids(tokenizer, changed_texts[0]))
    rest = first.shape[1] - n0
    torch.testing.assert_close(first[0, n0:], second[0, n0_changed : n0_changed + rest], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(first[0, -alone.shape[0]:], alone, atol=1e-5, rtol=1e-5)


def test_training_runs_the_lm_head_only_on_supervised_positions(tiny):
    """Same loss as the full computation, and no full-vocabulary logits for unlabelled positions."""
    tokenizer, model = tiny
    inputs = batch_of(model, tokenizer, PACK_TEXTS, PACK_KINDS)
    inputs["labels"][:, :6] = IGNORE_INDEX  # an unsupervised prompt
    rows = []
    hook = model.lm_head.register_forward_hook(lambda module, args, out: rows.append(args[0].shape))
    try:
        with torch.no_grad():
            full = model(**inputs)
            model.train()
            supervised = model(**inputs)
            counted = model(**inputs, num_items_in_batch=torch.tensor(7))
    finally:
        model.eval()
        hook.remove()
    torch.testing.assert_close(supervised.loss, full.loss, atol=1e-5, rtol=1e-5)
    assert supervised.logits is None and full.logits.shape[:2] == inputs["input_ids"].shape[:1] + (rows[0][1],)
    targets = (inputs["labels"][:, 1:] != IGNORE_INDEX).sum().item()
    assert rows[1] == (targets, model.config.hidden_size)  # only the labelled positions met the LM head
    torch.testing.assert_close(counted.loss, supervised.loss * targets / 7, atol=1e-5, rtol=1e-5)


def test_truncation_never_cuts_visual_tokens(tiny):
    """Only text after the last visual token is cut: a limit inside the visual tokens keeps them whole."""
    tokenizer, model = tiny
    ids = prompt_ids(tokenizer, "hi <image><image> and then a long tail of text words")
    _, _, _, tokens = visual("codec")
    prefix = len(prompt_ids(tokenizer, "hi "))
    visual_end = prefix + tokens
    for limit, expected in ((visual_end - 3, visual_end), (visual_end + 2, visual_end + 2)):
        model.config.tokenizer_model_max_length = limit
        try:
            batch = batch_for(model, [ids], [[("codec", 0)]])
        finally:
            model.config.tokenizer_model_max_length = 2048
        assert batch["input_ids"].shape[1] == expected
        assert (batch["labels"][0, prefix:visual_end] == IGNORE_INDEX).all()
        assert (batch["input_ids"][0, prefix:visual_end] == model.config.image_token_id).all()
