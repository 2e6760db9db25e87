"""cocotb testbench of the datapath (GatherEngine + ResultWriter + BasisUnit + BankedScratchpad,
wired by ``gsaccel.sim.datapath.Datapath``): random GS layers of every pattern family and
segment length, with idle group cycles and back-pressured rows, and SmartDeal basis layers,
checked bit for bit and cycle for cycle against ``gsaccel.sw.golden``."""

import logging
import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from gsaccel.hw.arbiter import HOST_READ_LATENCY
from gsaccel.hw.config import CoreConfig
from gsaccel.hw.layouts import (group_stream_layout, layer_control_layout,
                                row_layout, row_stream_layout)
from gsaccel.hw.sequencer import ScratchpadOwner
from gsaccel.sim.cocotb_streams import StreamSource, pack_payload
from gsaccel.sim.datapath import layer_words, one_pixel_nest
from gsaccel.sim.stimulus import random_gs_matrix
from gsaccel.sw import golden

CFG = CoreConfig.from_json(os.environ["GSACCEL_CFG"])
#: The layers' inputs start at bank address 0, their outputs at HALF (the scratchpad's
#: second half).
HALF = CFG.bank_depth // 2
SEED = int(os.environ.get("GSACCEL_SEED", "20240611"), 0)
log = logging.getLogger("gsaccel.tb.engine")


def pause_pattern(rng, probability):
    """An endless iterator of pauses, each true with ``probability``."""
    while True:
        yield bool(probability) and rng.random() < probability


class DatapathTB:
    """Drives the Datapath DUT: host port for activations, group and row stream sources, basis
    layer control, and the scratchpad's ``owner`` as the sequencer sets it."""

    def __init__(self, dut, cfg):
        self.dut, self.cfg = dut, cfg
        Clock(dut.clk, 10, unit="ns").start()
        self.groups = StreamSource(dut, "i_group", dut.clk, layout=group_stream_layout(cfg))
        self.rows = StreamSource(dut, "i_row", dut.clk, layout=row_stream_layout(cfg))
        dut.host__wr_en.value = 0
        dut.owner.value = ScratchpadOwner.HOST.value
        dut.basis_start.value = 0

    async def reset(self):
        self.dut.rst.value = 1
        for _ in range(2):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)

    def set_idle_generator(self, generator=None):
        self.groups.set_pause_generator(generator)

    def set_backpressure_generator(self, generator=None):
        self.rows.set_pause_generator(generator)

    def set_control(self, **settings):
        """Drive the layer settings (``layer_control_layout`` fields; the others 0)."""
        self.dut.control.value = pack_payload(layer_control_layout(self.cfg), settings)

    async def write_buffer(self, buffer, values):
        """Write elements from bank address ``buffer * HALF`` on."""
        dut = self.dut
        dut.owner.value = ScratchpadOwner.HOST.value
        for element, value in enumerate(values):
            dut.host__addr.value = buffer * HALF * self.cfg.lanes + element
            dut.host__wr_data.value = int(value) & 0xFF
            dut.host__wr_en.value = 1
            await RisingEdge(dut.clk)
        dut.host__wr_en.value = 0
        await RisingEdge(dut.clk)        # the scratchpad's write port is registered

    async def read_buffer(self, buffer, count):
        dut = self.dut
        dut.owner.value = ScratchpadOwner.HOST.value
        values = []
        for element in range(count + HOST_READ_LATENCY):
            if element < count:
                dut.host__addr.value = buffer * HALF * self.cfg.lanes + element
            await RisingEdge(dut.clk)
            if element >= HOST_READ_LATENCY:    # data of the address of that many cycles ago
                values.append(dut.host__rd_data.value.to_signed())
        return np.array(values, dtype=np.int64)

    async def run_layer(self, matrix, x, bias, shift, relu, *, max_cycles=20_000):
        """Run one layer; returns (y, counters) with cycles counted from the first issue."""
        dut = self.dut
        self.set_control(seg_log2=matrix.per_row.bit_length() - 1, shift=shift, relu=relu)
        await self.write_buffer(1, [-77] * matrix.shape[0])     # a missing write shows
        await self.write_buffer(0, x)
        dut.owner.value = ScratchpadOwner.GS.value
        # One pixel (a Linear layer): input base 0, output base HALF.
        groups, rows, _ = layer_words(self.cfg, matrix, bias,
                                      one_pixel_nest(self.cfg, matrix, 0, HALF))
        for word in groups:
            self.groups.send_nowait(word)
        for word in rows:
            self.rows.send_nowait(word | HALF << row_layout(self.cfg).size)
        counters = {"cycles": None, "busy_lane_cycles": 0, "stall_cycles": 0, "groups": 0}
        cycle = None
        for _ in range(max_cycles):
            await RisingEdge(dut.clk)
            issue = int(dut.issue.value)
            if cycle is None and not issue:
                continue
            cycle = 0 if cycle is None else cycle + 1
            counters["groups"] += issue
            counters["busy_lane_cycles"] += dut.issue_lanes.value.to_unsigned()
            counters["stall_cycles"] += int(dut.stall.value)
            if (counters["groups"] == len(groups) and int(dut.engine_idle.value)
                    and int(dut.writer_idle.value)):
                counters["cycles"] = cycle
                break
        else:
            raise TimeoutError(f"Layer did not finish within {max_cycles} cycles: "
                               f"{counters['groups']} of {len(groups)} groups issued")
        y = await self.read_buffer(1, matrix.shape[0])
        return y, counters


    async def run_basis(self, basis, x, n_chunks, shift, relu, src, dst, *,
                        max_cycles=100_000):
        """Run one basis layer on ``x`` in buffer ``src``; returns (dst buffer's first
        ``3 * n_chunks + 3`` elements, cycles from ``start`` to the first idle cycle)."""
        dut = self.dut
        await self.write_buffer(dst, [-77] * (3 * n_chunks + 3))
        await self.write_buffer(src, x)
        self.set_control(src_base=src * HALF, dst_base=dst * HALF, shift=shift, relu=relu)
        dut.n_chunks.value = n_chunks
        dut.basis.value = sum((int(v) & 0xFF) << (8 * i) for i, v in enumerate(np.ravel(basis)))
        dut.owner.value = ScratchpadOwner.BASIS.value
        await RisingEdge(dut.clk)                  # the unit samples its settings a cycle ahead
        dut.basis_start.value = 1
        await RisingEdge(dut.clk)                  # the start cycle, cycle 0
        dut.basis_start.value = 0
        for cycle in range(1, max_cycles):
            await RisingEdge(dut.clk)
            if int(dut.basis_done.value):
                break
        else:
            raise TimeoutError(f"Basis layer did not finish within {max_cycles} cycles")
        await RisingEdge(dut.clk)
        assert not int(dut.basis_busy.value), "busy after done"
        return await self.read_buffer(dst, 3 * n_chunks + 3), cycle + 1


