"""Random test matrices that follow each pattern family, built by hand (not by the pruners).

Testbenches draw their layers from here (:func:`random_pattern_matrix` for a dense integer
matrix, :func:`random_gs_matrix` for it packed), and ``gsaccel bench hw`` its weight values
(:func:`random_values`), so a golden-model test, a packer test and a benchmark see the same
kinds of matrices: odd shapes, negative values, ragged banks, partial and empty row groups.
"""

import numpy as np

__all__ = ["random_values", "random_pattern_matrix", "random_gs_matrix", "PATTERN_CASES",
           "random_loop_program", "program_words", "loop_program_config"]

#: (pattern, per_row) pairs worth covering for a lane count: every family and e.
def PATTERN_CASES(lanes):
    cases = [("unstructured", 1), ("dense", 1), ("1xN", 1)]
    e = 1
    while e <= lanes:
        cases += [("gs-gather", e), ("gs-scatter", e)]
        if e > 1:
            cases.append(("unstructured", e))
        e *= 2
    return cases


def random_values(rng, shape, encoding, *, max_exp=7):
    """Nonzero weights: signed powers of two 2**0..2**max_exp, or int8 in [-128, 127]."""
    if encoding == "pow2":
        return rng.choice([-1, 1], shape) * (1 << rng.integers(0, max_exp + 1, shape))
    values = rng.integers(-128, 128, shape)
    return np.where(values == 0, 1, values)


def random_pattern_matrix(rng, pattern, rows, cols, lanes, per_row=1, encoding="pow2", *,
                          density=0.3):
    """A random integer matrix whose zeros follow ``pattern``; returns (matrix, row_order).

    gs-gather/gs-scatter: each row group draws P groups of random conflict-free lane → bank
    assignments, so every row keeps e·P weights and no bank gets more than P. gs-scatter
    returns its rows shuffled, with the permutation that restores the row groups.
    """
    weights = np.zeros((rows, cols), dtype=np.int64)
    row_order = None
    if pattern in ("unstructured", "dense"):
        mask = rng.random((rows, cols)) < density
        weights[mask] = random_values(rng, int(mask.sum()), encoding)
    elif pattern == "1xN":
        kept = rng.choice(cols, max(0, min(cols, round(density * cols))), replace=False)
        for start in range(0, rows, lanes):
            block = np.arange(start, min(rows, start + lanes))
            kept_cols = kept if start == 0 else rng.choice(cols, kept.size, replace=False)
            weights[np.ix_(block, kept_cols)] = random_values(rng, (block.size, kept_cols.size),
                                                              encoding)
    elif pattern in ("gs-gather", "gs-scatter"):
        segments = lanes // per_row
        addresses = [np.arange(bank, cols, lanes) for bank in range(lanes)]
        depth = min(len(a) for a in addresses)            # a bank cannot give more than this
        for start in range(0, rows, segments):
            members = np.arange(start, min(rows, start + segments))
            groups = int(rng.integers(0, max(1, round(density * depth)) + 1)) if depth else 0
            used = [[list(rng.permutation(a)) for a in addresses] for _ in members]
            for _ in range(groups):
                banks = rng.permutation(lanes)
                for lane in range(members.size * per_row):
                    seg = lane // per_row
                    col = used[seg][banks[lane]].pop()
                    weights[members[seg], col] = random_values(rng, (), encoding)
        if pattern == "gs-scatter":
            permutation = rng.permutation(rows)
            shuffled = np.empty_like(weights)
            shuffled[permutation] = weights
            weights = shuffled
            row_order = permutation          # row group k holds rows permutation[k*V/e ...]
    else:
        raise ValueError(f"Pattern must be a known family, not {pattern!r}")
    return weights, row_order


def random_gs_matrix(rng, pattern, rows, cols, lanes, per_row=1, encoding="pow2", density=0.3):
    """:func:`random_pattern_matrix` packed: a :class:`~gsaccel.sw.format.GSMatrix` of
    ``pattern`` (with its row order for gs-scatter)."""
    from ..sw.format import GSMatrix
    weights, row_order = random_pattern_matrix(rng, pattern, rows, cols, lanes, per_row,
                                               encoding, density=density)
    return GSMatrix.from_dense(weights, pattern, lanes, per_row=per_row, encoding=encoding,
                               row_order=row_order)


class _Planner:
    """Bank addresses for a test program's tensors, one after another (nothing reused)."""

    def __init__(self, lanes, start=1):
        self.lanes, self.next = lanes, start

    def tensor(self, height, width, channels, pad=0):
        from ..sw.format.geometry import TensorGeometry
        geometry = TensorGeometry(height, width, channels, self.lanes, pad, self.next)
        self.next = geometry.end + 1            # a gap: a write past the end would show
        return geometry


