# amaranth: UnusedElaboratable=no
"""GatherEngine, alone and with ResultWriter and BankedScratchpad (sim.datapath.Datapath):
random layers of every pattern family and segment length, bit-exact and cycle-exact against
the golden model."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gsaccel.hw.arbiter import HOST_READ_LATENCY
from gsaccel.hw.config import CoreConfig
from gsaccel.hw.engine import GatherEngine
from gsaccel.hw.layouts import LayerOp, group_layout, row_layout
from gsaccel.hw.sequencer import ScratchpadOwner
from gsaccel.sim.amaranth_sim import run_sim, seeded_rng, stall_pattern, stream_put
from gsaccel.sim.datapath import Datapath, layer_words, one_pixel_nest, whole_words
from gsaccel.sim.stimulus import random_gs_matrix, random_values
from gsaccel.sw import golden
from gsaccel.sw.compile.native import diagonal_matrix, to_gemm
from gsaccel.sw.format import GSMatrix
from gsaccel.sw.format.geometry import LoopNest, TensorGeometry, conv_output_size
from gsaccel.sw.golden.loopnest import gs_loop_layer


def test_engine_rejects_bad_config():
    with pytest.raises(TypeError, match=r"^Configuration must be a CoreConfig, not 8$"):
        GatherEngine(8)


async def load_acts(ctx, dut, acts):
    """Write the whole scratchpad (a (V, depth) array) through the host's element port."""
    ctx.set(dut.owner, ScratchpadOwner.HOST)
    for element, value in enumerate(np.asarray(acts).T.ravel()):
        ctx.set(dut.host.addr, element)
        ctx.set(dut.host.wr_data, int(value))
        ctx.set(dut.host.wr_en, 1)
        await ctx.tick()
    ctx.set(dut.host.wr_en, 0)
    # With the deep pipeline the scratchpad's write port is registered: the last write lands
    # a cycle later, before anything may read it.
    await ctx.tick()


async def read_acts(ctx, dut, cfg):
    """The whole scratchpad, (V, depth), read through the host's element port."""
    ctx.set(dut.owner, ScratchpadOwner.HOST)
    values = []
    for element in range(cfg.act_size):
        ctx.set(dut.host.addr, element)
        await ctx.tick().repeat(HOST_READ_LATENCY)
        values.append(ctx.get(dut.host.rd_data))
    return np.array(values, dtype=np.int64).reshape(cfg.bank_depth, cfg.lanes).T


