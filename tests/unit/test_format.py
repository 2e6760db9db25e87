"""The GS compact format: packing, exact round trips, pattern rules and damaged files."""

import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gsaccel.sim.stimulus import PATTERN_CASES, random_pattern_matrix
from gsaccel.sw.errors import EncodingError, FormatError, PatternError, ShapeError
from gsaccel.sw.format import GSMatrix, pow2_decode, pow2_encode

LANES = (2, 4, 8, 16)


def assert_conflict_free(matrix):
    """Independent of the packer: every group reads each bank at most once (one column per
    bank, for broadcast groups), and lane i only carries weights of its segment's row."""
    lanes = matrix.lanes
    for g in range(matrix.n_groups):
        real = matrix.group_values[g] != 0
        cols = matrix.group_cols[g][real]
        banks = cols % lanes
        for bank in np.unique(banks):
            assert np.unique(cols[banks == bank]).size == 1, f"group {g}: bank {bank} conflict"


def check_round_trip(matrix_dense, pattern, lanes, per_row, encoding, row_order=None):
    matrix = GSMatrix.from_dense(matrix_dense, pattern, lanes, per_row, encoding,
                                 row_order=row_order)
    np.testing.assert_array_equal(matrix.to_dense(), matrix_dense)
    assert_conflict_free(matrix)
    again = GSMatrix.from_bytes(matrix.to_bytes())
    assert again == matrix
    np.testing.assert_array_equal(again.to_dense(), matrix_dense)
    return matrix


