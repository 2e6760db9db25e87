"""The banked activation scratchpad: V single-read, single-write int8 banks."""

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .config import check_config
from .memory import SimpleDualPortMemory

__all__ = ["BankedScratchpad", "bank_addr_width", "read_latency"]


def bank_addr_width(cfg):
    """Bits of a bank address: both buffers, ``log2(2 * bank_depth)``."""
    return (2 * cfg.bank_depth - 1).bit_length()


def read_latency(cfg):
    """Cycles from a bank's ``rd_addr`` to its ``rd_data``: the block RAM's, plus its output
    register with ``cfg.deep_pipeline``."""
    return 2 if cfg.deep_pipeline else 1


class BankedScratchpad(wiring.Component):
    """V banks of ``2 * bank_depth`` int8 words, one per lane.

    Element ``c`` of buffer ``b`` lives in bank ``c % V`` at bank address
    ``b * bank_depth + c // V`` (docs/architecture.md). Every bank has one read port, whose
    data is registered once more after the RAM with ``cfg.deep_pipeline`` (data two cycles
    after the address; else one), and one write port (registered too with the deep pipeline:
    the word is written a cycle later); a read and a write of the same address in one cycle
    return the old word.

    Parameters
    ----------
    cfg : CoreConfig

    Members
    -------
    rd_addr : In(BA).array(V)
        Read address of each bank.
    rd_data : Out(signed(8)).array(V)
        Word at the ``rd_addr`` of two cycles ago (one without ``cfg.deep_pipeline``).
    wr_en, wr_addr, wr_data : In(1), In(BA), In(signed(8)), each ``.array(V)``
        Write port of each bank.

    Raises
    ------
    TypeError
        If ``cfg`` is not a :class:`CoreConfig`.
    """

    def __init__(self, cfg):
        check_config(cfg)
        self._cfg = cfg
        lanes, addr_width = cfg.lanes, bank_addr_width(cfg)
        super().__init__({
            "rd_addr": In(addr_width).array(lanes),
            "rd_data": Out(signed(8)).array(lanes),
            "wr_en":   In(1).array(lanes),
            "wr_addr": In(addr_width).array(lanes),
            "wr_data": In(signed(8)).array(lanes),
        })

    @property
    def cfg(self):
        return self._cfg

    def elaborate(self, platform):
        m = Module()
        for bank in range(self._cfg.lanes):
            # A falling-edge-write RAM: no bypass logic around the block RAM. Block RAM even
            # where Yosys would pick LUT RAM (ECP5 at small depths): LUT RAM reads
            # asynchronously, which puts the bank read on the engine's address path.
            m.submodules[f"bank{bank}"] = ram = SimpleDualPortMemory(
                width=8, depth=2 * self._cfg.bank_depth, block_ram=True)
            # The RAM's output goes straight into a register: an ECP5 block RAM's
            # clock-to-output (5.8 ns at speed grade 6) leaves no room for logic after it.
            data = Signal(signed(8), name=f"rd_data{bank}")
            if self._cfg.deep_pipeline:
                m.d.sync += data.eq(ram.rd_data)
            else:
                m.d.comb += data.eq(ram.rd_data)
            m.d.comb += [
                ram.rd_addr.eq(self.rd_addr[bank]),
                ram.rd_en.eq(1),
                self.rd_data[bank].eq(data),
            ]
            # With the deep pipeline the write port is registered too: the engine's writer,
            # the basis unit and the host share it through a multiplexer, which then does not
            # sit in front of the RAM. (A write lands a cycle later; nothing reads a word in
            # the cycle after writing it.)
            write = m.d.sync if self._cfg.deep_pipeline else m.d.comb
            write += [
                ram.wr_addr.eq(self.wr_addr[bank]),
                ram.wr_data.eq(self.wr_data[bank]),
                ram.wr_en.eq(self.wr_en[bank]),
            ]
        return m
