"""cocotb testbench of the whole GsaccelCore: protocol frames in, reply frames out, every
reply checked against the reference built on GoldenCore (outputs bit for bit, counters cycle
for cycle), under idle input and back-pressured output."""

import logging
import os
import sys
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from gsaccel.hw.config import CoreConfig
from gsaccel.hw.layouts import ErrorCode, FrameType, Memory
from gsaccel.sim.cocotb_streams import StreamSink, StreamSource
from gsaccel.sw.runtime import protocol
from gsaccel.sw.golden import GoldenCore
from gsaccel.sw.runtime.golden_link import GoldenCommandProcessor
from gsaccel.sim.stimulus import random_loop_program
from gsaccel.sw.compile.image import build_image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gateware"))
from core_host import image_requests  # noqa: E402

CFG = CoreConfig.from_json(os.environ["GSACCEL_CFG"])
SEED = int(os.environ.get("GSACCEL_SEED", "20240611"), 0)
log = logging.getLogger("gsaccel.tb.core")


def pause_pattern(rng, probability):
    while True:
        yield bool(probability) and rng.random() < probability


class CoreTB:
    """Drives the core's byte streams and checks replies with a GoldenCore scoreboard."""

    def __init__(self, dut, cfg):
        self.dut, self.cfg = dut, cfg
        Clock(dut.clk, 10, unit="ns").start()
        self.source = StreamSource(dut, "i_stream", dut.clk)
        self.sink = StreamSink(dut, "o_stream", dut.clk)
        self.parser = protocol.FrameParser(max_payload=cfg.max_payload)
        self.golden = GoldenCore(cfg)
        self.reference = GoldenCommandProcessor(self.golden)

    async def reset(self):
        self.dut.rst.value = 1
        for _ in range(2):
            await RisingEdge(self.dut.clk)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)

    def set_idle_generator(self, generator=None):
        self.source.set_pause_generator(generator)

    def set_backpressure_generator(self, generator=None):
        self.sink.set_pause_generator(generator)

    async def transact(self, frame_type, seq, payload, *, timeout_us=2000):
        """Send one frame; return the reply frame (type, seq, payload)."""
        for byte in protocol.encode_frame(frame_type, seq, payload):
            self.source.send_nowait(byte)
        events = []
        while not events:
            byte = await self.sink.recv(timeout=timeout_us, unit="us")
            events = self.parser.feed(bytes([byte]))
        frame, = events
        return frame.type, frame.seq, frame.payload

    async def check(self, frame_type, seq, payload):
        """Send a frame and compare the reply with the scoreboard's."""
        want = self.reference.answer(frame_type, seq, payload)
        got = await self.transact(frame_type, seq, payload)
        if want[0] == FrameType.DATA and frame_type == FrameType.RUN:
            assert protocol.parse_counters(got[2]) == protocol.parse_counters(want[1]), \
                f"seq {seq}: counters"
        assert got == (want[0], seq, want[1]), f"seq {seq}: {got} != {want}"
        return got


async def write_acts(tb, seq, first, values):
    """WRITE frames of ACTS elements from ``first``; returns the next sequence number."""
    step = protocol.max_write_words(tb.cfg, Memory.ACTS)
    values = np.asarray(values).astype(np.int64)
    for start in range(0, len(values), step):
        await tb.check(FrameType.WRITE, seq & 0xFF, protocol.write_payload(
            tb.cfg, Memory.ACTS, first + start, (values[start:start + step] & 0xFF).tolist()))
        seq += 1
    return seq


async def read_acts(tb, seq, first, count):
    step = protocol.max_read_words(tb.cfg, Memory.ACTS)
    for start in range(0, count, step):
        await tb.check(FrameType.READ, seq & 0xFF, protocol.read_payload(
            Memory.ACTS, first + start, min(step, count - start)))
        seq += 1
    return seq


