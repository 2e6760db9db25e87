"""The device-layer records of native programs (gsaccel.sw.compile.layers) and the GEMM view
the compiler packs (gsaccel.sw.compile.native.to_gemm): the same view as the pruner's and the
golden loop nest's; an addition reads its operands at their bases; the basis unit reads
one-pixel tensors; the host's im2col is the first convolution's patches."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gsaccel.sw.compile.layers import (BasisLayer, ClearLayer, GSLayer, InputTransform,
                                       ResidualNest, im2col)
from gsaccel.sw.compile.native import diagonal_matrix, kernel_columns, to_gemm
from gsaccel.sw.errors import ShapeError
from gsaccel.sw.format import GSMatrix
from gsaccel.sw.format.geometry import LoopNest, TensorGeometry
from gsaccel.sw.golden import basis_layer, requantize

from test_golden_loopnest import gemm_view


@pytest.mark.parametrize("c_in, c_out, kernel, groups, lanes", [
    (5, 4, (3, 3), 1, 4), (12, 12, (3, 3), 12, 8), (6, 12, (3, 3), 6, 4),
    (8, 16, (2, 3), 2, 8), (12, 9, (3, 1), 3, 16), (64, 64, (1, 1), 1, 16)])
def test_gemm_view_is_the_pruners_and_the_golden_models(rng, c_in, c_out, kernel, groups,
                                                        lanes):
    from gsaccel.sw.prune.view import gemm_layout
    conv = nn.Conv2d(c_in, c_out, kernel, groups=groups)
    layout = gemm_layout(conv, lanes)
    weight = rng.integers(-9, 10, tuple(conv.weight.shape))
    cp = layout.padded_channels
    assert np.array_equal(kernel_columns(c_out, c_in // groups, groups,
                                         kernel[0] * kernel[1], cp),
                          layout.columns().reshape(c_out, c_in // groups, -1))
    assert np.array_equal(to_gemm(weight, groups, cp), layout.to_gemm(weight))
    assert np.array_equal(to_gemm(weight, groups, cp), gemm_view(weight, c_in, lanes, groups))
    assert np.array_equal(to_gemm(np.ones(weight.shape, bool), groups, cp),
                          layout.candidates())


def test_linear_after_flatten_is_a_whole_input_kernel(rng):
    """torch column c·H·W + h·W + w lands in GEMM column (h·W + w)·Cp + c."""
    from gsaccel.sw.prune.view import gemm_layout
    c, h, w, lanes = 5, 3, 2, 4
    linear = nn.Linear(c * h * w, 7)
    weight = rng.normal(size=(7, c * h * w))
    view = to_gemm(weight.reshape(7, c, h, w), 1, 8)
    assert np.array_equal(view, gemm_layout(linear, lanes, input_view=(c, h, w))
                          .to_gemm(weight))
    o, ch, y, x = 3, 4, 2, 1
    assert view[o, (y * w + x) * 8 + ch] == weight[o, ch * h * w + y * w + x]


@pytest.mark.parametrize("kernel, stride, padding, dilation, groups", [
    ((5, 5), (1, 1), (0, 0), (1, 1), 1), ((10, 4), (2, 2), (5, 1), (1, 1), 1),
    ((3, 3), (2, 2), (2, 2), (2, 2), 2), ((3, 3), (1, 1), (1, 1), (1, 1), 3)])
def test_im2col_input_makes_the_first_conv_1x1(kernel, stride, padding, dilation, groups):
    torch.manual_seed(0)
    c_in = 3 if groups != 2 else 4
    conv = nn.Conv2d(c_in, 6, kernel, stride, padding, dilation, groups).double()
    x = torch.randn(2, c_in, 13, 11, dtype=torch.float64)
    patches = im2col(x.numpy(), kernel, stride, padding, dilation)
    taps = kernel[0] * kernel[1]
    assert patches.shape[1] == taps * c_in
    # A 1x1 weight over channels tap·C + c, zero outside each output channel's group.
    weight = to_gemm(conv.weight.detach().numpy(), groups, c_in)    # columns tap·C + c
    one_by_one = F.conv2d(torch.from_numpy(patches), torch.from_numpy(weight)[..., None, None],
                          conv.bias)
    np.testing.assert_allclose(one_by_one.detach().numpy(), conv(x).detach().numpy(),
                               atol=1e-12)
    transform = InputTransform("im2col", kernel, stride, padding, dilation)
    assert np.array_equal(transform.apply(x.numpy()), patches.transpose(0, 2, 3, 1))


def test_flat_input_and_chunk_padding():
    transform = InputTransform(channels=33)
    hwc = transform.apply(np.ones((2, 31)))
    assert hwc.shape == (2, 1, 1, 33) and hwc[..., 31:].sum() == 0 and hwc.sum() == 62
    with pytest.raises(ShapeError, match="Input transform must be one of none, im2col"):
        InputTransform("space-to-depth")


@pytest.mark.parametrize("a_base, b_base", [(0, 40), (40, 0), (7, 7)])
def test_residual_nest_reads_each_operand_at_its_base(rng, a_base, b_base):
    """B below A, above A, or the same tensor twice (x + x)."""
    lanes, channels, pad = 4, 6, 1
    shape = TensorGeometry(3, 2, channels, lanes, pad)       # 5x4 padded pixels, 2 words each
    a, b = shape.at(a_base), shape.at(b_base)
    out = TensorGeometry(3, 2, channels, lanes, 0, 90)
    nest = ResidualNest(shape, out, operand_bases=(a.base, b.base))
    assert nest.taps == 2 and nest.columns == 2 * 8
    assert list(nest.tap_offsets()) == [a_base + shape.origin(), b_base + shape.origin()]
    cp = shape.padded_channels
    w = (2, -4)
    q = np.zeros((channels, 2 * cp), dtype=np.int64)
    q[np.arange(channels), np.arange(channels)] = w[0]
    q[np.arange(channels), cp + np.arange(channels)] = w[1]
    layer = GSLayer("add", "add", GSMatrix.from_dense(q, "gs-gather", lanes, 1),
                    np.zeros(channels), 1, True, "sum", nest, ("a", "b"), "y")
    acts = rng.integers(-128, 128, (lanes, 128)).astype(np.int8)
    xa = rng.integers(-128, 128, (3, 2, channels))
    xb = xa if a_base == b_base else rng.integers(-128, 128, (3, 2, channels))
    a.scatter(xa, acts)
    if a_base != b_base:
        b.scatter(xb, acts)
    layer.run(acts)
    expected = requantize(w[0] * xa + w[1] * xb, 1, True)
    np.testing.assert_array_equal(out.gather(acts), expected)


def test_residual_nest_checks():
    g = TensorGeometry(2, 2, 4, 4)
    with pytest.raises(ShapeError, match="source geometry sits at base 0"):
        ResidualNest(g.at(5), g.at(50), operand_bases=(5, 20))
    with pytest.raises(ShapeError, match="one or more bank addresses"):
        ResidualNest(g, g.at(50), operand_bases=())
    with pytest.raises(ShapeError, match="kernel, stride 1x1"):
        ResidualNest(g, TensorGeometry(1, 1, 4, 4, 0, 50), (2, 2), operand_bases=(0, 8))


def test_basis_and_clear_layers(rng):
    lanes, n_chunks = 8, 5
    src = TensorGeometry(1, 1, 16, lanes, 0, 3)
    dst = TensorGeometry(1, 1, 15, lanes, 0, 9)
    basis = rng.integers(-128, 128, (3, 3))
    layer = BasisLayer("b", "SmartDeal B", basis, n_chunks, src, dst, 4, False, ("x",), "z")
    acts = rng.integers(-128, 128, (lanes, 16)).astype(np.int8)
    x = src.gather(acts).reshape(-1)
    stale = acts.copy()
    layer.run(acts)
    np.testing.assert_array_equal(dst.gather(acts).reshape(-1),
                                  basis_layer(basis, x, n_chunks, 4, False))
    # Only the 15 elements are written: dest padding channel 15 keeps its old byte.
    assert acts[15 % lanes, 9 + 15 // lanes] == stale[15 % lanes, 9 + 15 // lanes]
    clear = ClearLayer("t.clear", "t", 2, 5)
    clear.run(acts)
    assert not acts[:, 2:7].any() and clear.output == "t" and clear.inputs == ()
    with pytest.raises(ShapeError, match="exceeds the scratchpad"):
        ClearLayer("t.clear", "t", 14, 5).run(acts)
    with pytest.raises(ShapeError, match="one pixel without halo"):
        BasisLayer("b", "B", basis, 6, src, dst, 0, False, ("x",), "z")


def test_gs_layer_checks_its_matrix_against_its_nest():
    src = TensorGeometry(4, 4, 4, 4, 1)
    dst = TensorGeometry(4, 4, 4, 4, 0, 100)
    nest = LoopNest(src, dst, (3, 3), padding=(1, 1))
    matrix = GSMatrix.from_dense(np.ones((4, 9 * 4), dtype=np.int64), "dense", 4)
    GSLayer("c", "Conv2d", matrix, np.zeros(4), 0, False, "sum", nest, ("x",), "y")
    with pytest.raises(ShapeError, match=r"must be 4 x 36 \(output channels x taps·Cp\)"):
        GSLayer("c", "Conv2d", GSMatrix.from_dense(np.ones((4, 4), dtype=np.int64), "dense",
                                                   4),
                np.zeros(4), 0, False, "sum", nest, ("x",), "y")
    with pytest.raises(ShapeError, match="Shift must be in"):
        GSLayer("c", "Conv2d", matrix, np.zeros(4), 32, False, "sum", nest, ("x",), "y")
    with pytest.raises(ShapeError, match="Operation must be one of"):
        GSLayer("c", "Conv2d", matrix, np.zeros(4), 0, False, "min", nest, ("x",), "y")


@pytest.mark.parametrize("channels, taps, lanes, encoding", [
    (6, 9, 4, "pow2"), (16, 2, 8, "int8"), (5, 490, 16, "pow2"), (20, 1, 4, "int8")])
def test_diagonal_matrix_is_the_gs_gather_packing(rng, channels, taps, lanes, encoding):
    cp = -(-channels // lanes) * lanes
    if encoding == "pow2":
        values = rng.choice([-4, -1, 1, 2, 8], (channels, taps))
    else:
        values = rng.choice([-127, -3, 1, 5, 100], (channels, taps))
    dense = np.zeros((channels, taps * cp), dtype=np.int64)
    for t in range(taps):
        dense[np.arange(channels), t * cp + np.arange(channels)] = values[:, t]
    matrix = diagonal_matrix(values, cp, lanes, encoding)
    assert matrix == GSMatrix.from_dense(dense, "gs-gather", lanes, 1, encoding)
    assert np.array_equal(matrix.to_dense(), dense)
    with pytest.raises(ShapeError, match="must all be nonzero"):
        diagonal_matrix(np.zeros((channels, taps)), cp, lanes, encoding)