def run_layer(cfg, matrix, x, bias, shift, relu, *, nest=None, op="sum", group_stall=0.0,
              row_stall=0.0, name="datapath", salt=0, seg_log2=None, leftover=(),
              clear=False):
    """Run one GS layer on the datapath, the testbench playing the sequencer: the groups and
    rows are replayed for every output pixel of ``nest`` (default: one pixel, a Linear
    layer) with the pixel's bases. Returns its output tensor, the whole scratchpad and the
    counters.

    ``leftover`` group words are issued first (as a previous layer's groups after its last
    ``last`` group), then ``clear`` is pulsed if asked; counting starts at the layer's first
    group.
    """
    dut = Datapath(cfg)
    nest = one_pixel_nest(cfg, matrix) if nest is None else nest
    groups, rows, _ = layer_words(cfg, matrix, bias, nest, op)
    in_bases, out_bases = nest.in_bases(), nest.out_bases()
    # A stream's payload: the word, then the pixel's base above it.
    group_bits, row_bits = group_layout(cfg).size, row_layout(cfg).size
    rng = seeded_rng(salt)
    # The source tensor in a scratchpad of stale bytes; the rest marked so a missing write
    # shows.
    acts = rng.integers(-128, 128, (cfg.lanes, cfg.bank_depth))
    nest.source.scatter(np.asarray(x).reshape(nest.source.height, nest.source.width,
                                              nest.source.channels), acts)
    loaded = []
    issued_leftover = [0]
    result = {"before": acts.copy()}

    async def host(ctx):
        ctx.set(dut.control, {
            "seg_log2": matrix.per_row.bit_length() - 1 if seg_log2 is None else seg_log2,
            "op": LayerOp.MAX if op == "max" else LayerOp.SUM, "shift": shift, "relu": relu})
        await load_acts(ctx, dut, acts)
        ctx.set(dut.owner, ScratchpadOwner.GS)          # as the sequencer does for a layer
        if not leftover or clear:
            # The sequencer's clear between layers (with this layer's op).
            ctx.set(dut.clear, 1)
            await ctx.tick()
            ctx.set(dut.clear, 0)
        if leftover:
            loaded.append("leftover")
            while issued_leftover[0] < len(leftover) or not ctx.get(dut.engine_idle):
                await ctx.tick()
            if clear:
                ctx.set(dut.clear, 1)
                await ctx.tick()
                ctx.set(dut.clear, 0)
        loaded.append("layer")
        # Sample at the clock edges, so that every testbench's writes of a cycle have
        # settled; cycle 0 is the one in which the first group is accepted.
        issued = busy = stall = 0
        cycle = None
        async for _, _, issue, lanes, stalled, engine_idle, writer_idle in ctx.tick().sample(
                dut.issue, dut.issue_lanes, dut.stall, dut.engine_idle, dut.writer_idle):
            if cycle is None and not issue:
                continue
            cycle = 0 if cycle is None else cycle + 1
            issued += issue
            busy += lanes
            stall += stalled
            if issued == len(groups) * len(in_bases) and engine_idle and writer_idle:
                end = cycle
                break
        result["cycles"] = end
        result["busy"] = busy
        result["stall"] = stall
        result["acts"] = await read_acts(ctx, dut, cfg)
        result["y"] = nest.dest.gather(result["acts"])

    async def group_source(ctx):
        while not loaded:
            await ctx.tick()
        for word in leftover:
            await stream_put(ctx, dut.i_group, word | int(in_bases[0]) << group_bits)
            issued_leftover[0] += 1
        while loaded[-1] != "layer":
            await ctx.tick()
        stall = stall_pattern(rng, group_stall)
        for base in in_bases:
            for word in groups:
                await stream_put(ctx, dut.i_group, word | int(base) << group_bits,
                                 stall=stall)

    async def row_source(ctx):
        while not loaded or loaded[-1] != "layer":
            await ctx.tick()
        stall = stall_pattern(rng, row_stall)
        for base in out_bases:
            for word in rows:
                await stream_put(ctx, dut.i_row, word | int(base) << row_bits, stall=stall)

    run_sim(dut, host, group_source, row_source, name=name, deadline=200_000)
    return result


def expected_layer(cfg, matrix, nest, result, bias, shift, relu, op="sum"):
    """The golden loop nest on the scratchpad the layer started from: (outputs, cycles,
    stall cycles)."""
    acts = result["before"].astype(np.int8)
    gs_loop_layer(whole_words(matrix), nest, acts, bias, shift, relu, op, cfg.acc_width)
    cycles, stalls = golden.loop_layer_cycles(matrix.rg_groups,
                                              golden.writer_cycles(matrix, cfg), nest.pixels,
                                              cfg)
    return nest.dest.gather(acts), cycles - golden.LAYER_OVERHEAD, stalls


CASES = [
    # lanes, encoding, pattern, per_row, rows, cols
    (4, "pow2", "gs-gather", 1, 7, 13),
    (4, "int8", "gs-scatter", 2, 9, 10),
    (8, "pow2", "gs-gather", 2, 13, 21),
    (8, "pow2", "gs-scatter", 4, 11, 19),
    (8, "int8", "gs-gather", 8, 5, 17),
    (8, "int8", "1xN", 1, 19, 12),
    (8, "pow2", "unstructured", 1, 10, 23),
    (8, "int8", "dense", 1, 6, 9),
    (16, "pow2", "gs-scatter", 8, 9, 40),
    (16, "int8", "1xN", 1, 21, 7),
]


