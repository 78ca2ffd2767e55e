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


def jit(fn: _F | None = None, *, inline: bool = False) -> _F | Callable[[_F], _F]:
    """``numba.njit`` with the options every kernel here uses: cached, GIL released.

    ``@jit(inline=True)`` marks a small helper that numba should inline into its callers
    (per-cell helpers called thousands of times per frame).
    """

    def wrap(f: _F) -> _F:
        return numba.njit(cache=True, nogil=True, inline="always" if inline else "never")(f)

    return wrap(fn) if fn is not None else wrap


__all__ = ["jit"]
