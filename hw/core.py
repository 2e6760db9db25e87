"""The whole gsaccel core: host byte stream in, reply byte stream out."""

from amaranth.hdl import Array, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .basis import BasisUnit
from .config import check_config
from .engine import GatherEngine
from .framing import FrameReceiver, FrameTransmitter
from .scratchpad import BankedScratchpad
from .command import CommandProcessor
from .sequencer import ScratchpadOwner
from .writer import ResultWriter

__all__ = ["GsaccelCore"]


class GsaccelCore(wiring.Component):
    """One gsaccel core: frame receiver, command processor and sequencer, gather engine,
    result writer, basis unit, V-bank scratchpad and frame transmitter.

    The scratchpad ports belong to the host (WRITE/READ of ACTS) between runs, to the engine
    (reads) and writer (writes) during a GS layer and to the basis unit during a BASIS layer.
    A core without a basis unit (``cfg.basis`` false: ``basis=False``, or fewer than 4
    lanes) ends a BASIS layer at once, writing nothing.

    Parameters
    ----------
    cfg : CoreConfig

    Members
    -------
    i_stream : In(stream.Signature(8))
        Host bytes (frames).
    o_stream : Out(stream.Signature(8))
        Reply bytes (frames).
    busy : Out(1)
        A request is being executed or answered (a partial frame waiting for more bytes does
        not count: it needs input to progress).
    error : Out(1)
        The last reply was an ERROR (for a status LED).

    Raises
    ------
    TypeError
        If ``cfg`` is not a :class:`CoreConfig`.
    """

    def __init__(self, cfg):
        check_config(cfg)
        self._cfg = cfg
        super().__init__({
            "i_stream": In(stream.Signature(8)),
            "o_stream": Out(stream.Signature(8)),
            "busy":     Out(1),
            "error":    Out(1),
        })

    @property
    def cfg(self):
        return self._cfg

    def elaborate(self, platform):
        cfg = self._cfg
        lanes = cfg.lanes
        m = Module()
        m.submodules.receiver = rx = FrameReceiver(cfg)
        m.submodules.processor = proc = CommandProcessor(cfg)
        m.submodules.transmitter = tx = FrameTransmitter(cfg)
        m.submodules.scratchpad = pad = BankedScratchpad(cfg)
        m.submodules.engine = engine = GatherEngine(cfg)
        m.submodules.writer = writer = ResultWriter(cfg)
        basis = BasisUnit(cfg) if cfg.basis else None
        if basis is not None:
            m.submodules.basis = basis

        # Control path ---------------------------------------------------------------------
        wiring.connect(m, wiring.flipped(self.i_stream), rx.i_stream)
        wiring.connect(m, rx.o_frame, proc.i_frame)
        wiring.connect(m, proc.o_reply, tx.i_reply)
        wiring.connect(m, proc.o_data, tx.i_data)
        wiring.connect(m, tx.o_stream, wiring.flipped(self.o_stream))
        m.d.comb += [rx.rd_addr.eq(proc.pl_addr), proc.pl_data.eq(rx.rd_data)]
        m.d.comb += [self.busy.eq(proc.busy | tx.busy), self.error.eq(proc.error)]

        # Datapath -------------------------------------------------------------------------
        wiring.connect(m, proc.o_group, engine.i_group)
        wiring.connect(m, proc.o_row, writer.i_row)
        wiring.connect(m, engine.o_sums, writer.i_sums)
        m.d.comb += [
            # Every layer starts from zero accumulators, as the golden model does, even if a
            # hand-written descriptor ended the previous one inside a row group.
            engine.clear.eq(proc.owner == ScratchpadOwner.HOST),
            engine.credit.eq(writer.credit),
            engine.control.eq(proc.control),
            writer.control.eq(proc.control),
            proc.engine_idle.eq(engine.idle), proc.writer_idle.eq(writer.idle),
            proc.issue.eq(engine.issue), proc.issue_lanes.eq(engine.issue_lanes),
            proc.stall.eq(engine.stall),
        ]
        if basis is not None:
            m.d.comb += [
                basis.control.eq(proc.control),
                basis.start.eq(proc.basis_start), basis.n_chunks.eq(proc.n_chunks),
                basis.basis.eq(proc.basis), proc.basis_done.eq(basis.done),
            ]
        else:
            m.d.comb += proc.basis_done.eq(1)

        # Scratchpad ownership ---------------------------------------------------------------
        # Host accesses are single elements: element a is in bank a % V at bank address a // V
        # (both buffers included); the read data comes back from the bank chosen
        host_bank = proc.act_addr[:cfg.bank_bits] if cfg.bank_bits else 0
        host_bank_addr = proc.act_addr >> cfg.bank_bits
        # (two cycles ago: the scratchpad's latency).
        host_bank_q = [Signal(range(lanes), name=f"host_bank_q{k}") for k in range(2)]
        m.d.sync += [host_bank_q[0].eq(host_bank), host_bank_q[1].eq(host_bank_q[0])]
        m.d.comb += proc.act_rd_data.eq(Array(pad.rd_data)[host_bank_q[1]])
        for bank in range(lanes):
            m.d.comb += [engine.rd_data[bank].eq(pad.rd_data[bank])]
            if basis is not None:
                m.d.comb += basis.rd_data[bank].eq(pad.rd_data[bank])
            with m.Switch(proc.owner):
                with m.Case(ScratchpadOwner.GS):
                    m.d.comb += [pad.rd_addr[bank].eq(engine.rd_addr[bank]),
                                 pad.wr_en[bank].eq(writer.wr_en[bank]),
                                 pad.wr_addr[bank].eq(writer.wr_addr[bank]),
                                 pad.wr_data[bank].eq(writer.wr_data[bank])]
                if basis is not None:
                    with m.Case(ScratchpadOwner.BASIS):
                        m.d.comb += [pad.rd_addr[bank].eq(basis.rd_addr[bank]),
                                     pad.wr_en[bank].eq(basis.wr_en[bank]),
                                     pad.wr_addr[bank].eq(basis.wr_addr[bank]),
                                     pad.wr_data[bank].eq(basis.wr_data[bank])]
                with m.Default():
                    m.d.comb += [pad.rd_addr[bank].eq(host_bank_addr),
                                 pad.wr_en[bank].eq(proc.act_wr_en & (host_bank == bank)),
                                 pad.wr_addr[bank].eq(host_bank_addr),
                                 pad.wr_data[bank].eq(proc.act_wr_data)]
        return m
