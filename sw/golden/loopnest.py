"""The golden model of a layer run as a loop nest over output pixels (DESIGN §2.1).

For every output pixel ``p`` (raster order) the layer's groups are replayed: lane ``i`` of
group ``g`` reads bank ``bank[g, i]`` at ``in_base[p] + offset[g, i]`` and multiplies it by
its weight; the segments of ``e`` lanes are summed (SUM) or maximised (MAX) over the row
group's groups; slot ``s`` of row group ``r`` is then requantised with its bias and written
to element ``out_elem[r, s]`` of the output pixel: bank ``out_elem mod V`` at
``out_base[p] + out_elem div V``. Everything is integer and bit-exact; the core's RTL is held
to it.
"""

import numpy as np

from ..errors import ShapeError
from .numerics import requantize, wrap

__all__ = ["SUM", "MAX", "OPS", "run_loop_layer", "gs_loop_layer"]

SUM, MAX = "sum", "max"
OPS = (SUM, MAX)
#: Pixels evaluated at once: bounds the (pixels, groups, V) product array.
_PIXEL_CHUNK = 4096


def _max_identity(acc_width):
    """The value a MAX accumulator starts from: the most negative accumulator value."""
    return -(1 << (acc_width - 1))


def run_loop_layer(acts, *, values, lane_banks, lane_offsets, group_rowgroup, out_elems,
                   bias, valid, per_row, in_bases, out_bases, shift=0, relu=False, op=SUM,
                   acc_width=24):
    """Run one loop-nest layer on the scratchpad ``acts`` (a (V, depth) int8 array), in place.

    Parameters
    ----------
    values : (G, V) int
        Each lane's weight (0 = padding: the lane reads nothing and adds nothing).
    lane_banks, lane_offsets : (G, V) int
        The bank each lane reads and its offset from the pixel's ``in_base``.
    group_rowgroup : (G,) int
        Row group of each group (non-decreasing).
    out_elems, bias, valid : (R, V/e) int
        Per row group and slot: the output element (channel) relative to the pixel's
        ``out_base``, the bias (accumulator units) and whether the slot is written.
    in_bases, out_bases : (P,) int
        Bank addresses of each output pixel's input and output.
    op : "sum" or "max"
        MAX keeps, per slot, the largest product of its nonzero lanes (``e`` must be 1); a
        slot with no nonzero lane yields the most negative accumulator value.
    """
    lanes = acts.shape[0]
    values = np.asarray(values, dtype=np.int64)
    groups = values.shape[0]
    if op not in OPS:
        raise ShapeError(f"Operation must be one of {', '.join(OPS)}, not {op!r}")
    if op == MAX and per_row != 1:
        raise ShapeError(f"A MAX layer must have one weight per row per group, not {per_row}")
    segments = lanes // per_row
    out_elems = np.asarray(out_elems, dtype=np.int64)
    n_rowgroups = out_elems.shape[0]
    rowgroup = np.asarray(group_rowgroup, dtype=np.int64)
    nonzero = values != 0
    banks = np.asarray(lane_banks, dtype=np.int64)
    offsets = np.asarray(lane_offsets, dtype=np.int64)
    in_bases = np.asarray(in_bases, dtype=np.int64)
    out_bases = np.asarray(out_bases, dtype=np.int64)
    results = []
    for start in range(0, len(in_bases), _PIXEL_CHUNK):
        chunk = in_bases[start:start + _PIXEL_CHUNK]
        address = chunk[:, None, None] + offsets[None]                    # (P, G, V)
        if groups and (address[:, nonzero].max(initial=0) >= acts.shape[1]):
            raise ShapeError(f"Layer reads bank address {address[:, nonzero].max()}, the "
                             f"scratchpad has {acts.shape[1]}")
        x = np.where(nonzero, acts[banks, np.where(nonzero, address, 0)], 0).astype(np.int64)
        products = (values * x).reshape(len(chunk), groups, segments, per_row)
        if op == SUM:
            per_segment = products.sum(axis=3)                              # (P, G, S)
            sums = np.zeros((len(chunk), n_rowgroups, segments), dtype=np.int64)
            np.add.at(sums, (slice(None), rowgroup), per_segment)
        else:
            lowest = _max_identity(acc_width)
            per_segment = np.where(nonzero.reshape(groups, segments), products[..., 0],
                                   lowest)
            sums = np.full((len(chunk), n_rowgroups, segments), lowest, dtype=np.int64)
            np.maximum.at(sums, (slice(None), rowgroup), per_segment)
        results.append(wrap(sums, acc_width))
    sums = np.concatenate(results) if results else np.zeros((0, n_rowgroups, segments))
    y = requantize(sums + np.asarray(bias, dtype=np.int64)[None], shift, relu, acc_width)
    valid = np.asarray(valid, dtype=bool)
    bank = np.broadcast_to(out_elems % lanes, y.shape)[:, valid]
    address = (out_bases[:, None, None] + out_elems[None] // lanes)[:, valid]
    if address.size and address.max() >= acts.shape[1]:
        raise ShapeError(f"Layer writes bank address {address.max()}, the scratchpad has "
                         f"{acts.shape[1]}")
    acts[bank.ravel(), address.ravel()] = y[:, valid].ravel()
    return acts


def gs_loop_layer(matrix, nest, acts, bias=None, shift=0, relu=False, op=SUM, acc_width=24):
    """Run a :class:`GSMatrix` in the GEMM view of ``nest`` (a :class:`LoopNest`) on
    ``acts``: ``requantize(W · patch + bias)`` (or the max of the kept products) for every
    output pixel, written into the destination tensor."""
    rows, cols = matrix.shape
    if cols != nest.columns:
        raise ShapeError(f"Matrix must have {nest.columns} columns (taps x padded channels), "
                         f"not {cols}")
    if rows != nest.dest.channels:
        raise ShapeError(f"Matrix must have {nest.dest.channels} rows (output channels), "
                         f"not {rows}")
    if matrix.lanes != acts.shape[0]:
        raise ShapeError(f"Matrix has {matrix.lanes} lanes, the scratchpad {acts.shape[0]} "
                         "banks")
    cols_of_lanes = matrix.group_cols
    bias = np.zeros(rows, dtype=np.int64) if bias is None else np.asarray(bias, np.int64)
    real = matrix.rg_rows >= 0
    out_rows = np.where(real, matrix.rg_rows, 0)
    return run_loop_layer(
        acts, values=matrix.group_values, lane_banks=cols_of_lanes % matrix.lanes,
        lane_offsets=nest.column_offsets()[cols_of_lanes],
        group_rowgroup=matrix.group_rowgroup, out_elems=out_rows,
        bias=np.where(real, bias[out_rows], 0), valid=real, per_row=matrix.per_row,
        in_bases=nest.in_bases(), out_bases=nest.out_bases(), shift=shift, relu=relu, op=op,
        acc_width=acc_width)
