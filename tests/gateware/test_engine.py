# amaranth: UnusedElaboratable=no
"""GatherEngine, alone and with ResultWriter and BankedScratchpad (sim.datapath.Datapath):
random layers of every pattern family and segment length, bit-exact and cycle-exact against
the golden model."""

import numpy as np
import pytest

from gsaccel.hw.arbiter import HOST_READ_LATENCY
from gsaccel.hw.config import CoreConfig
from gsaccel.hw.engine import GatherEngine
from gsaccel.hw.layouts import group_layout
from gsaccel.hw.sequencer import ScratchpadOwner
from gsaccel.sim.amaranth_sim import run_sim, seeded_rng, stall_pattern, stream_put
from gsaccel.sim.datapath import Datapath, layer_words
from gsaccel.sim.stimulus import random_gs_matrix
from gsaccel.sw import golden
from gsaccel.sw.format import GSMatrix


def test_engine_rejects_bad_config():
    with pytest.raises(TypeError, match=r"^Configuration must be a CoreConfig, not 8$"):
        GatherEngine(8)


async def load_buffer(ctx, dut, buffer, values, buffer_size):
    ctx.set(dut.owner, ScratchpadOwner.HOST)
    for element, value in enumerate(values):
        ctx.set(dut.host.addr, buffer * buffer_size + element)
        ctx.set(dut.host.wr_data, int(value))
        ctx.set(dut.host.wr_en, 1)
        await ctx.tick()
    ctx.set(dut.host.wr_en, 0)
    # With the deep pipeline the scratchpad's write port is registered: the last write lands
    # a cycle later, before anything may read it.
    await ctx.tick()


async def read_buffer(ctx, dut, buffer, count, buffer_size):
    ctx.set(dut.owner, ScratchpadOwner.HOST)
    values = []
    for element in range(count):
        ctx.set(dut.host.addr, buffer * buffer_size + element)
        await ctx.tick().repeat(HOST_READ_LATENCY)
        values.append(ctx.get(dut.host.rd_data))
    return np.array(values, dtype=np.int64)


def run_layer(cfg, matrix, x, bias, shift, relu, *, group_stall=0.0, row_stall=0.0,
              name="datapath", salt=0, seg_log2=None, leftover=(), clear=False):
    """Run one GS layer on the datapath; return its outputs and counters.

    ``leftover`` group words are issued first (as a previous layer's groups after its last
    ``last`` group), then ``clear`` is pulsed if asked; counting starts at the layer's first
    group.
    """
    dut = Datapath(cfg)
    groups, rows = layer_words(cfg, matrix, bias)
    rng = seeded_rng(salt)
    loaded = []
    issued_leftover = [0]
    result = {}
    buffer_size = cfg.buffer_size

    async def host(ctx):
        ctx.set(dut.control, {
            "seg_log2": matrix.per_row.bit_length() - 1 if seg_log2 is None else seg_log2,
            "src": 0, "dst": 1, "shift": shift, "relu": relu})
        # Fill the destination with a marker so that a missing write shows.
        await load_buffer(ctx, dut, 1, [-77] * matrix.shape[0], buffer_size)
        await load_buffer(ctx, dut, 0, x, buffer_size)
        ctx.set(dut.owner, ScratchpadOwner.GS)          # as the sequencer does for a layer
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
            if issued == len(groups) and engine_idle and writer_idle:
                end = cycle
                break
        result["cycles"] = end
        result["busy"] = busy
        result["stall"] = stall
        result["y"] = await read_buffer(ctx, dut, 1, matrix.shape[0], buffer_size)

    async def group_source(ctx):
        while not loaded:
            await ctx.tick()
        for word in leftover:
            await stream_put(ctx, dut.i_group, word)
            issued_leftover[0] += 1
        while loaded[-1] != "layer":
            await ctx.tick()
        stall = stall_pattern(rng, group_stall)
        for word in groups:
            await stream_put(ctx, dut.i_group, word, stall=stall)

    async def row_source(ctx):
        while not loaded or loaded[-1] != "layer":
            await ctx.tick()
        stall = stall_pattern(rng, row_stall)
        for word in rows:
            await stream_put(ctx, dut.i_row, word, stall=stall)

    run_sim(dut, host, group_source, row_source, name=name, deadline=20_000)
    return result


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


