"""The golden model: numerics at their edges, kernels against plain numpy, the core
interpreter against the kernels, and the cycle model's invariants."""

import dataclasses

import numpy as np
import pytest

from gsaccel.hw.config import CoreConfig
from gsaccel.hw.layouts import ErrorCode, Memory
from gsaccel.sim.stimulus import PATTERN_CASES, random_pattern_matrix
from gsaccel.sw import golden
from gsaccel.sw.errors import CapacityError, DeviceError, ShapeError
from gsaccel.sw.format import GSMatrix
from gsaccel.sw.compile.image import build_image
from gsaccel.sw.compile.layers import BasisLayer, GSLayer
from gsaccel.sw.format.geometry import LoopNest, TensorGeometry
from gsaccel.sw.format.words import pack_word, unpack_word
from gsaccel.hw.layouts import (group_layout, layer_layout, row_layout, row_line_layout,
                                row_record_layout)


def reference_requantize(acc, shift, relu, width):
    """Python integers, one value at a time: the rules of docs/numerics.md as prose."""
    out = []
    for a in acc:
        a = ((int(a) + (1 << (width - 1))) % (1 << width)) - (1 << (width - 1))
        if shift:
            a = (a + (1 << (shift - 1))) // (1 << shift)        # floor division = arithmetic >>
        a = max(-128, min(127, a))
        out.append(max(a, 0) if relu else a)
    return out


@pytest.mark.parametrize("shift", [0, 1, 2, 7, 16, 31])
@pytest.mark.parametrize("relu", [False, True])
def test_requantize_matches_reference(rng, shift, relu):
    width = 24
    acc = np.concatenate([
        rng.integers(-(1 << 30), 1 << 30, 500),                  # wraps
        (np.arange(-8, 9) << max(shift - 1, 0)),                 # rounding ties
        [-(1 << 23), (1 << 23) - 1, -(1 << 23) - 1, 1 << 23],    # wrap edges
        [127 << shift, 128 << shift, -128 << shift, -129 << shift],  # saturation edges
    ])
    got = golden.requantize(acc, shift, relu, width)
    assert got.dtype == np.int8
    assert got.tolist() == reference_requantize(acc, shift, relu, width)


def test_rounding_is_half_up():
    assert golden.requantize([2, 6, 10, -2, -6, -10], 2, False).tolist() == [1, 2, 3, 0, -1, -2]
    assert golden.requantize([1, 3, -1, -3], 1, False).tolist() == [1, 2, 0, -1]


def test_requantize_rejects_a_bad_shift():
    with pytest.raises(ShapeError, match=r"^Shift must be in \[0, 31\], not 32$"):
        golden.requantize([0], 32, False)


def test_quantize_inputs():
    assert golden.quantize([0.0, 0.49, 0.5, -0.5, -0.51, 1000, -1000], 0).tolist() == \
        [0, 0, 1, 0, -1, 127, -128]
    assert golden.quantize([1.0, 0.25], -3).tolist() == [8, 2]
    np.testing.assert_allclose(golden.dequantize([8, -3], -3), [1.0, -0.375])


@pytest.mark.parametrize("lanes", [4, 8, 16])
def test_gs_layer_against_numpy(rng, lanes):
    for pattern, per_row in PATTERN_CASES(lanes):
        for encoding in ("pow2", "int8"):
            dense, order = random_pattern_matrix(rng, pattern, 2 * lanes + 3, 3 * lanes + 1,
                                                 lanes, per_row, encoding, density=0.7)
            matrix = GSMatrix.from_dense(dense, pattern, lanes, per_row, encoding,
                                         row_order=order)
            x = rng.integers(-128, 128, dense.shape[1])
            bias = rng.integers(-5000, 5000, dense.shape[0])
            expected = reference_requantize(dense @ x + bias, 6, True, 24)
            assert golden.gs_layer(matrix, x, bias, 6, True).tolist() == expected


