# amaranth: UnusedElaboratable=no
"""UART PHY against a continuous-time reference model of an 8N1 line.

The reference sender places bit ``k`` of a frame on ``[t0 + k*T, t0 + (k+1)*T)`` with ``T`` the
sender's bit time in DUT clocks, which differs from the receiver's divisor by the clock drift
under test; the DUT sees the level at each integer clock. The reference receiver samples the
middle of each bit of its own bit time.
"""

import math
from fractions import Fraction

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring

from gsaccel.boards.top import LoopbackCore, SerialCore
from gsaccel.hw.config import CoreConfig
from gsaccel.hw.core import GsaccelCore
from gsaccel.hw.layouts import FrameType, Memory
from gsaccel.hw.uart import UARTReceiver, UARTTransmitter, uart_divisor
from gsaccel.sim import amaranth_sim
from gsaccel.sw.runtime.protocol import (encode_frame, hello_payload, read_payload, words_to_bytes,
                                         write_payload)
from gsaccel.sim.amaranth_sim import background, seeded_rng, stall_pattern, stream_get, stream_put

# Clock cycles per bit: 12, 15 and 18 MHz / 3 Mbaud (iCEBreaker clocks), 25 MHz / 3 Mbaud,
# 48 MHz / 3 Mbaud (OrangeCrab), 100 MHz / 3 Mbaud (ULX3S), 25 MHz / 921600 baud (a float).
DIVISORS = [4, 5, 6, Fraction(25, 3), 16, Fraction(100, 3), 25e6 / 921600]
DRIFTS = [-0.02, 0.0, 0.02]


# Reference model ------------------------------------------------------------------------------

def frame_bits(byte, *, stop=1):
    return [0] + [(byte >> i) & 1 for i in range(8)] + [stop]


def reference_line(frames, *, bit_time, start, gaps=None, tail=2.0):
    """Levels at integer clocks 0, 1, ... of a line carrying ``frames`` (lists of bits).

    Frames follow each other after ``gaps[i]`` idle bit times (default none); ``start`` is the
    time of the first start edge in clocks (a fraction places it between clock edges)."""
    edges = []
    t = start
    for i, bits in enumerate(frames):
        t += (gaps[i] if gaps else 0) * bit_time
        edges.append((t, bits))
        t += len(bits) * bit_time
    length = math.ceil(t + tail * bit_time)
    levels = [1] * length
    for t0, bits in edges:
        for n in range(math.ceil(t0), min(length, math.ceil(t0 + len(bits) * bit_time))):
            levels[n] = bits[int((n - t0) // bit_time)]
    return levels


def reference_decode(levels, *, bit_time):
    """Bytes an ideal receiver with bit time ``bit_time`` reads from sampled levels; a frame
    with a low stop bit decodes as ``None``."""
    out = []
    n = 1
    while n < len(levels):
        if levels[n - 1] == 1 and levels[n] == 0:
            edge = n - 0.5                      # the edge lies between the two samples
            bits = []
            for k in range(10):
                at = round(edge + (k + 0.5) * bit_time)
                if at >= len(levels):
                    return out
                bits.append(levels[at])
            byte = sum(b << i for i, b in enumerate(bits[1:9]))
            out.append(byte if bits[9] == 1 else None)
            n = round(edge + 9.5 * bit_time)
        n += 1
    return out


def random_bytes(rng, count):
    edge_cases = [0x00, 0xFF, 0x55, 0xAA, 0x80, 0x01]
    return edge_cases + [int(b) for b in rng.integers(0, 256, count - len(edge_cases))]


run_sim = amaranth_sim.run_sim


def _id(value):
    return f"{float(value):.3f}"


# Parameters -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cls, minimum, who", [(UARTTransmitter, 2, "Transmitter"),
                                               (UARTReceiver, 4, "Receiver")])
def test_divisor_checks(cls, minimum, who):
    with pytest.raises(TypeError, match=rf"^{who} divisor must be a real number of clock "
                                        rf"cycles per bit, not '4'$"):
        cls(divisor="4")
    with pytest.raises(TypeError, match=rf"^{who} divisor must be a real number of clock "
                                        rf"cycles per bit, not True$"):
        cls(divisor=True)
    with pytest.raises(ValueError, match=rf"^{who} divisor must be at least {minimum} clock "
                                         rf"cycles per bit, not 1.5$"):
        cls(divisor=1.5)
    with pytest.raises(ValueError, match=rf"^{who} divisor must have a denominator of at most "
                                         rf"4096, not Fraction\(40961, 4097\)$"):
        cls(divisor=Fraction(40961, 4097))