@st.composite
def pattern_cases(draw):
    lanes = draw(st.sampled_from(LANES))
    pattern, per_row = draw(st.sampled_from(PATTERN_CASES(lanes)))
    rows = draw(st.integers(1, 3 * lanes + 3))
    cols = draw(st.integers(1, 5 * lanes + 3))
    encoding = draw(st.sampled_from(["pow2", "int8"]))
    density = draw(st.sampled_from([0.0, 0.2, 0.6, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    return lanes, pattern, per_row, rows, cols, encoding, density, seed


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern_cases())
def test_round_trip_every_pattern(case):
    lanes, pattern, per_row, rows, cols, encoding, density, seed = case
    rng = np.random.default_rng(seed)
    dense, row_order = random_pattern_matrix(rng, pattern, rows, cols, lanes, per_row, encoding,
                                             density=density)
    matrix = check_round_trip(dense, pattern, lanes, per_row, encoding, row_order)
    if pattern in ("gs-gather", "gs-scatter", "1xN"):
        # Balanced patterns carry no padding beyond ragged edges: a full row group of P
        # groups holds exactly V*P weights.
        kept = (dense != 0).sum(axis=1)
        for rg, members in enumerate(matrix.rg_rows):
            real = members[members >= 0]
            expected = max(1, kept[real[0]] // (per_row if pattern != "1xN" else 1))
            assert matrix.rg_groups[rg] == expected


def test_golden_product_matches_numpy(rng):
    from gsaccel.sw.golden import gs_matvec
    for lanes in LANES:
        for pattern, per_row in PATTERN_CASES(lanes):
            dense, order = random_pattern_matrix(rng, pattern, 3 * lanes + 1, 4 * lanes + 3,
                                                 lanes, per_row, "int8")
            matrix = GSMatrix.from_dense(dense, pattern, lanes, per_row, "int8", row_order=order)
            x = rng.integers(-128, 128, dense.shape[1])
            np.testing.assert_array_equal(gs_matvec(matrix, x, acc_width=32), dense @ x)


def test_hand_built_gather_matrix():
    # Two row groups of four rows (V=4, e=1), two weights per row, each bank used twice.
    dense = np.zeros((8, 8), dtype=np.int64)
    dense[0, [0, 1]] = [1, -2]
    dense[1, [2, 3]] = [4, 8]
    dense[2, [4, 5]] = [-1, 1]
    dense[3, [6, 7]] = [2, 2]
    dense[4, [0, 5]] = 1
    dense[5, [1, 6]] = 1
    dense[6, [2, 7]] = 1
    dense[7, [3, 4]] = 1
    matrix = check_round_trip(dense, "gs-gather", 4, 1, "pow2")
    assert matrix.rg_groups.tolist() == [2, 2]
    stats = matrix.stats()
    assert stats["utilisation"] == 1.0 and stats["padding_lanes"] == 0
    # Row group 2 (rows 4, 5) at e=2 reads bank 1 twice with P=1: not gs-gather.
    with pytest.raises(PatternError, match=r"^row group 2: bank 1 holds 2 kept weights"):
        GSMatrix.from_dense(dense, "gs-gather", 4, 2)
    # Horizontal (e=V): each row is a row group, its four weights in four banks.
    horizontal = np.zeros((3, 8), dtype=np.int64)
    horizontal[0, [0, 1, 2, 3]] = [1, 2, 4, 8]
    horizontal[1, [4, 1, 6, 3]] = -1
    horizontal[2, [0, 5, 2, 7, 4, 1, 6, 3]] = 16
    matrix = check_round_trip(horizontal, "gs-gather", 4, 4, "pow2")
    assert matrix.rg_groups.tolist() == [1, 1, 2]


def test_hand_built_unstructured_needs_padding():
    # One row of 3 weights all in bank 0 (V=4): three groups, each with one real lane.
    dense = np.zeros((1, 12), dtype=np.int64)
    dense[0, [0, 4, 8]] = [1, 2, 4]
    matrix = check_round_trip(dense, "unstructured", 4, 1, "pow2")
    assert matrix.n_groups == 3 and matrix.stats()["utilisation"] == pytest.approx(3 / 12)


@pytest.mark.parametrize("change, message", [
    (lambda w: w.__setitem__((0, 0), 0), r"^row group 0: row 0 keeps 1 weights and row 1 "
                                         r"keeps 2 weights; all rows of a row group must keep "
                                         r"the same count$"),
    (lambda w: (w.__setitem__((0, 1), 0), w.__setitem__((0, 4), 1)),
     r"^row group 0: bank 0 holds 3 kept weights, at most 2 allowed$"),
])
def test_gather_rule_violations_name_the_row_group(change, message):
    dense = np.zeros((4, 8), dtype=np.int64)
    for row in range(4):
        dense[row, [2 * row, 2 * row + 1]] = 1
    change(dense)
    with pytest.raises(PatternError, match=message):
        GSMatrix.from_dense(dense, "gs-gather", 4, 1)


def test_gather_rule_multiple_of_e():
    dense = np.zeros((1, 8), dtype=np.int64)
    dense[0, [0, 1, 2]] = 1
    with pytest.raises(PatternError, match=r"^row group 0: rows keep 3 weights, not a multiple "
                                           r"of e=2$"):
        GSMatrix.from_dense(dense, "gs-gather", 4, 2)


def test_one_by_n_rule():
    dense = np.zeros((4, 6), dtype=np.int64)
    dense[:, 1] = 1
    dense[2, 3] = 1
    with pytest.raises(PatternError, match=r"^row group 0: row 2 keeps other columns than row "
                                           r"0; 1xN rows of a block share one mask$"):
        GSMatrix.from_dense(dense, "1xN", 4)
    with pytest.raises(PatternError, match=r"^Pattern 1xN broadcasts one column to all lanes, "
                                           r"so e must be 1, not 2$"):
        GSMatrix.from_dense(np.ones((4, 4)), "1xN", 4, 2)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(pattern="diagonal"), PatternError, r"^Pattern must be one of .*, not 'diagonal'$"),
    (dict(lanes=6), PatternError, r"^Lane count must be 2, 4, 8 or 16, not 6$"),
    (dict(per_row=3), PatternError, r"^Weights per row e must divide the lane count 4, not 3$"),
    (dict(encoding="fp16"), EncodingError, r"^Encoding must be one of pow2, int8, not 'fp16'$"),
])
def test_bad_arguments(kwargs, error, message):
    args = dict(pattern="unstructured", lanes=4, per_row=1, encoding="pow2") | kwargs
    with pytest.raises(error, match=message):
        GSMatrix.from_dense(np.ones((4, 4)), **args)


def test_bad_values_and_shapes():
    with pytest.raises(EncodingError, match=r"^Weight 3 at \(0, 1\) is not a signed power"):
        GSMatrix.from_dense([[1, 3]], "unstructured", 2)
    with pytest.raises(EncodingError, match=r"^pow2 weights must span at most 16 exponents "
                                            r"\(the codes' 2\*\*0..2\*\*15\), not "
                                            r"2\*\*0..2\*\*16$"):
        GSMatrix.from_dense([[1, 65536]], "unstructured", 2)
    with pytest.raises(EncodingError, match=r"^Weight 0.3 at \(0, 0\) is not a signed power "
                                            r"of two 2\*\*k or zero"):
        GSMatrix.from_dense([[0.3]], "unstructured", 2)
    with pytest.raises(EncodingError, match=r"^Weight 128 at \(0, 0\) is outside the int8"):
        GSMatrix.from_dense([[128]], "unstructured", 2, encoding="int8")
    with pytest.raises(EncodingError, match=r"^Weights must be integers"):
        GSMatrix.from_dense([[0.5]], "unstructured", 2, encoding="int8")
    with pytest.raises(ShapeError, match=r"^Weights must be a non-empty 2-D matrix, not shape "
                                         r"\(3,\)$"):
        GSMatrix.from_dense([1, 2, 4], "unstructured", 2)


