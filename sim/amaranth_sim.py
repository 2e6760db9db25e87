"""Helpers for ``amaranth.sim`` unit tests: stream drivers, a simulation runner with a cycle
deadline and optional VCDs, and the seeded random generator every randomised test uses.

Tests import these; nobody copies them (STYLE.md §2).
"""

import gc
import os
from pathlib import Path

import numpy as np
from amaranth.lib import data
from amaranth.sim import Simulator

__all__ = ["stream_put", "stream_get", "run_sim", "seeded_rng", "background", "stall_pattern",
           "CLOCK_PERIOD", "DEFAULT_SEED"]

#: Simulated clock period in seconds (1 MHz; only the cycle count matters).
CLOCK_PERIOD = 1e-6

#: Seed used when ``GSACCEL_SEED`` is not set.
DEFAULT_SEED = 20240611

_REPO_ROOT = Path(__file__).resolve().parent.parent


async def stream_put(ctx, stream, payload, *, stall=None):
    """Send one payload on ``stream`` (an ``In(stream.Signature)`` of the DUT).

    Parameters
    ----------
    ctx : SimulatorContext
    stream : stream interface
    payload : int, dict or list
        Anything ``ctx.set`` accepts for the stream's payload shape; an ``int`` for a layout
        payload is taken as its packed bits (a word from :func:`gsaccel.sw.format.words.pack_word`).
    stall : iterator of bool, optional
        One value per offered cycle; a true value keeps ``valid`` low for that cycle (idle
        insertion).
    """
    if isinstance(payload, int) and isinstance(stream.payload, data.View):
        payload = stream.payload.shape().from_bits(payload)
    while stall is not None and next(stall):
        ctx.set(stream.valid, 0)
        await ctx.tick()
    ctx.set(stream.valid, 1)
    ctx.set(stream.payload, payload)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream, *, stall=None):
    """Receive one payload from ``stream`` (an ``Out(stream.Signature)`` of the DUT).

    ``stall`` is an iterator of bools, one per cycle; a true value holds ``ready`` low
    (back-pressure). Returns the payload as sampled at the transfer edge.
    """
    while stall is not None and next(stall):
        ctx.set(stream.ready, 0)
        await ctx.tick()
    ctx.set(stream.ready, 1)
    payload, = await ctx.tick().sample(stream.payload).until(stream.valid)
    ctx.set(stream.ready, 0)
    return payload


def stall_pattern(rng, probability):
    """An endless iterator of bools, each true with ``probability`` (0 disables stalling)."""
    if not 0 <= probability < 1:
        raise ValueError(f"Stall probability must be in [0, 1), not {probability!r}")
    while True:
        yield bool(probability) and bool(rng.random() < probability)


class background:
    """Marks a testbench for :func:`run_sim` as background (it does not keep the simulation
    alive), e.g. a free-running consumer."""

    def __init__(self, bench):
        self.bench = bench


def seeded_rng(salt=0):
    """A ``numpy.random.Generator`` seeded from ``GSACCEL_SEED`` (default :data:`DEFAULT_SEED`).

    The seed is printed so that pytest shows it with the captured output of a failing test;
    rerun with ``GSACCEL_SEED=<seed>`` to reproduce. ``salt`` decorrelates generators
    within one test.
    """
    text = os.environ.get("GSACCEL_SEED", str(DEFAULT_SEED))
    try:
        seed = int(text, 0)
    except ValueError:
        raise ValueError(f"GSACCEL_SEED must be an integer, not {text!r}") from None
    print(f"GSACCEL_SEED={seed} (salt {salt})")
    return np.random.default_rng([seed, salt])


def run_sim(dut, *testbenches, name, deadline=100_000):
    """Simulate ``dut`` (with a 1 MHz ``sync`` clock if it has that domain) until every
    critical testbench returns.

    Parameters
    ----------
    dut : Elaboratable
    *testbenches : async callables ``bench(ctx)`` or :class:`background` wrappers
    name : str
        Test name; the VCD goes to ``build/vcd/<name>.vcd`` when ``GSACCEL_VCD=1``.
    deadline : int
        Clock periods after which the run fails with :class:`TimeoutError` (every wait has a
        timeout).

    Raises
    ------
    TimeoutError
        If the testbenches have not finished after ``deadline`` cycles.
    """
    if not isinstance(deadline, int) or deadline <= 0:
        raise TypeError(f"Deadline must be a positive integer, not {deadline!r}")
    sim = Simulator(dut)
    sim.add_clock(CLOCK_PERIOD, if_exists=True)     # combinational designs have no clock

    async def watchdog(ctx):
        # Plain delays (not .repeat(), and no clock needed) so that the pending watchdog
        # closes quietly at the end.
        for _ in range(deadline):
            await ctx.delay(CLOCK_PERIOD)
        raise TimeoutError(f"Simulation {name!r} did not finish within {deadline} cycles")

    for bench in testbenches:
        if isinstance(bench, background):
            sim.add_testbench(bench.bench, background=True)
        else:
            sim.add_testbench(bench)
    sim.add_testbench(watchdog, background=True)

    if os.environ.get("GSACCEL_VCD") == "1":
        vcd_dir = _REPO_ROOT / "build" / "vcd"
        vcd_dir.mkdir(parents=True, exist_ok=True)
        with sim.write_vcd(str(vcd_dir / f"{name}.vcd")):
            sim.run()
    else:
        sim.run()
    # Background testbenches still waiting on the clock are closed when they are collected,
    # and closing one raises inside Amaranth; collect them here, at a safe point, rather than
    # wherever the garbage collector next runs (on Python 3.11, possibly in the middle of
    # pytest compiling a module, which then crashes the whole run).
    del sim
    gc.collect()
