# amaranth: UnusedElaboratable=no
"""BasisUnit against gsaccel.sw.golden.basis_layer, with a behavioural model of the banked
scratchpad (synchronous read, read-old-data), and its exact timing."""

import numpy as np
import pytest

from gsaccel.hw.config import CoreConfig
from gsaccel.hw.basis import BasisUnit
from gsaccel.hw.layouts import LayerKind, Memory, layer_layout
from gsaccel.sim.amaranth_sim import background, run_sim, seeded_rng
from gsaccel.sw import golden
from gsaccel.sw.format.words import pack_word


def test_rejects_bad_config():
    with pytest.raises(TypeError, match=r"^Configuration must be a CoreConfig, not 4$"):
        BasisUnit(4)
    with pytest.raises(ValueError, match=r"^Basis unit lane count must be at least 4, so that "
                                         r"a chunk's three elements fall in three banks, "
                                         r"not 2$"):
        BasisUnit(CoreConfig(lanes=2))


def run_basis(cfg, acts, basis, n_chunks, shift, relu, src, dst):
    """Run one basis layer on ``acts`` (the scratchpad's elements, element ``a`` in bank
    ``a % V`` at ``a // V``) from bank address ``src`` to ``dst``; return the new acts, the
    cycle of ``done`` (``start`` is cycle 0) and the busy cycles."""
    dut = BasisUnit(cfg)
    lanes, depth = cfg.lanes, cfg.bank_depth
    banks = np.asarray(acts, dtype=np.int64).reshape(depth, lanes).T.copy()
    result = {}

    async def memory(ctx):
        # The scratchpad's two cycles of read latency: the word read at one tick is on
        # rd_data after the next (after that tick without the deep pipeline).
        in_flight = None
        async for _, _, *ports in ctx.tick().sample(
                *(getattr(port, name) for name in ("rd_addr", "wr_en", "wr_addr", "wr_data")
                  for port in dut.banks)):
            rd, en = ports[:lanes], ports[lanes:2 * lanes]
            wr, data = ports[2 * lanes:3 * lanes], ports[3 * lanes:]
            read = [int(banks[bank, rd[bank]]) for bank in range(lanes)]   # old words
            if not cfg.deep_pipeline:
                in_flight = read
            if in_flight is not None:
                for bank in range(lanes):
                    ctx.set(dut.banks[bank].rd_data, in_flight[bank])
            in_flight = read
            for bank in range(lanes):
                if en[bank]:
                    banks[bank, wr[bank]] = data[bank]

    async def bench(ctx):
        ctx.set(dut.n_chunks, n_chunks)
        ctx.set(dut.basis, [int(v) for v in np.ravel(basis)])
        ctx.set(dut.control, {"shift": shift, "relu": relu, "src_base": src, "dst_base": dst})
        await ctx.tick()
        ctx.set(dut.start, 1)
        cycle, busy_cycles = 0, 0
        async for _, _, done, busy in ctx.tick().sample(dut.done, dut.busy):
            ctx.set(dut.start, 0)
            busy_cycles += busy
            if done:
                break
            cycle += 1
        result["done"] = cycle
        result["busy"] = busy_cycles
        for _ in range(8):                    # nothing is written after done
            await ctx.tick()
            assert not ctx.get(dut.busy)

    run_sim(dut, bench, background(memory), name=f"basis_{lanes}")
    return banks.T.ravel(), result["done"], result["busy"]


@pytest.mark.parametrize("lanes,n_chunks", [(4, 5), (8, 1), (8, 13), (16, 10), (8, 0),
                                            (4, 21), (4, 22), (4, 1000)])
@pytest.mark.parametrize("deep_pipeline", [True, False])
def test_basis_layer(lanes, n_chunks, deep_pipeline):
    cfg = CoreConfig(lanes=lanes, bank_depth=8 if lanes == 16 else 16,
                     deep_pipeline=deep_pipeline)
    rng = seeded_rng(lanes + n_chunks)
    depth, checked = cfg.bank_depth, []
    # Bases far apart, and bases near the end, whose chunks wrap to the scratchpad's start.
    for src, dst, shift, relu in ((0, depth // 2, 6, 0), (depth // 2, 0, 0, 1),
                                  (depth - 1, 3, 31, 0), (2, depth - 2, 3, 1)):
        acts = rng.integers(-128, 128, cfg.act_size)
        acts[src * lanes:][:3] = (-128, -128, 127)
        basis = rng.integers(-128, 128, (3, 3))
        basis[0] = (-128, -128, -128)         # z_0 up to 3 * 2**14: saturates at shift 0
        out, done, busy = run_basis(cfg, acts, basis, n_chunks, shift, relu, src, dst)
        # Through the golden core: it clamps a layer to the scratchpad as the RTL does.
        core = golden.GoldenCore(cfg)
        core.write(Memory.ACTS, 0, acts.tolist())
        core.write(Memory.LAYERS, 0, [pack_word(layer_layout(cfg), {
            "kind": LayerKind.BASIS, "src_base": src, "dst_base": dst, "relu": relu,
            "shift": shift,
            "group_count": n_chunks, "basis": [int(v) for v in basis.ravel()]})])
        counters = core.run(0, 1)
        expected = np.array(core.read(Memory.ACTS, 0, cfg.act_size))
        # A layer whose destination overlaps its source is outside the contract (the RTL
        # reads some words after writing them; the compiler never places tensors so): then
        # only the cycles are compared. The clamped layers (more chunks than the scratchpad
        # holds) always overlap.
        chunks = min(n_chunks, cfg.act_size // 3)
        read = set((src * lanes + np.arange(3 * chunks)) % cfg.act_size)
        written = set((dst * lanes + np.arange(3 * chunks)) % cfg.act_size)
        if not read & written:
            checked.append((src, dst))
            np.testing.assert_array_equal(out, expected)
        assert done + 1 == counters["cycles"] - golden.RUN_OVERHEAD - golden.LAYER_OVERHEAD
        assert busy == done                   # cycles 1 .. done
    assert checked or 3 * n_chunks > cfg.act_size // 2
