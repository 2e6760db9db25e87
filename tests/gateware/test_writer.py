# amaranth: UnusedElaboratable=no
"""Requantizer at its edges and ResultWriter on random vectors, stalled and free-running,
against gsaccel.sw.golden.requantize."""

import pytest

from gsaccel.hw.config import CoreConfig
from gsaccel.hw.writer import Requantizer, ResultWriter
from gsaccel.sim.amaranth_sim import background, run_sim, seeded_rng, stall_pattern, stream_put
from gsaccel.sw import golden


# Requantizer ----------------------------------------------------------------------------------

def test_requantizer_rejects_bad_width():
    with pytest.raises(TypeError, match=r"^Accumulator width must be a positive integer, "
                                        r"not '24'$"):
        Requantizer(acc_width="24")
    with pytest.raises(TypeError, match=r"^Accumulator width must be a positive integer, "
                                        r"not 0$"):
        Requantizer(acc_width=0)
    with pytest.raises(ValueError, match=r"^Accumulator width must be between 8 and 32, "
                                         r"not 33$"):
        Requantizer(acc_width=33)


def edge_values(acc_width, shift):
    """Both ends of the range, rounding ties and their neighbours, saturation thresholds."""
    lo, hi = -(1 << (acc_width - 1)), (1 << (acc_width - 1)) - 1
    values = {lo, lo + 1, -1, 0, 1, hi - 1, hi}
    for k in (-129, -128, -127, -2, -1, 0, 1, 2, 126, 127, 128):
        for tie in (0, 1 << max(shift - 1, 0)):
            for delta in (-1, 0, 1):
                values.add((k << shift) + tie + delta)
    return sorted(v for v in values if lo <= v <= hi)


@pytest.mark.parametrize("acc_width,pipelined", [(24, False), (32, False), (17, False),
                                               (24, True)])
def test_requantizer_edges(acc_width, pipelined):
    dut = Requantizer(acc_width=acc_width, pipelined=pipelined)
    cases = [(v, s, r) for s in range(32) for v in edge_values(acc_width, s) for r in (0, 1)]

    async def bench(ctx):
        for value, shift, relu in cases:
            if ctx.get(dut.shift) != shift:         # shift is sampled a cycle ahead
                ctx.set(dut.shift, shift)
                await ctx.tick()
            ctx.set(dut.value, value)
            ctx.set(dut.relu, relu)
            if pipelined:                           # the result follows two cycles later
                await ctx.tick().repeat(2)
            await ctx.delay(1e-9)
            expected = int(golden.requantize(value, shift, relu, acc_width))
            assert ctx.get(dut.result) == expected, (value, shift, relu)

    run_sim(dut, bench, name=f"requantizer_{acc_width}_{pipelined}", deadline=10 ** 6)
    shifts = {s for _, s, _ in cases}
    assert shifts == set(range(32))
    # The cases reach both saturation limits and exact ties.
    results = {int(golden.requantize(v, s, 0, acc_width)) for v, s, _ in cases}
    assert {-128, 127} <= results


# ResultWriter ---------------------------------------------------------------------------------

def test_writer_rejects_bad_config():
    with pytest.raises(TypeError, match=r"^Configuration must be a CoreConfig, not \{\}$"):
        ResultWriter({})


def test_writer_queue_depth():
    assert ResultWriter(CoreConfig(lanes=8, result_queue=20)).queue_depth == 2


def run_writer(cfg, seg_log2, sums, rows, shift, relu, *, sum_stall=0.0, row_stall=0.0,
               salt=0):
    """Feed ``sums`` (vectors) and ``rows`` (serial records ``(out_elem, bias, valid,
    base)``, or ``row_stream_layout`` payloads as dicts) to a ResultWriter; return the
    writes (bank, bank address, data, cycle), the row transfer cycles and the credit
    cycles."""
    dut = ResultWriter(cfg)
    rng = seeded_rng(salt)
    writes, row_cycles, credit_cycles = [], [], []
    done = []

    async def sums_source(ctx):
        stall = stall_pattern(rng, sum_stall)
        for vector in sums:
            await stream_put(ctx, dut.i_sums, [int(v) for v in vector], stall=stall)

    async def rows_source(ctx):
        ctx.set(dut.control, {"seg_log2": seg_log2, "shift": shift, "relu": relu})
        stall = stall_pattern(rng, row_stall)
        for row in rows:
            if not isinstance(row, dict):
                out_elem, bias, valid, base = row
                row = {"row": {"out_elem": out_elem, "bias": bias, "valid": valid},
                       "base": base}
            await stream_put(ctx, dut.i_row, row, stall=stall)
        await ctx.tick().until(dut.idle)
        done.append(True)

    async def monitor(ctx):
        cycle = 0
        async for _, _, row_valid, row_ready, credit, *ports in ctx.tick().sample(
                dut.i_row.valid, dut.i_row.ready, dut.credit,
                *(getattr(port, name) for name in ("wr_en", "wr_addr", "wr_data")
                  for port in dut.banks)):
            lanes = cfg.lanes
            en, addr, data = ports[:lanes], ports[lanes:2 * lanes], ports[2 * lanes:]
            for bank in range(lanes):
                if en[bank]:
                    writes.append((bank, addr[bank], data[bank], cycle))
            if row_valid and row_ready:
                row_cycles.append(cycle)
            if credit:
                credit_cycles.append(cycle)
            cycle += 1

    run_sim(dut, sums_source, rows_source, background(monitor), name="writer")
    assert done
    return writes, row_cycles, credit_cycles


