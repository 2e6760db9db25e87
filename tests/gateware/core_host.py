"""Drive a whole GsaccelCore in amaranth.sim with protocol frames (its replies are predicted
by gsaccel.sw.runtime.golden_link.GoldenCommandProcessor).

Shared by test_sequencer.py and test_core.py (not a test module itself).
"""

import numpy as np

from gsaccel.hw.core import GsaccelCore
from gsaccel.hw.layouts import FrameType
from gsaccel.sim.amaranth_sim import run_sim, seeded_rng, stall_pattern, stream_get, stream_put
from gsaccel.sw.runtime import protocol


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
