"""Exceptions raised by the codec reader.

Every bad-input problem surfaces as a :class:`VideoReadError` that names the file and
the problem, so batch tools can log one line per failed sample and carry on.
"""

from __future__ import annotations


class VideoReadError(ValueError):
    """A video could not be read (missing, not a video, truncated, empty, ...)."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class UnsupportedCodecError(VideoReadError):
    """The video stream uses a codec this reader cannot (or is told not to) decode."""

    def __init__(self, path: object, codec: str, problem: str | None = None) -> None:
        self.codec = codec
        super().__init__(path, problem or f"unsupported video codec {codec!r}")
