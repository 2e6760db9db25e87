# amaranth: UnusedElaboratable=no
"""The amaranth.sim helpers of gsaccel.sim.amaranth_sim: stream drivers with stalls on both
sides, the cycle deadline, the seed."""

import pytest
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from gsaccel.hw.config import CoreConfig
from gsaccel.hw.layouts import row_record_layout
from gsaccel.sim.amaranth_sim import run_sim, seeded_rng, stall_pattern, stream_get, stream_put
from gsaccel.sw.format.words import pack_word


class StreamFifo(wiring.Component):
    def __init__(self, layout):
        self._layout = layout
        super().__init__({"i": In(stream.Signature(layout)), "o": Out(stream.Signature(layout))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = fifo = SyncFIFOBuffered(width=self._layout.size, depth=2)
        m.d.comb += [
            fifo.w_data.eq(self.i.payload.as_value()), fifo.w_en.eq(self.i.valid),
            self.i.ready.eq(fifo.w_rdy),
            self.o.payload.eq(fifo.r_data), self.o.valid.eq(fifo.r_rdy),
            fifo.r_en.eq(self.o.ready),
        ]
        return m


@pytest.mark.parametrize("put_stall,get_stall", [(0.0, 0.0), (0.5, 0.0), (0.0, 0.5),
                                                 (0.3, 0.6)])
def test_stream_round_trip(put_stall, get_stall):
    cfg = CoreConfig(lanes=4, bank_depth=16)
    layout = row_record_layout(cfg)
    dut = StreamFifo(layout)
    rng = seeded_rng(1)
    records = [{"out_elem": int(rng.integers(0, 64)), "bias": int(rng.integers(-1000, 1000)),
                "valid": int(rng.integers(0, 2))} for _ in range(40)]
    received = []

    async def producer(ctx):
        stall = stall_pattern(rng, put_stall)
        for i, record in enumerate(records):
            # Dicts and packed words (ints) are both accepted.
            await stream_put(ctx, dut.i, record if i % 2 else pack_word(layout, record),
                             stall=stall)

    async def consumer(ctx):
        stall = stall_pattern(rng, get_stall)
        for _ in records:
            received.append(await stream_get(ctx, dut.o, stall=stall))

    run_sim(dut, producer, consumer, name="stream_round_trip", deadline=2000)
    assert [{name: getattr(p, name) for name in ("out_elem", "bias", "valid")}
            for p in received] == records


def test_run_sim_deadline():
    dut = StreamFifo(row_record_layout(CoreConfig(lanes=4)))

    async def waits_forever(ctx):
        await stream_get(ctx, dut.o)

    with pytest.raises(TimeoutError, match=r"^Simulation 'stuck' did not finish within 50 "
                                           r"cycles$"):
        run_sim(dut, waits_forever, name="stuck", deadline=50)
    with pytest.raises(TypeError, match=r"^Deadline must be a positive integer, not 0$"):
        run_sim(dut, waits_forever, name="stuck", deadline=0)


def test_seeded_rng(monkeypatch):
    monkeypatch.setenv("GSACCEL_SEED", "0x10")
    first = seeded_rng(3).integers(0, 1 << 30, 4)
    assert (seeded_rng(3).integers(0, 1 << 30, 4) == first).all()
    assert not (seeded_rng(4).integers(0, 1 << 30, 4) == first).all()
    monkeypatch.setenv("GSACCEL_SEED", "seven")
    with pytest.raises(ValueError, match=r"^GSACCEL_SEED must be an integer, not 'seven'$"):
        seeded_rng()


def test_stall_pattern_rejects_certainty():
    with pytest.raises(ValueError, match=r"^Stall probability must be in \[0, 1\), not 1$"):
        next(stall_pattern(seeded_rng(), 1))
