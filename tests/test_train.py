"""Training: flags, every record kind through dataset + collator, grouping, bad records, saving kinds,
resume, checkpoints that load with the same logits as the trained model."""

from __future__ import annotations

import json
import os
import shlex

import pytest
import torch
from PIL import Image
from train_helpers import conversation, probe_inputs, tiny_start, train_args, write_jsonl, write_records

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.builder import load_pretrained_model
from llava.train import train as train_module
from llava.train.arguments import DataArguments
from llava.train.data import DataCollator, SupervisedDataset, video_options
from llava.train.sampler import ModalityGroupedSampler

UPSTREAM_SFT = """
    --deepspeed scripts/zero3.json --model_name_or_path Qwen/Qwen3-4B-Instruct-2507 --version qwen_1_5
    --data_path video_800k_mixed_codec8f_or_8fkeep.jsonl --image_folder root
    --pretrain_mm_mlp_adapter=checkpoints/projectors/run/mm_projector.bin
    --mm_tunable_parts=mm_vision_tower,mm_mlp_adapter,mm_language_model --mm_vision_tower_lr=2e-6
    --vision_tower lmms-lab/onevision-encoder-large --mm_projector_type mlp2x_gelu --mm_vision_select_layer -2
    --mm_use_im_start_end False --mm_use_im_patch_token False --group_by_modality_length True
    --image_aspect_ratio anyres
    --image_grid_pinpoints "[(574, 1120), (1120, 574), (1120, 1120), (1694, 574), (574, 1694)]"
    --mm_patch_merge_type flat --bf16 True --run_name run --output_dir out --num_train_epochs 1
    --per_device_train_batch_size 1 --gradient_accumulation_steps 16 --save_strategy steps --save_steps 500
    --save_total_limit 20 --learning_rate 1e-5 --logging_steps 1 --tf32 True --model_max_length 321120
    --gradient_checkpointing True --dataloader_num_workers 1 --lazy_preprocess True
    --dataloader_drop_last True
    --attn_implementation flash_attention_2
"""
UPSTREAM_PRETRAIN = """
    --deepspeed scripts/zero2.json --model_name_or_path Qwen/Qwen3-4B-Instruct-2507 --version plain
    --data_path blip_laion_cc_sbu_558k.json --image_folder image_root
    --vision_tower lmms-lab/onevision-encoder-large
    --mm_tunable_parts=mm_mlp_adapter --mm_vision_select_layer -2 --mm_projector_type mlp2x_gelu
    --mm_use_im_start_end False --mm_use_im_patch_token False --bf16 True --output_dir out
    --num_train_epochs 1
    --per_device_train_batch_size 16 --per_device_eval_batch_size 4 --gradient_accumulation_steps 2
    --mm_patch_merge_type flat --save_strategy no --save_steps 50000 --learning_rate 1e-3 --weight_decay 0.
    --warmup_ratio 0.03 --lr_scheduler_type cosine --logging_steps 1 --tf32 True --model_max_length 8192
    --gradient_checkpointing True --dataloader_num_workers 16 --lazy_preprocess True --run_name run
"""
OURS = """--lora_enable True --lora_r 8 --lora_alpha 16 --lora_dropout 0.0 --lora_bias none
    --mm_projector_lr 2e-5
    --tune_mm_mlp_adapter False --video_mode frames --frames_upbound 16 --codec_frames 64 --codec_images 8
    --codec_canvas 576 --packing True --bad_record_limit 0.05 --video_folder videos"""


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    return tiny_start(tmp_path_factory.mktemp("start"))


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    return root, write_records(root)


def _dataset(start, records, kinds, tmp_path, **data):
    from llava.model.builder import load_image_processor
    from llava.model.folder import ensure_image_token
    from llava.train.arguments import ModelArguments, TrainingArguments
    from llava.train.model_setup import build_model, build_tokenizer

    root, by_kind = records
    path = write_jsonl(tmp_path / "data.jsonl", [by_kind[k] for k in kinds])
    data_args = DataArguments(data_path=path, image_folder=str(root), video_folder=str(root), codec_frames=8,
                              codec_images=2, codec_canvas=64, **{"images_as_clip": 8, **data})
    model_args = ModelArguments(model_name_or_path=start[0], vision_tower=start[1],
                                mm_projector_type="mlp2x_gelu")
    training_args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none",
                                      model_max_length=2048)
    tokenizer = build_tokenizer(model_args, training_args)
    model = build_model(model_args, data_args, training_args)
    ensure_image_token(tokenizer, model)  # as train.setup does
    processor = load_image_processor(start[0], None, model)
    from llava.processing.media import VisualProcessor

    visual = VisualProcessor(processor, model.config, video_options(data_args, processor.patch_size))
    return SupervisedDataset(path, tokenizer, visual, data_args), tokenizer, model