@cocotb.test(timeout_time=500, timeout_unit="ms")
@cocotb.parametrize(idle=[False, True], backpressure=[False, True])
async def test_image(dut, idle, backpressure):
    """Load a loop-nest program (convolutions, pooling, depthwise, a residual addition, a
    Linear over a flattened tensor, a basis layer, CLEARs), fill the scratchpad with stale
    bytes, run it on two fresh inputs and read the whole scratchpad and the counters."""
    tb = CoreTB(dut, CFG)
    await tb.reset()
    rng = np.random.default_rng([SEED, int(idle), int(backpressure)])
    if idle:
        tb.set_idle_generator(pause_pattern(rng, 0.3))
    if backpressure:
        tb.set_backpressure_generator(pause_pattern(rng, 0.5))
    layers, source, _ = random_loop_program(rng, CFG)
    image = build_image(CFG, layers)
    frames, seq = image_requests(CFG, image)
    await tb.check(FrameType.HELLO, 250, b"")
    for frame in frames:
        await tb.check(*frame)
    seq = await write_acts(tb, seq, 0, rng.integers(-128, 128, CFG.act_size))
    for k in range(2):
        acts = np.zeros((CFG.lanes, CFG.bank_depth), dtype=np.int64)
        x = rng.integers(-128, 128, (source.height, source.width, source.channels))
        x[0, 0, :2] = (-128, 127)
        source.scatter(x, acts)
        region = acts[:, source.base:source.end].T.ravel()
        seq = await write_acts(tb, seq, source.base * CFG.lanes, region)
        await tb.check(FrameType.RUN, seq & 0xFF, protocol.run_payload(0, len(layers)))
        seq = await read_acts(tb, seq + 1, 0, CFG.act_size)
    await tb.check(FrameType.READ, seq & 0xFF, protocol.read_payload(Memory.COUNTERS, 0, 4))
    assert not int(dut.error.value)


@cocotb.test(timeout_time=20, timeout_unit="ms")
@cocotb.parametrize(idle=[False, True], backpressure=[False, True])
async def test_errors(dut, idle, backpressure):
    """Bad requests are answered with their error code and change nothing; the error status
    output follows the last reply."""
    tb = CoreTB(dut, CFG)
    await tb.reset()
    rng = np.random.default_rng([SEED, 7, int(idle), int(backpressure)])
    if idle:
        tb.set_idle_generator(pause_pattern(rng, 0.3))
    if backpressure:
        tb.set_backpressure_generator(pause_pattern(rng, 0.5))
    depth = CFG.act_size
    await tb.check(FrameType.WRITE, 1, protocol.write_payload(CFG, Memory.ACTS, 0, [1, 2, 3]))
    for seq, (frame_type, payload) in enumerate([
            (FrameType.WRITE, bytes([9, 0, 0, 1])),
            (FrameType.WRITE, bytes([Memory.ACTS]) + (depth - 1).to_bytes(2, "little") + b"ab"),
            (FrameType.READ, bytes([Memory.LAYERS, 0, 0, 0xFF, 0])),
            (FrameType.RUN, bytes([CFG.layer_depth - 1, 2])),
            (0x42, b""), (FrameType.HELLO, b"x")], start=2):
        reply = await tb.check(frame_type, seq, payload)
        assert reply[0] == FrameType.ERROR
        await RisingEdge(dut.clk)
        assert int(dut.error.value)
    corrupt = bytearray(protocol.encode_frame(FrameType.WRITE, 9, bytes([3, 0, 0, 99])))
    corrupt[-2] ^= 0xFF
    for byte in corrupt:
        tb.source.send_nowait(byte)
    got = []
    while not got:
        got = tb.parser.feed(bytes([await tb.sink.recv(timeout=500, unit="us")]))
    assert (got[0].type, got[0].seq, got[0].payload) == (FrameType.ERROR, 9,
                                                         bytes([ErrorCode.BAD_CRC]))
    await tb.check(FrameType.READ, 10, protocol.read_payload(Memory.ACTS, 0, 3))
    assert not int(dut.error.value)
