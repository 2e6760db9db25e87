# amaranth: UnusedElaboratable=no
import re

import pytest

from gsaccel.hw.config import CoreConfig
from gsaccel.hw.framing import FrameReceiver, FrameTransmitter
from gsaccel.hw.layouts import ErrorCode, FrameType
from gsaccel.sim.amaranth_sim import (background, run_sim, seeded_rng, stall_pattern, stream_get,
                                      stream_put)
from gsaccel.sw.runtime.protocol import FrameParser, encode_frame

CFG = CoreConfig(lanes=4, bank_depth=16, max_payload=40)


def _receive(cfg, data, n_frames, *, idle=0.0, stall=0.0, name):
    """Feed ``data`` into a FrameReceiver; return [(type, seq, error, payload bytes)]."""
    dut = FrameReceiver(cfg)
    rng = seeded_rng(len(data))
    got = []

    async def producer(ctx):
        idles = stall_pattern(rng, idle)
        for byte in data:
            await stream_put(ctx, dut.i_stream, byte, stall=idles)

    async def consumer(ctx):
        stalls = stall_pattern(rng, stall)
        for _ in range(n_frames):
            while next(stalls):
                await ctx.tick()
            ctx.set(dut.o_frame.ready, 0)
            frame, = await ctx.tick().sample(dut.o_frame.payload).until(dut.o_frame.valid)
            frame = {k: int(getattr(frame, k)) for k in ("type", "seq", "length", "error")}
            payload = bytearray()
            if frame["error"] == 0:
                for addr in range(frame["length"]):
                    ctx.set(dut.rd_addr, addr)
                    await ctx.tick().repeat(2)
                    payload.append(ctx.get(dut.rd_data))
            got.append((frame["type"], frame["seq"], frame["error"], bytes(payload)))
            ctx.set(dut.o_frame.ready, 1)
            await ctx.tick()
            ctx.set(dut.o_frame.ready, 0)

    run_sim(dut, producer, consumer, name=name, deadline=20_000)
    return got


@pytest.mark.parametrize("idle,stall", [(0.0, 0.0), (0.3, 0.5)])
def test_receiver_good_frames_with_garbage_between(idle, stall):
    rng = seeded_rng(1)
    frames = [(FrameType.HELLO, 0, b""),
              (FrameType.WRITE, 200, bytes(rng.integers(0, 256, 40).tolist())),
              (0x77, 3, bytes(rng.integers(0, 256, 13).tolist()))]
    data = b"\x00\x13" + b"".join(encode_frame(t, s, p) + b"\x11\x22" for t, s, p in frames)
    got = _receive(CFG, data, len(frames), idle=idle, stall=stall,
                   name=f"rx_good_{idle}_{stall}")
    assert got == [(int(t), s, 0, p) for t, s, p in frames]


def test_receiver_corrupt_crc_is_reported_not_handed_on():
    good = encode_frame(FrameType.READ, 9, b"\x03\x00\x00\x04\x00")
    bad = bytearray(good)
    bad[6] ^= 0x40                                  # a payload bit flips on the wire
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 1                                # the checksum itself is damaged
    got = _receive(CFG, bytes(bad) + bytes(bad_crc) + good, 3, name="rx_bad_crc")
    assert got == [(FrameType.READ, 9, ErrorCode.BAD_CRC, b""),
                   (FrameType.READ, 9, ErrorCode.BAD_CRC, b""),
                   (FrameType.READ, 9, 0, b"\x03\x00\x00\x04\x00")]


def test_receiver_too_long_resynchronises():
    too_long = encode_frame(FrameType.WRITE, 5, bytes(range(1, 42)))   # 41 > 40 bytes
    good = encode_frame(FrameType.RUN, 6, b"\x00\x02")
    got = _receive(CFG, too_long + good, 2, name="rx_too_long")
    assert got == [(FrameType.WRITE, 5, ErrorCode.BAD_LENGTH, b""),
                   (FrameType.RUN, 6, 0, b"\x00\x02")]


def test_receiver_truncated_frame_is_flushed_by_padding():
    truncated = encode_frame(FrameType.WRITE, 1, bytes(12))[:9]
    good = encode_frame(FrameType.HELLO, 2)
    # The host's recovery: enough zero bytes to complete any partial frame (then skipped).
    padding = bytes(CFG.max_payload + 9)
    got = _receive(CFG, truncated + padding + good, 2, name="rx_truncated")
    assert got == [(FrameType.WRITE, 1, ErrorCode.BAD_CRC, b""), (FrameType.HELLO, 2, 0, b"")]


@pytest.mark.parametrize("idle,stall", [(0.0, 0.0), (0.4, 0.6)])
def test_transmitter_frames_and_back_pressure(idle, stall):
    rng = seeded_rng(2)
    replies = [(FrameType.ACK, 1, b""),
               (FrameType.DATA, 255, bytes(rng.integers(0, 256, 33).tolist())),
               (FrameType.ERROR, 7, bytes([ErrorCode.BAD_TYPE]))]
    dut = FrameTransmitter(CFG)
    out = bytearray()
    expected = b"".join(encode_frame(t, s, p) for t, s, p in replies)

    async def header(ctx):
        for t, s, p in replies:
            await stream_put(ctx, dut.i_reply, {"type": t, "seq": s, "length": len(p)})

    async def data(ctx):
        idles = stall_pattern(rng, idle)
        for _, _, p in replies:
            for byte in p:
                await stream_put(ctx, dut.i_data, byte, stall=idles)

    async def sink(ctx):
        stalls = stall_pattern(rng, stall)
        while len(out) < len(expected):
            out.append(await stream_get(ctx, dut.o_stream, stall=stalls))

    run_sim(dut, header, background(data), sink, name=f"tx_{idle}_{stall}", deadline=20_000)
    assert bytes(out) == expected
    assert [(f.type, f.seq, f.payload) for f in FrameParser().feed(out)] == replies


def test_framing_rejects_bad_config():
    with pytest.raises(TypeError, match=r"^Configuration must be a CoreConfig, not 3$"):
        FrameReceiver(3)
    with pytest.raises(ValueError, match=re.escape(
            "Maximum payload must fit the 16-bit length field, not 70000")):
        FrameTransmitter(CoreConfig(max_payload=70000))
