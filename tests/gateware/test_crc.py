# amaranth: UnusedElaboratable=no
import os
import random
import zlib

from amaranth.sim import Simulator

from gsaccel.hw.crc import Crc32

SEED = int(os.environ.get("GSACCEL_SEED", "1234"))


def _crc_of_chunks(chunks, gaps):
    """Feed byte strings into Crc32 (clearing between them, idling per `gaps`); return the
    checksum seen after each."""
    dut = Crc32()
    results = []

    async def bench(ctx):
        for chunk in chunks:
            ctx.set(dut.clear, 1)
            for n, byte in enumerate(chunk):
                ctx.set(dut.data, byte)
                ctx.set(dut.en, 1)
                await ctx.tick()
                ctx.set(dut.clear, 0)
                ctx.set(dut.en, 0)
                for _ in range(next(gaps)):
                    await ctx.tick()
            if not chunk:
                await ctx.tick()
                ctx.set(dut.clear, 0)
            results.append(ctx.get(dut.crc))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return results


def test_crc32_matches_zlib_on_random_data():
    rng = random.Random(SEED)
    chunks = [b"", b"\x00", b"123456789", bytes(rng.randrange(256) for _ in range(300))]
    chunks += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))) for _ in range(20)]
    gaps = iter(lambda: rng.choice([0, 0, 0, 1, 2]), None)
    got = _crc_of_chunks(chunks, gaps)
    assert got == [zlib.crc32(c) for c in chunks], f"GSACCEL_SEED={SEED}"


def test_crc32_check_value():
    # The catalogue check value of CRC-32/ISO-HDLC.
    assert _crc_of_chunks([b"123456789"], iter(lambda: 0, None)) == [0xCBF43926]
