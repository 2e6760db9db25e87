"""The whole gsaccel core: host byte stream in, reply byte stream out."""

from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .arbiter import ScratchpadArbiter
from .basis import BasisUnit
from .component import CoreComponent
from .engine import GatherEngine
from .framing import FrameReceiver, FrameTransmitter
from .scratchpad import BankedScratchpad
from .command import CommandProcessor
from .sequencer import ScratchpadOwner
from .writer import ResultWriter

__all__ = ["GsaccelCore"]


class GsaccelCore(CoreComponent):
    """One gsaccel core: frame receiver, command processor and sequencer, gather engine,
    result writer, basis unit, V-bank scratchpad and its arbiter, and frame transmitter.

    The scratchpad ports belong (:class:`~gsaccel.hw.arbiter.ScratchpadArbiter`, as the
    sequencer's ``owner`` says) to the host (WRITE/READ of ACTS) between runs, to the engine
    (reads) and writer (writes) during a GS layer and to the basis unit during a BASIS layer.
    A core without a basis unit (``cfg.basis`` false: ``basis=False``, or fewer than 4
    lanes) ends a BASIS layer at once, writing nothing.

    Parameters
    ----------
    cfg : CoreConfig
        Checked by :class:`~gsaccel.hw.component.CoreComponent` (``TypeError`` if it is not one).

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
    """

    def members(self, cfg):
        return {
            "i_stream": In(stream.Signature(8)),
            "o_stream": Out(stream.Signature(8)),
            "busy":     Out(1),
            "error":    Out(1),
        }

    def elaborate(self, platform):
        cfg = self._cfg
        m = Module()
        # (The order of the submodules is the order Yosys flattens them in, which moves
        # ABC's LUT mapping by a few cells: on the iCEBreaker, whose core fills 5275 of
        # 5280 logic cells, the arbiter after the command processor costs 10 more.)
        m.submodules.arbiter = arbiter = ScratchpadArbiter(cfg)
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
        m.d.comb += arbiter.owner.eq(proc.owner)
        wiring.connect(m, proc.acts, arbiter.host)
        wiring.connect(m, proc.clear, arbiter.clear)
        for bank in range(cfg.lanes):
            wiring.connect(m, engine.banks[bank], arbiter.engine[bank])
            wiring.connect(m, writer.banks[bank], arbiter.writer[bank])
            if basis is not None:
                wiring.connect(m, basis.banks[bank], arbiter.basis[bank])
            wiring.connect(m, arbiter.banks[bank], pad.banks[bank])
        return m
