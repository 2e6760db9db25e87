"""The one power-of-two rounding rule (docs/numerics.md, "Weight rounding"): numpy and torch
give the same exponent on a dense grid, the edges are where the docs say, and the compiler, the
SmartDeal pruner (numpy and straight-through torch) and the pruning bench all round by it."""

import doctest
import math

import numpy as np
import pytest
import torch

from gsaccel.hw.config import POW2_EXP_MAX
from gsaccel.sw.format import matrix, pow2_exponent, pow2_round
from gsaccel.sw.prune import SMARTDEAL_EXP_MAX, SMARTDEAL_EXP_MIN, pow2_quantize

#: (exp_min, exp_max) of the two users: the core's pow2 code (compiler) and SmartDeal's C.
RANGES = [(0, POW2_EXP_MAX), (SMARTDEAL_EXP_MIN, SMARTDEAL_EXP_MAX)]


def reference_exponent(v, exp_min, exp_max):
    """The rule as prose, one exact Python float at a time: |v| = m·2**j with m in [1, 2)
    (frexp is exact); round up to 2**(j+1) when m >= 1.5; clip to [exp_min, exp_max]."""
    if v == 0:
        return exp_min
    mantissa, exponent = math.frexp(abs(v))          # |v| = mantissa · 2**exponent, [0.5, 1)
    j = exponent - 1
    k = j + 1 if 2 * mantissa >= 1.5 else j
    return min(max(k, exp_min), exp_max)


def grid():
    """float32-representable values: every midpoint 1.5·2**k and power 2**k with both float32
    neighbours, the clip edges of both ranges, dense linear and geometric sweeps, 0, −0.0,
    tiny and huge values, all with both signs."""
    ks = np.arange(-16, 22)
    edges = np.concatenate([1.5 * 2.0 ** ks, 2.0 ** ks])
    sweeps = np.concatenate([np.linspace(0, 70000, 30001), np.geomspace(1e-9, 1e7, 30001),
                             np.linspace(0, 4, 4001)])
    values = np.concatenate([edges, sweeps]).astype(np.float32)
    values = np.concatenate([values, np.nextafter(values, np.float32(np.inf)),
                             np.nextafter(values, np.float32(0)),
                             np.array([0.0, 1e-38, 1e-45, 3e38], np.float32)])
    values = np.concatenate([values, -values, np.array([-0.0], np.float32)])
    return values


@pytest.mark.parametrize("exp_min, exp_max", RANGES)
def test_numpy_equals_torch_on_a_dense_grid(exp_min, exp_max):
    values = grid()
    expected = pow2_round(values.astype(np.float64), exp_min=exp_min, exp_max=exp_max)
    for dtype in (torch.float32, torch.float64):
        got = pow2_round(torch.tensor(values, dtype=dtype), exp_min=exp_min, exp_max=exp_max,
                         xp=torch)
        assert got.dtype == dtype
        np.testing.assert_array_equal(got.numpy().astype(np.float64), expected)
    for zero_below in (2.0 ** exp_min, 0.3):
        a = pow2_round(values.astype(np.float64), exp_min=exp_min, exp_max=exp_max,
                       zero_below=zero_below)
        b = pow2_round(torch.tensor(values), exp_min=exp_min, exp_max=exp_max,
                       zero_below=zero_below, xp=torch)
        np.testing.assert_array_equal(b.numpy().astype(np.float64), a)


@pytest.mark.parametrize("exp_min, exp_max", RANGES)
def test_the_rule_as_written(exp_min, exp_max):
    values = grid().astype(np.float64)
    got = pow2_exponent(values, exp_min, exp_max)
    expected = [reference_exponent(float(v), exp_min, exp_max) for v in values]
    np.testing.assert_array_equal(got, expected)
    signs = np.where(values < 0, -1.0, 1.0)       # 0 and −0.0 give +2**exp_min
    np.testing.assert_array_equal(pow2_round(values, exp_min=exp_min, exp_max=exp_max),
                                  signs * 2.0 ** np.array(expected))


def test_edges():
    below = np.nextafter(1.5, 0.0)
    rounded = pow2_round([1.0, below, 1.5, 3.0, -1.5, -np.nextafter(3.0, 0.0), 0.0, -0.0, 1e-30,
                          2.0 ** 15, 1.5 * 2.0 ** 14, np.nextafter(1.5 * 2.0 ** 14, 0.0), 1e30])
    assert rounded.tolist() == [1, 1, 2, 4, -2, -2, 1, 1, 1, 2 ** 15, 2 ** 15, 2 ** 14, 2 ** 15]
    assert not np.signbit(rounded[7])                       # −0.0 rounds to +1, a kept weight
    smartdeal = pow2_round([0.0, 2.0 ** -11, 1.5 * 2.0 ** -11, 40.0, -1e9, 0.01, 0.001],
                           exp_min=-10, exp_max=5, zero_below=0.005)
    assert smartdeal.tolist() == [0.0, 0.0, 0.0, 32.0, -32.0, 2.0 ** -7, 0.0]


def test_every_user_rounds_by_the_one_rule():
    from gsaccel.sw.bench.pruning import _quantise_pow2
    from gsaccel.sw.compile import quantize_weights
    from gsaccel.sw.prune.pruning import _SmartDealWeight
    values = grid().astype(np.float64)
    values = values[np.abs(values) < 1e6]
    # The compiler: integer ±2**k, k in 0..15, of weight / 2**scale.
    np.testing.assert_array_equal(quantize_weights(values * 8, None, 3, "pow2"),
                                  pow2_round(values).astype(np.int64))
    # SmartDeal: numpy, torch, and the straight-through forward of the trainable C.
    np.testing.assert_array_equal(pow2_quantize(values),
                                  pow2_round(values, exp_min=-10, exp_max=5))
    c = values[:3000].reshape(-1, 3).astype(np.float32)
    param = _SmartDealWeight(np.where(c == 0, 1.0, c), np.eye(3), (c.shape[0], 3))
    np.testing.assert_array_equal(param.quantised_c().detach().numpy(),
                                  pow2_quantize(np.where(c == 0, 1.0, c)))
    # The pruning bench's byte count: the same rule at a scale of max / 2**15.
    m = np.where(np.abs(values) > 1e-3, values, 0.0)[:4000].reshape(40, 100)
    scale = np.abs(m).max() / 2.0 ** 15
    np.testing.assert_array_equal(_quantise_pow2(m), (pow2_round(m / scale) * (m != 0)))


def test_docstring_example():
    result = doctest.testmod(matrix)
    assert result.attempted > 0 and result.failed == 0
