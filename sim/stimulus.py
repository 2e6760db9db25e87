"""Random test matrices that follow each pattern family, built by hand (not by the pruners).

Testbenches draw their layers from here (:func:`random_pattern_matrix` for a dense integer
matrix, :func:`random_gs_matrix` for it packed), and ``gsaccel bench hw`` its weight values
(:func:`random_values`), so a golden-model test, a packer test and a benchmark see the same
kinds of matrices: odd shapes, negative values, ragged banks, partial and empty row groups.
"""

import numpy as np

__all__ = ["random_values", "random_pattern_matrix", "random_gs_matrix", "PATTERN_CASES"]

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
