"""Compiled per-pixel kernels (numba).

Why: motion compensation and block matching touch every pixel of every sampled frame
with data-dependent addressing (a vector per 4x4 cell). As whole-array numpy this needs
many full-size temporaries and gathers per frame, and on short clips the per-call
overhead alone exceeded the cost of decoding. Compiled loops do one pass per frame,
release the GIL (so the decode thread keeps running) and give the same integer results.

Kernels are compiled on first use and cached on disk next to the sources (or in numba's
user cache directory when the package directory is read-only), so later processes load
them in milliseconds. Set ``NUMBA_DISABLE_JIT=1`` to run them as plain Python for debugging.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numba

_F = TypeVar("_F", bound=Callable)


def jit(fn: _F) -> _F:
    """``numba.njit`` with the options every kernel here uses: cached, GIL released."""
    return numba.njit(cache=True, nogil=True)(fn)


__all__ = ["jit"]
