"""Who drives the scratchpad: the host between layers, the gather engine and the result writer
during a GS layer, the basis unit during a BASIS layer."""

from amaranth.hdl import Array, Module, Signal
from amaranth.lib.wiring import In, Out

from .component import CoreComponent
from .scratchpad import BankPort, ClearPort, ElementPort, bank_addr_width, element_addr_width
from .sequencer import ScratchpadOwner

__all__ = ["ScratchpadArbiter", "HOST_READ_LATENCY"]

#: Cycles from the host's ``addr`` to its ``rd_data``: the bank that answers is the one
#: addressed this many cycles ago (its select is registered twice), so the address must hold
#: for that long (the banks themselves answer in ``read_latency(cfg)`` cycles, 2 or 1).
HOST_READ_LATENCY = 2


class ScratchpadArbiter(CoreComponent):
    """The scratchpad's ports, given to one client at a time as ``owner`` says.

    * ``HOST`` (and any value without a client): the host's element port. Element ``a`` is
      in bank ``a % V`` at bank address ``a // V``; a write goes to that bank only, a read
      addresses every bank and ``host.rd_data`` picks the bank of ``HOST_READ_LATENCY``
      cycles ago.
    * ``GS``: the gather engine reads, the result writer writes.
    * ``BASIS`` (``cfg.basis`` only): the basis unit reads and writes.
    * ``CLEAR``: the sequencer's ``clear`` port writes 0 to its word of every bank.

    The clients' read data is the banks' whoever owns them. The selection is
    combinational: ``owner`` should come from a register, and change only when no client
    has a write in flight.

    Parameters
    ----------
    cfg : CoreConfig
        Checked by :class:`~gsaccel.hw.component.CoreComponent` (``TypeError`` if it is not one).

    Members
    -------
    owner : In(ScratchpadOwner)
    host : In(ElementPort(addr_width=element_addr_width(cfg)))
        The host's element port.
    engine : In(BankPort(addr_width=BA, write=False)).array(V)
        The gather engine's reads.
    writer : In(BankPort(addr_width=BA, read=False)).array(V)
        The result writer's writes.
    basis : In(BankPort(addr_width=BA)).array(V)
        The basis unit's reads and writes (only with ``cfg.basis``).
    clear : In(ClearPort(addr_width=BA))
        A CLEAR layer's writes.
    banks : Out(BankPort(addr_width=BA)).array(V)
        To :class:`~gsaccel.hw.scratchpad.BankedScratchpad`.
    """

    def members(self, cfg):
        lanes, addr_width = cfg.lanes, bank_addr_width(cfg)
        members = {
            "owner":  In(ScratchpadOwner),
            "host":   In(ElementPort(addr_width=element_addr_width(cfg))),
            "engine": In(BankPort(addr_width=addr_width, write=False)).array(lanes),
            "writer": In(BankPort(addr_width=addr_width, read=False)).array(lanes),
        }
        if cfg.basis:
            members["basis"] = In(BankPort(addr_width=addr_width)).array(lanes)
        members["clear"] = In(ClearPort(addr_width=addr_width))
        members["banks"] = Out(BankPort(addr_width=addr_width)).array(lanes)
        return members

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        lanes, bank_bits = cfg.lanes, cfg.bank_bits
        host = self.host

        # The host's element: its bank, and the bank's address. The read data comes from the
        # bank addressed HOST_READ_LATENCY cycles ago.
        host_bank = host.addr[:bank_bits] if bank_bits else 0
        host_bank_addr = host.addr >> bank_bits
        host_bank_q = [Signal(range(lanes), name=f"host_bank_q{k}")
                       for k in range(HOST_READ_LATENCY)]
        m.d.sync += [stage.eq(previous) for stage, previous in
                     zip(host_bank_q, [host_bank, *host_bank_q[:-1]])]
        m.d.comb += host.rd_data.eq(Array(port.rd_data for port in self.banks)[host_bank_q[-1]])

        basis = self.basis if cfg.basis else None
        for bank, port in enumerate(self.banks):
            engine, writer = self.engine[bank], self.writer[bank]
            m.d.comb += engine.rd_data.eq(port.rd_data)
            if basis is not None:
                m.d.comb += basis[bank].rd_data.eq(port.rd_data)
            with m.Switch(self.owner):
                with m.Case(ScratchpadOwner.GS):
                    m.d.comb += [port.rd_addr.eq(engine.rd_addr),
                                 port.wr_en.eq(writer.wr_en),
                                 port.wr_addr.eq(writer.wr_addr),
                                 port.wr_data.eq(writer.wr_data)]
                with m.Case(ScratchpadOwner.CLEAR):
                    m.d.comb += [port.wr_en.eq(self.clear.en),
                                 port.wr_addr.eq(self.clear.addr),
                                 port.wr_data.eq(0)]
                if basis is not None:
                    with m.Case(ScratchpadOwner.BASIS):
                        m.d.comb += [port.rd_addr.eq(basis[bank].rd_addr),
                                     port.wr_en.eq(basis[bank].wr_en),
                                     port.wr_addr.eq(basis[bank].wr_addr),
                                     port.wr_data.eq(basis[bank].wr_data)]
                with m.Default():
                    m.d.comb += [port.rd_addr.eq(host_bank_addr),
                                 port.wr_en.eq(host.wr_en & (host_bank == bank)),
                                 port.wr_addr.eq(host_bank_addr),
                                 port.wr_data.eq(host.wr_data)]
        return m
