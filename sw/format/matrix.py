"""The GS compact format: a sparse weight matrix as conflict-free groups of V lanes.

A :class:`GSMatrix` is what the gather/scatter engine executes: row groups of V/e rows, each a
run of groups; a group holds V (value, column) lanes whose columns fall in distinct banks
(``column % V``), lane ``i`` feeding segment ``i // e``. Every pattern family of DESIGN §1.1
is expressed this way; a pattern only decides how rows are grouped and how much padding
(lanes of value 0) the schedule carries. See docs/format.md for the file layout.
"""

import dataclasses
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from ...hw.config import POW2_EXP_MAX
from ...hw.layouts import pow2_code_layout
from ..errors import EncodingError, FormatError, PatternError, ShapeError

__all__ = [
    "PATTERNS", "ENCODINGS", "GSMatrix", "check_pattern", "pow2_exponent", "pow2_round",
    "pow2_encode", "pow2_decode", "pow2_bias", "POW2_CODE_WIDTH", "GSF_MAGIC", "GSF_VERSION",
    "GSF_VERSION_BIASED", "EXP_BIAS_RANGE", "seal", "check_head", "check_sealed",
    "MAX_DIMENSION", "MAX_ENTRIES",
]

PATTERNS = ("gs-gather", "gs-scatter", "1xN", "unstructured", "dense")
ENCODINGS = ("pow2", "int8")

GSF_MAGIC = b"GSF\x1a"
GSF_VERSION = 1
#: The version of a matrix whose pow2 codes carry an exponent bias (fractional powers of two):
#: version 1's header with the bias (i8) after per_row. A writer emits version 1 when the bias
#: is 0, so integer matrices keep their bytes.
GSF_VERSION_BIASED = 2
# magic, version u16, pattern u8, encoding u8, lanes u8, per_row u8, rows u32, cols u32,
# row groups u32, groups u32, payload bytes u32
_HEADER = struct.Struct("<4sHBBBBIIIII")
# Version 2: ... per_row u8, exp_bias i8, rows u32, ...
_HEADER_BIASED = struct.Struct("<4sHBBBBbIIIII")
#: The exponent bias a pow2 matrix can carry (an i8 in the header).
EXP_BIAS_RANGE = (-128, 127)
#: Largest row or column count of a GS file.
MAX_DIMENSION = 1 << 24
#: Largest rows x columns of a GS file: its dense form (``to_dense``, ``gsaccel unpack``) is
#: at most 2 GiB of int64.
MAX_ENTRIES = 1 << 28


# Sealed files -------------------------------------------------------------------------------------

def seal(body):
    """``body`` followed by its CRC-32 (little-endian): how .gsf and .gsp files end."""
    return body + struct.pack("<I", zlib.crc32(body))


def check_head(data, source, kind, minimum, magic, version):
    """Raise :class:`FormatError` unless ``data`` has at least ``minimum`` bytes and starts with
    ``magic`` (4 bytes) and ``version`` (little-endian u16): the start that .gsf and .gsp files
    share. ``kind`` names the file in the messages."""
    if len(data) < minimum:
        raise FormatError(f"{source}: truncated: {len(data)} bytes, a {kind} has at least "
                          f"{minimum}")
    found, found_version = struct.unpack_from("<4sH", data)
    if found != magic:
        raise FormatError(f"{source}: not a {kind} (magic {found!r}, expected {magic!r})")
    versions = version if isinstance(version, tuple) else (version,)
    if found_version not in versions:
        raise FormatError(f"{source}: {kind} version {found_version} is not supported; this "
                          f"gsaccel reads version {' and '.join(map(str, versions))}")


def check_sealed(data, expected, source):
    """Raise :class:`FormatError` unless ``data`` is exactly ``expected`` bytes whose last four
    are the CRC-32 of the rest."""
    if len(data) != expected:
        raise FormatError(f"{source}: truncated or padded: {len(data)} bytes, header says "
                          f"{expected}")
    (crc,) = struct.unpack_from("<I", data, expected - 4)
    if crc != zlib.crc32(data[:expected - 4]):
        raise FormatError(f"{source}: CRC-32 mismatch; the file is corrupt")


# Power-of-two rounding (docs/numerics.md, "Weight rounding") ------------------------------------

def pow2_exponent(values, exp_min, exp_max, xp=np):
    """Exponent k of the signed power of two ±2**k nearest to each value, in the exponent domain.

    |v| in [2**j, 2**(j+1)) rounds up to 2**(j+1) from the arithmetic midpoint 1.5 · 2**j on
    (ties up), down below it; k is then clipped to [exp_min, exp_max], so 0 and anything under
    2**exp_min give exp_min. This is the one rounding rule of every power-of-two weight: the
    compiler's, the pruner's and the straight-through rounding SmartDeal trains with.

    ``xp`` is the array namespace: ``numpy`` (the default) or ``torch`` for a tensor; the rule
    uses only functions both have with the same meaning. Returns a float array of whole
    numbers, of ``values``' floating dtype.
    """
    magnitude = xp.clip(xp.abs(values), 2.0 ** exp_min, None)
    exponent = xp.floor(xp.log2(magnitude))
    # log2 may land on the wrong side of a power of two; the midpoint test corrects it either
    # way, so the result depends only on the value, not on how log2 rounds.
    exponent = exponent + (magnitude >= 1.5 * xp.exp2(exponent))
    return xp.clip(exponent, exp_min, exp_max)


def pow2_round(values, *, exp_min=0, exp_max=POW2_EXP_MAX, zero_below=None, xp=np):
    """Signed powers of two ``sign(v) · 2**pow2_exponent(v)`` (0 and −0.0 round to
    +2**exp_min, so a kept weight is never lost); entries with |v| < ``zero_below`` become 0
    (default: none). The default range is the core's pow2 code, 0 <= k <= POW2_EXP_MAX.

    >>> pow2_round(np.array([0.0, 0.74, 0.75, -2.9, -3.0, 5.0e4])).tolist()
    [1.0, 1.0, 1.0, -2.0, -4.0, 32768.0]
    """
    if xp is np:
        values = np.asarray(values, dtype=np.float64)
    power = xp.exp2(pow2_exponent(values, exp_min, exp_max, xp))
    result = xp.where(values < 0, -power, power)
    if zero_below is not None:
        result = xp.where(xp.abs(values) < zero_below, 0.0 * power, result)
    return result


# Value codes ----------------------------------------------------------------------------------

#: Fields of a pow2 code (``hw.layouts.pow2_code_layout``): (offset, width) by name.
_POW2_FIELDS = {name: (field.offset, field.width) for name, field in pow2_code_layout()}
#: Bits of one pow2 code.
POW2_CODE_WIDTH = pow2_code_layout().size


def _pow2_field(codes, name):
    offset, width = _POW2_FIELDS[name]
    return (codes >> offset) & ((1 << width) - 1)


