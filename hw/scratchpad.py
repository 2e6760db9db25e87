"""The banked activation scratchpad: V single-read, single-write int8 banks."""

from amaranth.hdl import Module, signed
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .config import check_config

__all__ = ["BankedScratchpad", "bank_addr_width"]


def bank_addr_width(cfg):
    """Bits of a bank address: both buffers, ``log2(2 * bank_depth)``."""
    return (2 * cfg.bank_depth - 1).bit_length()


class BankedScratchpad(wiring.Component):
    """V banks of ``2 * bank_depth`` int8 words, one per lane.

    Element ``c`` of buffer ``b`` lives in bank ``c % V`` at bank address
    ``b * bank_depth + c // V`` (docs/architecture.md). Every bank has one synchronous read port
    (data the cycle after the address) and one write port; a read and a write of the same
    address in one cycle return the old word.

    Parameters
    ----------
    cfg : CoreConfig

    Members
    -------
    rd_addr : In(BA).array(V)
        Read address of each bank.
    rd_data : Out(signed(8)).array(V)
        Word at the previous cycle's ``rd_addr``.
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
            # Block RAM even where Yosys would pick LUT RAM (ECP5 at small depths): LUT RAM
            # reads asynchronously, which puts the bank read on the engine's address path.
            memory = Memory(shape=signed(8), depth=2 * self._cfg.bank_depth, init=[],
                            attrs={"ram_style": "block"})
            m.submodules[f"bank{bank}"] = memory
            read = memory.read_port()
            write = memory.write_port()
            m.d.comb += [
                read.addr.eq(self.rd_addr[bank]),
                self.rd_data[bank].eq(read.data),
                write.addr.eq(self.wr_addr[bank]),
                write.data.eq(self.wr_data[bank]),
                write.en.eq(self.wr_en[bank]),
            ]
        return m