def random_loop_program(rng, cfg, *, with_basis=None):
    """A random device program of loop-nest layers that covers what the core runs: a
    padded, dilated conv, a strided conv, a strided 1x1 conv of permuted rows, max pooling, a depthwise conv, a residual addition
    (two taps), a Linear over a flattened (H, W, C) tensor, a SmartDeal basis layer (on a core
    with a basis unit) and the CLEAR layers of padded tensors; channel counts that are not
    multiples of V, several patterns and segment sizes, a GS-scatter row order whose row
    groups hold two outputs of one bank, negative weights and saturation.

    Returns ``(layers, input_geometry, tensors)``, ``tensors`` every geometry by name. The
    scratchpad must hold ``tensors``' last end (:func:`program_words`).
    """
    from ..sw.compile.layers import BasisLayer, ClearLayer, GSLayer, ResidualNest
    from ..sw.compile.native import diagonal_matrix, to_gemm
    from ..sw.errors import PatternError
    from ..sw.format import GSMatrix
    from ..sw.format.geometry import LoopNest

    lanes, encoding = cfg.lanes, cfg.encoding
    plan = _Planner(lanes)
    layers = []

    def conv(name, source, dest, c_out, kernel, *, stride=1, padding=0, dilation=1,
             pattern="unstructured", per_row=1, density=0.5, relu=False, packed=None):
        nest = LoopNest(source, dest, (kernel, kernel), (stride, stride), (padding, padding),
                        (dilation, dilation))
        weight = np.zeros((c_out, source.channels, kernel, kernel), dtype=np.int64)
        mask = rng.random(weight.shape) < density
        weight[mask] = random_values(rng, int(mask.sum()), encoding, max_exp=4)
        gemm, order = to_gemm(weight, 1, source.padded_channels), None
        if packed is not None:
            gemm, order = packed                # a GEMM view and row order built by hand
        elif pattern != "unstructured":
            # A random matrix of the pattern over the GEMM view, padding channels zeroed.
            gemm, order = random_pattern_matrix(rng, pattern, c_out, nest.columns, lanes,
                                                per_row, encoding, density=density)
            channel = np.arange(nest.columns) % source.padded_channels
            gemm[:, channel >= source.channels] = 0
        try:
            matrix = GSMatrix.from_dense(gemm, pattern, lanes, per_row, encoding=encoding,
                                         row_order=order)
        except PatternError:
            # Zeroing the padding channels can break the pattern's rule: pack it as is.
            matrix = GSMatrix.from_dense(gemm, "unstructured", lanes, per_row,
                                         encoding=encoding)
        bias = rng.integers(-400, 400, c_out)
        # A shift that keeps most outputs inside int8 (some saturate): sums of n products of
        # int8 inputs (spread ~74) grow like sqrt(n).
        kept = matrix.to_dense()
        per_row = max(1.0, np.count_nonzero(kept) / max(1, c_out))
        spread = np.sqrt(per_row) * np.abs(kept[kept != 0]).mean() * 74 if kept.any() else 1
        shift = int(np.clip(round(np.log2(spread / 48)) + rng.integers(-1, 2), 0, 31))
        layers.append(GSLayer(name, "Conv2d", matrix, bias, shift, relu, "sum", nest, (),
                              name))
        return nest

    def clear(geometry, name):
        layers.append(ClearLayer(f"clear {name}", name, geometry.base, geometry.words))

    source = plan.tensor(6, 5, 5, pad=2)                       # the input, written by the host
    tensors = {"input": source}
    a = plan.tensor(6, 5, lanes + 3, pad=1)
    clear(a, "dilated")
    conv("dilated", source, a, a.channels, 3, padding=2, dilation=2, relu=True)
    b = plan.tensor(3, 3, 6, pad=1)
    clear(b, "strided")
    conv("strided", a, b, b.channels, 3, stride=2, padding=1, pattern="gs-gather",
         per_row=min(2, lanes), density=0.6)
    # A strided 1x1 GS-scatter conv whose permuted row groups hold outputs of one bank
    # (row group 0 has channels 0 and V): a vector writer needs more than one row line.
    shuffled = plan.tensor(3, 3, lanes + 3)
    conv("scatter", a, shuffled, shuffled.channels, 1, stride=2, pattern="gs-scatter",
         packed=_conflicting_scatter(rng, shuffled.channels, a, encoding))
    # Max pooling: weight 1 on each tap of its own channel, MAX.
    pooled = plan.tensor(2, 2, 6, pad=1)
    clear(pooled, "pool")
    layers.append(GSLayer("pool", "MaxPool2d", diagonal_matrix(
        np.ones((6, 4), dtype=np.int64), b.padded_channels, lanes, encoding),
        np.zeros(6, dtype=np.int64), 0, False, "max",
        LoopNest(b, pooled, (2, 2), (1, 1), (0, 0)), (), "pool"))
    # A depthwise 3x3 conv with padding, then a residual addition of its input and output.
    depthwise = plan.tensor(2, 2, 6, pad=0)
    taps = random_values(rng, (6, 9), encoding, max_exp=3)
    layers.append(GSLayer("depthwise", "Conv2d", diagonal_matrix(taps, pooled.padded_channels,
                                                                  lanes, encoding),
                          rng.integers(-50, 50, 6), 2, True, "sum",
                          LoopNest(pooled, depthwise, (3, 3), (1, 1), (1, 1)), (),
                          "depthwise"))
    shortcut = plan.tensor(2, 2, 6, pad=1)
    clear(shortcut, "shortcut")
    layers.append(GSLayer("shortcut", "Conv2d", diagonal_matrix(
        np.ones((6, 1), dtype=np.int64), depthwise.padded_channels, lanes, encoding),
        np.zeros(6, dtype=np.int64), 0, False, "sum",
        LoopNest(depthwise, shortcut, (1, 1), padding=(0, 0)), (), "shortcut"))
    added = plan.tensor(2, 2, 6)
    weights = np.stack([random_values(rng, 6, encoding, max_exp=1),
                        random_values(rng, 6, encoding, max_exp=1)], axis=1)
    layers.append(GSLayer("add", "add", diagonal_matrix(weights, pooled.padded_channels, lanes,
                                                        encoding),
                          np.zeros(6, dtype=np.int64), 1, True, "sum",
                          ResidualNest(pooled.at(0), added, operand_bases=(pooled.base,
                                                                           shortcut.base)),
                          (), "add"))
    # A Linear over the flattened 2x2x6 tensor: a kernel over the whole input.
    features = plan.tensor(1, 1, 9 if lanes >= 4 else 7)
    conv("linear", added, features, features.channels, 2, pattern="unstructured",
         density=0.7)
    tensors.update(dilated=a, strided=b, scatter=shuffled, pool=pooled, depthwise=depthwise,
                   shortcut=shortcut, add=added, linear=features)
    if (cfg.basis if with_basis is None else with_basis) and lanes >= 4:
        z = plan.tensor(1, 1, 9)
        layers.append(BasisLayer("basis", "SmartDeal B", rng.integers(-128, 128, (3, 3)), 3,
                                 features, z, 3, False, (), "basis"))
        tensors["basis"] = z
    return layers, source, tensors


