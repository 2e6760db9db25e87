"""Drive a whole GsaccelCore in amaranth.sim with protocol frames, and predict its replies.

Shared by test_sequencer.py and test_core.py (not a test module itself).
"""

import struct

import numpy as np

from gsaccel.hw.core import GsaccelCore
from gsaccel.hw.layouts import ErrorCode, FrameType, Memory, memory_depth
from gsaccel.sim.amaranth_sim import run_sim, seeded_rng, stall_pattern, stream_get, stream_put
from gsaccel.sw.runtime import protocol
from gsaccel.sw.errors import DeviceError


def run_core(cfg, requests, *, idle=0.0, stall=0.0, name, deadline=200_000, dut=None):
    """Send each request (bytes, expected reply count) to a GsaccelCore and collect the reply
    frames (and FrameErrors) the host parses, in order."""
    dut = GsaccelCore(cfg) if dut is None else dut
    rng = seeded_rng(len(requests))
    parser = protocol.FrameParser(max_payload=cfg.max_payload)
    replies = []

    async def host(ctx):
        idles, stalls = stall_pattern(rng, idle), stall_pattern(rng, stall)
        for data, n_replies in requests:
            for byte in data:
                await stream_put(ctx, dut.i_stream, byte, stall=idles)
            got = []
            while len(got) < n_replies:
                byte = await stream_get(ctx, dut.o_stream, stall=stalls)
                got += parser.feed(bytes([byte]))
            replies.extend(got)
        # Nothing more may come out, and the core must be idle again.
        for _ in range(20):
            await ctx.tick()
            assert not ctx.get(dut.o_stream.valid), "unexpected reply bytes"
        assert not ctx.get(dut.busy)

    run_sim(dut, host, name=name, deadline=deadline)
    return replies


def reference_reply(golden, frame_type, payload):
    """(type, payload) the device must answer a good frame with, applying it to ``golden``.

    The check order is the device's (docs/protocol.md): length, memory, whole words/size,
    address; the golden model supplies memory contents and RUN results.
    """
    cfg = golden.cfg

    def error(code):
        return FrameType.ERROR, bytes([code])

    if frame_type == FrameType.HELLO:
        return error(ErrorCode.BAD_LENGTH) if payload else (FrameType.DATA,
                                                          protocol.hello_payload(cfg))
    if frame_type == FrameType.WRITE:
        if len(payload) < 3:
            return error(ErrorCode.BAD_LENGTH)
        mem, addr = struct.unpack_from("<BH", payload)
        if mem > Memory.ACTS:
            return error(ErrorCode.BAD_MEMORY)
        size = protocol.word_size(cfg, mem)
        if (len(payload) - 3) % size:
            return error(ErrorCode.BAD_LENGTH)
        words = protocol.bytes_to_words(cfg, mem, payload[3:])
        if addr + len(words) > memory_depth(cfg, mem):
            return error(ErrorCode.BAD_ADDRESS)
        if mem == Memory.ACTS:
            words = [(w ^ 0x80) - 0x80 for w in words]
        golden.write(mem, addr, words)
        return FrameType.ACK, b""
    if frame_type == FrameType.READ:
        if len(payload) != 5:
            return error(ErrorCode.BAD_LENGTH)
        mem, addr, count = struct.unpack("<BHH", payload)
        if mem > Memory.COUNTERS:
            return error(ErrorCode.BAD_MEMORY)
        if count * protocol.word_size(cfg, mem) > cfg.max_payload:
            return error(ErrorCode.BAD_LENGTH)
        if addr + count > memory_depth(cfg, mem):
            return error(ErrorCode.BAD_ADDRESS)
        return FrameType.DATA, protocol.words_to_bytes(cfg, mem, golden.read(mem, addr, count))
    if frame_type == FrameType.RUN:
        if len(payload) != 2:
            return error(ErrorCode.BAD_LENGTH)
        first, count = payload
        try:
            counters = golden.run(first, count)
        except DeviceError as err:
            return error(err.code)
        return FrameType.DATA, protocol.counters_payload(counters)
    return error(ErrorCode.BAD_TYPE)


def image_requests(cfg, image, seq0=0):
    """WRITE frames loading a DeviceImage, each within max_payload; (frames, next seq)."""
    frames, seq = [], seq0
    for mem, words in image.memories():
        step = protocol.max_write_words(cfg, mem)
        for start in range(0, len(words), step):
            frames.append((FrameType.WRITE, seq & 0xFF,
                           protocol.write_payload(cfg, mem, start, words[start:start + step])))
            seq += 1
    return frames, seq


def random_matrix(rng, rows, cols, pattern, cfg, per_row=1, density=0.3):
    """A random integer matrix that follows ``pattern``, packed as a GSMatrix for ``cfg``."""
    from gsaccel.sw.format import GSMatrix

    def values(shape):
        if cfg.encoding == "pow2":
            return rng.choice([-1, 1], size=shape) * (1 << rng.integers(0, 7, size=shape))
        v = rng.integers(-128, 128, size=shape)
        return np.where(v == 0, 1, v)

    lanes = cfg.lanes
    w = np.zeros((rows, cols), dtype=np.int64)
    if pattern in ("unstructured", "dense"):
        mask = rng.random((rows, cols)) < (1.0 if pattern == "dense" else density)
        w[mask] = values(mask.sum())
    elif pattern == "1xN":
        for start in range(0, rows, lanes):
            block = slice(start, min(start + lanes, rows))
            cols_kept = rng.choice(cols, size=max(1, int(density * cols)), replace=False)
            n = block.stop - block.start
            w[block, cols_kept] = values((n, len(cols_kept)))
    else:   # gs-gather: per row group, P rounds of a random bank permutation over the lanes
        segments = lanes // per_row
        for start in range(0, rows, segments):
            for _ in range(min(int(rng.integers(1, 3)), cols // lanes)):
                perm = rng.permutation(lanes)
                for slot, bank in enumerate(perm):
                    row = start + slot // per_row
                    if row >= rows:
                        continue
                    free = [c for c in range(bank, cols, lanes) if w[row, c] == 0]
                    w[row, rng.choice(free)] = values(1)[0]
        pattern = "gs-gather"
    return GSMatrix.from_dense(w, pattern, lanes, per_row, encoding=cfg.encoding)