def test_pow2_codes_cover_the_exponent_range():
    values = np.array([0, 1, -1, 2, -2, 1 << 15, -(1 << 15)])
    codes = pow2_encode(values)
    assert codes.tolist() == [0, 0x20, 0x30, 0x21, 0x31, 0x2F, 0x3F]
    np.testing.assert_array_equal(pow2_decode(codes), values)


def test_pow2_codes_are_the_gateware_layout():
    """Every code is the word ``hw.layouts.pow2_code_layout`` packs (the layout the lane
    decodes), and every one of its 2**width words decodes like the layout says."""
    from gsaccel.hw.config import POW2_EXP_MAX
    from gsaccel.hw.layouts import pow2_code_layout
    from gsaccel.sw.format import POW2_CODE_WIDTH, pack_word, unpack_word
    layout = pow2_code_layout()
    assert POW2_CODE_WIDTH == layout.size
    for k in range(POW2_EXP_MAX + 1):
        for sign in (0, 1):
            word = pack_word(layout, {"exp": k, "sign": sign, "nonzero": 1})
            assert pow2_encode([(-1) ** sign * (1 << k)]).tolist() == [word]
    assert pow2_encode([0]).tolist() == [pack_word(layout, {})]
    for word in range(1 << layout.size):
        fields = unpack_word(layout, word)
        value = (-1) ** fields["sign"] * (1 << fields["exp"]) if fields["nonzero"] else 0
        assert pow2_decode([word]).tolist() == [value]


@pytest.fixture
def gsf_bytes(rng):
    dense, _ = random_pattern_matrix(rng, "unstructured", 13, 21, 4, 1, "pow2")
    return GSMatrix.from_dense(dense, "unstructured", 4).to_bytes()


def test_truncated_file(gsf_bytes):
    for cut in (0, 10, len(gsf_bytes) - 1):
        with pytest.raises(FormatError, match="truncated"):
            GSMatrix.from_bytes(gsf_bytes[:cut])


def test_corrupted_file(gsf_bytes, rng):
    for _ in range(20):
        damaged = bytearray(gsf_bytes)
        position = int(rng.integers(4, len(damaged)))
        damaged[position] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(FormatError):
            GSMatrix.from_bytes(bytes(damaged))


def test_wrong_magic_and_version(gsf_bytes):
    with pytest.raises(FormatError, match="not a GS file"):
        GSMatrix.from_bytes(b"PK\x03\x04" + gsf_bytes[4:])
    body = bytearray(gsf_bytes[:-4])
    struct.pack_into("<H", body, 4, 99)
    with pytest.raises(FormatError, match=r"GS file version 99 is not supported; this gsaccel "
                                          r"reads version 1"):
        GSMatrix.from_bytes(bytes(body) + struct.pack("<I", zlib.crc32(body)))


def test_header_payload_mismatch_is_a_format_error(gsf_bytes):
    # A consistent CRC over a lying header (more groups than stored) must not crash numpy.
    body = bytearray(gsf_bytes[:-4])
    groups = struct.unpack_from("<I", body, 22)[0]
    struct.pack_into("<I", body, 22, groups + 5)
    with pytest.raises(FormatError, match=rf"^data: payload of {len(body) - 30} bytes; a 13x21 "
                                          rf"unstructured matrix of {groups + 5} groups of 4 "
                                          rf"lanes \(pow2\) has \d+$"):
        GSMatrix.from_bytes(bytes(body) + struct.pack("<I", zlib.crc32(body)))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "gsaccel.sw.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_cli_pack_inspect_unpack(tmp_path, rng):
    dense, _ = random_pattern_matrix(rng, "gs-gather", 19, 29, 8, 2, "pow2", density=0.8)
    np.save(tmp_path / "w.npy", dense)
    result = run_cli("pack", "--weights", str(tmp_path / "w.npy"), "--pattern", "gs-gather",
                     "--lanes", "8", "--per-row", "2", "-o", str(tmp_path / "w.gsf"))
    assert result.returncode == 0, result.stderr
    result = run_cli("inspect", str(tmp_path / "w.gsf"), "--json")
    assert result.returncode == 0, result.stderr
    assert '"pattern": "gs-gather"' in result.stdout and '"per_row": 2' in result.stdout
    result = run_cli("unpack", str(tmp_path / "w.gsf"), "-o", str(tmp_path / "back.npy"))
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "back.npy"), dense)


