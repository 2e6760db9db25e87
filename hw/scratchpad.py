"""The banked activation scratchpad: V single-read, single-write int8 banks, and the
signatures of its ports."""

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .component import CoreComponent
from .memory import HalvedMemory, SimpleDualPortMemory

__all__ = ["BankedScratchpad", "BankPort", "ElementPort", "ClearPort", "bank_addr_width",
           "element_addr_width", "read_latency"]


def bank_addr_width(cfg):
    """Bits of a bank address: ``log2(bank_depth)`` (``cfg.act_addr_width``)."""
    return cfg.act_addr_width


def element_addr_width(cfg):
    """Bits of an element address (element ``a`` is in bank ``a % V`` at bank address
    ``a // V``): ``log2(V * bank_depth)``, the bank in the low bits."""
    return cfg.col_width


def _check_addr_width(addr_width):
    if not isinstance(addr_width, int) or isinstance(addr_width, bool) or addr_width <= 0:
        raise TypeError(f"Address width must be a positive integer, not {addr_width!r}")


class BankPort(wiring.Signature):
    """The port of one scratchpad bank, from the side of the block that uses it: a read
    port, a write port or both.

    Parameters
    ----------
    addr_width : int
        Bits of a bank address (:func:`bank_addr_width`).
    read : bool
        The port has the read members.
    write : bool
        The port has the write members.

    Members
    -------
    rd_addr : Out(addr_width)
        Read address (with ``read``).
    rd_data : In(signed(8))
        The word at the ``rd_addr`` of :func:`read_latency` cycles ago (with ``read``).
    wr_en, wr_addr, wr_data : Out(1), Out(addr_width), Out(signed(8))
        Write (with ``write``).

    Raises
    ------
    TypeError
        If ``addr_width`` is not a positive integer.
    ValueError
        If the port neither reads nor writes.
    """

    def __init__(self, *, addr_width, read=True, write=True):
        _check_addr_width(addr_width)
        if not (read or write):
            raise ValueError(f"Bank port must read, write or both, not read={read!r} and "
                             f"write={write!r}")
        self._addr_width, self._read, self._write = addr_width, bool(read), bool(write)
        members = {}
        if self._read:
            members.update(rd_addr=Out(addr_width), rd_data=In(signed(8)))
        if self._write:
            members.update(wr_en=Out(1), wr_addr=Out(addr_width), wr_data=Out(signed(8)))
        super().__init__(members)

    @property
    def addr_width(self):
        return self._addr_width

    @property
    def read(self):
        return self._read

    @property
    def write(self):
        return self._write

    def __eq__(self, other):
        return (type(other) is BankPort and
                (self.addr_width, self.read, self.write) ==
                (other.addr_width, other.read, other.write))

    def __repr__(self):
        return f"BankPort(addr_width={self.addr_width}, read={self.read}, write={self.write})"


class ElementPort(wiring.Signature):
    """One element of the activation buffers at a time, from the host's side: the port of
    the command processor's WRITE/READ of ACTS (element ``a`` is in bank ``a % V`` at bank
    address ``a // V``).

    Parameters
    ----------
    addr_width : int
        Bits of an element address (:func:`element_addr_width`).

    Members
    -------
    addr : Out(addr_width)
        Element address: bank ``addr % V``, bank address ``addr // V``.
    wr_en, wr_data : Out(1), Out(signed(8))
        Write the element at ``addr``.
    rd_data : In(signed(8))
        The element at ``addr`` (with the latency of the port's provider,
        :data:`~gsaccel.hw.arbiter.HOST_READ_LATENCY` for the core's).

    Raises
    ------
    TypeError
        If ``addr_width`` is not a positive integer.
    """

    def __init__(self, *, addr_width):
        _check_addr_width(addr_width)
        self._addr_width = addr_width
        super().__init__({
            "addr":    Out(addr_width),
            "wr_en":   Out(1),
            "wr_data": Out(signed(8)),
            "rd_data": In(signed(8)),
        })

    @property
    def addr_width(self):
        return self._addr_width

    def __eq__(self, other):
        return type(other) is ElementPort and self.addr_width == other.addr_width

    def __repr__(self):
        return f"ElementPort(addr_width={self.addr_width})"


