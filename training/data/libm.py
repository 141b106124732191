"""Element-wise math through the C library, for seeded data that must be the same everywhere.

    popularity = 1.0 / libm.power(ranks, 0.9)
    decay = libm.apply(math.exp2, -age / half_life)

numpy's exp, log, power, expm1 and exp2 on float64 arrays take a SIMD path (Intel's SVML) on
CPUs with AVX-512 and the C library elsewhere; the two differ in the last bit now and then.
That is harmless for a model but not for a generator whose draws compare such values: the
same seed gave another data set on an AVX-512 machine. These helpers call the C library's
function on each element, the result numpy gives on CPUs without AVX-512, at about 60 ns an
element, so they are for the generators' catalogue-sized arrays, not for hot loops.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np


def apply(fn: Callable[[float], float], x: np.ndarray) -> np.ndarray:
    """fn (a `math` function of one float) on every element of x; float64, x's shape."""
    flat = np.asarray(x, dtype=np.float64).ravel()
    out = np.fromiter(map(fn, flat.tolist()), np.float64, flat.size)
    return out.reshape(np.shape(x))


def power(base: np.ndarray, exponent: float) -> np.ndarray:
    """base ** exponent, element-wise, float64."""
    return apply(lambda b: math.pow(b, exponent), base)
