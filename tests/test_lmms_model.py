"""The lmms-eval model ``llava_ov_encoder`` on a tiny checkpoint, with lmms-eval's own request objects:
discovery, every request type on images, videos (codec and frames), frame lists and text, batches equal to
single requests, offline codec assets in both layouts, online codec for missing ones, loud failures."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from lmms_eval.api.instance import GenerationResult, Instance  # the dev and eval extras install lmms-eval
from PIL import Image
from train_helpers import sharpened, write_video

from llava.inference.generation import expand_prompt
from llava.processing.media import VisualInputs
from llava.processing.video import LLAVA_CODEC, load_codec_inputs

TASK, SPLIT = "tiny", "test"
CODEC = dict(codec_frames=8, codec_images=2, codec_canvas=64)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
              for h, w in [(48, 80), (64, 64)]]
    videos = [root / "clip_a.mp4", root / "clip_b.mp4"]
    write_video(videos[0], seed=1)
    write_video(videos[1], codec="libx265", seed=2, width=80)
    return root, images, [str(v) for v in videos]


def _lively_checkpoint(path, **multimodal) -> str:
    """A tiny checkpoint whose greedy answers differ from prompt to prompt (a plain random one answers
    every prompt with "\n", and batched-equals-single comparisons would compare empty strings)."""
    from llava.model.builder import load_pretrained_model
    from llava.model.tiny import save_tiny_checkpoint

    save_tiny_checkpoint(path, **multimodal)
    _, model, _, _ = load_pretrained_model(str(path), torch_dtype=torch.float32)
    sharpened(model).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return _lively_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


def _model(checkpoint, **args):
    from lmms_eval.models import get_model

    batch_size = args.pop("batch_size", 1)  # given as lmms-eval's CLI gives it, beside the model_args
    return get_model("llava_ov_encoder").create_from_arg_string(
        ",".join(f"{k}={v}" for k, v in {"pretrained": checkpoint, **CODEC, **args}.items()),
        {"batch_size": batch_size, "device": "cpu"},
    )


def _docs(media):
    _, images, videos = media
    frames = [Image.fromarray(np.full((32, 48, 3), 40 * i, dtype=np.uint8)) for i in range(4)]
    return [
        {"q": "What is shown?", "visual": [images[0]]},
        {"q": "Compare the two images.", "visual": images},
        {"q": "What moves in the video?", "visual": [videos[0]]},
        {"q": "Describe the clip.", "visual": [videos[1]]},
        {"q": "What happens in these frames?", "visual": [frames]},
        {"q": "Say a colour.", "visual": []},
    ]


def _attach(model, docs):
    model.task_dict = {TASK: {SPLIT: docs}}


def _visual(doc):
    return doc["visual"]


def _instance(kind, arguments, doc_id, task=TASK):
    return Instance(kind, arguments, idx=0, metadata={"task": task, "doc_id": doc_id, "repeats": 1})


def _generate_requests(docs, gen_kwargs=None):
    gen_kwargs = gen_kwargs or {"max_new_tokens": 6, "temperature": 0, "do_sample": False, "until": ["\n\n"]}
    return [_instance("generate_until", (doc["q"], dict(gen_kwargs), _visual, i, TASK, SPLIT), i)
            for i, doc in enumerate(docs)]


def _loglikelihood_requests(docs, continuations):
    return [_instance("loglikelihood", (doc["q"], cont, _visual, i, TASK, SPLIT), i)
            for i, doc in enumerate(docs) for cont in continuations]


def test_lmms_eval_finds_the_model_through_the_entry_point():
    from lmms_eval.models import get_model

    from llava.eval.lmms_model import LlavaOVEncoder

    assert get_model("llava_ov_encoder") is LlavaOVEncoder


@pytest.mark.parametrize("video_mode", ["codec", "frames"])
def test_generate_until_in_batches_equals_one_request_at_a_time(checkpoint, media, video_mode):
    docs = _docs(media)
    answers = {}
    for batch_size in (1, 2, 4):
        model = _model(checkpoint, video_mode=video_mode, max_frames=4, batch_size=batch_size)
        _attach(model, docs)
        answers[batch_size] = model.generate_until(_generate_requests(docs))
        if video_mode == "codec":
            assert (model.stats.online, model.stats.frames, model.stats.failed) == (2, 0, [])
        else:
            assert (model.stats.online, model.stats.frames) == (0, 2)
    assert len(answers[1]) == len(docs) and all(answers[1]) and len(set(answers[1])) > 3
    assert answers[2] == answers[1] and answers[4] == answers[1]


def test_anyres_images_of_different_sizes_in_a_batch_equal_each_alone(tmp_path, media):
    anyres = dict(image_aspect_ratio="anyres", mm_patch_merge_type="spatial_unpad",
                  image_grid_pinpoints=[[32, 64], [64, 32], [64, 64]], image_tile_size=32)
    checkpoint = _lively_checkpoint(tmp_path / "anyres", **anyres)
    _, images, _ = media
    docs = [{"q": "What is shown?", "visual": [images[0]]}, {"q": "And here?", "visual": [images[1]]},
            {"q": "Both?", "visual": images}]
    answers = []
    for batch_size in (1, 3):
        model = _model(checkpoint, batch_size=batch_size)
        assert model.model.config.image_aspect_ratio == "anyres"
        _attach(model, docs)
        answers.append(model.generate_until(_generate_requests(docs)))
    assert answers[0] == answers[1] and all(answers[0])


@pytest.mark.parametrize("video_mode", ["codec", "frames"])
def test_loglikelihood_in_batches_equals_one_request_and_the_full_forward(checkpoint, media, video_mode):
    from llava.processing.conversation import get_conv_template
    from llava.processing.prompts import tokenize_prompt

    docs = _docs(media)
    continuations = ["red", "a moving square"]
    results = {}
    for batch_size in (1, 3):
        model = _model(checkpoint, batch_size=batch_size, video_mode=video_mode, max_frames=4)
        _attach(model, docs)
        out = model.loglikelihood(_loglikelihood_requests(docs, continuations))
        assert all(isinstance(r, GenerationResult) for r in out)  # lmms-eval passes its payload through
        results[batch_size] = [r.text for r in out]
    for (a, greedy_a), (b, greedy_b) in zip(results[1], results[3]):
        assert a == pytest.approx(b, abs=1e-4) and greedy_a == greedy_b
    assert all(np.isfinite(loss) and loss > 0 for loss, _ in results[1])

    # the image request, by hand: one full forward over prompt + continuation
    model = _model(checkpoint)
    visual = model.processor([docs[0]["visual"][0]])
    conv = get_conv_template(model.conv_template)
    conv.append_message(conv.roles[0], "<image>\n" + docs[0]["q"])
    conv.append_message(conv.roles[1], None)
    prompt = tokenize_prompt(conv, model.tokenizer)
    target = torch.tensor(model.tokenizer("red", add_special_tokens=False).input_ids)
    with torch.no_grad():
        ids = expand_prompt(model.model, torch.cat([prompt, target]), visual)
        logits = model.model(input_ids=ids[None], **visual.model_kwargs()).logits[0]
    logprobs = torch.log_softmax(logits[-len(target) - 1:-1].float(), -1)
    expected = -float(logprobs.gather(1, target[:, None]).mean())  # lmms-eval's convention: a loss
    assert results[1][0][0] == pytest.approx(expected, abs=1e-4)


def test_greedy_is_true_only_for_the_argmax_continuation(checkpoint, media):
    docs = _docs(media)[:1]
    model = _model(checkpoint)
    _attach(model, docs)
    visual = model.processor(docs[0]["visual"])
    prompt = model._prompt(docs[0]["q"], visual)
    with torch.no_grad():
        ids = expand_prompt(model.model, prompt, visual)
        next_logits = model.model(input_ids=ids[None], **visual.model_kwargs()).logits[0, -1]
    ranked = next_logits.argsort(descending=True).tolist()
    tokenizer = model.tokenizer
    # tokens whose text tokenises back to them: the argmax one and a runner-up
    round_trip = [i for i in ranked[:50]
                  if tokenizer(tokenizer.decode([i]), add_special_tokens=False).input_ids == [i]]
    assert round_trip[0] == ranked[0], "the argmax token must round-trip"
    texts = [tokenizer.decode([i]) for i in round_trip[:2]]
    scores = [r.text for r in model.loglikelihood(_loglikelihood_requests(docs, texts[:2]))]
    assert scores[0][1] is True and scores[1][1] is False and scores[0][0] < scores[1][0]  # argmin wins


def test_multi_round_asks_each_round_the_task_gives(checkpoint, media):
    docs = _docs(media)  # an image, a video and a text-only doc below
    model = _model(checkpoint)
    _attach(model, docs)
    seen = []

    def doc_to_text(doc, previous_output, round_idx, previous_round_info):
        seen.append((doc["q"], round_idx, list(previous_output)))
        finished = round_idx == 3
        return doc["visual"], f"Round {round_idx}: and then?", finished, previous_output, {"round": round_idx}

    chosen = [0, 2, 5]
    requests = [_instance("generate_until_multi_round",
                          ("First question?", {"max_new_tokens": 4}, _visual, doc_to_text, i, TASK, SPLIT), i)
                for i in chosen]
    answers = model.generate_until_multi_round(requests)
    assert len(answers) == 3 and all(len(rounds) == 3 and all(rounds) for rounds in answers)
    for k, i in enumerate(chosen):
        asked = [(r, previous) for q, r, previous in seen if q == docs[i]["q"]]
        assert [r for r, _ in asked] == [1, 2, 3] and asked[-1][1] == answers[k]
    assert model.stats.online == 1  # the video was read once for its three rounds


def _write_upstream_asset(root, task, video, codec):
    folder = root / f"{task}_offline" / "assets" / video.stem
    folder.mkdir(parents=True)
    for i, mosaic in enumerate(codec.mosaics):
        Image.fromarray(mosaic).save(folder / f"mosaic_{i:03d}.jpg", quality=95)
    np.save(folder / "positions_thw.npy", codec.positions.astype(np.int32))


def _write_stage2_pack(root, task, video, codec):
    from cv_reader.batch import sample_stem

    folder = root / task / "packs" / sample_stem(video.stem, str(video))
    folder.mkdir(parents=True)
    paths = []
    for i, mosaic in enumerate(codec.mosaics):
        paths.append(str(folder / f"{video.stem}_{i:03d}.jpg"))
        Image.fromarray(mosaic).save(paths[-1], quality=95)
    np.save(folder / "positions_thw.npy", codec.positions.astype(np.int32))
    pack = {"image": paths, "positions_thw": str(folder / "positions_thw.npy")}
    (folder / "pack.json").write_text(json.dumps(pack))


def test_offline_assets_of_both_layouts_give_the_online_positions(checkpoint, media, tmp_path, capsys):
    from pathlib import Path

    _, _, videos = media
    params = LLAVA_CODEC.replace(sequence_length=8, keep_frames_equiv=2, square_size=64)
    online = [load_codec_inputs(v, params=params) for v in videos]
    upstream_root, ours_root = tmp_path / "upstream", tmp_path / "ours"
    # the task "tiny_sub" finds assets made for its group "tiny"
    _write_upstream_asset(upstream_root, "tiny", Path(videos[0]), online[0])
    _write_stage2_pack(ours_root, "tiny", Path(videos[1]), online[1])
    docs = [{"q": "?", "visual": [v]} for v in videos] + [{"q": "?", "visual": [videos[0]]}]
    model = _model(checkpoint, codec_offline_root=f"{upstream_root}:{ours_root}")
    for video, codec in zip(videos, online):
        inputs = model._video(video, "tiny_sub")
        assert torch.equal(inputs.patch_positions[0], torch.as_tensor(codec.positions).long())
        assert inputs.images[0].shape == model.processor.codec(codec).images[0].shape
    assert (model.stats.from_assets, model.stats.online) == (2, 0)

    # a task with no assets: computed online and counted
    model.task_dict = {"other": {SPLIT: docs}}
    requests = [_instance("generate_until", ("?", {"max_new_tokens": 2}, _visual, i, "other", SPLIT),
                          i, "other") for i in range(len(docs))]
    model.generate_until(requests)
    assert (model.stats.from_assets, model.stats.online) == (2, 3)
    assert "2 from precomputed codec assets, 3 codec computed online" in capsys.readouterr().out


def test_a_video_that_cannot_be_read_is_reported_not_replaced(checkpoint, media, tmp_path, capsys):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    docs = _docs(media)[:1] + [{"q": "What moves?", "visual": [str(broken)]}]
    model = _model(checkpoint, batch_size=2)
    _attach(model, docs)
    answers = model.generate_until(_generate_requests(docs))
    alone = _model(checkpoint)
    _attach(alone, docs[:1])
    assert answers[1] == "" and answers[0] == alone.generate_until(_generate_requests(docs[:1]))[0]
    scores = [r.text for r in model.loglikelihood(_loglikelihood_requests(docs, ["red"]))]
    assert scores[1] == (float("inf"), False) and np.isfinite(scores[0][0])
    assert [video for video, _ in model.stats.failed] == [str(broken)]  # once, though asked twice
    out = capsys.readouterr().out
    assert "1 failed" in out and f"failed: {broken}: not a readable video" in out


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_an_image_that_cannot_be_used_is_skipped_and_counted(checkpoint, media, tmp_path, capsys):
    """A decompression bomb or a FIFO given as a document's image: that request is answered empty, the run
    goes on, and the summary counts and names it."""
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12_000, 10_000)).save(bomb)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    docs = _docs(media)[:1] + [{"q": "What is it?", "visual": [str(bomb)]}, {"q": "And this?", "visual": [str(fifo)]}]
    model = _model(checkpoint, batch_size=3)
    _attach(model, docs)
    answers = model.generate_until(_generate_requests(docs))
    assert answers[1:] == ["", ""] and answers[0]
    assert [image for image, _ in model.stats.failed_images] == [str(bomb), str(fifo)]
    out = capsys.readouterr().out
    assert "images: 2 failed" in out and "120,000,000 pixels" in out and "not a regular file (a FIFO)" in out


def test_bad_model_args_are_refused_by_name(checkpoint):
    with pytest.raises(ValueError, match="unknown model_args \\['frames'\\]"):
        _model(checkpoint, frames=8)
    with pytest.raises(ValueError, match="torch_dtype"):
        _model(checkpoint, torch_dtype="int8")
    with pytest.raises(ValueError, match="codec_offline_root"):
        _model(checkpoint, codec_offline_root="/nonexistent/assets")


@pytest.mark.parametrize("template, answer",
                         [("qwen_1_5", "Yes.\nNo"), ("qwen3", "Yes.\nNo"), ("plain", "Yes.")])
def test_answers_stop_where_the_template_says(checkpoint, template, answer):
    """The stop string is the conversation template's (plain: its "\\n" separator), not always <|im_end|>;
    lmms-eval's ``until`` strings still cut after it."""
    from train_helpers import scripted

    model = _model(checkpoint, conv_template=template)
    scripted(model.model, model.tokenizer, "Yes.\nNo<|im_end|>More\nAgain")
    prompt = (model._prompt("Say yes.", VisualInputs()), VisualInputs())
    assert model._generate([prompt, prompt], {"max_new_tokens": 12}) == [answer] * 2
    assert model._generate([prompt], {"max_new_tokens": 12, "until": ["s."]}) == ["Ye"]