class ClearPort(wiring.Signature):
    """A CLEAR layer's writes, from the sequencer's side: word ``addr`` of every bank becomes
    0 while ``en`` is high.

    Parameters
    ----------
    addr_width : int
        Bits of a bank address.
    """

    def __init__(self, *, addr_width):
        _check_addr_width(addr_width)
        self._addr_width = addr_width
        super().__init__({"en": Out(1), "addr": Out(addr_width)})

    @property
    def addr_width(self):
        return self._addr_width

    def __eq__(self, other):
        return type(other) is ClearPort and self.addr_width == other.addr_width

    def __repr__(self):
        return f"ClearPort(addr_width={self.addr_width})"


def read_latency(cfg):
    """Cycles from a bank's ``rd_addr`` to its ``rd_data``: the block RAM's, plus its output
    register with ``cfg.deep_pipeline``."""
    return 2 if cfg.deep_pipeline else 1


class BankedScratchpad(CoreComponent):
    """V banks of ``bank_depth`` int8 words, one per lane.

    Element ``a`` of the scratchpad lives in bank ``a % V`` at bank address ``a // V``; a
    tensor's element (h, w, c) is in bank ``c % V`` (docs/architecture.md, "Tensors"). Every
    bank has one read port, whose
    data is registered once more after the RAM with ``cfg.deep_pipeline`` (data two cycles
    after the address; else one), and one write port (registered too with the deep pipeline:
    the word is written a cycle later); a read and a write of the same address in one cycle
    return the old word. With ``cfg.bank_halves`` each bank is a
    :class:`~gsaccel.hw.memory.HalvedMemory` (a read of the half written in the same cycle
    is lost).

    Parameters
    ----------
    cfg : CoreConfig
        Checked by :class:`~gsaccel.hw.component.CoreComponent` (``TypeError`` if it is not one).

    Members
    -------
    banks : In(BankPort(addr_width=BA)).array(V)
        The port of each bank; ``rd_data`` is the word at the ``rd_addr`` of two cycles ago
        (one without ``cfg.deep_pipeline``).
    """

    def members(self, cfg):
        lanes, addr_width = cfg.lanes, bank_addr_width(cfg)
        return {"banks": In(BankPort(addr_width=addr_width)).array(lanes)}

    def elaborate(self, platform):
        m = Module()
        for bank, port in enumerate(self.banks):
            if self._cfg.bank_halves:
                # Two SPRAMs per bank on an iCE40UP: a layer reads one half and writes the
                # other (CoreConfig.bank_halves).
                m.submodules[f"bank{bank}"] = ram = HalvedMemory(
                    width=8, depth=self._cfg.bank_depth)
            else:
                # A falling-edge-write RAM: no bypass logic around the block RAM. Block RAM
                # even where Yosys would pick LUT RAM (ECP5 at small depths): LUT RAM reads
                # asynchronously, which puts the bank read on the engine's address path.
                m.submodules[f"bank{bank}"] = ram = SimpleDualPortMemory(
                    width=8, depth=self._cfg.bank_depth, block_ram=True)
            # The RAM's output goes straight into a register: an ECP5 block RAM's
            # clock-to-output (5.8 ns at speed grade 6) leaves no room for logic after it.
            data = Signal(signed(8), name=f"rd_data{bank}")
            if self._cfg.deep_pipeline:
                m.d.sync += data.eq(ram.rd_data)
            else:
                m.d.comb += data.eq(ram.rd_data)
            m.d.comb += [
                ram.rd_addr.eq(port.rd_addr),
                ram.rd_en.eq(1),
                port.rd_data.eq(data),
            ]
            # With the deep pipeline the write port is registered too: the engine's writer,
            # the basis unit and the host share it through a multiplexer, which then does not
            # sit in front of the RAM. (A write lands a cycle later; nothing reads a word in
            # the cycle after writing it.)
            write = m.d.sync if self._cfg.deep_pipeline else m.d.comb
            write += [
                ram.wr_addr.eq(port.wr_addr),
                ram.wr_data.eq(port.wr_data),
                ram.wr_en.eq(port.wr_en),
            ]
        return m
