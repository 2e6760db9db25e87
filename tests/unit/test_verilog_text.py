"""The zero-init compaction keeps the Verilog's meaning and only touches all-zero inits."""

from amaranth.back import verilog
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from gsaccel.sim.verilog_text import compact_zero_memory_init


class _TwoMemories(wiring.Component):
    addr: In(6)
    zero_out: Out(8)
    init_out: Out(8)

    def elaborate(self, platform):
        m = Module()
        m.submodules.zeros = zeros = Memory(shape=8, depth=64, init=[])
        m.submodules.table = table = Memory(shape=8, depth=64, init=range(64))
        for memory, out in ((zeros, self.zero_out), (table, self.init_out)):
            port = memory.read_port(domain="comb")
            m.d.comb += [port.addr.eq(self.addr), out.eq(port.data)]
        return m


def test_only_all_zero_memories_become_loops():
    text = verilog.convert(_TwoMemories(), name="top", emit_src=False)
    compact = compact_zero_memory_init(text)
    assert compact.count("initial for") == 1
    assert "< 64;" in compact
    # The memory with real contents keeps every assignment.
    assert "[63] = 8'h3f;" in compact
    assert len(compact) < len(text)