@pytest.mark.parametrize("vector_writer", [True, False])
@pytest.mark.parametrize("lanes,encoding,pattern,per_row,rows,cols", CASES)
def test_datapath_layer(lanes, encoding, pattern, per_row, rows, cols, vector_writer):
    """Free-running streams: outputs bit-exact, cycles and stall cycles exact, with the
    vector writer (a GS-scatter row group with two outputs of one bank takes two lines) and
    the serial one."""
    cfg = CoreConfig(lanes=lanes, bank_depth=8 if lanes == 16 else 16, encoding=encoding,
                     result_queue=2 * lanes, vector_writer=vector_writer)
    rng = seeded_rng(1)
    matrix = random_gs_matrix(rng, pattern, rows, cols, lanes, per_row, encoding)
    x = rng.integers(-128, 128, cols)
    bias = rng.integers(-(1 << 12), 1 << 12, rows)
    for shift, relu in ((int(rng.integers(4, 12)), 0), (0, 1), (31, 0)):
        result = run_layer(cfg, matrix, x, bias, shift, relu,
                           name=f"datapath_{pattern}_{int(vector_writer)}")
        expected = golden.gs_layer(matrix, x, bias, shift, relu, cfg.acc_width)
        np.testing.assert_array_equal(result["y"].ravel(), expected)
        writer = golden.writer_cycles(matrix, cfg)
        cycles, stalls = golden.gs_layer_cycles(matrix.rg_groups, writer, cfg)
        assert result["cycles"] == cycles - golden.LAYER_OVERHEAD
        assert result["stall"] == stalls
        assert result["busy"] == matrix.nnz


@pytest.mark.parametrize("group_stall,row_stall", [(0.0, 0.0), (0.4, 0.0), (0.0, 0.5),
                                                   (0.3, 0.3)])
@pytest.mark.parametrize("pattern,per_row", [("gs-gather", 1), ("gs-scatter", 2), ("1xN", 1)])
@pytest.mark.parametrize("deep_pipeline,vector_writer", [(True, True), (False, False)])
def test_datapath_queue_of_one(pattern, per_row, group_stall, row_stall, deep_pipeline,
                               vector_writer):
    """One credit (result_queue = V): the engine stalls on every row group; with idle groups
    and back-pressured rows the outputs are still exact, and free-running the cycles are.
    (With and without a pipeline stage per adder-tree level and the vector writer: the
    iCEBreaker's core has one stage and the serial writer.)"""
    lanes = 8
    cfg = CoreConfig(lanes=lanes, bank_depth=16, encoding="pow2", result_queue=lanes,
                     deep_pipeline=deep_pipeline, vector_writer=vector_writer)
    rng = seeded_rng(2)
    matrix = random_gs_matrix(rng, pattern, 23, 26, lanes, per_row, "pow2")
    x = rng.integers(-128, 128, 26)
    bias = rng.integers(-(1 << 20), 1 << 20, 23)
    result = run_layer(cfg, matrix, x, bias, 9, 1, group_stall=group_stall, row_stall=row_stall,
                       name=f"datapath_q1_{pattern}_{int(deep_pipeline)}", salt=3)
    if pattern == "gs-scatter":
        # The permuted row groups put two outputs of one bank in a vector.
        assert golden.writer_cycles(matrix, cfg).max() > 1 or not vector_writer
    np.testing.assert_array_equal(result["y"].ravel(), golden.gs_layer(matrix, x, bias, 9, 1))
    assert result["busy"] == matrix.nnz
    if not group_stall and not row_stall:
        writer = golden.writer_cycles(matrix, cfg)
        cycles, stalls = golden.gs_layer_cycles(matrix.rg_groups, writer, cfg)
        # A gs row group here has at most 3 groups, fewer than a vector's round trip.
        assert stalls > 0 or pattern == "1xN"
        assert (result["cycles"], result["stall"]) == (cycles - golden.LAYER_OVERHEAD, stalls)