def _conflicting_scatter(rng, rows, source, encoding):
    """A GS-scatter (e = 1) GEMM view of a 1x1 conv from ``source`` (at least V channels)
    with ``rows`` outputs, and its row order: a random permutation with rows 0 and V (one
    bank) in the first row group. Every row group takes one or two rounds of a bank
    permutation, each lane a real channel of its bank, so the GS rule holds."""
    lanes = source.lanes
    rest = rng.permutation(np.setdiff1d(np.arange(rows), [0, lanes]))
    order = np.concatenate([[0, lanes], rest])
    gemm = np.zeros((rows, source.padded_channels), dtype=np.int64)
    for start in range(0, rows, lanes):
        members = order[start:start + lanes]
        first = rng.permutation(lanes)
        rounds = [first] + ([np.roll(first, int(rng.integers(1, lanes)))]
                            if rng.random() < 0.5 else [])
        for banks in rounds:
            for row, bank in zip(members, banks):
                channels = np.arange(bank, source.channels, lanes)
                free = channels[gemm[row, channels] == 0]
                gemm[row, rng.choice(free)] = random_values(rng, (), encoding, max_exp=4)
    return gemm, order


def program_words(tensors):
    """Bank words per bank a :func:`random_loop_program` needs."""
    return max(geometry.end for geometry in tensors.values()) + 1


def loop_program_config(lanes, encoding="pow2", **fields):
    """A small CoreConfig that holds :func:`random_loop_program` (its size depends on the
    lanes and the basis unit, not on the random draws); ``fields`` override the rest."""
    from ..hw.config import CoreConfig
    probe = CoreConfig(lanes=lanes, encoding=encoding, basis=fields.get("basis", True))
    _, _, tensors = random_loop_program(np.random.default_rng(0), probe)
    settings = dict(lanes=lanes, encoding=encoding,
                    bank_depth=1 << (program_words(tensors) - 1).bit_length(),
                    weight_depth=512, row_depth=256, layer_depth=16, result_queue=2 * lanes,
                    max_payload=128)
    return CoreConfig(**{**settings, **fields})
