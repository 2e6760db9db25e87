"""The golden model's arithmetic: every rounding, saturation and overflow rule of
docs/numerics.md, written once. The gateware is held to these functions bit for bit.
"""

import numpy as np

from ..errors import ShapeError
from ..format import GSMatrix

__all__ = ["wrap", "requantize", "quantize", "dequantize", "lane_products", "gs_matvec",
           "gs_layer", "basis_layer"]


# Scalar rules -----------------------------------------------------------------------------------

def wrap(values, width):
    """Two's complement wrap of integers to ``width`` bits (the accumulator overflows)."""
    values = np.asarray(values, dtype=np.int64)
    half = np.int64(1) << (width - 1)
    return ((values + half) & ((np.int64(1) << width) - 1)) - half


def requantize(acc, shift, relu, acc_width=24):
    """int8 from an accumulator: wrap, round half up, arithmetic shift, saturate, ReLU.

    ``acc`` already includes the bias. The rounding add is one bit wider than the
    accumulator, so it never wraps.
    """
    if not 0 <= int(shift) <= 31:
        raise ShapeError(f"Shift must be in [0, 31], not {shift!r}")
    value = wrap(acc, acc_width)
    if shift:
        value = (value + (np.int64(1) << (shift - 1))) >> shift
    value = np.clip(value, -128, 127)
    if relu:
        value = np.maximum(value, 0)
    return value.astype(np.int8)


def quantize(x, scale_log2):
    """int8 of ``x / 2**scale_log2``, rounded half up and saturated (host-side inputs)."""
    scaled = np.asarray(x, dtype=np.float64) * 2.0 ** (-scale_log2)
    return np.clip(np.floor(scaled + 0.5), -128, 127).astype(np.int8)


def dequantize(q, scale_log2):
    return np.asarray(q, dtype=np.float64) * 2.0 ** scale_log2


# Kernels ----------------------------------------------------------------------------------------

def lane_products(values, x_cols):
    """Per-lane products: exact, as each lane computes them (shift or multiply)."""
    return np.asarray(values, dtype=np.int64) * np.asarray(x_cols, dtype=np.int64)


def _segment_sums(matrix: GSMatrix, x):
    """(row groups, V/e) accumulator values before wrapping."""
    x = np.asarray(x, dtype=np.int64)
    if x.ndim != 1 or x.shape[0] < matrix.shape[1]:
        raise ShapeError(f"Input must be a vector of at least {matrix.shape[1]} elements, not "
                         f"shape {x.shape}")
    products = lane_products(matrix.group_values, x[matrix.group_cols])
    per_segment = products.reshape(matrix.n_groups, matrix.segments, matrix.per_row).sum(axis=2)
    sums = np.zeros((matrix.n_rowgroups, matrix.segments), dtype=np.int64)
    np.add.at(sums, matrix.group_rowgroup, per_segment)
    return sums


def gs_matvec(matrix: GSMatrix, x, acc_width=24):
    """Accumulator of every row of ``matrix @ x``, wrapped to ``acc_width`` as the lanes do."""
    sums = _segment_sums(matrix, x)
    out = np.zeros(matrix.shape[0], dtype=np.int64)
    real = matrix.rg_rows >= 0
    out[matrix.rg_rows[real]] = sums[real]
    return wrap(out, acc_width)


def gs_layer(matrix: GSMatrix, x, bias=None, shift=0, relu=False, acc_width=24):
    """int8 outputs of one GS layer: ``requantize(matrix @ x + bias)``."""
    acc = gs_matvec(matrix, x, acc_width)
    if bias is not None:
        acc = acc + np.asarray(bias, dtype=np.int64)
    return requantize(acc, shift, relu, acc_width)


def basis_layer(basis, x, n_chunks, shift=0, relu=False, acc_width=24):
    """SmartDeal basis transform: ``z[3g:3g+3] = requantize(B @ x[3g:3g+3])``."""
    chunks = np.asarray(x, dtype=np.int64)[:3 * n_chunks].reshape(n_chunks, 3)
    z = chunks @ np.asarray(basis, dtype=np.int64).T
    return requantize(z.ravel(), shift, relu, acc_width)
