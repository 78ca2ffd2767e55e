"""cv_reader: codec-style patch selection for video (motion vectors, residuals, top-K patches).

PyAV + numpy, with the per-pixel loops compiled by numba: H.264/MPEG motion vectors come
from FFmpeg's side data, other codecs get block-matching estimates; no patched FFmpeg build
is needed. The public names are those of :mod:`cv_reader.api`.
"""

from . import api
from .api import *  # noqa: F403 - the package re-exports exactly api.__all__

__version__ = "0.1.0"

__all__ = list(api.__all__)
