"""Opening media files and images: the one rule every entry point follows.

Why here: the codec reader is the lowest layer that reads user files (videos, mosaics), and the
model's input layer, the trainer, the evaluator, the chat CLI and the server all sit above it, so
a picture is opened the same way whichever of them is handed it:

* a path must name a **regular file**: a FIFO, a device, a socket or a directory is refused at
  once (the file is opened non-blocking and checked before anything reads it, so a FIFO cannot
  hang the caller);
* the **pixel count** is read from the image header and checked against ``max_pixels`` before
  the pixels are decoded (a decompression bomb is refused without allocating its pixels);
* the **EXIF orientation** is applied, so a phone photo comes out upright (video rotation is
  applied by the video reader the same way);
* **high-bit-depth** images (16-bit grey PNG / TIFF, 32-bit integer or float) are scaled to
  8 bits, not clipped; every other mode goes to RGB through PIL (palette, grey, CMYK; alpha is
  dropped, as LLaVA does).

Every problem raises :class:`~cv_reader.errors.ImageReadError` naming the image (an
:class:`~cv_reader.errors.ImageTooLargeError` for too many pixels).
"""

from __future__ import annotations

import io
import os
import stat
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageReadError, ImageTooLargeError, MediaError

#: Exceptions PIL's decoders raise for files they cannot read (truncated, malformed chunks, ...).
_DECODE_ERRORS = (
    OSError, ValueError, SyntaxError, EOFError, UnidentifiedImageError, Image.DecompressionBombError,
)

#: Modes whose samples are wider than 8 bits, and the sample value that maps to 255.
_HIGH_BIT_DEPTH = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}


def default_max_pixels() -> int:
    """PIL's own decompression-bomb threshold (``Image.MAX_IMAGE_PIXELS``, about 89 megapixels),
    read at call time so that a program that raises PIL's limit raises this one too."""
    return int(Image.MAX_IMAGE_PIXELS or 2**62)


def open_regular_file(
    path: str | os.PathLike, error: type[MediaError] = MediaError, what: str = "file"
) -> BinaryIO:
    """``path`` opened for reading, or ``error`` when it is not a readable regular file (the message
    calls it ``what``: "file not found", "positions file is not a regular file (a FIFO)").

    Opened with ``O_NONBLOCK`` and checked with ``fstat`` on the open descriptor, so a FIFO
    (which would block ``open`` until a writer comes) or a device is refused at once, and the
    check holds for the file actually read (no race between a check and the open).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise error(_printable(path), _os_problem(exc, what)) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(_printable(path), f"{what} is not a regular file ({_file_kind(mode)})")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_regular_file(
    path: str | os.PathLike, error: type[MediaError] = MediaError, what: str = "file"
) -> None:
    """Raise ``error`` unless ``path`` is an existing, readable regular file (:func:`open_regular_file`)."""
    open_regular_file(path, error, what).close()


def read_image(
    source: str | os.PathLike | bytes | BinaryIO,
    *,
    max_pixels: int | None = None,
    name: str | None = None,
    what: str = "image",
) -> Image.Image:
    """An upright 8-bit RGB image from a path, the bytes of an image file, or a binary file object.

    ``max_pixels`` (default :func:`default_max_pixels`) bounds ``width * height`` as the header
    declares it, before decoding. ``name`` is how errors name the image (default: the path) and
    ``what`` how their text calls it ("image not found", "cannot read mosaic image (...)").
    """
    limit = default_max_pixels() if max_pixels is None else int(max_pixels)
    if isinstance(source, (str, os.PathLike)):
        label = name or _printable(source)
        handle = open_regular_file(source, ImageReadError, what)
    else:
        label = name or "image"
        handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        with handle:  # the image is decoded before the file closes, and then needs no file
            image = Image.open(handle)
            width, height = image.size
            if width * height > limit:
                raise ImageTooLargeError(
                    label, f"{width}x{height} is {width * height:,} pixels, more than the limit of {limit:,} "
                    "(a decompression bomb, or an image to downscale first)"
                )
            image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return to_rgb8(image)
    except Image.DecompressionBombError as exc:  # over PIL's own hard limit (twice MAX_IMAGE_PIXELS)
        raise ImageTooLargeError(label, f"too many pixels ({exc})") from None
    except MediaError:
        raise
    except _DECODE_ERRORS as exc:
        why = "not an image format PIL reads" if isinstance(exc, UnidentifiedImageError) else str(exc)
        raise ImageReadError(label, f"cannot read {what} ({why or type(exc).__name__})") from None


#: EXIF orientations that turn an image a quarter turn (``read_image`` applies them: width and height swap).
_QUARTER_TURNS = frozenset({5, 6, 7, 8})


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` of the upright image :func:`read_image` would give, from the header alone
    (nothing decoded): what a dataset needs to count an image's tokens before reading it."""
    with open_regular_file(path, ImageReadError, "image") as handle:
        try:
            image = Image.open(handle)
            width, height = image.size
            turned = image.getexif().get(0x0112) in _QUARTER_TURNS
        except _DECODE_ERRORS as exc:
            raise ImageReadError(_printable(path), f"cannot read image ({exc})") from None
    return (height, width) if turned else (width, height)


def to_rgb8(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB; samples wider than 8 bits are scaled into 0..255, not clipped.

    16-bit and 32-bit integer images are taken to span 0..65535 (16-bit PNG and TIFF files open
    in those modes), float images 0..1.
    """
    if image.mode == "RGB":
        return image
    top = _HIGH_BIT_DEPTH.get(image.mode)
    if top is None:
        return image.convert("RGB")
    samples = np.asarray(image)
    grey = np.empty(samples.shape, np.uint8)
    for start in range(0, len(samples), 256):  # in row blocks: the float copy stays small
        block = np.nan_to_num(samples[start:start + 256].astype(np.float32), nan=0.0, posinf=top, neginf=0.0)
        grey[start:start + 256] = np.clip(np.rint(block * (255.0 / top)), 0, 255)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), "not a plain file")


def _os_problem(exc: BaseException, what: str) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"{what} not found"
    if isinstance(exc, ValueError):
        return f"not a valid {what} path (it holds a NUL byte)"
    return f"cannot open {what} ({exc.strerror or exc})" if isinstance(exc, OSError) else str(exc)


def _printable(path: str | os.PathLike) -> str:
    text = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path)
    text = text.replace("\x00", "\\x00")
    return text if len(text) <= 300 else f"{text[:140]}...{text[-140:]}"


__all__ = [
    "check_regular_file",
    "default_max_pixels",
    "open_regular_file",
    "read_image",
    "read_image_size",
    "to_rgb8",
]
