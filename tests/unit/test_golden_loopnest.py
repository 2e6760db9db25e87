"""The golden loop nest against torch: convolutions (stride, padding, dilation, depthwise,
channels that are not a multiple of V), max and average pooling, on integers."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gsaccel.sim.amaranth_sim import seeded_rng
from gsaccel.sw.errors import ShapeError
from gsaccel.sw.format import GSMatrix
from gsaccel.sw.format.geometry import LoopNest, TensorGeometry, conv_output_size
from gsaccel.sw.golden import requantize
from gsaccel.sw.golden.loopnest import MAX, SUM, gs_loop_layer


def gemm_view(weight, source_channels, lanes, groups=1):
    """(C_out, C_in/groups, kh, kw) torch weights as rows x (tap, padded channel) columns."""
    c_out, c_in_per_group, kh, kw = weight.shape
    cp = -(-source_channels // lanes) * lanes
    gemm = np.zeros((c_out, kh * kw, cp), dtype=np.int64)
    out_per_group = c_out // groups
    for o in range(c_out):
        first = (o // out_per_group) * c_in_per_group
        for c in range(c_in_per_group):
            gemm[o, :, first + c] = weight[o, c].reshape(-1)
    return gemm.reshape(c_out, kh * kw * cp)


def run_conv(rng, *, lanes, c_in, c_out, size, kernel, stride=1, padding=0, dilation=1,
             groups=1, out_pad=0, op=SUM, weights=None, shift=None, bias=True, stale=True):
    h, w = size
    ho = conv_output_size(h, kernel, stride, padding, dilation)
    wo = conv_output_size(w, kernel, stride, padding, dilation)
    src = TensorGeometry(h, w, c_in, lanes, pad=padding, base=3)
    dst = TensorGeometry(ho, wo, c_out, lanes, pad=out_pad, base=src.end + 5)
    nest = LoopNest(src, dst, (kernel, kernel), (stride, stride), (padding, padding),
                    (dilation, dilation))
    if weights is None:
        weights = rng.integers(-8, 9, (c_out, c_in // groups, kernel, kernel))
        weights[rng.random(weights.shape) < 0.6] = 0
    gemm = gemm_view(weights, c_in, lanes, groups)
    matrix = GSMatrix.from_dense(gemm, "unstructured", lanes, encoding="int8")
    x = rng.integers(-128, 128, (h, w, c_in))
    # Stale data everywhere: the source's halo is cleared by scatter, the rest must not leak.
    acts = (rng.integers(-128, 128, (lanes, dst.end + 7)) if stale
            else np.zeros((lanes, dst.end + 7), dtype=np.int64)).astype(np.int8)
    src.scatter(x, acts)
    bias_values = rng.integers(-300, 300, c_out) if bias else np.zeros(c_out, dtype=np.int64)
    shift = int(rng.integers(0, 6)) if shift is None else shift
    gs_loop_layer(matrix, nest, acts, bias_values, shift=shift, relu=False, op=op)
    got = dst.gather(acts)

    xt = torch.tensor(x.transpose(2, 0, 1)[None], dtype=torch.float64)
    wt = torch.tensor(weights, dtype=torch.float64)
    if op == SUM:
        acc = F.conv2d(xt, wt, stride=stride, padding=padding, dilation=dilation,
                       groups=groups)
        acc = acc[0].numpy().transpose(1, 2, 0).round().astype(np.int64)
        expected = requantize(acc + bias_values, shift, False)
    else:
        expected = None
    return got, expected, (x, nest, acts)


@pytest.mark.parametrize("case", [
    dict(lanes=4, c_in=3, c_out=5, size=(7, 6), kernel=3, padding=1),
    dict(lanes=8, c_in=10, c_out=12, size=(9, 11), kernel=3, stride=2, padding=1),
    dict(lanes=4, c_in=6, c_out=7, size=(10, 9), kernel=3, dilation=2, padding=2),
    dict(lanes=8, c_in=16, c_out=9, size=(5, 5), kernel=1),
    dict(lanes=4, c_in=5, c_out=4, size=(6, 8), kernel=5, stride=3, padding=2, out_pad=1),
    dict(lanes=16, c_in=20, c_out=17, size=(4, 7), kernel=2, stride=1),
    dict(lanes=8, c_in=12, c_out=12, size=(7, 7), kernel=3, padding=1, groups=12),
    dict(lanes=4, c_in=6, c_out=12, size=(5, 6), kernel=3, stride=2, padding=1, groups=6),
    dict(lanes=8, c_in=8, c_out=16, size=(6, 6), kernel=3, groups=2),
])
def test_conv_equals_torch(case):
    got, expected, _ = run_conv(seeded_rng(), **case)
    np.testing.assert_array_equal(got, expected)


def test_conv_saturates_and_wraps_like_requantize():
    rng = seeded_rng()
    weights = np.full((4, 4, 3, 3), 8)           # large sums: saturate at shift 0
    got, expected, _ = run_conv(rng, lanes=4, c_in=4, c_out=4, size=(5, 5), kernel=3,
                                padding=1, weights=weights, shift=0)
    np.testing.assert_array_equal(got, expected)
    assert {-128, 127} <= set(np.unique(got))


@pytest.mark.parametrize("kernel, stride, size", [(2, 2, (8, 8)), (3, 2, (9, 7)),
                                                  (3, 1, (5, 6))])
def test_max_pool_equals_torch(kernel, stride, size):
    rng = seeded_rng()
    channels = 6
    weights = np.ones((channels, 1, kernel, kernel), dtype=np.int64)
    got, _, (x, nest, acts) = run_conv(rng, lanes=4, c_in=channels, c_out=channels,
                                       size=size, kernel=kernel, stride=stride,
                                       groups=channels, op=MAX, weights=weights, shift=0,
                                       bias=False)
    xt = torch.tensor(x.transpose(2, 0, 1)[None], dtype=torch.float64)
    expected = F.max_pool2d(xt, kernel, stride)[0].numpy().transpose(1, 2, 0)
    np.testing.assert_array_equal(got, expected.astype(np.int8))


def test_average_pool_is_a_sum_and_a_shift():
    rng = seeded_rng()
    channels = 5
    weights = np.ones((channels, 1, 2, 2), dtype=np.int64)
    got, _, (x, nest, acts) = run_conv(rng, lanes=4, c_in=channels, c_out=channels,
                                       size=(6, 6), kernel=2, stride=2, groups=channels,
                                       weights=weights, shift=2, bias=False)
    xt = torch.tensor(x.transpose(2, 0, 1)[None], dtype=torch.float64)
    sums = (F.avg_pool2d(xt, 2, 2) * 4)[0].numpy().transpose(1, 2, 0).round()
    np.testing.assert_array_equal(got, requantize(sums.astype(np.int64), 2, False))


def test_linear_is_the_one_pixel_case():
    """Flatten -> Linear: a kernel over the whole (H, W, C) input, one output pixel."""
    rng = seeded_rng()
    h, w, c, outs, lanes = 3, 2, 5, 7, 4
    linear = rng.integers(-4, 5, (outs, c * h * w))          # torch flattens CHW
    weights = linear.reshape(outs, c, h, w)
    src = TensorGeometry(h, w, c, lanes, base=0)
    dst = TensorGeometry(1, 1, outs, lanes, base=src.end)
    nest = LoopNest(src, dst, (h, w))
    gemm = gemm_view(weights, c, lanes)
    matrix = GSMatrix.from_dense(gemm, "unstructured", lanes, encoding="int8")
    acts = np.zeros((lanes, dst.end), dtype=np.int8)
    x = rng.integers(-128, 128, (h, w, c))
    src.scatter(x, acts)
    gs_loop_layer(matrix, nest, acts, shift=3)
    flat = x.transpose(2, 0, 1).reshape(-1)
    np.testing.assert_array_equal(dst.gather(acts)[0, 0], requantize(linear @ flat, 3, False))


def test_output_halo_and_padding_channels_are_not_written():
    rng = seeded_rng()
    _, _, (x, nest, acts) = run_conv(rng, lanes=8, c_in=5, c_out=5, size=(4, 4), kernel=3,
                                     padding=1, out_pad=1, stale=False)
    dst = nest.dest
    region = dst.padded(acts)
    interior = np.zeros(region.shape, dtype=bool)
    interior[1:-1, 1:-1, :5] = True
    assert np.count_nonzero(region[~interior]) == 0


def test_geometry_errors():
    src = TensorGeometry(4, 4, 3, 4, pad=0)
    with pytest.raises(ShapeError, match=r"^Padding \(1, 1\) needs a halo of 1 pixels; the "
                                         r"source tensor has 0$"):
        LoopNest(src, TensorGeometry(4, 4, 3, 4), (3, 3), padding=(1, 1))
    with pytest.raises(ShapeError, match=r"^Output must be 2x2 pixels, not 4x4$"):
        LoopNest(src, TensorGeometry(4, 4, 3, 4), (3, 3))
    with pytest.raises(ShapeError, match=r"^Tensor must have shape \(4, 4, 3\), not \(4, 3\)$"):
        src.scatter(np.zeros((4, 3)), np.zeros((4, 64)))
    with pytest.raises(ShapeError, match=r"^A kernel of 5 .* does not fit an input of 3$"):
        conv_output_size(3, 5)