@pytest.mark.parametrize("sum_stall,row_stall", [(0.0, 0.0), (0.5, 0.0), (0.0, 0.5),
                                                 (0.4, 0.4)])
@pytest.mark.parametrize("lanes,seg_log2", [(4, 0), (8, 1), (8, 3), (16, 2)])
def test_writer_random(lanes, seg_log2, sum_stall, row_stall):
    cfg = CoreConfig(lanes=lanes, bank_depth=8, acc_width=24, result_queue=2 * lanes,
                     vector_writer=False)
    rng = seeded_rng(lanes + seg_log2)
    slots = lanes >> seg_log2
    n_vectors = 9
    half = 1 << (cfg.acc_width - 1)
    sums = rng.integers(-half, half, (n_vectors, lanes)) >> rng.integers(0, 20, (n_vectors, 1))
    records = []
    for _ in range(n_vectors * slots):
        # Biases near the accumulator limits make sum + bias wrap.
        bias = int(rng.choice([rng.integers(-300, 300), rng.integers(-half, half)]))
        # The pixel's output base plus the element's word may wrap past the last bank word.
        records.append((int(rng.integers(0, cfg.act_size)), bias, int(rng.random() < 0.8),
                        int(rng.integers(0, cfg.bank_depth))))
    shift, relu = int(rng.integers(0, 14)), int(rng.integers(0, 2))
    writes, row_cycles, credit_cycles = run_writer(cfg, seg_log2, sums, records, shift, relu,
                                                   sum_stall=sum_stall, row_stall=row_stall,
                                                   salt=7)
    expected = []
    for k in range(n_vectors):
        for j in range(slots):
            out_elem, bias, valid, base = records[k * slots + j]
            value = golden.requantize(int(sums[k, j]) + bias, shift, relu, cfg.acc_width)
            if valid:
                expected.append((out_elem % lanes,
                                 (base + out_elem // lanes) % cfg.bank_depth, int(value)))
    assert [w[:3] for w in writes] == expected
    # Every row's write lands exactly WRITE_LATENCY cycles after its slot cycle.
    valid_row_cycles = [c for c, r in zip(row_cycles, records) if r[2]]
    assert [w[3] for w in writes] == [c + golden.WRITE_LATENCY for c in valid_row_cycles]
    # One credit per vector, in the vector's last slot cycle.
    assert credit_cycles == row_cycles[slots - 1::slots]


@pytest.mark.parametrize("sum_stall,row_stall", [(0.0, 0.0), (0.5, 0.0), (0.0, 0.5),
                                                 (0.4, 0.4)])
@pytest.mark.parametrize("lanes,seg_log2", [(2, 0), (4, 0), (8, 1), (8, 3), (16, 0), (16, 2),
                                            (4, 5)])
def test_vector_writer_random(lanes, seg_log2, sum_stall, row_stall):
    """Row lines: every bank written in the line's cycle from the slot its record names
    (modulo V/e), a vector popped after a ``last`` line or a pixel's last line (``end``),
    invalid records dropped, bank addresses wrapping."""
    cfg = CoreConfig(lanes=lanes, bank_depth=8, acc_width=24, result_queue=2 * lanes)
    assert ResultWriter(cfg).width == lanes
    rng = seeded_rng(100 + lanes + seg_log2)
    slots = max(1, lanes >> seg_log2)
    n_vectors = 9
    half = 1 << (cfg.acc_width - 1)
    sums = rng.integers(-half, half, (n_vectors, lanes)) >> rng.integers(0, 20, (n_vectors, 1))
    lines, popped = [], 0
    while popped < n_vectors:
        records = [{"offset": int(rng.integers(0, cfg.bank_depth)),
                    "bias": int(rng.choice([rng.integers(-300, 300), rng.integers(-half, half)])),
                    "valid": int(rng.random() < 0.8),
                    # Slots past V/e (a hand-written line) wrap to the vector's slots.
                    "slot": int(rng.integers(0, lanes))} for _ in range(lanes)]
        last, end = int(rng.random() < 0.4), int(rng.random() < 0.2)
        lines.append({"row": {"records": records, "last": last},
                      "base": int(rng.integers(0, cfg.bank_depth)), "end": end})
        popped += last | end
    shift, relu = int(rng.integers(0, 14)), int(rng.integers(0, 2))
    writes, row_cycles, credit_cycles = run_writer(cfg, seg_log2, sums, lines, shift, relu,
                                                   sum_stall=sum_stall, row_stall=row_stall,
                                                   salt=8)
    expected, expected_cycles, pops, vector = [], [], [], 0
    for line, cycle in zip(lines, row_cycles):
        for bank, record in enumerate(line["row"]["records"]):
            if record["valid"]:
                value = golden.requantize(int(sums[vector, record["slot"] % slots]) +
                                          record["bias"], shift, relu, cfg.acc_width)
                expected.append((bank, (line["base"] + record["offset"]) % cfg.bank_depth,
                                 int(value)))
                expected_cycles.append(cycle + golden.WRITE_LATENCY)
        if line["row"]["last"] or line["end"]:
            pops.append(cycle)
            vector += 1
    assert len(row_cycles) == len(lines)
    assert [w[:3] for w in writes] == expected
    # A line's writes land together, WRITE_LATENCY cycles after its writer cycle.
    assert [w[3] for w in writes] == expected_cycles
    # One credit per vector, in the cycle of the line that pops it.
    assert credit_cycles == pops
    if not sum_stall and not row_stall:
        assert row_cycles == list(range(row_cycles[0], row_cycles[0] + len(lines)))
