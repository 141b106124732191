"""training.data.libm: the C library's result for every element, whatever the CPU."""

from __future__ import annotations

import math

import numpy as np

from training.data import libm


def test_power_is_the_c_librarys_pow_for_every_element():
    ranks = np.random.default_rng(0).permutation(5000) + 1
    got = libm.power(ranks, 0.9)
    assert got.dtype == np.float64 and got.shape == (5000,)
    assert got.tolist() == [math.pow(float(r), 0.9) for r in ranks.tolist()]


def test_apply_keeps_the_shape_and_uses_the_given_function():
    x = np.linspace(-3.0, 3.0, 12).reshape(3, 4)
    got = libm.apply(math.expm1, x)
    assert got.shape == (3, 4)
    assert got.ravel().tolist() == [math.expm1(v) for v in x.ravel().tolist()]
    np.testing.assert_allclose(got, np.expm1(x), rtol=1e-15)  # numpy agrees to the last bits