def test_divisor_is_exact():
    assert uart_divisor(12e6, 3e6) == 4
    assert uart_divisor(25e6, 3e6) == Fraction(25, 3)
    assert uart_divisor(25_000_000, 921_600) == Fraction(15625, 576)
    assert UARTReceiver(divisor=25e6 / 3e6).divisor == Fraction(25, 3)
    with pytest.raises(TypeError, match=r"^Baud rate must be a positive number, not 0$"):
        uart_divisor(12e6, 0)
    with pytest.raises(TypeError, match=r"^Clock frequency must be a positive number, "
                                        r"not None$"):
        uart_divisor(None, 9600)


# Receiver -------------------------------------------------------------------------------------

def run_receiver(levels, *, divisor, stall=None, name):
    """Drive ``levels`` into a receiver; return (bytes received, framing errors, overruns)."""
    dut = UARTReceiver(divisor=divisor)
    got, errors = [], {"framing": 0, "overrun": 0}

    async def drive(ctx):
        for level in levels:
            ctx.set(dut.rx, level)
            await ctx.tick()
        # Let the consumer drain the last byte.
        await ctx.tick().repeat(8)

    async def consume(ctx):
        while True:
            got.append(await stream_get(ctx, dut.o_stream, stall=stall))

    async def flags(ctx):
        async for _, _, framing, overrun in ctx.tick().sample(dut.framing_error, dut.overrun):
            errors["framing"] += framing
            errors["overrun"] += overrun

    run_sim(dut, drive, background(consume), background(flags), name=name,
            deadline=len(levels) + 100)
    return got, errors


@pytest.mark.parametrize("drift", DRIFTS)
@pytest.mark.parametrize("divisor", DIVISORS, ids=_id)
def test_receiver_against_reference(divisor, drift):
    rng = seeded_rng(int(float(divisor) * 1000) + int(drift * 100))
    data = random_bytes(rng, 12 if float(divisor) < 20 else 7)
    bit_time = float(divisor) * (1 + drift)
    # Back-to-back frames, and frames after random idle gaps, at a random sub-clock phase.
    gaps = [0 if i % 2 else float(rng.uniform(0, 3)) for i in range(len(data))]
    levels = reference_line([frame_bits(b) for b in data], bit_time=bit_time,
                            start=3 + float(rng.random()), gaps=gaps)
    got, errors = run_receiver(levels, divisor=divisor,
                               name=f"uart_rx_{float(divisor):.3f}_{drift}")
    assert got == data
    assert errors == {"framing": 0, "overrun": 0}


def test_receiver_back_pressure_and_overrun():
    rng = seeded_rng(7)
    data = random_bytes(rng, 10)
    levels = reference_line([frame_bits(b) for b in data], bit_time=10, start=2.3)
    # A consumer that stalls for up to a few cycles at a time loses nothing: a byte is held
    # for a whole frame time.
    got, errors = run_receiver(levels, divisor=10,
                               stall=stall_pattern(rng, 0.8), name="uart_rx_back_pressure")
    assert got == data and errors == {"framing": 0, "overrun": 0}

    # A consumer that takes nothing for two frames keeps the first byte and drops the second.
    dut = UARTReceiver(divisor=10)
    levels = reference_line([frame_bits(0x3C), frame_bits(0xC3), frame_bits(0x5A)],
                            bit_time=10, start=2)
    seen = {"overrun": 0, "bytes": []}

    async def bench(ctx):
        ctx.set(dut.o_stream.ready, 0)
        for n, level in enumerate(levels):
            ctx.set(dut.rx, level)
            if n == 215:                              # between the 2nd and 3rd stop bits
                assert ctx.get(dut.o_stream.valid)
                seen["bytes"].append(ctx.get(dut.o_stream.payload))
                ctx.set(dut.o_stream.ready, 1)
            _, _, overrun = await ctx.tick().sample(dut.overrun)
            seen["overrun"] += overrun
            if n == 215:
                ctx.set(dut.o_stream.ready, 0)
        # The third byte arrives after the register was freed.
        ctx.set(dut.o_stream.ready, 1)
        payload, = await ctx.tick().sample(dut.o_stream.payload).until(dut.o_stream.valid)
        seen["bytes"].append(payload)

    run_sim(dut, bench, name="uart_rx_overrun", deadline=len(levels) + 50)
    assert seen == {"overrun": 1, "bytes": [0x3C, 0x5A]}