def test_cli_errors_are_one_line(tmp_path):
    np.save(tmp_path / "bad.npy", np.array([[3, 0], [0, 1]]))
    result = run_cli("pack", "--weights", str(tmp_path / "bad.npy"), "--pattern",
                     "unstructured", "--lanes", "2", "-o", str(tmp_path / "x.gsf"))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("gsaccel pack: error: Weight 3 at (0, 0)")
    (tmp_path / "junk.gsf").write_bytes(b"\x00" * 64)
    result = run_cli("inspect", str(tmp_path / "junk.gsf"))
    assert result.returncode == 1 and "not a GS file" in result.stderr
    result = run_cli("unpack", str(tmp_path / "missing.gsf"), "-o", str(tmp_path / "m.npy"))
    assert result.returncode == 1 and "no such file" in result.stderr


# Fractional powers of two: an exponent bias per matrix -----------------------------------------

@pytest.mark.parametrize("weights, bias, codes", [
    ([[0.25, 0, -0.125, 0], [0, 0.5, 0, 1.0]], -3, [[2, 0, -1, 0], [0, 4, 0, 8]]),
    ([[2.0 ** -20, 0], [0, -(2.0 ** -5)]], -20, [[1, 0], [0, -(2 ** 15)]]),
    ([[4, 0], [0, 2 ** 17]], 2, [[1, 0], [0, 2 ** 15]]),          # beyond 2**15: bias > 0
    ([[4, 0], [0, -(2 ** 15)]], 0, [[4, 0], [0, -(2 ** 15)]]),    # integers keep their codes
])
def test_fractional_pow2_round_trips_with_its_exponent_bias(weights, bias, codes):
    matrix = GSMatrix.from_dense(np.array(weights), "unstructured", 2)
    assert matrix.exp_bias == bias
    expected = GSMatrix.from_dense(np.array(codes), "unstructured", 2)
    assert np.array_equal(matrix.group_values, expected.group_values)
    assert np.array_equal(matrix.to_dense(), np.array(weights))
    data = matrix.to_bytes()
    assert struct.unpack_from("<H", data, 4)[0] == (2 if bias else 1)
    assert len(data) == len(expected.to_bytes()) + (1 if bias else 0)
    assert GSMatrix.from_bytes(data) == matrix
    assert matrix.stats()["bytes"] == len(data)


def test_integer_matrices_keep_their_version_1_bytes():
    dense = np.array([[1, 0, 2, 0], [0, -4, 0, 8]])
    data = GSMatrix.from_dense(dense, "unstructured", 2).to_bytes()
    payload = struct.unpack_from("<I", data, 26)[0]           # the last header field
    assert data[4:6] == b"\x01\x00" and len(data) == 30 + payload + 4


def test_a_biased_file_must_hold_pow2_codes_with_a_nonzero_bias():
    matrix = GSMatrix.from_dense(np.array([[0.5, 0], [0, 0.25]]), "unstructured", 2)
    data = bytearray(matrix.to_bytes())
    data[10] = 0                                         # bias 0 in a version-2 file
    body = bytes(data[:-4])
    with pytest.raises(FormatError, match=r"^data: a version 2 file carries a nonzero exponent "
                                          r"bias of pow2 codes, not bias 0 of pow2 values$"):
        GSMatrix.from_bytes(body + struct.pack("<I", zlib.crc32(body)))
    with pytest.raises(FormatError, match=r"^data: GS file version 3 is not supported; this "
                                          r"gsaccel reads version 1 and 2$"):
        GSMatrix.from_bytes(b"GSF\x1a" + struct.pack("<H", 3) + bytes(40))


def test_a_layer_folds_the_exponent_bias_into_its_shift():
    from gsaccel.sw.compile.layers import SUM, GSLayer
    from gsaccel.sw.format.geometry import LoopNest, TensorGeometry
    source = TensorGeometry(1, 1, 4, 2, 0)
    dest = TensorGeometry(1, 1, 2, 2, 0).at(source.words)
    nest = LoopNest(source, dest, (1, 1), (1, 1), (0, 0), (1, 1))
    fractional = GSMatrix.from_dense(np.array([[0.25, 0, -0.125, 0], [0, 0.5, 0, 1.0]]),
                                     "unstructured", 2)
    layer = GSLayer("f", "Linear", fractional, np.zeros(2), 4, False, SUM, nest, ("x",), "y")
    assert layer.shift == 7 and layer.matrix.exp_bias == 0
    assert np.array_equal(layer.matrix.to_dense(), [[2, 0, -1, 0], [0, 4, 0, 8]])
    with pytest.raises(ShapeError, match=r"^Shift must be in \[0, 31\], not -2$"):
        GSLayer("f", "Linear", GSMatrix.from_dense(np.array([[4, 0, 0, 0], [0, 2 ** 17, 0, 0]]),
                                                   "unstructured", 2),
                np.zeros(2), 0, False, SUM, nest, ("x",), "y")