def layer_cases(cfg, rng):
    """Random layers: every pattern family, every segment length e, odd shapes."""
    lanes = cfg.lanes
    cases = [("dense", 1, 5, lanes + 3), ("unstructured", 1, 2 * lanes + 1, 3 * lanes - 1),
             ("1xN", 1, 2 * lanes + 3, lanes + 5)]
    per_row = 1
    while per_row <= lanes:
        pattern = "gs-gather" if per_row.bit_length() % 2 else "gs-scatter"
        cases.append((pattern, per_row, 3 * lanes // per_row + 1, 2 * lanes + 3))
        per_row *= 2
    cases.append(("gs-scatter", 1, lanes + 3, 3 * lanes))
    for pattern, per_row, rows, cols in cases:
        matrix = random_gs_matrix(rng, pattern, rows, cols, lanes, per_row, cfg.encoding)
        x = rng.integers(-128, 128, cols)
        x[:2] = (-128, 127)
        bias = rng.integers(-(1 << (cfg.acc_width - 1)), 1 << (cfg.acc_width - 1), rows) >> \
            int(rng.integers(0, cfg.acc_width - 4))
        shift = int(rng.choice([0, 3, 7, 11, 17, 31]))
        relu = int(rng.integers(0, 2))
        yield pattern, matrix, x, bias, shift, relu


@cocotb.test(timeout_time=20, timeout_unit="ms")
@cocotb.parametrize(idle=[False, True], backpressure=[False, True])
async def test_layers(dut, idle, backpressure):
    """Every pattern family and e, bit-exact; exact cycles when the streams run freely."""
    tb = DatapathTB(dut, CFG)
    await tb.reset()
    rng = np.random.default_rng([SEED, CFG.lanes, int(idle), int(backpressure)])
    if idle:
        tb.set_idle_generator(pause_pattern(rng, 0.3))
    if backpressure:
        tb.set_backpressure_generator(pause_pattern(rng, 0.4))
    for pattern, matrix, x, bias, shift, relu in layer_cases(CFG, rng):
        y, counters = await tb.run_layer(matrix, x, bias, shift, relu)
        expected = golden.gs_layer(matrix, x, bias, shift, relu, CFG.acc_width)
        where = f"{pattern} e={matrix.per_row} {matrix.shape} shift={shift} relu={relu}"
        assert np.array_equal(y, expected), f"{where}: outputs {y} != golden {expected}"
        assert counters["groups"] == matrix.n_groups, where
        assert counters["busy_lane_cycles"] == matrix.nnz, where
        if not idle and not backpressure:
            writer = golden.writer_cycles(matrix, CFG)
            cycles, stalls = golden.gs_layer_cycles(matrix.rg_groups, writer, CFG)
            assert (counters["cycles"], counters["stall_cycles"]) == \
                (cycles - golden.LAYER_OVERHEAD, stalls), f"{where}: {counters}"
        log.info("%s: %d groups in %s cycles", where, matrix.n_groups, counters["cycles"])


@cocotb.test(timeout_time=5, timeout_unit="ms")
async def test_saturation_and_wrap(dut):
    """Dense rows of the largest weights on extreme inputs: accumulators wrap, outputs
    saturate at both ends."""
    tb = DatapathTB(dut, CFG)
    await tb.reset()
    lanes = CFG.lanes
    cols = 2 * lanes + 1
    # Rows alternate the most negative and the most positive weight of the encoding.
    low, high = (-(1 << 15), 1 << 15) if CFG.encoding == "pow2" else (-128, 127)
    weights = np.full((lanes + 1, cols), low, dtype=np.int64)
    weights[1::2] = high
    from gsaccel.sw.format import GSMatrix
    matrix = GSMatrix.from_dense(weights, "dense", lanes, encoding=CFG.encoding)
    x = np.where(np.arange(cols) % 3 == 0, -128, 127)
    bias = np.zeros(lanes + 1, dtype=np.int64)
    for shift in (0, 8, 20):
        y, _ = await tb.run_layer(matrix, x, bias, shift, 0)
        expected = golden.gs_layer(matrix, x, bias, shift, 0, CFG.acc_width)
        assert np.array_equal(y, expected), f"shift {shift}: {y} != {expected}"
    assert {-128, 127} <= set(golden.gs_layer(matrix, x, bias, 0, 0, CFG.acc_width).tolist())


@cocotb.test(timeout_time=10, timeout_unit="ms")
async def test_basis_layers(dut):
    """SmartDeal basis layers, both buffer directions, saturating and ReLU'd, exact cycles."""
    tb = DatapathTB(dut, CFG)
    await tb.reset()
    rng = np.random.default_rng([SEED, CFG.lanes, 99])
    for n_chunks, (src, dst), shift, relu in [(1, (0, 1), 0, 0), (7, (1, 0), 5, 1),
                                              (HALF * CFG.lanes // 3 - 1, (0, 1), 9, 0),
                                              (5, (1, 0), 31, 1)]:
        x = rng.integers(-128, 128, 3 * n_chunks)
        x[:3] = (-128, 127, -128)
        basis = rng.integers(-128, 128, (3, 3))
        basis[0] = (127, -128, 127)          # z_0 of the first chunk saturates low
        y, cycles = await tb.run_basis(basis, x, n_chunks, shift, relu, src, dst)
        expected = golden.basis_layer(basis, x, n_chunks, shift, relu, CFG.acc_width)
        where = f"{n_chunks} chunks {src}->{dst} shift={shift} relu={relu}"
        assert np.array_equal(y[:3 * n_chunks], expected), f"{where}: {y} != {expected}"
        assert np.array_equal(y[3 * n_chunks:], [-77] * 3), f"{where}: wrote past the layer"
        assert cycles == golden.basis_layer_cycles(n_chunks, CFG) - golden.LAYER_OVERHEAD, where