def test_receiver_framing_error_and_glitch():
    bit_time = 8
    frames = [frame_bits(0xA7), frame_bits(0x12, stop=0), frame_bits(0x34)]
    levels = reference_line(frames, bit_time=bit_time, start=4, gaps=[0, 1, 0])
    # After the bad frame the line stays low (a break) for 15 bit times; nothing may be read
    # from it, and reception resumes once the line idles again.
    bad_end = 4 + 20 * bit_time + bit_time
    levels[bad_end:bad_end] = [0] * (15 * bit_time) + [1] * (2 * bit_time)
    # A low glitch shorter than half a bit before the last frame is ignored.
    levels[-(bit_time * 13):-(bit_time * 13) + 2] = [0, 0]
    assert reference_decode(levels, bit_time=bit_time)[:2] == [0xA7, None]
    got, errors = run_receiver(levels, divisor=bit_time, name="uart_rx_framing")
    assert got == [0xA7, 0x34]
    assert errors == {"framing": 1, "overrun": 0}


# Transmitter ----------------------------------------------------------------------------------

def run_transmitter(data, *, divisor, stall=None, name):
    """Send ``data``; return the line level at every clock and the clocks of accepted bytes."""
    dut = UARTTransmitter(divisor=divisor)
    levels, accepted = [], []
    frame_clocks = math.ceil(10 * float(divisor)) + 2

    async def produce(ctx):
        for byte in data:
            await stream_put(ctx, dut.i_stream, byte, stall=stall)

    async def record(ctx):
        cycle = 0
        async for _, _, tx, valid, ready in ctx.tick().sample(
                dut.tx, dut.i_stream.valid, dut.i_stream.ready):
            levels.append(tx)
            if valid and ready:
                accepted.append(cycle)
            cycle += 1

    async def finish(ctx):
        await ctx.tick().until(dut.busy)
        while len(accepted) < len(data) or ctx.get(dut.busy):
            await ctx.tick()
        await ctx.tick().repeat(frame_clocks)

    run_sim(dut, produce, background(record), finish, name=name,
            deadline=frame_clocks * (len(data) + 4) * 4)
    return levels, accepted


@pytest.mark.parametrize("drift", DRIFTS)
@pytest.mark.parametrize("divisor", DIVISORS, ids=_id)
def test_transmitter_against_reference(divisor, drift):
    rng = seeded_rng(int(float(divisor) * 1000) + 1)
    data = random_bytes(rng, 12 if float(divisor) < 20 else 7)
    levels, accepted = run_transmitter(data, divisor=divisor,
                                       name=f"uart_tx_{float(divisor):.3f}_{drift}")
    # A receiver whose clock is off by `drift` reads the bytes back.
    assert reference_decode(levels, bit_time=float(divisor) * (1 + drift)) == data
    # Edges are exact to within one clock of the ideal times, with no accumulated error:
    # back-to-back frames form one continuous bit train from the first start bit.
    ideal = Fraction(divisor).limit_denominator(4096)
    first = levels.index(0)
    expected = [b for byte in data for b in frame_bits(byte)]
    for k, bit in enumerate(expected):
        begin = first + math.ceil(k * ideal)
        end = first + math.ceil((k + 1) * ideal)
        assert levels[begin:end] == [bit] * (end - begin), f"bit {k} at clock {begin}"
    assert all(level == 1 for level in levels[first + math.ceil(len(expected) * ideal):])


def test_transmitter_stalled_producer():
    rng = seeded_rng(11)
    data = random_bytes(rng, 10)
    levels, accepted = run_transmitter(data, divisor=Fraction(25, 3),
                                       stall=stall_pattern(rng, 0.97),
                                       name="uart_tx_stalled")
    assert reference_decode(levels, bit_time=25 / 3) == data


# Loopback -------------------------------------------------------------------------------------

class _Loopback(wiring.Component):
    """A transmitter whose line feeds a receiver of the other clock's divisor."""

    def __init__(self, *, tx_divisor, rx_divisor):
        self.transmitter = UARTTransmitter(divisor=tx_divisor)
        self.receiver = UARTReceiver(divisor=rx_divisor)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.transmitter = self.transmitter
        m.submodules.receiver = self.receiver
        m.d.comb += self.receiver.rx.eq(self.transmitter.tx)
        return m