def pow2_bias(values):
    """``(codes, exp_bias)``: any exact signed powers of two (and zeros), fractional or beyond
    2**15, as integer pow2 codes' values ``values / 2**exp_bias`` with exponents 0..15.

    ``exp_bias`` is 0 when every exponent already is in 0..POW2_EXP_MAX (integer weights keep
    their values), else the smallest exponent. Raises :class:`EncodingError` for a value that
    is not ±2**k (naming it), or exponents spanning more than POW2_EXP_MAX.
    """
    values = np.asarray(values)
    if values.dtype.kind in "iu":
        values = values.astype(np.int64)
        if not (values != 0).any() or (np.abs(values).max() <= 2 ** POW2_EXP_MAX):
            return values, 0        # pow2_encode checks them
    values = values.astype(np.float64)
    nonzero = values != 0
    mantissa, exponent = np.frexp(np.abs(values))
    bad = nonzero & (mantissa != 0.5)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        value = values[index]
        shown = int(value) if value == int(value) else value
        raise EncodingError(f"Weight {shown} at {index} is not a signed power of two 2**k "
                            f"or zero; use --encoding int8 or quantise it first")
    if not nonzero.any():
        return np.zeros(values.shape, np.int64), 0
    k = (exponent - 1)[nonzero]
    low, high = int(k.min()), int(k.max())
    if high - low > POW2_EXP_MAX:
        raise EncodingError(f"pow2 weights must span at most {POW2_EXP_MAX + 1} exponents "
                            f"(the codes' 2**0..2**{POW2_EXP_MAX}), not 2**{low}..2**{high}")
    bias = 0 if low >= 0 and high <= POW2_EXP_MAX else low
    if not EXP_BIAS_RANGE[0] <= bias <= EXP_BIAS_RANGE[1]:
        raise EncodingError(f"pow2 exponent bias must be in {EXP_BIAS_RANGE[0]}.."
                            f"{EXP_BIAS_RANGE[1]}, not {bias} (weights 2**{low}..2**{high})")
    return np.rint(np.ldexp(values, -bias)).astype(np.int64), bias


def pow2_encode(values):
    """Codes (the fields ``exp``, ``sign``, ``nonzero`` of ``hw.layouts.pow2_code_layout``) of
    exact signed powers of two or zero.

    Raises :class:`EncodingError` naming the first value that is not ±2**k, 0 <= k <= 15.
    """
    values = np.asarray(values, dtype=np.int64)
    magnitude = np.abs(values)
    exp = np.zeros(values.shape, dtype=np.int64)
    nonzero = magnitude != 0
    exp[nonzero] = np.log2(magnitude[nonzero]).round().astype(np.int64)
    bad = nonzero & ((exp < 0) | (exp > POW2_EXP_MAX) | (np.left_shift(1, np.clip(exp, 0, 62)) != magnitude))
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise EncodingError(f"Weight {int(values[index])} at {index} is not a signed power of "
                            f"two 2**k with 0 <= k <= {POW2_EXP_MAX} or zero; use "
                            f"--encoding int8 or quantise it first")
    fields = {"exp": exp, "sign": (values < 0).astype(np.int64),
              "nonzero": nonzero.astype(np.int64)}
    codes = np.zeros(values.shape, dtype=np.int64)
    for name, (offset, width) in _POW2_FIELDS.items():
        codes |= (fields[name] & ((1 << width) - 1)) << offset
    return codes


def pow2_decode(codes):
    """Values of pow2 codes; the inverse of :func:`pow2_encode`."""
    codes = np.asarray(codes, dtype=np.int64)
    magnitude = np.left_shift(1, _pow2_field(codes, "exp"))
    value = np.where(_pow2_field(codes, "sign") != 0, -magnitude, magnitude)
    return np.where(_pow2_field(codes, "nonzero") != 0, value, 0)


def _check_int8(values):
    values = np.asarray(values)
    bad = (values < -128) | (values > 127)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise EncodingError(f"Weight {int(values[index])} at {index} is outside the int8 range "
                            f"[-128, 127]; quantise the weights first")


# Bit packing ----------------------------------------------------------------------------------

def _pack_bits(values, width):
    """Little-endian bit-stream of ``values`` (non-negative ints), ``width`` bits each."""
    values = np.asarray(values, dtype=np.uint64).ravel()
    if width == 0 or values.size == 0:
        return b""
    bits = (values[:, None] >> np.arange(width, dtype=np.uint64)) & np.uint64(1)
    return np.packbits(bits.astype(np.uint8).ravel(), bitorder="little").tobytes()


def _unpack_bits(data, width, count):
    """``count`` values of ``width`` bits from :func:`_pack_bits`' stream (int64). Peak
    memory: one byte per bit read, plus the result (and 8 bytes per bit of a 65536-value
    chunk)."""
    values = np.zeros(count, dtype=np.int64)
    if width == 0 or count == 0:
        return values
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little",
                         count=width * count).reshape(count, width)
    weights = np.left_shift(1, np.arange(width, dtype=np.int64))
    for start in range(0, count, 1 << 16):      # 8 bytes per bit of a chunk at most
        values[start:start + (1 << 16)] = bits[start:start + (1 << 16)] @ weights
    return values


def _bits_for(n):
    """Bits to store any integer in [0, n)."""
    return max(0, int(n - 1).bit_length())


# Group decomposition (DESIGN §1.1) --------------------------------------------------------------

def _perfect_matching(support):
    """A perfect matching of a square boolean matrix (rows -> columns), by augmenting paths."""
    size = len(support)
    neighbours = [[c for c, ok in enumerate(row) if ok] for row in support.tolist()]
    match_col = [-1] * size                         # column -> row

    def augment(r, seen):
        for c in neighbours[r]:
            if not seen[c]:
                seen[c] = True
                if match_col[c] < 0 or augment(match_col[c], seen):
                    match_col[c] = r
                    return True
        return False

    for r in range(size):
        if not augment(r, [False] * size):
            raise AssertionError("a regular bipartite multigraph always has a perfect matching")
    match_row = np.empty(size, dtype=np.int64)
    match_row[match_col] = np.arange(size)
    return match_row


