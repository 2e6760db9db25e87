"""cocotb testbench of gsaccel.sim.cocotb_streams on a stream FIFO with a struct payload:
every payload arrives once, in order, with signed fields intact, under idle and back-pressure."""

import os

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from gsaccel.hw.config import CoreConfig
from gsaccel.hw.layouts import row_record_layout
from gsaccel.sim.cocotb_streams import StreamMonitor, StreamSink, StreamSource

CFG = CoreConfig.from_json(os.environ["GSACCEL_CFG"])
SEED = int(os.environ.get("GSACCEL_SEED", "20240611"), 0)


def pauses(rng, probability):
    while True:
        yield bool(probability) and rng.random() < probability


class StreamFifoTB:
    def __init__(self, dut):
        self.dut = dut
        Clock(dut.clk, 10, unit="ns").start()
        layout = row_record_layout(CFG)
        self.source = StreamSource(dut, "i", dut.clk, layout=layout)
        self.sink = StreamSink(dut, "o", dut.clk, layout=layout)
        self.monitor = StreamMonitor(dut, "i", dut.clk, layout=layout)

    async def reset(self):
        self.dut.rst.value = 1
        await RisingEdge(self.dut.clk)
        await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)


@cocotb.test(timeout_time=1, timeout_unit="ms")
@cocotb.parametrize(idle=[False, True], backpressure=[False, True])
async def test_round_trip(dut, idle, backpressure):
    tb = StreamFifoTB(dut)
    await tb.reset()
    rng = np.random.default_rng([SEED, int(idle), int(backpressure)])
    if idle:
        tb.source.set_pause_generator(pauses(rng, 0.5))
    if backpressure:
        tb.sink.set_pause_generator(pauses(rng, 0.5))
    half = 1 << (CFG.acc_width - 1)
    records = [{"out_elem": int(rng.integers(0, CFG.act_size)),
                "bias": int(rng.integers(-half, half)), "valid": int(rng.integers(0, 2))}
               for _ in range(60)]
    records[0]["bias"], records[1]["bias"] = -half, half - 1
    for record in records[:30]:
        await tb.source.send(record)
    for record in records[30:]:
        tb.source.send_nowait(record)
    assert not tb.source.idle()
    received = [await tb.sink.recv(timeout=5, unit="us") for _ in records]
    await tb.source.wait(timeout=1, unit="us")
    assert tb.source.idle() and tb.sink.idle()
    assert tb.source.sent == len(records) == tb.sink.received
    seen = [tb.monitor.recv_nowait() for _ in records]
    for record, got, watched in zip(records, received, seen):
        for name, value in record.items():
            assert getattr(got, name) == value, (record, got)
            assert getattr(watched, name) == value, (record, watched)
    assert tb.monitor.count() == 0
