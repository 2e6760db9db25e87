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
from gsaccel.sw.compile.image import LayerSpec, build_image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "gateware"))
from core_host import image_requests, random_matrix, reference_reply  # noqa: E402

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
        want = reference_reply(self.golden, frame_type, payload)
        got = await self.transact(frame_type, seq, payload)
        if want[0] == FrameType.DATA and frame_type == FrameType.RUN:
            assert protocol.parse_counters(got[2]) == protocol.parse_counters(want[1]), \
                f"seq {seq}: counters"
        assert got == (want[0], seq, want[1]), f"seq {seq}: {got} != {want}"
        return got


def program(cfg, rng):
    n_in, layers, cols, src = 2 * cfg.lanes + 5, [], 2 * cfg.lanes + 5, 0
    for rows, pattern, per_row in [(19, "unstructured", 1), (2 * cfg.lanes + 3, "1xN", 1),
                                   (10, "gs-gather", 2), (6, "dense", cfg.lanes)]:
        matrix = random_matrix(rng, rows, cols, pattern, cfg, per_row=per_row)
        layers.append(LayerSpec(kind="gs", matrix=matrix, bias=rng.integers(-500, 500, rows),
                                shift=int(rng.integers(0, 5)), relu=bool(rng.integers(0, 2)),
                                src=src, dst=1 - src))
        cols, src = rows, 1 - src
    layers.append(LayerSpec(kind="basis", basis=rng.integers(-128, 128, (3, 3)), n_chunks=2,
                            shift=3, src=src, dst=1 - src))
    return layers, n_in


@cocotb.test(timeout_time=100, timeout_unit="ms")
@cocotb.parametrize(idle=[False, True], backpressure=[False, True])
async def test_image(dut, idle, backpressure):
    """Load a multi-layer image, run it on fresh inputs, read the outputs and counters."""
    tb = CoreTB(dut, CFG)
    await tb.reset()
    rng = np.random.default_rng([SEED, int(idle), int(backpressure)])
    if idle:
        tb.set_idle_generator(pause_pattern(rng, 0.3))
    if backpressure:
        tb.set_backpressure_generator(pause_pattern(rng, 0.5))
    layers, n_in = program(CFG, rng)
    image = build_image(CFG, layers)
    frames, seq = image_requests(CFG, image)
    await tb.check(FrameType.HELLO, 250, b"")
    for frame in frames:
        await tb.check(*frame)
    for k in range(2):
        x = rng.integers(-128, 128, n_in)
        x[:2] = (-128, 127)
        await tb.check(FrameType.WRITE, seq, protocol.write_payload(
            CFG, Memory.ACTS, 0, (x & 0xFF).tolist()))
        await tb.check(FrameType.RUN, seq + 1, protocol.run_payload(0, len(layers)))
        await tb.check(FrameType.READ, seq + 2, protocol.read_payload(Memory.ACTS, 0, 40))
        await tb.check(FrameType.READ, seq + 3,
                       protocol.read_payload(Memory.ACTS, CFG.buffer_size, 40))
        seq += 4
    await tb.check(FrameType.READ, seq, protocol.read_payload(Memory.COUNTERS, 0, 4))
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
    depth = 2 * CFG.buffer_size
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
