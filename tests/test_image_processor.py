"""OneVisionEncoderImageProcessor: native-resolution resizing, CLIP normalisation, video frames."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from encoder_utils import tiny_encoder
from PIL import Image

from llava.model import OneVisionEncoderImageProcessor
from llava.model.image_processing_onevision_encoder import (
    CLIP_MEAN,
    CLIP_STD,
    fit_to_patch_grid,
)
from llava.sample_data import sample_video_path


@pytest.mark.parametrize(
    "size, patch, budget",
    [((480, 640), 14, (56 * 56, 448 * 448)), ((37, 1001), 16, (64 * 64, 512 * 512)), ((5, 7), 14, (56 * 56, 10**6))],
)
def test_fit_to_patch_grid_respects_patch_and_budget(size, patch, budget):
    height, width = fit_to_patch_grid(*size, patch, *budget)
    assert height % patch == 0 and width % patch == 0
    assert height * width <= budget[1]
    assert height * width >= budget[0] or height * width >= (budget[0] // patch**2 - 1) * patch**2
    assert abs(np.log((height / width) / (size[0] / size[1]))) < 0.35


def test_native_resolution_keeps_a_fitting_image_unchanged():
    assert fit_to_patch_grid(224, 336, 14, 56 * 56, 10**6) == (224, 336)


def test_fit_to_patch_grid_rejects_bad_budgets():
    with pytest.raises(ValueError, match="min_pixels"):
        fit_to_patch_grid(10, 10, 14, 1000, 10)
    with pytest.raises(ValueError, match="empty side"):
        fit_to_patch_grid(0, 10, 14, 1, 1000)


def test_constant_image_is_clip_normalised():
    processor = OneVisionEncoderImageProcessor(patch_size=14)
    image = Image.new("RGB", (28, 42), color=(255, 0, 128))
    out = processor(images=image, return_tensors="pt")
    pixels = out["pixel_values"]
    assert pixels.shape == (1, 3, 42, 28)
    expected = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(pixels[0, :, 5, 5], expected, atol=1e-5, rtol=1e-5)
    assert out["image_sizes"].tolist() == [[28, 42]]  # (width, height), as image.size


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_non_rgb_images_become_rgb(mode):
    image = Image.new(mode, (20, 20))
    out = OneVisionEncoderImageProcessor(patch_size=4)(images=image, return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, 20, 20)


def test_numpy_chw_and_float_inputs():
    processor = OneVisionEncoderImageProcessor(patch_size=4)
    hwc = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    from_hwc = processor(images=hwc)["pixel_values"]
    from_chw = processor(images=hwc.transpose(2, 0, 1))["pixel_values"]
    from_float = processor(images=hwc.astype(np.float32) / 255)["pixel_values"]
    np.testing.assert_allclose(from_hwc, from_chw)
    np.testing.assert_allclose(from_hwc, from_float, atol=1e-4)


def test_images_of_different_sizes_come_back_as_a_list():
    processor = OneVisionEncoderImageProcessor(patch_size=8)
    out = processor(images=[Image.new("RGB", (16, 32)), Image.new("RGB", (40, 24))], return_tensors="pt")
    assert isinstance(out["pixel_values"], list)
    assert [tuple(p.shape) for p in out["pixel_values"]] == [(3, 32, 16), (3, 24, 40)]


def test_fixed_size_and_budget_overrides():
    processor = OneVisionEncoderImageProcessor(patch_size=16, size={"height": 32, "width": 48})
    assert processor(images=Image.new("RGB", (300, 200)))["pixel_values"].shape == (1, 3, 32, 48)
    small = processor(images=Image.new("RGB", (300, 200)), size=None, max_pixels=64 * 64)["pixel_values"]
    assert small.shape[2] * small.shape[3] <= 64 * 64 and small.shape[2] % 16 == 0


def test_frame_lists_become_video_batches():
    processor = OneVisionEncoderImageProcessor(patch_size=4)
    rng = np.random.default_rng(1)
    clip = [rng.integers(0, 256, (12, 20, 3), dtype=np.uint8) for _ in range(5)]
    single = processor(videos=clip, return_tensors="pt")["pixel_values_videos"]
    assert single.shape == (1, 3, 5, 12, 20)
    batch = processor(videos=[clip, clip], return_tensors="pt")["pixel_values_videos"]
    assert batch.shape == (2, 3, 5, 12, 20)
    stacked = processor(videos=np.stack(clip), return_tensors="pt")["pixel_values_videos"]
    torch.testing.assert_close(stacked, single)
    frame0 = processor(images=clip[0], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(single[:, :, 0], frame0)


@pytest.mark.parametrize(
    "bad, message",
    [
        ("not an image", "expected a PIL image"),
        (np.zeros((2, 2, 2, 2, 2), dtype=np.uint8), "HxW"),
        (np.zeros((8, 8, 5), dtype=np.uint8), "channels"),
        (np.zeros((8, 8, 3), dtype=np.int64), "dtype"),
    ],
)
def test_bad_images_raise(bad, message):
    with pytest.raises(ValueError, match=message):
        OneVisionEncoderImageProcessor(patch_size=4)(images=bad)


def test_missing_inputs_and_unknown_options_raise():
    processor = OneVisionEncoderImageProcessor()
    with pytest.raises(ValueError, match="images"):
        processor()
    with pytest.raises(ValueError, match="unknown preprocessing options"):
        processor(images=Image.new("RGB", (8, 8)), crop_pct=0.9)
    with pytest.raises(ValueError, match="no frames"):
        processor(videos=[[]])


def test_real_sample_video_frames_through_processor_and_encoder():
    """Frames of a public H.264 clip -> processor -> encoder, image and video paths agree in shape."""
    with av.open(str(sample_video_path())) as container:
        frames = [frame.to_image() for _, frame in zip(range(4), container.decode(video=0))]
    processor = OneVisionEncoderImageProcessor(patch_size=4, max_pixels=32 * 48)
    video = processor(videos=frames, return_tensors="pt")["pixel_values_videos"]
    assert video.shape[:3] == (1, 3, 4)
    assert video.shape[3] * video.shape[4] <= 32 * 48
    model = tiny_encoder()
    with torch.no_grad():
        out = model(video)
    grid = (video.shape[3] // 4) * (video.shape[4] // 4)
    assert out.last_hidden_state.shape == (1, 4 * grid, 64)
    assert torch.isfinite(out.last_hidden_state).all()