@pytest.mark.parametrize("drift", DRIFTS)
@pytest.mark.parametrize("divisor", [4, Fraction(25, 3), 16], ids=_id)
@pytest.mark.parametrize("stall", [0.0, 0.5])
def test_loopback(divisor, drift, stall):
    rng = seeded_rng(int(float(divisor) * 10) + 3)
    data = random_bytes(rng, 16)
    # The transmitter's divisor is the receiver's scaled by the drift between their clocks.
    tx_divisor = Fraction(divisor) * Fraction(1 + drift).limit_denominator(100)
    dut = _Loopback(tx_divisor=tx_divisor, rx_divisor=divisor)
    got = []

    async def produce(ctx):
        for byte in data:
            await stream_put(ctx, dut.transmitter.i_stream, byte,
                             stall=stall_pattern(rng, stall))

    async def consume(ctx):
        for _ in data:
            got.append(await stream_get(ctx, dut.receiver.o_stream,
                                        stall=stall_pattern(rng, stall)))

    run_sim(dut, produce, consume, name=f"uart_loopback_{float(divisor):.3f}_{drift}_{stall}",
            deadline=int(11 * float(divisor) * len(data) * (1 + 2 * stall)) + 200)
    assert got == data


# The board's serial core: UART lines around a byte-stream core --------------------------------

def run_serial_core(core, request, *, divisor, reply_bytes, gaps=None, name):
    """Send ``request`` bit by bit into a SerialCore around ``core``; return the bytes the
    reference receiver decodes from its ``tx`` line once ``reply_bytes`` have been sent."""
    dut = SerialCore(core=core, divisor=divisor)
    bit_time = float(divisor)
    levels = reference_line([frame_bits(b) for b in request], bit_time=bit_time, start=5.5,
                            gaps=gaps)
    tx_levels = []
    frame_clocks = math.ceil(10 * bit_time) + 1

    async def drive(ctx):
        for level in levels:
            ctx.set(dut.rx, level)
            await ctx.tick()

    async def record(ctx):
        async for _, _, tx in ctx.tick().sample(dut.tx):
            tx_levels.append(tx)

    async def finish(ctx):
        # Until the reply is complete and the line has idled for a frame time.
        idle = 0
        while len(reference_decode(tx_levels, bit_time=bit_time)) < reply_bytes \
                or idle < frame_clocks:
            await ctx.tick().repeat(frame_clocks)
            idle = idle + frame_clocks if all(tx_levels[-frame_clocks:]) else 0

    run_sim(dut, drive, background(record), finish, name=name,
            deadline=len(levels) + frame_clocks * (reply_bytes + 40) + 20_000)
    return bytes(reference_decode(tx_levels, bit_time=bit_time))


def test_serial_core_loopback():
    rng = seeded_rng(21)
    data = bytes(random_bytes(rng, 40))
    # Back-to-back bytes: the FIFO and the echo keep up at line rate.
    assert run_serial_core(LoopbackCore(), data, divisor=Fraction(25, 3),
                           reply_bytes=len(data), name="serial_loopback") == data


def test_serial_core_gsaccel_protocol():
    """HELLO, WRITE and READ frames through the UART lines reach the real core and its
    replies come back bit-exact."""
    cfg = CoreConfig(lanes=4, bank_depth=16, weight_depth=16, row_depth=16, layer_depth=2,
                     result_queue=4, max_payload=64)
    rng = seeded_rng(22)
    acts = [int(v) for v in rng.integers(-128, 128, 23)]
    request = (encode_frame(FrameType.HELLO, 7)
               + encode_frame(FrameType.WRITE, 8, write_payload(cfg, Memory.ACTS, 5, acts))
               + encode_frame(FrameType.READ, 9, read_payload(Memory.ACTS, 5, len(acts))))
    expected = (encode_frame(FrameType.DATA, 7, hello_payload(cfg))
                + encode_frame(FrameType.ACK, 8)
                + encode_frame(FrameType.DATA, 9, words_to_bytes(cfg, Memory.ACTS, acts)))
    reply = run_serial_core(GsaccelCore(cfg), request, divisor=4, reply_bytes=len(expected),
                            name="serial_gsaccel")
    assert reply == expected
