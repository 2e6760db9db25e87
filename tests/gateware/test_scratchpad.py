# amaranth: UnusedElaboratable=no
"""BankedScratchpad: every bank reads with two cycles of latency (old data on a same-cycle
write) and the element layout matches docs/architecture.md."""

import numpy as np
import pytest

from gsaccel.hw.config import CoreConfig
from gsaccel.hw.scratchpad import BankedScratchpad, bank_addr_width
from gsaccel.sim.amaranth_sim import run_sim, seeded_rng


def test_rejects_bad_config():
    with pytest.raises(TypeError, match=r"^Configuration must be a CoreConfig, not 'lanes=8'$"):
        BankedScratchpad("lanes=8")


def test_bank_addr_width():
    assert bank_addr_width(CoreConfig(lanes=4, bank_depth=16)) == 4
    assert bank_addr_width(CoreConfig(lanes=16, bank_depth=1)) == 1


@pytest.mark.parametrize("lanes,bank_depth", [(2, 4), (4, 8), (8, 16), (16, 2)])
def test_random_traffic(lanes, bank_depth):
    """Random writes and reads on every bank at once against a model of the banks."""
    cfg = CoreConfig(lanes=lanes, bank_depth=bank_depth)
    dut = BankedScratchpad(cfg)
    rng = seeded_rng(lanes)
    depth = bank_depth
    model = np.zeros((lanes, depth), dtype=np.int64)

    async def bench(ctx):
        expected = None
        in_flight = None        # what the read issued a cycle ago returns after this tick
        pending = []            # the writes issued in the last two cycles
        for _ in range(200):
            rd = rng.integers(0, depth, lanes)
            wr = rng.integers(0, depth, lanes)
            en = rng.random(lanes) < 0.5
            data = rng.integers(-128, 128, lanes)
            # Half the time read what is being written this cycle: the old word comes back.
            same = rng.random(lanes) < 0.5
            rd = np.where(same, wr, rd)
            for bank in range(lanes):
                port = dut.banks[bank]
                ctx.set(port.rd_addr, int(rd[bank]))
                ctx.set(port.wr_addr, int(wr[bank]))
                ctx.set(port.wr_en, int(en[bank]))
                ctx.set(port.wr_data, int(data[bank]))
            # The write port is registered too: a write reaches the RAM at the edge after the
            # one that takes it, so a read sees the writes issued two or more cycles before.
            if len(pending) == 2:
                done_en, done_wr, done_data = pending.pop(0)
                model[np.arange(lanes)[done_en], done_wr[done_en]] = done_data[done_en]
            pending.append((en, wr, data))
            old = model[np.arange(lanes), rd].copy()
            await ctx.tick()
            if in_flight is not None:
                got = [ctx.get(port.rd_data) for port in dut.banks]
                np.testing.assert_array_equal(got, in_flight)
                expected = in_flight
            in_flight = old
        assert expected is not None

    run_sim(dut, bench, name=f"scratchpad_{lanes}")


def test_banks_ask_for_block_ram():
    """Each bank carries ``ram_style = "block"``: Yosys would otherwise put small banks in
    ECP5 LUT RAM, whose asynchronous read lands on the engine's address path."""
    from amaranth.back import rtlil
    text = rtlil.convert(BankedScratchpad(CoreConfig(lanes=4, bank_depth=16)))
    assert text.count('attribute \\ram_style "block"') == 4