def _schedule_row_group(counts, lanes, per_row, depth):
    """Split a (V/e rows x V banks) count matrix into ``depth`` conflict-free groups.

    Rows are split into e lane copies; the lane x bank multigraph is padded to be
    ``depth``-regular (padding edges are lanes of value 0) and decomposed into perfect
    matchings (Birkhoff–von Neumann on counts). Returns a (depth, V) array: the bank each lane
    reads in each group, and a (depth, V) bool array: whether the lane carries a real weight.
    """
    # Deal each row's weights to its e lanes bank by bank, round robin, so that each lane
    # gets at most ceil(count / e) <= depth of them.
    segments = counts.shape[0]
    flat = counts.ravel()
    row_of = np.repeat(np.repeat(np.arange(segments), lanes), flat)
    bank_of = np.repeat(np.tile(np.arange(lanes), segments), flat)
    first_of_row = np.concatenate([[0], np.cumsum(counts.sum(axis=1))])[row_of]
    lane_of = row_of * per_row + (np.arange(row_of.size) - first_of_row) % per_row
    lane_counts = np.zeros((lanes, lanes), dtype=np.int64)
    np.add.at(lane_counts, (lane_of, bank_of), 1)
    real = lane_counts.copy()
    # Pad to depth-regular with the northwest-corner rule on the deficits.
    row_deficit = depth - lane_counts.sum(axis=1)
    col_deficit = depth - lane_counts.sum(axis=0)
    r = c = 0
    while r < lanes and c < lanes:
        fill = min(row_deficit[r], col_deficit[c])
        lane_counts[r, c] += fill
        row_deficit[r] -= fill
        col_deficit[c] -= fill
        if row_deficit[r] == 0:
            r += 1
        else:
            c += 1
    bank_of_lane = np.empty((depth, lanes), dtype=np.int64)
    is_real = np.empty((depth, lanes), dtype=bool)
    remaining = lane_counts
    all_lanes = np.arange(lanes)
    group = 0
    while group < depth:
        match = _perfect_matching(remaining > 0)
        multiplicity = int(remaining[all_lanes, match].min())
        bank_of_lane[group:group + multiplicity] = match
        # A lane is real while it still has real weights in its matched bank.
        still_real = real[all_lanes, match]
        is_real[group:group + multiplicity] = \
            np.arange(multiplicity)[:, None] < still_real[None, :]
        real[all_lanes, match] -= np.minimum(still_real, multiplicity)
        remaining[all_lanes, match] -= multiplicity
        group += multiplicity
    return bank_of_lane, is_real


# The matrix -------------------------------------------------------------------------------------