def test_accumulator_wraps_like_the_hardware():
    # 4 x (127 << 15) overflows 24 bits; the golden model wraps, as the lanes do.
    matrix = GSMatrix.from_dense(np.full((1, 4), 1 << 15), "dense", 4, 4)
    acc = golden.gs_matvec(matrix, np.full(4, 127), acc_width=24)
    assert acc.tolist() == [((4 * 127 << 15) + (1 << 23)) % (1 << 24) - (1 << 23)]


def test_basis_layer():
    basis = np.array([[1, -2, 3], [0, 127, -128], [5, 5, 5]])
    x = np.array([10, -20, 30, 1, 2, 3])
    expected = np.concatenate([basis @ x[:3], basis @ x[3:]])
    assert golden.basis_layer(basis, x, 2, 0).tolist() == reference_requantize(expected, 0,
                                                                                 False, 24)


def test_word_codec_round_trips():
    cfg = CoreConfig(lanes=4, bank_depth=8)
    serial = CoreConfig(lanes=4, bank_depth=8, vector_writer=False)
    assert row_layout(serial) == row_record_layout(serial)
    row = {"out_elem": 17, "bias": -12345, "valid": 1}
    assert unpack_word(row_layout(serial), pack_word(row_layout(serial), row)) == row
    assert row_layout(cfg) == row_line_layout(cfg)
    line = {"records": [{"offset": k + 3, "bias": -k - 1, "valid": k % 2, "slot": 3 - k}
                        for k in range(4)], "last": 1}
    assert unpack_word(row_layout(cfg), pack_word(row_layout(cfg), line)) == line
    layer = unpack_word(layer_layout(cfg), pack_word(layer_layout(cfg), {
        "kind": 1, "basis": [-128, 127, 0, 1, 2, 3, 4, 5, -6], "shift": 31}))
    assert layer["basis"] == [-128, 127, 0, 1, 2, 3, 4, 5, -6] and layer["shift"] == 31
    with pytest.raises(ValueError, match=r"^Field bias must be in"):
        pack_word(row_layout(serial), {"bias": 1 << 23})
    with pytest.raises(ValueError, match=r"^Field records.2.bias must be in"):
        pack_word(row_layout(cfg), {"records": [{}, {}, {"bias": 1 << 23}, {}]})
    group = pack_word(group_layout(cfg), {"lanes": [{"value": 33, "bank": 3}] * 4,
                                          "offset": [1, 2, 0, 7], "last": 1})
    assert group >> (group_layout(cfg).size - 1) == 1
    assert unpack_word(group_layout(cfg), group)["offset"] == [1, 2, 0, 7]


def vector(cfg, channels, base):
    """A one-pixel tensor of ``channels`` at bank address ``base``."""
    return TensorGeometry(1, 1, channels, cfg.lanes, base=base)


def one_pixel_layer(cfg, matrix, source, dest, **fields):
    """``matrix`` (``dest.channels`` x ``source.channels``) as a one-pixel GS layer: its
    columns padded to the source's Cp."""
    dense = matrix.to_dense()
    padded = np.zeros((dense.shape[0], source.padded_channels), dtype=np.int64)
    padded[:, :dense.shape[1]] = dense
    order = matrix.rg_rows.ravel() if matrix.pattern == "gs-scatter" else None
    packed = GSMatrix.from_dense(padded, matrix.pattern, matrix.lanes, matrix.per_row,
                                 matrix.encoding, row_order=None if order is None else
                                 order[order >= 0])
    fields = dict(dict(bias=np.zeros(dense.shape[0], np.int64), shift=0, relu=False), **fields)
    return GSLayer("layer", "Linear", packed, fields["bias"], fields["shift"], fields["relu"],
                   "sum", LoopNest(source, dest), ("x",), "y")