def test_assets_of_another_canvas_are_read_at_their_own(checkpoint, media, tmp_path, capsys):
    """Stage-2 packs made at another canvas, frame count and mosaic count than the model args' online codec
    options (T 16, 32 px, 4 mosaics vs T 8, 64 px, 2) are assets all the same, counted by geometry."""
    from train_helpers import stage2_pack

    _, _, videos = media
    packs = tmp_path / "root" / "tiny" / "packs"
    record = stage2_pack(tmp_path, videos[0], "a", frames=16, canvas=32, images=4, out_image_root=packs)
    model = _model(checkpoint, codec_offline_root=str(tmp_path / "root"))
    inputs = model._video(videos[0], "tiny")
    assert inputs.images[0].shape == (3, 4, 32, 32) and inputs.placeholder_counts == [4]
    assert torch.equal(inputs.patch_positions[0], torch.as_tensor(np.load(record["positions_thw"])).long())
    model._video(videos[1], "tiny")  # no asset: online, at the model args' options
    assert (model.stats.from_assets, model.stats.online, model.stats.failed) == (1, 1, [])
    summary = model.stats.summary()
    assert "codec assets by geometry: 4 mosaics of 32x32 px (2x2 patches of 16 px): 1" in summary
    _attach(model, [{"q": "What moves?", "visual": [videos[0]]}])
    assert len(model.generate_until(_generate_requests(model.task_dict[TASK][SPLIT]))) == 1
    assert model.stats.failed == [] and model.stats.from_assets == 2