def _rows_in_order(rows, segments):
    """(row groups, segments) rows of a matrix whose row groups take its rows in order (all
    patterns but gs-scatter, whose files list them); -1 past the last row."""
    rg_rows = np.arange(-(-rows // segments) * segments)
    rg_rows[rg_rows >= rows] = -1
    return rg_rows.reshape(-1, segments)

@dataclass(eq=False)
class GSMatrix:
    """A sparse matrix in GS form.

    Attributes
    ----------
    shape : (int, int)
        Rows (outputs) and columns (inputs) of the dense matrix.
    pattern : str
        One of :data:`PATTERNS`.
    lanes : int
        V, lanes per group (= banks).
    per_row : int
        e, weights each row contributes to a group; V/e rows form a row group.
    encoding : str
        ``"pow2"`` or ``"int8"``.
    group_values : ndarray (groups, V) int64
        Weight values; 0 is a padding lane (or a kept zero of a dense matrix).
    group_cols : ndarray (groups, V) int64
        Column read by each lane; 0 for lanes of value 0.
    rg_groups : ndarray (row groups,) int64
        Groups of each row group, in order (at least 1 each).
    rg_rows : ndarray (row groups, V/e) int64
        Output row of each segment; -1 marks a padding segment of a partial row group.
    exp_bias : int
        pow2 only: the matrix is ``group_values · 2**exp_bias`` (fractional powers of two);
        0 for an integer matrix. A compiled layer folds it into its shift.
    rowgroup_offset : int
        A slice (:meth:`take_rowgroups`): the index of its first row group in the whole
        matrix; 0 otherwise.
    """

    shape: tuple
    pattern: str
    lanes: int
    per_row: int
    encoding: str
    group_values: np.ndarray
    group_cols: np.ndarray
    rg_groups: np.ndarray
    rg_rows: np.ndarray
    exp_bias: int = 0
    rowgroup_offset: int = 0

    # Construction -------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, weights, pattern, lanes, per_row=1, encoding="pow2", *, row_order=None):
        """Pack an integer matrix whose zeros already follow ``pattern``.

        Parameters
        ----------
        weights : array (rows, cols)
            Integers; with pow2, any exact signed powers of two (fractional ones included:
            the matrix then carries an ``exp_bias``, :func:`pow2_bias`).
        pattern : str
            ``gs-gather`` (row groups of V/e consecutive rows), ``gs-scatter`` (row groups of
            any rows: ``row_order`` lists the rows group by group, else rows are grouped by
            kept count), ``1xN`` (V consecutive rows share one mask; e must be 1),
            ``unstructured`` (any matrix, padded) or ``dense`` (every entry kept).
        lanes, per_row : int
            V and e; e divides V.
        encoding : str
            ``pow2`` (every value an exact signed power of two or zero) or ``int8``.
        row_order : sequence of int, optional
            gs-scatter only: a permutation of the rows; consecutive runs of V/e rows form the
            row groups.

        Raises
        ------
        ShapeError, PatternError, EncodingError
        """
        weights = np.asarray(weights)
        _check_arguments(weights, pattern, lanes, per_row, encoding)
        exp_bias = 0
        if encoding == "pow2":
            weights, exp_bias = pow2_bias(weights)
            pow2_encode(weights)
        else:
            _check_int8(weights)
        rows, cols = weights.shape
        segments = lanes // per_row
        kept = np.ones_like(weights, dtype=bool) if pattern == "dense" else weights != 0

        if pattern == "gs-scatter":
            order = _scatter_order(kept, segments, row_order)
        else:
            if row_order is not None:
                raise PatternError(f"Row order applies to gs-scatter only, not {pattern!r}")
            order = np.arange(rows)
        n_rg = -(-rows // segments)
        rg_rows = -np.ones(n_rg * segments, dtype=np.int64)
        rg_rows[:rows] = order
        rg_rows = rg_rows.reshape(n_rg, segments)

        if pattern in ("gs-gather", "gs-scatter"):
            check_pattern(weights, pattern, lanes, per_row, row_order=order)
        elif pattern == "1xN":
            check_pattern(weights, pattern, lanes, per_row)

        if pattern == "1xN":
            values, col_idx, rg_groups = _broadcast_groups(weights, kept, lanes, rg_rows)
        else:
            values, col_idx, rg_groups = _gs_groups(weights, kept, lanes, per_row, rg_rows)
        col_idx[values == 0] = 0
        matrix = cls(shape=(rows, cols), pattern=pattern, lanes=lanes, per_row=per_row,
                     encoding=encoding, group_values=values, group_cols=col_idx,
                     rg_groups=rg_groups, rg_rows=rg_rows, exp_bias=int(exp_bias))
        matrix.group_values, matrix.group_cols = matrix._canonical_lanes()
        return matrix

    # Views --------------------------------------------------------------------------------
    @property
    def segments(self):
        return self.lanes // self.per_row

    @property
    def n_groups(self):
        return int(self.group_values.shape[0])

    def row_lines(self):
        """How a vector writer's row lines hold the outputs (docs/architecture.md): a row
        group's V/e outputs go into as few lines as keep the banks of a line distinct, the
        i-th output of bank b (in segment order) into the row group's line i.

        Returns ``(line, lines)``: ``line`` (row groups, V/e) the line of each segment within
        its row group (-1 for a padding segment), ``lines`` (row groups,) the lines of each
        row group (at least 1, which pops the sum vector of a row group of padding only).
        """
        rows = self.rg_rows
        real = rows >= 0
        bank = rows % self.lanes
        same = (bank[:, :, None] == bank[:, None, :]) & real[:, :, None] & real[:, None, :]
        earlier = np.tri(rows.shape[1], k=-1, dtype=bool)      # [j, i]: segment i before j
        line = np.where(real, (same & earlier[None]).sum(axis=2), -1)
        lines = np.maximum(line.max(axis=1, initial=-1) + 1, 1)
        return line, lines.astype(np.int64)

    @property
    def n_rowgroups(self):
        return int(self.rg_groups.shape[0])

    def take_rowgroups(self, first, end):
        """The matrix of row groups ``first .. end - 1`` only (same shape, pattern and
        lanes): its groups compute those row groups' outputs and no others. A layer too big
        for the weight memory runs as such slices, one after the other."""
        if not 0 <= first < end <= self.n_rowgroups:
            raise ShapeError(f"Row groups must be a range within 0..{self.n_rowgroups}, not "
                             f"{first}..{end}")
        starts = np.concatenate([[0], np.cumsum(self.rg_groups)])
        groups = slice(int(starts[first]), int(starts[end]))
        return dataclasses.replace(
            self, group_values=self.group_values[groups].copy(),
            group_cols=self.group_cols[groups].copy(),
            rg_groups=self.rg_groups[first:end].copy(), rg_rows=self.rg_rows[first:end].copy(),
            rowgroup_offset=self.rowgroup_offset + first)

    @property
    def is_slice(self):
        """Whether this holds only some of its matrix's row groups (:meth:`take_rowgroups`)."""
        whole = -(-self.shape[0] // (self.lanes // self.per_row))
        return self.rowgroup_offset != 0 or self.n_rowgroups != whole

    def as_whole(self):
        """A slice as a whole matrix (one a ``.gsf`` holds): its row groups in their place,
        every other row group one empty group (of the rows no row group of the slice has,
        for gs-scatter), so that ``as_whole().take_rowgroups(first, end)`` is the slice again,
        ``first = rowgroup_offset``, ``end = first + n_rowgroups``."""
        segments = self.lanes // self.per_row
        rows = self.shape[0]
        n_rg = -(-rows // segments)
        first, end = self.rowgroup_offset, self.rowgroup_offset + self.n_rowgroups
        if self.pattern == "gs-scatter":
            rg_rows = -np.ones((n_rg, segments), dtype=np.int64)
            rg_rows[first:end] = self.rg_rows
            rest = np.setdiff1d(np.arange(rows), self.rg_rows[self.rg_rows >= 0])
            others = [r for r in range(n_rg) if not first <= r < end]
            slots = rg_rows[others].ravel()
            slots[:len(rest)] = rest
            rg_rows[others] = slots.reshape(len(others), segments)
        else:
            rg_rows = _rows_in_order(rows, segments)
        rg_groups = np.ones(n_rg, dtype=np.int64)
        rg_groups[first:end] = self.rg_groups
        starts = np.concatenate([[0], np.cumsum(rg_groups)])
        values = np.zeros((int(starts[-1]), self.lanes), dtype=self.group_values.dtype)
        cols = np.zeros_like(values, dtype=self.group_cols.dtype)
        inside = slice(int(starts[first]), int(starts[end]))
        values[inside], cols[inside] = self.group_values, self.group_cols
        return dataclasses.replace(self, group_values=values, group_cols=cols,
                                   rg_groups=rg_groups, rg_rows=rg_rows, rowgroup_offset=0)

    @property
    def nnz(self):
        return int(np.count_nonzero(self.group_values))

    @property
    def group_last(self):
        """True for the last group of each row group."""
        last = np.zeros(self.n_groups, dtype=bool)
        last[np.cumsum(self.rg_groups) - 1] = True
        return last

    @property
    def group_rowgroup(self):
        return np.repeat(np.arange(self.n_rowgroups), self.rg_groups)

    def to_dense(self):
        """The dense matrix, exact inverse of :meth:`from_dense`: int64, or float64 when the
        exponent bias is negative (fractional powers of two)."""
        rows, cols = self.shape
        dense = np.zeros((rows, cols), dtype=np.int64)
        lane_segment = np.arange(self.lanes) // self.per_row
        out_rows = self.rg_rows[self.group_rowgroup][:, lane_segment]     # (groups, V)
        real = self.group_values != 0
        np.add.at(dense, (out_rows[real], self.group_cols[real]), self.group_values[real])
        if self.exp_bias > 0:
            return dense << self.exp_bias
        return np.ldexp(dense.astype(np.float64), self.exp_bias) if self.exp_bias else dense

    def stats(self):
        """Size and efficiency numbers (:func:`gsaccel.sw.golden.layer_stats` adds the
        cycles a core spends on the matrix)."""
        rows, cols = self.shape
        nnz = self.nnz
        payload = len(self._payload())
        value_bytes = 1
        csr = nnz * (value_bytes + (2 if cols <= 65536 else 4)) + (rows + 1) * 4
        return {
            "shape": [rows, cols], "pattern": self.pattern, "lanes": self.lanes,
            "per_row": self.per_row, "encoding": self.encoding,
            "nnz": nnz, "sparsity": 1 - nnz / (rows * cols),
            "rowgroups": self.n_rowgroups, "groups": self.n_groups,
            "groups_per_rowgroup": self.rg_groups.tolist(),
            "padding_lanes": self.lanes * self.n_groups - nnz,
            "utilisation": nnz / (self.lanes * self.n_groups) if self.n_groups else 0.0,
            "bytes": payload + (_HEADER_BIASED if self.exp_bias else _HEADER).size + 4,
            "exp_bias": self.exp_bias,
            "payload_bytes": payload,
            "bytes_per_nonzero": payload / nnz if nnz else float("inf"),
            "csr_bytes": csr, "dense_bytes": rows * cols * value_bytes,
            "dense_cycles": -(-rows * cols // self.lanes),
        }

    def __eq__(self, other):
        if not isinstance(other, GSMatrix):
            return NotImplemented
        return (tuple(self.shape) == tuple(other.shape) and self.pattern == other.pattern
                and self.lanes == other.lanes and self.per_row == other.per_row
                and self.encoding == other.encoding and self.exp_bias == other.exp_bias
                and np.array_equal(self.group_values, other.group_values)
                and np.array_equal(self.group_cols, other.group_cols)
                and np.array_equal(self.rg_groups, other.rg_groups)
                and np.array_equal(self.rg_rows, other.rg_rows))

    # Files --------------------------------------------------------------------------------
    def _index_layout(self):
        """How a lane's column is stored: (address bits, bank bits or 0 when implied)."""
        cols = self.shape[1]
        addr_bits = _bits_for(-(-cols // self.lanes))
        bank_implied = self.per_row == self.lanes and self.pattern != "1xN"
        bank_bits = 0 if bank_implied else _bits_for(self.lanes)
        return addr_bits, bank_bits

    def _canonical_lanes(self):
        """Groups with lanes sorted so that, where e = V, lane i reads bank i."""
        values, cols = self.group_values.copy(), self.group_cols.copy()
        addr_bits, bank_bits = self._index_layout()
        if bank_bits == 0 and self.n_groups:
            # A single segment may permute its lanes freely: put each in its bank's slot.
            banks = np.where(values != 0, cols % self.lanes, -1)
            # Padding lanes take the banks the real lanes leave free, in order.
            for g in np.flatnonzero((banks < 0).any(axis=1)):
                free = np.setdiff1d(np.arange(self.lanes), banks[g][banks[g] >= 0])
                banks[g][banks[g] < 0] = free
            order = np.argsort(banks, axis=1, kind="stable")
            values = np.take_along_axis(values, order, axis=1)
            cols = np.take_along_axis(cols, order, axis=1)
            cols[values == 0] = 0
        return values, cols

    def _payload(self):
        rows, cols = self.shape
        values, col_idx = self.group_values, self.group_cols
        parts = [_pack_bits(np.concatenate([[0], np.cumsum(self.rg_groups)]),
                            _bits_for(self.n_groups + 1))]
        if self.pattern == "gs-scatter":
            parts.append(_pack_bits(self.rg_rows.ravel() + 1, _bits_for(rows + 1)))
        code_width = POW2_CODE_WIDTH if self.encoding == "pow2" else 8
        codes = pow2_encode(values) if self.encoding == "pow2" else values & 0xFF
        addr_bits, bank_bits = self._index_layout()
        if self.pattern == "1xN":
            # Broadcast group: every lane holding a weight reads one column; store it once
            # (0 for a group without weights).
            index = _pack_bits(np.where(values != 0, col_idx, 0).max(axis=1, initial=0),
                               _bits_for(cols))
        elif bank_bits == 0:
            index = _pack_bits(col_idx // self.lanes, addr_bits)
        else:
            index = _pack_bits((col_idx // self.lanes) << bank_bits | col_idx % self.lanes,
                               addr_bits + bank_bits)
        parts.append(_pack_bits(codes, code_width))
        parts.append(index)
        return b"".join(struct.pack("<I", len(p)) + p for p in parts)

    def to_bytes(self):
        """The ``.gsf`` file image: header, payload, CRC-32 of both."""
        payload = self._payload()
        head = (GSF_MAGIC, GSF_VERSION, PATTERNS.index(self.pattern),
                ENCODINGS.index(self.encoding), self.lanes, self.per_row)
        tail = (self.shape[0], self.shape[1], self.n_rowgroups, self.n_groups, len(payload))
        if self.exp_bias:
            header = _HEADER_BIASED.pack(*head[:1], GSF_VERSION_BIASED, *head[2:],
                                         self.exp_bias, *tail)
        else:
            header = _HEADER.pack(*head, *tail)
        return seal(header + payload)

    @classmethod
    def from_bytes(cls, data, *, source="data"):
        """Parse a ``.gsf`` image, checking every count against the bytes present before it
        allocates anything and every invariant of the format (docs/format.md, "What a
        reader checks"); any damage raises :class:`FormatError` naming the problem."""
        data = bytes(data)
        check_head(data, source, "GS file", _HEADER.size + 4, GSF_MAGIC,
                   (GSF_VERSION, GSF_VERSION_BIASED))
        biased = struct.unpack_from("<H", data, 4)[0] == GSF_VERSION_BIASED
        header = _HEADER_BIASED if biased else _HEADER
        if len(data) < header.size + 4:
            raise FormatError(f"{source}: truncated: {len(data)} bytes, a GS file of version "
                              f"{GSF_VERSION_BIASED} has at least {header.size + 4}")
        fields = header.unpack_from(data)
        exp_bias = fields[6] if biased else 0
        (pattern, encoding, lanes, per_row), (rows, cols, n_rg, n_groups, payload_len) = \
            fields[2:6], fields[-5:]
        expected = header.size + payload_len + 4
        check_sealed(data, expected, source)
        layout = _FileLayout.check(source, pattern, encoding, lanes, per_row, rows, cols, n_rg,
                                   n_groups, payload_len)
        if biased and (layout.encoding != "pow2" or exp_bias == 0):
            raise FormatError(f"{source}: a version {GSF_VERSION_BIASED} file carries a nonzero "
                              f"exponent bias of pow2 codes, not bias {exp_bias} of "
                              f"{layout.encoding} values")
        matrix = layout.decode(cls, data[header.size:expected - 4])
        return dataclasses.replace(matrix, exp_bias=exp_bias) if exp_bias else matrix

    def save(self, path):
        with open(path, "wb") as file:
            file.write(self.to_bytes())

    @classmethod
    def load(cls, path):
        """Read and parse a ``.gsf`` file; a missing or unreadable file, a directory or a
        damaged file is a :class:`FormatError` naming it."""
        try:
            with open(path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            raise FormatError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise FormatError(f"{path}: is a directory, not a GS file") from None
        except OSError as error:
            raise FormatError(f"{path}: cannot read: {error.strerror or error}") from None
        return cls.from_bytes(data, source=str(path))


# Reading files ----------------------------------------------------------------------------------

def _unpacked_bytes(count, width):
    """Bytes of ``count`` values of ``width`` bits, as :func:`_pack_bits` writes them."""
    return -(-count * width // 8)


@dataclass(frozen=True)
class _FileLayout:
    """What a ``.gsf`` header promises, checked against itself, the sane limits and the bytes
    present (section by section) before a single array is allocated."""

    source: str
    pattern: str
    encoding: str
    lanes: int
    per_row: int
    rows: int
    cols: int
    n_rg: int
    n_groups: int
    sections: tuple        # (name, count, width) of each payload section, in file order

    @classmethod
    def check(cls, source, pattern, encoding, lanes, per_row, rows, cols, n_rg, n_groups,
              payload_len):
        def fail(message):
            raise FormatError(f"{source}: {message}")

        if pattern >= len(PATTERNS):
            fail(f"pattern index {pattern} is not one of 0..{len(PATTERNS) - 1}")
        if encoding >= len(ENCODINGS):
            fail(f"encoding index {encoding} is not one of 0..{len(ENCODINGS) - 1}")
        pattern, encoding = PATTERNS[pattern], ENCODINGS[encoding]
        if lanes not in (2, 4, 8, 16):
            fail(f"lane count {lanes} is not 2, 4, 8 or 16")
        if per_row < 1 or lanes % per_row:
            fail(f"weights per row e = {per_row} do not divide the lane count {lanes}")
        if pattern == "1xN" and per_row != 1:
            fail(f"a 1xN matrix broadcasts one column to all lanes, so e must be 1, not "
                 f"{per_row}")
        if not 1 <= rows <= MAX_DIMENSION or not 1 <= cols <= MAX_DIMENSION:
            fail(f"shape {rows}x{cols}: rows and columns must be in [1, {MAX_DIMENSION}]")
        if rows * cols > MAX_ENTRIES:
            fail(f"shape {rows}x{cols} has {rows * cols} entries; a GS file holds at most "
                 f"{MAX_ENTRIES}")
        segments = lanes // per_row
        if n_rg != -(-rows // segments):
            fail(f"{n_rg} row groups for {rows} rows of {segments} per row group; expected "
                 f"{-(-rows // segments)}")
        if n_groups < n_rg:
            fail(f"{n_groups} groups for {n_rg} row groups; every row group has at least one")
        addr_bits = _bits_for(-(-cols // lanes))
        bank_bits = 0 if per_row == lanes and pattern != "1xN" else _bits_for(lanes)
        sections = [("group pointers", n_rg + 1, _bits_for(n_groups + 1))]
        if pattern == "gs-scatter":
            sections.append(("row indices", n_rg * segments, _bits_for(rows + 1)))
        sections.append(("values", n_groups * lanes,
                         POW2_CODE_WIDTH if encoding == "pow2" else 8))
        if pattern == "1xN":
            sections.append(("indices", n_groups, _bits_for(cols)))
        else:
            sections.append(("indices", n_groups * lanes, addr_bits + bank_bits))
        needed = sum(4 + _unpacked_bytes(count, width) for _, count, width in sections)
        if needed != payload_len:
            fail(f"payload of {payload_len} bytes; a {rows}x{cols} {pattern} matrix of "
                 f"{n_groups} groups of {lanes} lanes ({encoding}) has {needed}")
        return cls(source, pattern, encoding, lanes, per_row, rows, cols, n_rg, n_groups,
                   tuple(sections))

    def fail(self, message):
        raise FormatError(f"{self.source}: {message}")

    def split(self, payload):
        """The sections' bytes, each checked for its exact length and zero padding bits."""
        parts, offset = [], 0
        for name, count, width in self.sections:
            (length,) = struct.unpack_from("<I", payload, offset)
            size = _unpacked_bytes(count, width)
            if length != size:
                self.fail(f"section {name} is {length} bytes, the header implies {size} "
                          f"({count} values of {width} bits)")
            part = payload[offset + 4:offset + 4 + length]
            spare = 8 * size - count * width
            if spare and part[-1] >> (8 - spare):
                self.fail(f"section {name}: the {spare} padding bits of its last byte are "
                          f"not zero")
            parts.append(part)
            offset += 4 + length
        return parts

    def decode(self, cls, payload):
        lanes, per_row, rows, cols = self.lanes, self.per_row, self.rows, self.cols
        n_rg, n_groups, segments = self.n_rg, self.n_groups, lanes // per_row
        parts = self.split(payload)
        widths = [width for _, _, width in self.sections]

        pointers = _unpack_bits(parts.pop(0), widths.pop(0), n_rg + 1)
        rg_groups = np.diff(pointers)
        if pointers[0] != 0 or pointers[-1] != n_groups or (rg_groups < 1).any():
            bad = int(np.argmax(rg_groups < 1)) if (rg_groups < 1).any() else None
            self.fail("group pointers must rise from 0 to the group count "
                      f"{n_groups} by at least 1 per row group"
                      + (f" (row group {bad} has {int(rg_groups[bad])} groups)"
                         if bad is not None else
                         f", not run from {int(pointers[0])} to {int(pointers[-1])}"))

        if self.pattern == "gs-scatter":
            rg_rows = _unpack_bits(parts.pop(0), widths.pop(0), n_rg * segments) - 1
            if rg_rows.max() >= rows:
                self.fail(f"row index {int(rg_rows.max())} is past the last row {rows - 1}")
            real = np.sort(rg_rows[rg_rows >= 0])
            if real.size != rows or (real.size > 1 and (real[1:] == real[:-1]).any()):
                twice = real[1:][real[1:] == real[:-1]]
                self.fail(f"row {int(twice[0])} appears twice in the row groups; a "
                          f"gs-scatter matrix lists each row once" if twice.size else
                          f"the row groups list {real.size} rows, the matrix has {rows}")
        else:
            rg_rows = _rows_in_order(rows, segments)
        rg_rows = rg_rows.reshape(n_rg, segments)

        codes = _unpack_bits(parts.pop(0), widths.pop(0), n_groups * lanes).reshape(
            n_groups, lanes)
        if self.encoding == "pow2":
            values = pow2_decode(codes)
            junk = (values == 0) & (codes != 0)
            if junk.any():
                g, lane = (int(i) for i in np.argwhere(junk)[0])
                self.fail(f"group {g} lane {lane}: pow2 code {int(codes[g, lane]):#04x} has "
                          f"its nonzero bit clear but other bits set; a zero is code 0")
        else:
            values = (codes ^ 0x80) - 0x80
        group_rg = np.repeat(np.arange(n_rg), rg_groups)
        lane_rows = rg_rows[group_rg][:, np.arange(lanes) // per_row]       # (groups, V)
        stray = (lane_rows < 0) & (values != 0)
        if stray.any():
            g, lane = (int(i) for i in np.argwhere(stray)[0])
            self.fail(f"group {g} lane {lane}: weight {int(values[g, lane])} in a padding "
                      f"segment (row group {int(group_rg[g])} has no row there); padding "
                      f"lanes hold 0")

        index = _unpack_bits(parts.pop(0), widths.pop(0),
                             n_groups if self.pattern == "1xN" else n_groups * lanes)
        nonzero = values != 0
        if self.pattern == "1xN":
            used = nonzero.any(axis=1)
            idle = ~used & (index != 0)
            if idle.any():
                g = int(np.argmax(idle))
                self.fail(f"group {g}: holds no weight but its column index is "
                          f"{int(index[g])}, not 0")
            col_idx = np.where(nonzero, index[:, None], 0)
        else:
            index = index.reshape(n_groups, lanes)
            idle = ~nonzero & (index != 0)
            if idle.any():
                g, lane = (int(i) for i in np.argwhere(idle)[0])
                self.fail(f"group {g} lane {lane}: a padding lane (value 0) with index "
                          f"{int(index[g, lane])}, not 0")
            if per_row == lanes:        # lane i reads bank i: only the address is stored
                col_idx = np.where(nonzero, index * lanes + np.arange(lanes), 0)
            else:
                bank_bits = _bits_for(lanes)
                col_idx = (index >> bank_bits) * lanes + (index & (lanes - 1))
        if (col_idx >= cols).any():
            g, lane = (int(i) for i in np.argwhere(col_idx >= cols)[0])
            self.fail(f"group {g} lane {lane}: column {int(col_idx[g, lane])} is past the "
                      f"last column {cols - 1}")
        self._check_groups(values, col_idx, lane_rows, group_rg, rg_rows, rg_groups)
        return cls(shape=(rows, cols), pattern=self.pattern, lanes=lanes, per_row=per_row,
                   encoding=self.encoding, group_values=values, group_cols=col_idx,
                   rg_groups=rg_groups, rg_rows=rg_rows)

    def _check_groups(self, values, col_idx, lane_rows, group_rg, rg_rows, rg_groups):
        """No bank conflict in a group, no weight stored twice, and the rule of the pattern
        (:func:`check_pattern`), so that ``to_dense`` (unpack, inspect) and the device's
        group words mean the same weights."""
        lanes, per_row, cols = self.lanes, self.per_row, self.cols
        g, lane = np.nonzero(values)
        col, row, rg = col_idx[g, lane], lane_rows[g, lane], group_rg[g]
        if self.pattern != "1xN" and per_row != lanes:
            # Lanes holding weights read distinct banks (a 1xN group reads one column; where
            # e = V lane i reads bank i).
            key = g * lanes + col % lanes
            order = np.argsort(key, kind="stable")
            clash = np.flatnonzero(key[order][1:] == key[order][:-1])
            if clash.size:
                first, second = order[clash[0]], order[clash[0] + 1]
                self.fail(f"group {int(g[first])}: lanes {int(lane[first])} and "
                          f"{int(lane[second])} both read bank {int(col[first] % lanes)} "
                          f"(columns {int(col[first])} and {int(col[second])}); a group reads "
                          f"each bank once")
        key = row * cols + col
        order = np.argsort(key, kind="stable")
        twice = np.flatnonzero(key[order][1:] == key[order][:-1])
        if twice.size:
            first = order[twice[0]]
            self.fail(f"row {int(row[first])} column {int(col[first])} is stored twice "
                      f"(group {int(g[first])} and group {int(g[order[twice[0] + 1]])})")
        if self.pattern in ("gs-gather", "gs-scatter"):
            self._check_gs_rule(row, col, rg, rg_rows, rg_groups)
        elif self.pattern == "1xN":
            self._check_1xn_rule(col, rg, rg_rows, rg_groups)

    def _check_gs_rule(self, row, col, rg, rg_rows, rg_groups):
        lanes, per_row, n_rg = self.lanes, self.per_row, self.n_rg
        kept = np.bincount(row, minlength=self.rows)
        real = rg_rows >= 0
        count = np.where(real, kept[np.maximum(rg_rows, 0)], -1)
        first = count[np.arange(n_rg), np.argmax(real, axis=1)]
        uneven = (real & (count != first[:, None])).any(axis=1)
        if uneven.any():
            r = int(np.argmax(uneven))
            other = int(np.argmax(real[r] & (count[r] != first[r])))
            self.fail(f"row group {r}: row {int(rg_rows[r, np.argmax(real[r])])} keeps "
                      f"{int(first[r])} weights and row {int(rg_rows[r, other])} keeps "
                      f"{int(count[r, other])}; a {self.pattern} row group keeps the same "
                      f"count in every row")
        if (first % per_row).any():
            r = int(np.argmax(first % per_row != 0))
            self.fail(f"row group {r}: rows keep {int(first[r])} weights, not a multiple of "
                      f"e={per_row}")
        allowed = first // per_row
        load = np.bincount(rg * lanes + col % lanes, minlength=n_rg * lanes).reshape(
            n_rg, lanes).max(axis=1)
        if (load > allowed).any():
            r = int(np.argmax(load > allowed))
            self.fail(f"row group {r}: a bank holds {int(load[r])} kept weights, at most "
                      f"{int(allowed[r])} allowed")
        self._check_depth(np.maximum(allowed, 1), rg_groups)

    def _check_1xn_rule(self, col, rg, rg_rows, rg_groups):
        n_rg, cols = self.n_rg, self.cols
        members = (rg_rows >= 0).sum(axis=1)
        pairs, holders = np.unique(rg * cols + col, return_counts=True)
        pair_rg = pairs // cols
        short = holders != members[pair_rg]
        if short.any():
            i = int(np.argmax(short))
            self.fail(f"row group {int(pair_rg[i])}: {int(holders[i])} of its "
                      f"{int(members[pair_rg[i]])} rows keep column {int(pairs[i] % cols)}; "
                      f"1xN rows of a block share one mask")
        columns = np.bincount(pair_rg, minlength=n_rg)
        # An empty block is allowed: a row-group slice is stored whole (GSMatrix.as_whole).
        kept = np.flatnonzero(columns)
        if kept.size and (columns[kept] != columns[kept[0]]).any():
            r = int(kept[np.argmax(columns[kept] != columns[kept[0]])])
            self.fail(f"row group {r}: keeps {int(columns[r])} columns, row group "
                      f"{int(kept[0])} keeps {int(columns[kept[0]])}; 1xN keeps the same "
                      f"count in every block that keeps any")
        self._check_depth(np.maximum(columns, 1), rg_groups)

    def _check_depth(self, expected, rg_groups):
        wrong = expected != rg_groups
        if wrong.any():
            r = int(np.argmax(wrong))
            self.fail(f"row group {r}: {int(rg_groups[r])} groups, a {self.pattern} row group "
                      f"of these weights has exactly {int(expected[r])}")


# Pattern rules ----------------------------------------------------------------------------------

def _check_arguments(weights, pattern, lanes, per_row, encoding):
    if pattern not in PATTERNS:
        raise PatternError(f"Pattern must be one of {', '.join(PATTERNS)}, not {pattern!r}")
    if encoding not in ENCODINGS:
        raise EncodingError(f"Encoding must be one of {', '.join(ENCODINGS)}, not {encoding!r}")
    if not isinstance(lanes, (int, np.integer)) or lanes not in (2, 4, 8, 16):
        raise PatternError(f"Lane count must be 2, 4, 8 or 16, not {lanes!r}")
    if not isinstance(per_row, (int, np.integer)) or per_row < 1 or lanes % per_row:
        raise PatternError(f"Weights per row e must divide the lane count {lanes}, "
                           f"not {per_row!r}")
    if pattern == "1xN" and per_row != 1:
        raise PatternError(f"Pattern 1xN broadcasts one column to all lanes, so e must be 1, "
                           f"not {per_row!r}")
    if weights.ndim != 2 or 0 in weights.shape:
        raise ShapeError(f"Weights must be a non-empty 2-D matrix, not shape {weights.shape}")
    kind = weights.dtype.kind
    if kind not in "iuf":
        raise EncodingError(f"Weights must be integers (quantise them first), not dtype "
                            f"{weights.dtype}")
    if kind == "f":
        bad = ~np.isfinite(weights)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise EncodingError(f"Weight {weights[index]} at {index} is not a finite number")
        # pow2 takes any exact power of two, fractional too (pow2_bias checks them).
        bad = weights != np.round(weights) if encoding != "pow2" else np.zeros(weights.shape,
                                                                              bool)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise EncodingError(f"Weights must be integers (quantise them first), not dtype "
                                f"{weights.dtype} with fractional values such as "
                                f"{weights[index]} at {index}")
    if kind == "u" or kind == "f" and encoding != "pow2":
        # Beyond int64 a weight would wrap when it is converted; no code holds one anyway.
        bad = (weights >= 2.0 ** 63) | (weights < -2.0 ** 63) if kind == "f" else \
            weights > np.iinfo(np.int64).max
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise EncodingError(f"Weight {weights[index]} at {index} is outside the int64 "
                                f"range")


def _scatter_order(kept, segments, row_order):
    rows = kept.shape[0]
    if row_order is None:
        # Group rows of equal kept count together, the order the GS-scatter pruner uses.
        return np.argsort(-kept.sum(axis=1), kind="stable")
    order = np.asarray(row_order)
    if order.dtype.kind not in "iuf" or order.shape != (rows,) or \
            not np.array_equal(np.sort(order), np.arange(rows)):
        raise PatternError(f"Row order must be a permutation of the {rows} rows")
    order = order.astype(np.int64)
    return order


def check_pattern(weights, pattern, lanes, per_row=1, *, row_order=None):
    """Raise :class:`PatternError` naming the first row group that breaks ``pattern``.

    gs-gather/gs-scatter: in every row group all rows keep the same count, a multiple of e,
    and no bank holds more than count/e kept weights. 1xN: the V rows of each block share
    one mask. unstructured and dense accept any matrix.
    """
    weights = np.asarray(weights)
    _check_arguments(weights, pattern, lanes, per_row, "int8")
    rows, cols = weights.shape
    kept = weights != 0
    segments = lanes // per_row
    if pattern in ("unstructured", "dense"):
        return
    if pattern == "1xN":
        for start in range(0, rows, lanes):
            block = kept[start:start + lanes]
            differs = np.flatnonzero((block != block[0]).any(axis=1))
            if differs.size:
                raise PatternError(f"row group {start // lanes}: row {start + differs[0]} keeps "
                                   f"other columns than row {start}; 1xN rows of a block share "
                                   f"one mask")
        counts = kept[::lanes].sum(axis=1)
        if (counts != counts[0]).any():
            block = int(np.flatnonzero(counts != counts[0])[0])
            raise PatternError(f"row group {block}: keeps {counts[block]} columns, row group 0 "
                               f"keeps {counts[0]}; 1xN keeps the same count in every block")
        return
    order = np.arange(rows) if row_order is None else np.asarray(row_order)
    bank_of_col = np.arange(cols) % lanes
    for rg, start in enumerate(range(0, rows, segments)):
        members = order[start:start + segments]
        counts = kept[members].sum(axis=1)
        if (counts != counts[0]).any():
            other = int(np.flatnonzero(counts != counts[0])[0])
            raise PatternError(f"row group {rg}: row {members[0]} keeps {counts[0]} weights and "
                               f"row {members[other]} keeps {counts[other]} weights; all rows "
                               f"of a row group must keep the same count")
        if counts[0] % per_row:
            raise PatternError(f"row group {rg}: rows keep {counts[0]} weights, not a multiple "
                               f"of e={per_row}")
        allowed = counts[0] // per_row
        load = np.bincount(bank_of_col[np.nonzero(kept[members])[1]], minlength=lanes)
        if (load > allowed).any():
            bank = int(np.argmax(load > allowed))
            raise PatternError(f"row group {rg}: bank {bank} holds {load[bank]} kept weights, at "
                               f"most {allowed} allowed")


# Schedulers -------------------------------------------------------------------------------------

def _broadcast_groups(weights, kept, lanes, rg_rows):
    values, col_idx, rg_groups = [], [], []
    for members in rg_rows:
        real = members[members >= 0]
        columns = np.flatnonzero(kept[real[0]])
        count = max(1, columns.size)
        block = np.zeros((count, lanes), dtype=np.int64)
        block[:columns.size, :real.size] = weights[np.ix_(real, columns)].T
        values.append(block)
        col = np.zeros((count, lanes), dtype=np.int64)
        col[:columns.size] = columns[:, None]
        col_idx.append(col)
        rg_groups.append(count)
    return np.concatenate(values), np.concatenate(col_idx), np.asarray(rg_groups, dtype=np.int64)


def _horizontal_groups(weights, kept, lanes, rg_rows):
    """e = V: every row group is one row and lane i may read bank i, so group t simply takes
    each bank's t-th kept column of the row: max(1, largest bank load) groups, all rows at
    once, without any matching."""
    rows = rg_rows[:, 0]
    r_idx, c_idx = np.nonzero(kept[rows])                  # row-group-major, column order
    bank = c_idx % lanes
    key = r_idx * lanes + bank
    order = np.lexsort((c_idx, key))
    key_sorted = key[order]
    starts = np.flatnonzero(np.r_[True, key_sorted[1:] != key_sorted[:-1]])
    rank = np.empty(key.size, dtype=np.int64)
    rank[order] = np.arange(key.size) - np.repeat(starts, np.diff(np.r_[starts, key.size]))
    loads = np.zeros(rows.size, dtype=np.int64)
    np.maximum.at(loads, r_idx, rank + 1)
    rg_groups = np.maximum(loads, 1)
    first = np.concatenate([[0], np.cumsum(rg_groups)[:-1]])
    values = np.zeros((int(rg_groups.sum()), lanes), dtype=np.int64)
    col_idx = np.zeros_like(values)
    values[first[r_idx] + rank, bank] = weights[rows[r_idx], c_idx]
    col_idx[first[r_idx] + rank, bank] = c_idx
    return values, col_idx, rg_groups


def _gs_groups(weights, kept, lanes, per_row, rg_rows):
    """Exact decomposition of every row group into max(ceil(count/e), bank load) groups."""
    if per_row == lanes:
        return _horizontal_groups(weights, kept, lanes, rg_rows)
    cols = weights.shape[1]
    segments = lanes // per_row
    bank_of_col = np.arange(cols) % lanes
    values, col_idx, rg_groups = [], [], []
    for members in rg_rows:
        real_rows = members[members >= 0]
        sub = kept[real_rows]
        counts = np.zeros((segments, lanes), dtype=np.int64)
        r_idx, c_idx = np.nonzero(sub)
        np.add.at(counts, (r_idx, bank_of_col[c_idx]), 1)
        depth = int(max(1, -(-counts.sum(axis=1).max() // per_row), counts.sum(axis=0).max()))
        bank_of_lane, is_real = _schedule_row_group(counts, lanes, per_row, depth)
        # Hand out each (row, bank)'s columns, in column order, to the real lanes that take
        # that (row, bank), in group order.
        lane_row = np.arange(lanes) // per_row
        g_idx, l_idx = np.nonzero(is_real)                        # group-major order
        seg = lane_row[l_idx]
        bank = bank_of_lane[g_idx, l_idx]
        key = seg * lanes + bank
        slot_order = np.lexsort((g_idx, key))
        # Columns of each (segment, bank), sorted by column.
        w_key = r_idx * lanes + bank_of_col[c_idx]
        w_order = np.lexsort((c_idx, w_key))
        group_vals = np.zeros((depth, lanes), dtype=np.int64)
        group_cols = np.zeros((depth, lanes), dtype=np.int64)
        assert np.array_equal(key[slot_order], w_key[w_order])
        gsel, lsel = g_idx[slot_order], l_idx[slot_order]
        chosen_rows, chosen_cols = real_rows[r_idx[w_order]], c_idx[w_order]
        group_vals[gsel, lsel] = weights[chosen_rows, chosen_cols]
        group_cols[gsel, lsel] = chosen_cols
        values.append(group_vals)
        col_idx.append(group_cols)
        rg_groups.append(depth)
    return np.concatenate(values), np.concatenate(col_idx), np.asarray(rg_groups, dtype=np.int64)
