"""SmartDeal: W ≈ C·B with C signed powers of two (or zero) on a pattern, and the C' layout the
compiler packs."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from gsaccel.sw.errors import PatternError
from gsaccel.sw.format import GSMatrix
from gsaccel.sw.prune import (SMARTDEAL_EXP_MAX, SMARTDEAL_EXP_MIN, PatternInfo, gemm_view,
                              pattern_info, pow2_quantize, prune, restore, smartdeal_cprime,
                              smartdeal_decompose, smartdeal_factors)
from test_prune import check_gs, check_one_by_n


def assert_pow2_or_zero(c):
    """Independent check: every nonzero is ±2**k with integer k in the SmartDeal range."""
    nonzero = c[c != 0]
    mantissa, exponent = np.frexp(np.abs(nonzero))          # |v| = m · 2**x, m in [0.5, 1)
    assert np.all(mantissa == 0.5), "not a power of two"
    k = exponent - 1
    assert k.min() >= SMARTDEAL_EXP_MIN and k.max() <= SMARTDEAL_EXP_MAX


def test_pow2_quantize_rounds_in_exponent_domain():
    v = np.array([1.0, 1.49, 1.5, 2.9, 3.0, -0.74, -0.76, 100.0, 1e-9, 0.0, -6.0])
    q = pow2_quantize(v)
    assert q.tolist() == [1.0, 1.0, 2.0, 2.0, 4.0, -0.5, -1.0, 32.0, 2.0 ** -10, 2.0 ** -10,
                          -8.0]
    assert pow2_quantize(v, zero_below=0.1).tolist()[8:10] == [0.0, 0.0]


@pytest.mark.parametrize("c_pattern", ["1xN", "gs-gather", "gs-scatter", "unstructured"])
@pytest.mark.parametrize("shape", [(16, 64), (10, 20), (12, 27)])
def test_decompose_factors(rng, c_pattern, shape):
    weights = rng.standard_normal(shape) * 0.1
    rows, cols = shape
    c, b, order, error = smartdeal_decompose(weights, 0.5, 8, c_pattern=c_pattern)
    groups = math.ceil(cols / 3)
    assert c.shape == (rows * groups, 3) and b.shape == (3, 3)
    assert_pow2_or_zero(c)
    recon = (c @ b).reshape(rows, 3 * groups)[:, :cols]
    assert np.linalg.norm(recon - weights) / np.linalg.norm(weights) == pytest.approx(error)
    assert error < 0.9
    cprime = c.reshape(rows, 3 * groups)
    mask = cprime != 0
    if c_pattern == "1xN":
        check_one_by_n(mask, 8, 1, math.floor(0.5 * 3 * groups))
        packed = GSMatrix.from_dense(cprime * 2.0 ** -SMARTDEAL_EXP_MIN, "1xN", 8, 1, "pow2")
    elif c_pattern.startswith("gs"):
        check_gs(mask, 8, 1, order)
        packed = GSMatrix.from_dense(cprime * 2.0 ** -SMARTDEAL_EXP_MIN, c_pattern, 8, 1, "pow2",
                                     row_order=order if c_pattern == "gs-scatter" else None)
    else:
        assert int(mask.sum()) == round(0.5 * mask.size)
        packed = GSMatrix.from_dense(cprime * 2.0 ** -SMARTDEAL_EXP_MIN, "unstructured", 8, 1,
                                     "pow2")
    # C' scaled by 2**10 is an integer pow2 matrix the core's 4-bit exponent code holds.
    assert np.array_equal(packed.to_dense(), cprime * 2.0 ** -SMARTDEAL_EXP_MIN)


def test_zero_sparsity_is_pow2_rounding_only(rng):
    weights = rng.standard_normal((24, 30))
    c, b, _, error = smartdeal_decompose(weights, 0.0, 8)
    assert np.all(c != 0)
    assert error < 0.25          # pow2 rounding alone: about 0.19 on Gaussian weights


def test_basis_layer_semantics(rng):
    """y = C'·z with z_g = B·x_g per 3-element chunk equals W·x (docs/architecture.md)."""
    layer = nn.Linear(20, 12)
    prune(layer, "smartdeal", 0.5, 4)
    c, b = smartdeal_factors(layer)
    cprime = smartdeal_cprime(layer)
    x = rng.standard_normal(20)
    x_padded = np.concatenate([x, np.zeros(1)])            # 21 = 3 · 7, padding reads 0
    z = (b @ x_padded.reshape(7, 3).T).T.reshape(-1)       # z[3g + k] = (B · x_g)[k]
    y = cprime @ z
    assert np.allclose(y, gemm_view(layer) @ x, atol=1e-5)
    assert pattern_info(layer) == PatternInfo("smartdeal", 4, 1, "1xN")


def test_model_smartdeal_conv_and_save(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 16, 10))
    prune(model, "smartdeal", 0.75, 8, c_pattern="gs-gather")
    x = torch.rand(2, 2, 4, 4)
    expected = model(x)
    conv = model[0]
    c, b = smartdeal_factors(conv)
    assert c.shape == (8 * 2 * 3, 3)           # one row of C per 3×3 filter row
    assert np.allclose((c @ b).reshape(8, 18), gemm_view(conv), atol=1e-6)
    state = model.state_dict()
    torch.manual_seed(1)
    fresh = restore(nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(8 * 16, 10)), state)
    assert torch.allclose(fresh(x), expected)
    assert np.array_equal(smartdeal_factors(fresh[0])[0], c)
    assert pattern_info(fresh[3]) == PatternInfo("smartdeal", 8, 1, "gs-gather")


def test_reprojection_warm_start(rng):
    layer = nn.Linear(30, 16)
    prune(layer, "smartdeal", 0.5, 8)
    first = layer.smartdeal_error
    prune(layer, "smartdeal", 0.5, 8)          # already on the manifold: fits at least as well
    assert layer.smartdeal_error <= first + 1e-9


def test_bad_smartdeal_options():
    with pytest.raises(PatternError, match=r"^SmartDeal C pattern must be one of 1xN, gs-gather, "
                                           r"gs-scatter, unstructured, not '2:4'$"):
        prune(nn.Linear(9, 8), "smartdeal", 0.5, c_pattern="2:4")
    with pytest.raises(PatternError, match=r"^Layer must be pruned with pattern 'smartdeal' to "
                                           r"have factors, not None$"):
        smartdeal_factors(nn.Linear(9, 8))


def test_trainable_keeps_support_and_pow2(rng):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 5))
    prune(model, "smartdeal", 0.5, 8)
    c_before, b_before = smartdeal_factors(model[0])
    from gsaccel.sw.prune import smartdeal_freeze, smartdeal_trainable
    assert smartdeal_trainable(model) == 2
    x, target = torch.randn(32, 20), torch.randint(0, 5, (32,))
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(20):
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(model(x), target)
        loss.backward()
        optimiser.step()
    smartdeal_freeze(model)
    c_after, b_after = smartdeal_factors(model[0])
    assert np.array_equal(c_after != 0, c_before != 0)          # zeros fixed
    assert_pow2_or_zero(c_after)
    assert not np.array_equal(b_after, b_before)                 # B trained
    assert not np.array_equal(c_after, c_before)                 # some exponents moved
    assert np.allclose((c_after @ b_after).reshape(16, 21)[:, :20], gemm_view(model[0]),
                       atol=1e-6)
    assert pattern_info(model[0]) == PatternInfo("smartdeal", 8, 1, "1xN")
    assert sorted(name for name, _ in model.named_parameters()) == ["0.bias", "0.weight",
                                                                     "2.bias", "2.weight"]
