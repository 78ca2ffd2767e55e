"""Exceptions raised for media that cannot be used.

One hierarchy for every entry point: :class:`MediaError` is the base that the chat CLI,
the training dataset and the server catch. Each error names the file and the problem, so
a batch tool logs one line per failed sample and carries on.

``MediaError``
  ``VideoReadError``        a video cannot be read (missing, not a video, truncated, empty, ...)
    ``UnsupportedCodecError``  its codec cannot (or is told not to) be decoded
  ``CodecInputError``       precomputed codec inputs (mosaics + ``positions_thw.npy``) are
                            missing or inconsistent
  ``ImageReadError``        an image file cannot be read
    ``ImageTooLargeError``     it has more pixels than allowed (a decompression bomb)
"""

from __future__ import annotations


class MediaError(ValueError):
    """A media file cannot be used; ``path`` names it and ``problem`` says why."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # picklable across worker processes despite the two-argument __init__
        return type(self), (self.path, self.problem)


class VideoReadError(MediaError):
    """A video could not be read (missing, not a video, truncated, empty, ...)."""


class UnsupportedCodecError(VideoReadError):
    """The video stream uses a codec this reader cannot (or is told not to) decode."""

    def __init__(self, path: object, codec: str, problem: str | None = None) -> None:
        self.codec = codec
        super().__init__(path, problem or f"unsupported video codec {codec!r}")

    def __reduce__(self):
        return type(self), (self.path, self.codec, self.problem)


class CodecInputError(MediaError):
    """Precomputed codec inputs (mosaic images + ``positions_thw.npy``) are missing or inconsistent."""


class ImageReadError(MediaError):
    """An image file cannot be read."""


class ImageTooLargeError(ImageReadError):
    """An image declares more pixels than allowed (checked from its header, before decoding)."""