# ---------------------------------------------------------------- flags
@pytest.mark.parametrize("flags", [UPSTREAM_SFT, UPSTREAM_PRETRAIN, UPSTREAM_SFT + OURS])
def test_the_upstream_scripts_flags_parse(flags):
    """Every flag of the upstream SFT and pre-training scripts (and ours) is known and typed."""
    from transformers import HfArgumentParser

    from llava.train.arguments import ModelArguments, TrainingArguments

    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    # types and names only: no GPU checks on this CPU machine
    namespace = parser.parse_args(shlex.split(flags))
    assert namespace.version in ("qwen_1_5", "plain") and namespace.mm_projector_type == "mlp2x_gelu"
    assert namespace.mm_vision_select_layer == -2 and namespace.lazy_preprocess is True
    if "tf32" in flags and "--mm_vision_tower_lr" in flags:
        assert namespace.mm_vision_tower_lr == 2e-6 and namespace.group_by_modality_length is True
        assert namespace.model_max_length == 321120 and namespace.attn_implementation == "flash_attention_2"
    if "--packing" in flags:
        assert (namespace.lora_enable is True and namespace.packing is True
                and namespace.bad_record_limit == 0.05)


@pytest.fixture
def no_deepspeed_config_left_behind():
    """TrainingArguments(deepspeed=...) registers a process-wide DeepSpeed config; later models built in
    this process would take it for ZeRO-3. Drop it after the test, whatever happened."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    yield
    unset_hf_deepspeed_config()


def test_flags_build_the_arguments_and_refuse_unsupported_options(tmp_path, no_deepspeed_config_left_behind):
    cpu = UPSTREAM_SFT.replace("--tf32 True", "--tf32 False") + " --use_cpu True"
    model_args, data_args, training_args = train_module.parse_args(shlex.split(cpu))
    assert model_args.mm_tunable_parts == "mm_vision_tower,mm_mlp_adapter,mm_language_model"
    assert data_args.image_aspect_ratio == "anyres" and training_args.gradient_accumulation_steps == 16
    assert training_args.deepspeed == "scripts/zero3.json"
    for bad, message in [("--bits 4", "--bits"), ("--mm_use_im_patch_token True", "--mm_use_im_patch_token"),
                         ("--mm_tunable_parts mm_vision_resampler", "unknown part")]:
        with pytest.raises(ValueError, match=message):
            train_module.parse_args(["--model_name_or_path", "m", "--data_path", "d", "--output_dir",
                                     str(tmp_path), "--report_to", "none", *shlex.split(bad)])


# ---------------------------------------------------------------- every record kind
@pytest.mark.parametrize("video_mode", ["codec", "frames"])
def test_every_record_kind_through_dataset_and_collator(start, records, tmp_path, video_mode):
    kinds = ["text", "image", "images", "codec", "clip", "video"]
    dataset, tokenizer, model = _dataset(start, records, kinds, tmp_path, video_mode=video_mode,
                                         frames_upbound=4)
    samples = [dataset[i] for i in range(len(kinds))]
    expected = {
        "text": ([], 0), "image": (["image"], 1), "images": (["image", "image"], 2), "codec": (["codec"], 2),
        "clip": (["codec"], 8), "video": (["codec"], 2) if video_mode == "codec" else (["video"], 1),
    }
    for kind, sample in zip(kinds, samples):
        modalities, placeholders = expected[kind]
        assert sample.visual.modalities == modalities, kind
        assert (int((sample.input_ids == IMAGE_TOKEN_INDEX).sum()) == placeholders
                == sample.visual.num_placeholders)
        assert sample.labels[sample.input_ids == IMAGE_TOKEN_INDEX].eq(IGNORE_INDEX).all()
        supervised = tokenizer.decode(sample.labels[sample.labels != IGNORE_INDEX])
        answer = records[1][kind]["conversations"][1]["value"]
        assert supervised == answer + "<|im_end|>", kind  # only the reply and its end token
    codec_sample, video_sample = samples[3], samples[5]
    if video_mode == "codec":  # the raw video read online equals its precomputed (lossless) pack
        torch.testing.assert_close(video_sample.visual.images[0], codec_sample.visual.images[0],
                                   rtol=0, atol=0)
        assert torch.equal(video_sample.visual.patch_positions[0], codec_sample.visual.patch_positions[0])
    else:
        assert video_sample.visual.images[0].shape[1] == 4  # frames_upbound frames
    batch = DataCollator.for_model(tokenizer, model)(samples)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    layout = DataCollator.for_model(tokenizer, model).layout  # each placeholder becomes its visual tokens
    expanded = [len(s.input_ids) - s.visual.num_placeholders + sum(s.visual.placeholder_tokens(layout))
                for s in samples]
    assert batch["attention_mask"].sum(1).tolist() == expanded
    assert len(batch["images"]) == sum(len(s.visual) for s in samples) and batch["report"].bad == []
    model.train()
    assert torch.isfinite(model(**{k: v for k, v in batch.items() if k != "report"}).loss)


def test_two_codec_samples_in_one_batch_equal_each_alone(start, records, tmp_path):
    """Batch size > 1 with per-sample codec positions and images of other sizes (upstream: 1)."""
    root, by_kind = records
    import numpy as np

    other = dict(by_kind["codec"], id="codec-2", positions_thw=str(tmp_path / "shifted.npy"))
    positions = np.load(by_kind["codec"]["positions_thw"])
    positions[:, 0] = (positions[:, 0] + 3) % 8
    np.save(tmp_path / "shifted.npy", positions)
    path = write_jsonl(tmp_path / "two.jsonl", [by_kind["codec"], other, by_kind["image"], by_kind["images"]])
    dataset, tokenizer, model = _dataset(start, records, ["codec"], tmp_path)
    dataset = SupervisedDataset(path, tokenizer, dataset.visual, dataset.data_args)
    samples = [dataset[i] for i in range(4)]
    collate = DataCollator.for_model(tokenizer, model)
    model.train()
    with torch.no_grad():
        together = model(**{k: v for k, v in collate(samples).items() if k != "report"}).loss
        sums, counts = 0.0, 0
        for sample in samples:
            batch = {k: v for k, v in collate([sample]).items() if k != "report"}
            n = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            sums, counts = sums + model(**batch).loss * n, counts + n
    model.eval()
    torch.testing.assert_close(together, sums / counts, atol=1e-5, rtol=1e-5)
    assert not torch.equal(samples[0].visual.patch_positions[0], samples[1].visual.patch_positions[0])


# ---------------------------------------------------------------- grouping
def test_modality_grouping_really_groups():
    modalities = ["text"] * 10 + ["image"] * 9 + ["video"] * 7
    lengths = list(range(10)) + [100 + i for i in range(9)] + [10000 + i for i in range(7)]
    sampler = ModalityGroupedSampler(modalities, lengths, batch_size=2, world_size=2, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(len(modalities)))  # each index once
    megabatches = sampler.megabatches()
    pure, mixed = megabatches[:5], megabatches[5:]  # 10 // 4 text + 9 // 4 image + 7 // 4 video steps
    assert all(len(m) == 4 and len({modalities[i] for i in m}) == 1 for m in pure)  # one modality per step
    assert [len(m) for m in mixed] == [4, 2]  # the 2 + 1 + 3 leftovers, last
    assert {modalities[m[0]] for m in pure} == {"text", "image", "video"}
    assert all(lengths[m[0]] >= lengths[m[-1]] for m in megabatches)  # longest first inside a step
    assert list(ModalityGroupedSampler(modalities, lengths, 2, 2, seed=3)) == order  # deterministic
    sampler.set_epoch(1)
    assert list(sampler) != order  # a new order every epoch


def test_dataset_reports_modalities_of_every_record_kind(start, records, tmp_path):
    kinds = ["text", "image", "images", "codec", "clip", "video"]
    dataset, _, _ = _dataset(start, records, kinds, tmp_path)
    found = [dataset.modality_and_length(i) for i in range(len(kinds))]
    assert [m for m, _ in found] == ["text", "image", "image", "video", "video", "video"]
    assert found[3][1] > found[1][1] > found[0][1]  # a codec video outweighs an image, which outweighs text


# ---------------------------------------------------------------- bad records
def test_plain_pretraining_keeps_a_system_turn_and_captions_after_the_placeholders(start, records, tmp_path):
    """LLaVA pre-training (``plain``) replaces the first human turn by the placeholders alone; a first
    system turn stays the system prompt (in front) instead of being overwritten."""
    root, by_kind = records
    record = dict(by_kind["image"], conversations=[{"from": "system", "value": "Describe."},
                                                   *by_kind["image"]["conversations"]])
    path = write_jsonl(tmp_path / "plain.jsonl", [record])
    dataset, tokenizer, _ = _dataset(start, records, ["text"], tmp_path)
    dataset = SupervisedDataset(path, tokenizer, dataset.visual, dataset.data_args, template="plain")
    sample = dataset[0]
    assert sample.bad == [] and int((sample.input_ids == IMAGE_TOKEN_INDEX).sum()) == 1
    text = tokenizer.decode(sample.input_ids[sample.input_ids >= 0])
    caption = by_kind["image"]["conversations"][1]["value"]
    assert text.startswith("Describe.") and caption in text
    assert by_kind["image"]["conversations"][0]["value"].replace("<image>", "").strip() not in text


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bad_records_are_replaced_counted_and_named(start, records, tmp_path):
    import numpy as np

    root, by_kind = records
    (root / "broken.png").write_bytes(b"not a picture")
    np.save(tmp_path / "short.npy", np.load(by_kind["codec"]["positions_thw"])[:5])
    if not (root / "bomb.png").exists():
        Image.new("1", (12_000, 10_000)).save(root / "bomb.png")  # 120 megapixels in a few kB
        os.mkfifo(root / "fifo.png")  # never written to: a blocking open would hang the data loader
    bad = [
        dict(by_kind["image"], id="missing-image", image="nope.png"),
        dict(by_kind["image"], id="corrupt-image", image="broken.png"),
        dict(by_kind["video"], id="missing-video", video="gone.mp4"),
        {"id": "bad-conversation", "conversations": [{"from": "robot", "value": "hi"}]},
        dict(by_kind["image"], id="placeholders", conversations=conversation("no placeholder", "x")),
        dict(by_kind["codec"], id="positions", positions_thw=str(tmp_path / "short.npy")),
        dict(by_kind["image"], id="bomb", image="bomb.png"),
        dict(by_kind["image"], id="fifo", image="fifo.png"),
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", [*bad, by_kind["text"]])
    dataset, tokenizer, model = _dataset(start, records, ["text"], tmp_path)
    dataset = SupervisedDataset(path, tokenizer, dataset.visual, dataset.data_args)
    samples = [dataset[i] for i in range(len(bad))]  # each bad record is replaced by the text record
    assert [[b.id for b in s.bad] for s in samples] == [[r["id"]] for r in bad]  # each by its own index only
    reasons = [s.bad[0].reason for s in samples]
    assert ("nope.png" in reasons[0] and "cannot read image" in reasons[1]
            and "gone.mp4: file not found" in reasons[2])
    assert "turn 0" in reasons[3] and "0 <image> placeholders but its media take 1" in reasons[4]
    assert ("short.npy: positions has K=5 rows" in reasons[5]
            and all(s.bad[0].where == f"{path}:{i + 1}" for i, s in enumerate(samples)))
    assert "12000x10000 is 120,000,000 pixels" in reasons[6] and "not a regular file (a FIFO)" in reasons[7]
    assert all(s.visual.modalities == [] for s in samples) and len(dataset[len(bad)].bad) == 0


def test_placeholders_that_do_not_fit_the_media_and_fields_of_the_wrong_type_are_bad_records(start, records,
                                                                                              tmp_path):
    from llava.processing.media import VisualProcessor

    root, by_kind = records
    video, image = by_kind["video"], by_kind["image"]
    cases = [
        dict(video, id="two-videos", conversations=conversation("<video>\n<video>\nWhich way?", "Right.")),
        dict(video, id="video-and-image", conversations=conversation("<video>\n<image>\nWhich way?", "Yes.")),
        dict(video, id="video-in-answer", conversations=conversation("<video>\nWhich way?", "A <video>.")),
        dict(image, id="image-and-video-tag", conversations=conversation("<image>\n<video>\nWhat?", "x")),
        dict(video, id="video-list", video=["clip.mp4"]),
        dict(image, id="image-number", image=3),
        dict(image, id="conversations-string", conversations="<image>\nWhat is it?"),
    ]
    reasons = ["2 <video> and 0 <image> placeholders", "1 <video> and 1 <image> placeholders",
               "2 <video> and 0 <image> placeholders", "1 <video> placeholder(s) but the record has no video",
               "'video' must be a path (a non-empty string), got array",
               "'image' must be a path or a non-empty array of paths, got number",
               "'conversations' must be a non-empty array of turns, got string"]
    one_video = dict(video, id="one-video", conversations=conversation("<video>\nWhich way?", "Right."))
    dataset, tokenizer, _ = _dataset(start, records, ["text"], tmp_path)
    path = write_jsonl(tmp_path / "placeholders.jsonl", [*cases, one_video])
    dataset = SupervisedDataset(path, tokenizer, dataset.visual, dataset.data_args)  # codec videos: 2 mosaics
    for i, (case, reason) in enumerate(zip(cases, reasons)):
        sample = dataset[i]
        assert [b.id for b in sample.bad] == [case["id"]] and reason in sample.bad[0].reason, sample.bad
        assert dataset.modality_and_length(i)  # the grouped sampler reads every record without failing
    good = dataset[len(cases)]
    assert good.bad == [] and int((good.input_ids == IMAGE_TOKEN_INDEX).sum()) == 2
    assert "<video>" not in tokenizer.decode(good.input_ids[good.input_ids >= 0])
    frames = VisualProcessor(dataset.visual.image_processor, dataset.visual.config,
                             video_options(DataArguments(video_mode="frames", frames_upbound=4), 16))
    dataset = SupervisedDataset(path, tokenizer, frames, dataset.data_args)  # frames: one placeholder
    assert [b.id for b in dataset[0].bad] == ["two-videos"]
    good = dataset[len(cases)]
    assert good.bad == [] and good.visual.modalities == ["video"]
    assert int((good.input_ids == IMAGE_TOKEN_INDEX).sum()) == 1


def test_each_bad_record_is_counted_once(start, records, tmp_path, capsys):
    """100 records, 7 of them bad and adjacent in pairs, a 10% limit: the run goes on and reports 7%."""
    root, by_kind = records
    bad_at = {10, 11, 40, 41, 70, 71, 90}
    items = [dict(by_kind["image"], id=f"bad{i}", image=f"missing{i}.png") if i in bad_at
             else dict(by_kind["text"], id=f"text{i}") for i in range(100)]
    path = write_jsonl(tmp_path / "seven-percent.jsonl", items)
    summary = train_module.train(train_args(*start, path, str(root), str(tmp_path / "out"),
                                            "--num_train_epochs", "1", "--per_device_train_batch_size", "10",
                                            "--bad_record_limit", "0.1"))
    assert summary["steps"] == 10 and (summary["bad_records"], summary["records_read"]) == (7, 100)
    assert "[train] bad records: 7 of 100 read" in capsys.readouterr().out


def test_too_many_bad_records_stop_the_run_with_a_clear_error(start, records, tmp_path, capsys):
    root, by_kind = records
    bad = [dict(by_kind["image"], id=f"bad{i}", image=f"missing{i}.png") for i in range(3)]
    path = write_jsonl(tmp_path / "mostly-bad.jsonl", [*bad, by_kind["text"], "not json"])
    args = train_args(*start, path, str(root), str(tmp_path / "out"), "--max_steps", "4",
                      "--bad_record_limit", "0.1")
    assert train_module.main(args) == 3
    err = capsys.readouterr().err
    assert "records read so far are unusable" in err and "--bad_record_limit 10%" in err
    good = write_jsonl(tmp_path / "one-bad.jsonl", [by_kind["text"]] * 30 + [bad[0]])
    summary = train_module.train(train_args(*start, good, str(root), str(tmp_path / "ok"), "--max_steps", "3",
                                            "--bad_record_limit", "0.1"))
    assert summary["steps"] == 3  # one bad record in 31 does not stop the run


def test_configuration_errors_exit_before_training(start, tmp_path, capsys):
    assert train_module.main(train_args(*start, str(tmp_path / "none.jsonl"), str(tmp_path),
                                        str(tmp_path / "o"))) == 2
    assert "none.jsonl" in capsys.readouterr().err


# --------------------------------------------------------------- saving kinds, logits equal the trained model
def _logits(model, tokenizer, records):
    with torch.no_grad():
        return model.eval()(**probe_inputs(records[0], model, tokenizer)).logits


@pytest.mark.parametrize("kind", ["full", "lora", "projector"])
def test_every_checkpoint_kind_loads_with_the_trained_models_logits(start, records, tmp_path, kind):
    root, by_kind = records
    path = write_jsonl(tmp_path / "d.jsonl", [by_kind[k] for k in ("text", "image", "images", "codec")])
    extra = {"full": [], "lora": ["--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8"],
             "projector": ["--tune_mm_mlp_adapter", "True", "--mm_tunable_parts", "mm_mlp_adapter"]}[kind]
    out = tmp_path / kind
    trainer, _ = train_module.setup(train_args(*start, path, str(root), str(out), "--max_steps", "2", *extra))
    trainer.train()
    trainer.save_model(str(out))
    trained = trainer.model.base_model.model if kind == "lora" else trainer.model
    tokenizer = trainer.processing_class
    expected = _logits(trained, tokenizer, records)
    files = {p.name for p in out.iterdir()}
    if kind == "projector":
        assert "mm_projector.bin" in files and "model.safetensors" not in files
        _, loaded, _, _ = load_pretrained_model(str(out), model_base=start[0], torch_dtype=torch.float32)
    elif kind == "lora":
        assert ({"adapter_config.json", "non_lora_trainables.bin"} <= files
                and "model.safetensors" not in files)
        for merge in (False, True):
            _, loaded, _, _ = load_pretrained_model(str(out), model_base=start[0], torch_dtype=torch.float32,
                                                    merge_lora=merge)
            torch.testing.assert_close(_logits(loaded, tokenizer, records), expected, atol=1e-5, rtol=1e-5)
    else:
        assert {"model.safetensors", "preprocessor_config.json", "tokenizer.json"} <= files
        # self-contained: the processor with the run's video settings, the model code, the model card
        assert {"processor_config.json", "processing_llava.py", "modeling_llava_qwen.py", "README.md"} <= files
        saved = json.loads((out / "processor_config.json").read_text())
        assert saved["video"]["mode"] == "codec" and saved["video"]["codec"]["patch_size"] == 16
        assert "AutoModelForImageTextToText" in json.loads((out / "config.json").read_text())["auto_map"]
        card = (out / "README.md").read_text()
        assert "--max_steps 2" in card and str(tmp_path) not in card
        _, loaded, _, _ = load_pretrained_model(str(out), torch_dtype=torch.float32)
    torch.testing.assert_close(_logits(loaded, tokenizer, records), expected, atol=1e-5, rtol=1e-5)


def test_the_checkpoint_records_its_template_for_chat_evaluation_and_serving(start, records, tmp_path):
    """Trained with a template other than its family's default (as the recipe trains Qwen3 with
    qwen_1_5): every inference entry point renders prompts with the trained one."""
    from llava.inference.chat import default_conv_template

    root, by_kind = records
    path = write_jsonl(tmp_path / "d.jsonl", [by_kind["text"], by_kind["image"]])
    out = tmp_path / "qwen3-template"
    trainer, _ = train_module.setup(train_args(*start, path, str(root), str(out), "--max_steps", "1",
                                               "--version", "qwen3"))
    trainer.train()
    trainer.save_model(str(out))
    _, loaded, _, _ = load_pretrained_model(str(out), torch_dtype=torch.float32)
    assert loaded.config.model_type == "llava_qwen"  # a Qwen2 family: its own default is qwen_1_5
    assert loaded.config.conv_template == "qwen3" and default_conv_template(loaded.config) == "qwen3"


def test_vision_tower_and_projector_learning_rates_and_no_decay_groups(start, records, tmp_path):
    root, by_kind = records
    path = write_jsonl(tmp_path / "d.jsonl", [by_kind["text"], by_kind["image"]])
    trainer, _ = train_module.setup(train_args(*start, path, str(root), str(tmp_path / "o"),
                                               "--max_steps", "1",
                                               "--mm_vision_tower_lr", "2e-6", "--mm_projector_lr", "3e-4",
                                               "--weight_decay", "0.1"))
    optimizer = trainer.create_optimizer()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    no_decay = []
    for group in optimizer.param_groups:
        group_names = [names[id(p)] for p in group["params"]]
        if any("vision_tower" in n for n in group_names):
            assert group["lr"] == 2e-6 and all("vision_tower" in n for n in group_names)
        elif any("mm_projector" in n for n in group_names):
            assert group["lr"] == 3e-4
        if group["weight_decay"]:
            assert not any(n.endswith("bias") or "norm" in n for n in group_names)
        else:
            assert all(n.endswith("bias") or "norm" in n for n in group_names)
            no_decay += group_names
    assert any("layer_norm1" in n for n in no_decay) and any("input_layernorm" in n for n in no_decay)
    covered = sum(len(g["params"]) for g in optimizer.param_groups)
    assert covered == sum(1 for p in trainer.model.parameters() if p.requires_grad)


def test_every_trainable_parameter_gets_a_gradient(start, records, tmp_path):
    """What DDP without find_unused_parameters needs: the tower's layers after the selected one,
    its post-norm and head never reach the loss, so they are frozen; everything else trains."""
    root, by_kind = records
    path = write_jsonl(tmp_path / "d.jsonl", [by_kind["image"], by_kind["codec"]])
    trainer, _ = train_module.setup(train_args(*start, path, str(root), str(tmp_path / "o"),
                                               "--max_steps", "1"))
    model = trainer.model
    batch = next(iter(trainer.get_train_dataloader()))
    model(**batch).loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert [n for n, p in trainable.items() if p.grad is None] == []
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    tower = model.get_model().vision_tower.vision_tower
    last = len(tower.encoder.layers) - 1
    assert frozen and all(f"encoder.layers.{last}." in n or "layernorm_post" in n or ".head." in n
                          for n in frozen)
    assert any("vision_tower" in n and "encoder.layers.0." in n for n in trainable)


# ---------------------------------------------------------------- resume: same losses as uninterrupted
def test_a_killed_and_resumed_run_logs_the_same_losses(start, records, tmp_path):
    import subprocess
    import sys

    root, by_kind = records
    path = write_jsonl(tmp_path / "d.jsonl",
                       [by_kind[k] for k in ("text", "image", "images", "codec", "clip")] * 2)
    common = ["--max_steps", "8", "--group_by_modality_length", "True", "--lr_scheduler_type", "linear"]
    whole = train_module.train(train_args(*start, path, str(root), str(tmp_path / "whole"), *common))
    assert whole["steps"] == 8
    expected = [e["loss"]
                for e in json.loads((tmp_path / "whole" / "trainer_state.json").read_text())["log_history"]
                if "loss" in e]

    out = tmp_path / "killed"
    argv = train_args(*start, path, str(root), str(out), *common, "--save_strategy", "steps",
                      "--save_steps", "3")
    process = subprocess.Popen([sys.executable, "-m", "llava.train.train", *argv], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        import time

        deadline = time.time() + 240
        while not (out / "checkpoint-3" / "trainer_state.json").exists() and time.time() < deadline:
            if process.poll() is not None:
                break
            time.sleep(0.1)
    finally:
        process.kill()
        process.wait()
    assert (out / "checkpoint-3" / "trainer_state.json").exists()
    for later in out.glob("checkpoint-*"):  # keep only the first checkpoint: resume from step 3
        if later.name != "checkpoint-3":
            import shutil

            shutil.rmtree(later)
    resumed = train_module.train(argv)
    assert resumed["steps"] == 8 and resumed["samples"] == 5 * 2  # it ran steps 4..8 only
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [e["loss"] for e in log if "loss" in e]
    assert losses == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_auto_attention_is_flash_attn_where_installed_on_cuda_else_varlen(monkeypatch):
    import importlib.util

    from llava.train import model_setup

    assert model_setup.resolve_attention("auto") == "varlen"  # this machine: no CUDA, no flash-attn
    for explicit in ("sdpa", "eager", "varlen", "flash_attention_2"):
        assert model_setup.resolve_attention(explicit) == explicit
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert model_setup.resolve_attention("auto") == "varlen"  # CUDA without flash-attn: nothing to compile
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "flash_attn" else real_find_spec(name, *a))
    assert model_setup.resolve_attention("auto") == "flash_attention_2"
