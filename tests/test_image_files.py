"""How every entry point opens an image file (``cv_reader.read_image``, through ``llava.processing.media``): upright
by its EXIF orientation, high-bit-depth samples scaled rather than clipped, regular files only (a FIFO is
refused at once, never opened for a blocking read), and a decompression bomb refused from its header."""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import pytest
from cv_reader import ImageReadError, ImageTooLargeError, MediaError, read_image
from PIL import Image

from llava.model.tiny import build_tiny_model
from llava.processing.media import VisualProcessor


@pytest.fixture(scope="module")
def visual():
    _, model, processor = build_tiny_model("qwen2", seed=0)
    return VisualProcessor(processor, model.config)


def _exif_rotated_jpeg(path, orientation: int) -> np.ndarray:
    """A 40x20 JPEG whose left half is red, stored with an EXIF orientation tag; returns the upright pixels
    a viewer shows."""
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (230, 20, 20)
    pixels[:, 20:] = (20, 20, 230)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, quality=95, exif=exif.tobytes())
    return np.rot90(pixels, k=-1) if orientation == 6 else pixels  # 6: rotate 90 degrees clockwise to view


@pytest.mark.parametrize("orientation", [1, 6])
def test_exif_orientation_is_applied(tmp_path, visual, orientation):
    path = tmp_path / "photo.jpg"
    upright = _exif_rotated_jpeg(path, orientation)
    image = np.asarray(read_image(path))
    assert image.shape == upright.shape
    assert np.abs(image.astype(int) - upright).mean() < 6
    through_layer = visual.image(str(path))
    assert through_layer.image_sizes == [(upright.shape[1], upright.shape[0])]  # (width, height), upright


def _sixteen_bit_png(path) -> np.ndarray:
    ramp = np.linspace(0, 65535, 64 * 96).reshape(64, 96).astype(np.uint16)
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == "I;16"
    return ramp


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path, visual):
    path = tmp_path / "depth.png"
    ramp = _sixteen_bit_png(path)
    image = np.asarray(read_image(path))
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    assert image.dtype == np.uint8 and image.shape == (*ramp.shape, 3)
    np.testing.assert_array_equal(image[..., 0], expected)
    assert (image == 255).mean() < 0.01  # PIL's own convert("RGB") leaves 99.6% of these pixels at 255
    # the same picture stored in 8 bits reaches the model the same way
    eight_bit = tmp_path / "depth8.png"
    Image.fromarray(expected).save(eight_bit)
    a, b = visual.image(str(path)).images[0], visual.image(str(eight_bit)).images[0]
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    # and a 16-bit image handed over already opened (lmms-eval's documents) too
    np.testing.assert_array_equal(visual.image(Image.open(path)).images[0].numpy(), b.numpy())


def test_float_and_32_bit_images_are_scaled(tmp_path):
    values = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    np.testing.assert_array_equal(np.asarray(read_image(_tiff(tmp_path / "f.tif", values)))[..., 0],
                                  np.rint(values * 255).astype(np.uint8))
    wide = (values * 65535).astype(np.int32)
    np.testing.assert_array_equal(np.asarray(read_image(_tiff(tmp_path / "i.tif", wide)))[..., 0],
                                  np.rint(wide / 257.0).astype(np.uint8))


def _tiff(path, array):
    Image.fromarray(array).save(path)
    return path


def test_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(_error(lambda: read_image(fifo))), daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # the open blocks waiting for a writer: release it, then fail
        with open(fifo, "wb"):
            pass
        pytest.fail("read_image blocked on a FIFO")
    assert isinstance(outcome[0], ImageReadError) and "not a regular file (a FIFO)" in str(outcome[0])


@pytest.mark.parametrize("name, problem", [
    ("missing.png", "image not found"),
    ("folder", "not a regular file (a directory)"),
    ("nul\x00byte.png", "NUL byte"),
    ("x" * 400, "cannot open image"),
    ("loop", "cannot open image"),
])
def test_special_paths_are_clear_errors(tmp_path, name, problem):
    (tmp_path / "folder").mkdir()
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    error = _error(lambda: read_image(os.path.join(tmp_path, name)))
    assert isinstance(error, ImageReadError) and problem in str(error)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL's own warning, before ours
def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (12_000, 10_000)).save(bomb)  # 120 megapixels in a few kB
    assert bomb.stat().st_size < 100_000
    error = _error(lambda: read_image(bomb))
    assert isinstance(error, ImageTooLargeError) and "12000x10000 is 120,000,000 pixels" in str(error)
    error = _error(lambda: read_image(bomb.read_bytes(), max_pixels=1000, name="upload"))
    assert isinstance(error, ImageTooLargeError) and str(error).startswith("upload: 12000x10000")
    small = io.BytesIO()
    Image.new("RGB", (30, 20)).save(small, format="PNG")
    assert read_image(small.getvalue(), max_pixels=600).size == (30, 20)


def _error(call) -> BaseException | None:
    try:
        call()
    except MediaError as error:
        return error
    return None