def build_program(rng, cfg):
    """Four one-pixel GS layers of every pattern family and a BASIS layer, chained through
    tensors placed one after the other; returns (layers, tensors in order)."""
    lanes = cfg.lanes
    shapes = [13, 2 * lanes + 5, 3 * lanes, 21, 11]
    cases = [("gs-gather", 1), ("gs-scatter", 2), ("1xN", 1), ("unstructured", lanes)]
    base, tensors = 0, []
    for channels in shapes[:3] + [shapes[2]] + shapes[3:]:
        tensors.append(vector(cfg, channels, base))
        base = tensors[-1].end
    sources = [0, 1, 3, 4]
    layers = []
    for index, (pattern, per_row) in enumerate(cases):
        source = tensors[sources[index]]
        dense, order = random_pattern_matrix(rng, pattern, tensors[sources[index] + 1].channels,
                                             source.channels, lanes, per_row, cfg.encoding,
                                             density=0.8)
        matrix = GSMatrix.from_dense(dense, pattern, lanes, per_row, cfg.encoding,
                                     row_order=order)
        layers.append(one_pixel_layer(cfg, matrix, source, tensors[sources[index] + 1],
                                      bias=rng.integers(-2000, 2000, dense.shape[0]),
                                      shift=int(rng.integers(2, 9)), relu=bool(index % 2)))
    layers.insert(2, BasisLayer("basis", "SmartDeal B", rng.integers(-128, 128, (3, 3)),
                                shapes[2] // 3, tensors[2], tensors[3], 7, False, ("x",), "z"))
    return layers, tensors


@pytest.mark.parametrize("vector_writer", [True, False])
@pytest.mark.parametrize("encoding", ["pow2", "int8"])
def test_core_interpreter_equals_the_kernels(rng, encoding, vector_writer):
    cfg = CoreConfig(lanes=4, bank_depth=32, encoding=encoding, vector_writer=vector_writer)
    layers, tensors = build_program(rng, cfg)
    core = golden.GoldenCore(cfg)
    core.load(build_image(cfg, layers))
    x = rng.integers(-128, 128, tensors[0].channels)
    banks = np.zeros((cfg.lanes, tensors[0].end), dtype=np.int64)
    tensors[0].scatter(x.reshape(1, 1, -1), banks)
    core.write(Memory.ACTS, 0, banks.T.ravel().tolist())
    counters = core.run(0, len(layers))
    y = x
    cycles, groups, busy = golden.RUN_OVERHEAD, 0, 0
    for layer in layers:
        if layer.kind == "basis":
            y = golden.basis_layer(layer.basis, y, layer.n_chunks, layer.shift, layer.relu)
            cycles += golden.basis_layer_cycles(layer.n_chunks, cfg)
        else:
            padded = np.zeros(layer.matrix.shape[1], dtype=np.int64)
            padded[:y.size] = y
            y = golden.gs_layer(layer.matrix, padded, layer.bias, layer.shift, layer.relu)
            cycles += golden.gs_layer_cycles(layer.matrix.rg_groups,
                                             golden.writer_cycles(layer.matrix, cfg), cfg)[0]
            groups += layer.matrix.n_groups
            busy += layer.matrix.nnz
    out = tensors[-1]
    acts = np.array(core.read(Memory.ACTS, 0, cfg.act_size)).reshape(-1, cfg.lanes).T
    assert out.gather(acts).ravel().tolist() == list(y)
    assert counters["cycles"] == cycles
    assert counters["groups"] == groups and counters["busy_lane_cycles"] == busy
    assert core.read(Memory.COUNTERS, 0, 4) == [counters[k] for k in
                                                ("cycles", "busy_lane_cycles", "stall_cycles",
                                                 "groups")]


def test_core_errors_carry_device_codes():
    core = golden.GoldenCore(CoreConfig(lanes=4, bank_depth=4))
    with pytest.raises(DeviceError) as info:
        core.write(Memory.ACTS, 30, [1, 2, 3])
    assert info.value.code == ErrorCode.BAD_ADDRESS
    with pytest.raises(DeviceError) as info:
        core.run(15, 2)
    assert info.value.code == ErrorCode.BAD_LAYER
    with pytest.raises(DeviceError) as info:
        core.write(9, 0, [0])
    assert info.value.code == ErrorCode.BAD_MEMORY


def test_engine_latency_grows_with_the_adder_tree():
    """One pipeline stage per adder-tree level: log2(V) of them (after the address
    register, the bank read and its register, the crossbar, the shift and the product)."""
    assert [golden.engine_latency(CoreConfig(lanes=v)) for v in (2, 4, 8, 16)] == [8, 9, 10, 11]
    assert golden.engine_drain(CoreConfig(lanes=16)) == 10
    assert golden.engine_latency(CoreConfig(lanes=16, deep_pipeline=False)) == 6


def test_cycle_model():
    # Three sum vectors in flight: enough to keep the writer busy (8 cycles a vector) while
    # the next one is in the engine (engine_latency = 9).
    cfg = CoreConfig(lanes=8, result_queue=24)
    lo, el, wl = golden.LAYER_OVERHEAD, golden.engine_latency(cfg), golden.WRITE_LATENCY
    # Long row groups never stall: one cycle a group, then the last vector's fill and write.
    assert golden.gs_layer_cycles([20] * 10, 8, cfg) == (lo + 199 + el + 8 + wl, 0)
    # One group per row group with eight results each: the writer (one result a cycle) is the
    # bottleneck, so the engine stalls and cycles follow results, not groups.
    cycles, stalls = golden.gs_layer_cycles([1] * 100, 8, cfg)
    assert cycles == lo + el + 800 + wl and stalls > 600
    # Horizontal (one result per row group) with the default queue never waits for the writer.
    assert golden.gs_layer_cycles([1] * 100, 1, CoreConfig(lanes=8)) == (lo + 99 + el + 1 + wl, 0)


def test_cycle_model_of_the_vector_writer():
    """The vector writer spends one cycle per row line: the writer-bound layer above takes
    one cycle per group (with the default queue, whose 16 credits cover the engine's
    latency), and a permuted row group's extra lines cost a cycle each."""
    cfg = CoreConfig(lanes=8)
    lo, el, wl = golden.LAYER_OVERHEAD, golden.engine_latency(cfg), golden.WRITE_LATENCY
    assert golden.gs_layer_cycles([1] * 100, 1, cfg) == (lo + 99 + el + 1 + wl, 0)
    # Per row group: 3 lines, then 2 (the second vector waits for the writer).
    assert golden.gs_layer_cycles([1, 1], [3, 2], cfg) == (lo + el + 5 + wl, 0)
    assert golden.loop_layer_cycles([1, 1], [3, 2], 2, cfg) == \
        golden.gs_layer_cycles([1, 1, 1, 1], [3, 2, 3, 2], cfg)


def test_row_lines_keep_the_banks_of_a_line_distinct():
    """The i-th output of a bank in a row group goes into its line i: as few lines as the
    most outputs of one bank; a row group of padding only still has its line."""
    matrix = GSMatrix.from_dense(np.ones((16, 8)), "dense", 8, per_row=2)
    permuted = dataclasses.replace(matrix, rg_rows=np.array([[0, 8, 1, 12], [3, 11, 2, 10],
                                                             [5, -1, -1, -1],
                                                             [-1, -1, -1, -1]]))
    line, lines = permuted.row_lines()
    assert line.tolist() == [[0, 1, 0, 0], [0, 1, 0, 1], [0, -1, -1, -1], [-1] * 4]
    assert lines.tolist() == [2, 2, 1, 1]
    assert golden.writer_cycles(permuted, CoreConfig(lanes=8)).tolist() == [2, 2, 1, 1]
    assert golden.writer_cycles(permuted, CoreConfig(lanes=8, vector_writer=False)).tolist() \
        == [4] * 4
    assert golden.row_words(matrix, CoreConfig(lanes=8)) == 4      # natural order: 1 a vector
    assert golden.row_words(matrix, CoreConfig(lanes=8, vector_writer=False)) == 16


def test_image_packs_row_lines(rng):
    """A GS-scatter layer whose row groups hold two outputs of one bank: each output in the
    record of its bank, with its offset, bias and slot, the row group's last line ``last``;
    GoldenCore runs the words like the layer-level model."""
    cfg = CoreConfig(lanes=4, bank_depth=32)
    dense, _ = random_pattern_matrix(rng, "gs-gather", 8, 8, 4, 1, "pow2", density=0.9)
    order = np.array([0, 4, 1, 2, 3, 5, 6, 7])           # row group 0: rows 0 and 4 in bank 0
    shuffled = np.empty_like(dense)
    shuffled[order] = dense
    matrix = GSMatrix.from_dense(shuffled, "gs-scatter", 4, 1, row_order=order)
    bias = rng.integers(-900, 900, 8)
    layer = one_pixel_layer(cfg, matrix, vector(cfg, 8, 0), vector(cfg, 8, 4), bias=bias,
                            shift=3)
    image = build_image(cfg, [layer])
    lines = [unpack_word(row_line_layout(cfg), word) for word in image.rows]
    assert [line["last"] for line in lines] == [0, 1, 0, 1]
    assert unpack_word(layer_layout(cfg), image.layers[0])["row_count"] == 4
    assert [r["valid"] for r in lines[1]["records"]] == [1, 0, 0, 0]
    first = lines[0]["records"][0]
    assert (first["offset"], first["bias"], first["slot"]) == (0, bias[0], 0)
    second = lines[1]["records"][0]
    assert (second["offset"], second["bias"], second["slot"]) == (1, bias[4], 1)
    for serial in (False, True):
        run_cfg = dataclasses.replace(cfg, vector_writer=not serial)
        core = golden.GoldenCore(run_cfg)
        core.load(build_image(run_cfg, [layer]))
        x = rng.integers(-128, 128, 8)
        core.write(Memory.ACTS, 0, x.tolist())
        counters = core.run(0, 1)
        y = golden.gs_layer(layer.matrix, x, bias, 3, False)
        assert core.read(Memory.ACTS, 16, 8) == y.tolist()
        writer = golden.writer_cycles(layer.matrix, run_cfg)
        assert counters["cycles"] == golden.RUN_OVERHEAD + golden.gs_layer_cycles(
            layer.matrix.rg_groups, writer, run_cfg)[0]


def test_image_capacity_errors(rng):
    cfg = CoreConfig(lanes=4, bank_depth=16, weight_depth=8)
    dense, _ = random_pattern_matrix(rng, "dense", 16, 16, 4, 1, "pow2", density=1.0)
    matrix = GSMatrix.from_dense(dense, "dense", 4)
    layer = one_pixel_layer(cfg, matrix, vector(cfg, 16, 0), vector(cfg, 16, 4))
    with pytest.raises(CapacityError, match=r"^Program does not fit the core: 64 group words, "
                                            r"the core holds 8 \(CoreConfig.weight_depth\)"):
        build_image(cfg, [layer])
    wide = GSLayer("wide", "Conv2d", GSMatrix.from_dense(np.ones((4, 4)), "dense", 4),
                   np.zeros(4, np.int64), 0, False, "sum",
                   LoopNest(TensorGeometry(1, 300, 4, 4), TensorGeometry(1, 300, 4, 4)),
                   ("x",), "y")
    with pytest.raises(CapacityError, match=r"^layer 'wide': 300 output columns; a layer "
                                            r"counts at most 256"):
        build_image(CoreConfig(lanes=4, bank_depth=1024), [wide])
    with pytest.raises(ShapeError, match=r"matrix has 4 lanes and pow2 values, the core 8 lanes"):
        build_image(CoreConfig(lanes=8), [layer])


def test_image_refuses_a_group_that_reads_one_bank_twice():
    """Group words carry one offset per bank, so two nonzero lanes of a group must not
    name two columns of one bank; build_image says which group does."""
    cfg = CoreConfig(lanes=4, bank_depth=4)
    layer = one_pixel_layer(cfg, GSMatrix.from_dense(np.ones((4, 8)), "dense", 4),
                            vector(cfg, 8, 0), vector(cfg, 4, 2))
    matrix = layer.matrix
    matrix.group_cols = matrix.group_cols.copy()
    matrix.group_cols[1, 0] = (matrix.group_cols[1, 1] + 4) % 8   # same bank, other column
    with pytest.raises(ShapeError, match=r"^group 1 reads two words of bank \d; a GS matrix "
                                         r"must be conflict-free$"):
        build_image(cfg, [layer])