@pytest.mark.parametrize("clear", [True, False])
def test_clear_drops_leftover_groups(clear):
    """Groups after a layer's last ``last`` group leave partial sums in the accumulators;
    ``clear`` drops them (as the golden model starts every layer from zero) — without it the
    next layer's first row group is wrong, which shows this test can fail."""
    cfg = CoreConfig(lanes=8, bank_depth=16, encoding="int8")
    rng = seeded_rng(5)
    matrix = random_gs_matrix(rng, "gs-gather", 12, 20, 8, 2, "int8")
    x = rng.integers(-128, 128, 20)
    x[0] = 100
    bias = rng.integers(-50, 50, 12)
    last_bit = 1 << (group_layout(cfg).size - 1)
    # Every lane of the leftover groups reads column 0 with weight 127: large partial sums.
    leftover_matrix = GSMatrix.from_dense(np.full((4, 1), 127), "dense", 8, per_row=2,
                                          encoding="int8")
    leftover = [w & ~last_bit for w in layer_words(cfg, leftover_matrix, np.zeros(4))[0]] * 3
    result = run_layer(cfg, matrix, x, bias, 11, 0, leftover=leftover, clear=clear,
                       name=f"datapath_clear_{clear}")
    expected = golden.gs_layer(matrix, x, bias, 11, 0, cfg.acc_width)
    assert np.array_equal(result["y"].ravel(), expected) == clear
    writer = golden.writer_cycles(matrix, cfg)
    cycles, _ = golden.gs_layer_cycles(matrix.rg_groups, writer, cfg)
    assert result["cycles"] == cycles - golden.LAYER_OVERHEAD


@pytest.mark.parametrize("seg_log2", [4, 7])
def test_segment_beyond_lanes_means_all_lanes(seg_log2):
    """seg_log2 > log2(V) (only a hand-written descriptor has it) acts as e = V, as in
    golden.GoldenCore."""
    cfg = CoreConfig(lanes=8, bank_depth=16, encoding="pow2")
    rng = seeded_rng(6)
    matrix = random_gs_matrix(rng, "gs-gather", 5, 19, 8, 8, "pow2")
    x = rng.integers(-128, 128, 19)
    bias = rng.integers(-1000, 1000, 5)
    result = run_layer(cfg, matrix, x, bias, 7, 1, seg_log2=seg_log2,
                       name=f"datapath_seg_{seg_log2}")
    np.testing.assert_array_equal(result["y"].ravel(), golden.gs_layer(matrix, x, bias, 7, 1))


CONV_CASES = [
    # lanes, encoding, C_in, C_out, (H, W), kernel, stride, padding, dilation, pattern, e
    (4, "pow2", 5, 6, (5, 7), 3, 1, 1, 1, "unstructured", 1),
    (8, "int8", 10, 9, (7, 6), 3, 2, 1, 1, "unstructured", 2),
    (4, "int8", 3, 5, (9, 8), 3, 1, 2, 2, "unstructured", 1),
    (8, "pow2", 8, 16, (4, 5), 1, 1, 0, 1, "gs-gather", 1),
    (16, "pow2", 20, 17, (3, 4), 2, 1, 0, 1, "unstructured", 4),
]