@pytest.mark.parametrize("lanes,encoding,pattern,per_row,rows,cols", CASES)
def test_datapath_layer(lanes, encoding, pattern, per_row, rows, cols):
    """Free-running streams: outputs bit-exact, cycles and stall cycles exact."""
    cfg = CoreConfig(lanes=lanes, bank_depth=8 if lanes == 16 else 16, encoding=encoding,
                     result_queue=2 * lanes)
    rng = seeded_rng(1)
    matrix = random_gs_matrix(rng, pattern, rows, cols, lanes, per_row, encoding)
    x = rng.integers(-128, 128, cols)
    bias = rng.integers(-(1 << 12), 1 << 12, rows)
    for shift, relu in ((int(rng.integers(4, 12)), 0), (0, 1), (31, 0)):
        result = run_layer(cfg, matrix, x, bias, shift, relu, name=f"datapath_{pattern}")
        expected = golden.gs_layer(matrix, x, bias, shift, relu, cfg.acc_width)
        np.testing.assert_array_equal(result["y"], expected)
        cycles, stalls = golden.gs_layer_cycles(matrix.rg_groups, matrix.segments, cfg)
        assert result["cycles"] == cycles - golden.LAYER_OVERHEAD
        assert result["stall"] == stalls
        assert result["busy"] == matrix.nnz


@pytest.mark.parametrize("group_stall,row_stall", [(0.0, 0.0), (0.4, 0.0), (0.0, 0.5),
                                                   (0.3, 0.3)])
@pytest.mark.parametrize("pattern,per_row", [("gs-gather", 1), ("gs-scatter", 2), ("1xN", 1)])
@pytest.mark.parametrize("deep_pipeline", [True, False])
def test_datapath_queue_of_one(pattern, per_row, group_stall, row_stall, deep_pipeline):
    """One credit (result_queue = V): the engine stalls on every row group; with idle groups
    and back-pressured rows the outputs are still exact, and free-running the cycles are.
    (With and without a pipeline stage per adder-tree level: the iCEBreaker's core has one
    stage.)"""
    lanes = 8
    cfg = CoreConfig(lanes=lanes, bank_depth=16, encoding="pow2", result_queue=lanes,
                     deep_pipeline=deep_pipeline)
    rng = seeded_rng(2)
    matrix = random_gs_matrix(rng, pattern, 23, 26, lanes, per_row, "pow2")
    x = rng.integers(-128, 128, 26)
    bias = rng.integers(-(1 << 20), 1 << 20, 23)
    result = run_layer(cfg, matrix, x, bias, 9, 1, group_stall=group_stall, row_stall=row_stall,
                       name=f"datapath_q1_{pattern}_{int(deep_pipeline)}", salt=3)
    np.testing.assert_array_equal(result["y"], golden.gs_layer(matrix, x, bias, 9, 1))
    assert result["busy"] == matrix.nnz
    if not group_stall and not row_stall:
        cycles, stalls = golden.gs_layer_cycles(matrix.rg_groups, matrix.segments, cfg)
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
    groups, _ = layer_words(cfg, matrix, bias)
    last_bit = 1 << (group_layout(cfg).size - 1)
    # Every lane of the leftover groups reads column 0 with weight 127: large partial sums.
    leftover_matrix = GSMatrix.from_dense(np.full((4, 1), 127), "dense", 8, per_row=2,
                                          encoding="int8")
    leftover = [w & ~last_bit for w in layer_words(cfg, leftover_matrix, np.zeros(4))[0]] * 3
    result = run_layer(cfg, matrix, x, bias, 11, 0, leftover=leftover, clear=clear,
                       name=f"datapath_clear_{clear}")
    expected = golden.gs_layer(matrix, x, bias, 11, 0, cfg.acc_width)
    assert np.array_equal(result["y"], expected) == clear
    cycles, _ = golden.gs_layer_cycles(matrix.rg_groups, matrix.segments, cfg)
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
    np.testing.assert_array_equal(result["y"], golden.gs_layer(matrix, x, bias, 7, 1))
