# amaranth: UnusedElaboratable=no
"""Lane: products of every int8 activation edge with every weight code, against the golden
lane products (pow2 codes decoded by gsaccel.sw.golden)."""

import itertools

import numpy as np
import pytest

from gsaccel.hw.config import CoreConfig
from gsaccel.hw.lane import Lane
from gsaccel.sim.amaranth_sim import run_sim, seeded_rng
from gsaccel.sw import golden
from gsaccel.sw.format import pow2_decode


def test_rejects_bad_config():
    with pytest.raises(TypeError, match=r"^Configuration must be a CoreConfig, not None$"):
        Lane(None)


def test_ports():
    lane = Lane(CoreConfig(encoding="int8", acc_width=28))
    assert lane.w.shape().width == 8
    assert lane.product.shape().width == 28 and lane.product.shape().signed
    assert Lane(CoreConfig(encoding="pow2")).w.shape().width == 6


def check_lane(cfg, xs, codes, values, pipelined):
    dut = Lane(cfg, pipelined=pipelined)

    async def bench(ctx):
        for x, code, value in zip(xs, codes, values):
            ctx.set(dut.x, int(x))
            ctx.set(dut.w, int(code))
            if pipelined:                   # the product follows a cycle later
                await ctx.tick()
            await ctx.delay(1e-9)
            expected = int(golden.wrap(golden.lane_products(value, x), cfg.acc_width))
            assert ctx.get(dut.product) == expected, (x, code, value)

    run_sim(dut, bench, name=f"lane_{cfg.encoding}_{int(pipelined)}")


EDGE_X = [-128, -127, -1, 0, 1, 2, 63, 127]


@pytest.mark.parametrize("pipelined", [False, True])
def test_pow2_every_code(pipelined):
    """All 64 codes (including zero codes with nonzero exponents) times the int8 edges."""
    cfg = CoreConfig(encoding="pow2")
    pairs = list(itertools.product(EDGE_X, range(64)))
    xs, codes = zip(*pairs)
    check_lane(cfg, xs, codes, pow2_decode(np.array(codes)), pipelined)


@pytest.mark.parametrize("pipelined", [False, True])
def test_int8_edges_and_random(pipelined):
    cfg = CoreConfig(encoding="int8", acc_width=24)
    rng = seeded_rng()
    weights = [-128, -127, -1, 0, 1, 127] + list(rng.integers(-128, 128, 40))
    pairs = list(itertools.product(EDGE_X + list(rng.integers(-128, 128, 8)), weights))
    xs, values = zip(*pairs)
    check_lane(cfg, xs, [v & 0xFF for v in values], values, pipelined)


def test_pow2_is_multiplier_free():
    """The pow2 lane is a barrel shift: no multiplication appears in its netlist."""
    from amaranth.back import rtlil
    text = rtlil.convert(Lane(CoreConfig(encoding="pow2")))
    assert "$mul" not in text
    assert "$mul" in rtlil.convert(Lane(CoreConfig(encoding="int8")))