@pytest.mark.parametrize("group_stall,row_stall", [(0.0, 0.0), (0.3, 0.4)])
@pytest.mark.parametrize("case", CONV_CASES)
def test_datapath_convolution(case, group_stall, row_stall):
    """A convolution as a loop nest: the groups replayed for every output pixel at
    ``base + offset``, with stride, padding (the halo), dilation and channels that are not a
    multiple of V, on a scratchpad of stale bytes; outputs bit-exact with the golden loop
    nest (and torch's, through it: tests/unit/test_golden_loopnest.py), free-running cycles
    exact."""
    lanes, encoding, c_in, c_out, (h, w), k, stride, padding, dilation, pattern, e = case
    rng = seeded_rng(c_in * c_out)
    source = TensorGeometry(h, w, c_in, lanes, pad=padding, base=5)
    ho, wo = (conv_output_size(n, k, stride, padding, dilation) for n in (h, w))
    dest = TensorGeometry(ho, wo, c_out, lanes, base=source.end + 3)
    cfg = CoreConfig(lanes=lanes, bank_depth=1 << dest.end.bit_length(), encoding=encoding,
                     result_queue=2 * lanes, deep_pipeline=lanes != 4)
    nest = LoopNest(source, dest, (k, k), (stride, stride), (padding, padding),
                    (dilation, dilation))
    if pattern == "unstructured":
        weight = random_values(rng, (c_out, c_in, k, k), encoding, max_exp=4)
        weight[rng.random(weight.shape) < 0.5] = 0
        matrix = GSMatrix.from_dense(to_gemm(weight, 1, source.padded_channels),
                                     "unstructured", lanes, e, encoding=encoding)
    else:
        matrix = random_gs_matrix(rng, pattern, c_out, nest.columns, lanes, e, encoding)
    x = rng.integers(-128, 128, (h, w, c_in))
    bias = rng.integers(-2000, 2000, c_out)
    shift = 6 if encoding == "int8" else 3
    result = run_layer(cfg, matrix, x, bias, shift, 1, nest=nest, group_stall=group_stall,
                       row_stall=row_stall, name=f"datapath_conv_{lanes}_{c_in}")
    y, cycles, stalls = expected_layer(cfg, matrix, nest, result, bias, shift, 1)
    np.testing.assert_array_equal(result["y"], y)
    assert result["busy"] == matrix.nnz * nest.pixels
    # Only the output tensor's elements changed.
    changed = result["acts"] != result["before"]
    bank, address = dest.element_addresses()
    changed[bank, address] = False
    assert not changed.any()
    if not group_stall and not row_stall:
        assert (result["cycles"], result["stall"]) == (cycles, stalls)


@pytest.mark.parametrize("channels,lanes,kernel,stride", [(6, 4, 2, 2), (13, 8, 3, 2),
                                                          (16, 16, 3, 1)])
def test_datapath_max_pool(channels, lanes, kernel, stride):
    """Max pooling: weight 1 on each tap of its own channel, op MAX; negative inputs, padding
    lanes (channels not a multiple of V) and all taps equal to -128 show that the
    accumulators start from the most negative value and ignore padding lanes."""
    rng = seeded_rng(channels)
    source = TensorGeometry(7, 6, channels, lanes, base=0)
    ho, wo = (conv_output_size(n, kernel, stride) for n in (7, 6))
    dest = TensorGeometry(ho, wo, channels, lanes, base=source.end)
    cfg = CoreConfig(lanes=lanes, bank_depth=1 << dest.end.bit_length(), encoding="pow2",
                     result_queue=2 * lanes)
    nest = LoopNest(source, dest, (kernel, kernel), (stride, stride))
    matrix = diagonal_matrix(np.ones((channels, kernel * kernel), dtype=np.int64),
                             source.padded_channels, lanes, "pow2")
    x = rng.integers(-128, 0, (7, 6, channels))
    x[:kernel, :kernel, 0] = -128                          # a window of the minimum
    result = run_layer(cfg, matrix, x, np.zeros(channels, dtype=np.int64), 0, 0, nest=nest,
                       op="max", name=f"datapath_max_{channels}")
    y, cycles, stalls = expected_layer(cfg, matrix, nest, result,
                                       np.zeros(channels, dtype=np.int64), 0, 0, op="max")
    xt = torch.tensor(x.transpose(2, 0, 1)[None], dtype=torch.float64)
    pooled = F.max_pool2d(xt, kernel, stride)[0].numpy().transpose(1, 2, 0)
    np.testing.assert_array_equal(result["y"], pooled.astype(np.int8))
    np.testing.assert_array_equal(result["y"], y)
    assert (result["cycles"], result["stall"]) == (cycles, stalls)
