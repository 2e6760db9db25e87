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
    """Run one basis layer on ``acts`` (2 x buffer_size); return the new acts, the cycle of
    ``done`` (``start`` is cycle 0) and the busy cycles."""
    dut = BasisUnit(cfg)
    lanes, depth = cfg.lanes, cfg.bank_depth
    banks = np.zeros((lanes, 2 * depth), dtype=np.int64)
    for buffer in range(2):
        for element in range(cfg.buffer_size):
            banks[element % lanes, buffer * depth + element // lanes] = \
                acts[buffer * cfg.buffer_size + element]
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
        ctx.set(dut.control, {"shift": shift, "relu": relu, "src": src, "dst": dst})
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
    out = np.zeros_like(acts)
    for buffer in range(2):
        for element in range(cfg.buffer_size):
            out[buffer * cfg.buffer_size + element] = \
                banks[element % lanes, buffer * depth + element // lanes]
    return out, result["done"], result["busy"]


@pytest.mark.parametrize("lanes,n_chunks", [(4, 5), (8, 1), (8, 13), (16, 10), (8, 0),
                                            (4, 21), (4, 22), (4, 1000)])
@pytest.mark.parametrize("deep_pipeline", [True, False])
def test_basis_layer(lanes, n_chunks, deep_pipeline):
    cfg = CoreConfig(lanes=lanes, bank_depth=8 if lanes == 16 else 16,
                     deep_pipeline=deep_pipeline)
    rng = seeded_rng(lanes + n_chunks)
    for src, dst, shift, relu in ((0, 1, 6, 0), (1, 0, 0, 1), (0, 1, 31, 0), (1, 0, 3, 1)):
        acts = rng.integers(-128, 128, 2 * cfg.buffer_size)
        acts[src * cfg.buffer_size:][:3] = (-128, -128, 127)
        basis = rng.integers(-128, 128, (3, 3))
        basis[0] = (-128, -128, -128)         # z_0 up to 3 * 2**14: saturates at shift 0
        out, done, busy = run_basis(cfg, acts, basis, n_chunks, shift, relu, src, dst)
        # Through the golden core: it clamps a layer to one buffer as the RTL does.
        core = golden.GoldenCore(cfg)
        core.write(Memory.ACTS, 0, acts.tolist())
        core.write(Memory.LAYERS, 0, [pack_word(layer_layout(cfg), {
            "kind": LayerKind.BASIS, "src": src, "dst": dst, "relu": relu, "shift": shift,
            "group_count": n_chunks, "basis": [int(v) for v in basis.ravel()]})])
        counters = core.run(0, 1)
        expected = np.array(core.read(Memory.ACTS, 0, 2 * cfg.buffer_size))
        np.testing.assert_array_equal(out, expected)
        assert done + 1 == counters["cycles"] - golden.RUN_OVERHEAD - golden.LAYER_OVERHEAD
        assert busy == done                   # cycles 1 .. done
