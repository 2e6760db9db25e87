"""Runs tests/cocotb/tb_streams.py: the cocotb stream drivers against an Amaranth stream FIFO."""

from pathlib import Path

import pytest
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from gsaccel.hw.config import CoreConfig
from gsaccel.hw.layouts import row_record_layout
from gsaccel.sim.build import cached_verilog, run_cocotb

HERE = Path(__file__).resolve().parent


class StreamFifo(wiring.Component):
    """A 3-deep stream FIFO of ``layout`` payloads (the drivers' test DUT)."""

    def __init__(self, layout):
        self._layout = layout
        super().__init__({"i": In(stream.Signature(layout)), "o": Out(stream.Signature(layout))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=self._layout.size, depth=3)
        m.d.comb += [
            fifo.w_data.eq(self.i.payload.as_value()), fifo.w_en.eq(self.i.valid),
            self.i.ready.eq(fifo.w_rdy),
            self.o.payload.eq(fifo.r_data), self.o.valid.eq(fifo.r_rdy),
            fifo.r_en.eq(self.o.ready),
        ]
        return m


@pytest.mark.verilator
def test_stream_drivers():
    cfg = CoreConfig(lanes=4, bank_depth=16)
    build = cached_verilog(lambda: StreamFifo(row_record_layout(cfg)), "stream_fifo", cfg)
    run_cocotb(build, toplevel="stream_fifo", test_module="tb_streams", test_dir=HERE, cfg=cfg,
               timeout=300)
