"""Formal harnesses of the frame receiver and transmitter (hw/framing.py)."""

from amaranth.hdl import (Assert, Assume, Elaboratable, EnableInserter, Module, ResetInserter,
                          ResetSignal, Signal)

from gsaccel.hw.config import CoreConfig
from gsaccel.hw.framing import FrameReceiver, FrameTransmitter
from gsaccel.sim.formal import elaborated, free_inputs, fsm_state, internal, stream_rules

__all__ = ["RECEIVER_CFG", "StreamHarness", "ReceiverNoWedge", "FRAME_OVERHEAD",
           "receiver_stream_harness", "transmitter_stream_harness"]

#: A receiver small enough for the solver: the payload buffer and the counters are what grow
#: with ``max_payload``, and nothing in the FSM depends on its value beyond the length check.
RECEIVER_CFG = CoreConfig(lanes=2, bank_depth=4, weight_depth=4, row_depth=4, layer_depth=2,
                          result_queue=2, max_payload=6, basis=False, deep_pipeline=False,
                          vector_writer=False)

#: Bytes of a frame after its SYNC besides the payload: type, seq, length (2), CRC (4).
FRAME_OVERHEAD = 8


class StreamHarness(Elaboratable):
    """The valid/ready rule around one component: assumed of its input streams, asserted of
    its output streams (:func:`~gsaccel.sim.formal.stream_rules`); every other input is free.

    ``glitch`` (fault injection, for the test that the check can fail): a free input that
    resets the component at any time, as a design that drops a pending transfer would.

    ``lemmas(m, dut, fragment)`` may add assertions that k-induction needs (proved with the
    rest); ``fragment`` is the elaborated component, for :func:`internal`.
    """

    def __init__(self, dut, *, exempt=(), glitch=False, lemmas=None):
        self.dut, self._exempt, self._glitch = dut, tuple(exempt), glitch
        self._lemmas = lemmas
        self.reset = Signal()
        self.produced = ()

    @property
    def ports(self):
        return free_inputs(self.dut) + ([self.reset] if self._glitch else [])

    def elaborate(self, platform):
        m = Module()
        fragment = elaborated(self.dut, platform)
        if self._glitch:
            m.submodules.dut = ResetInserter(self.reset)(fragment)
        else:
            m.submodules.dut = fragment
        self.produced = tuple(stream_rules(m, self.dut, exempt=self._exempt))
        # A glitching block is a fault test, checked from reset: the invariants that only
        # the induction step needs are left out, so the counterexample is against the rule.
        if self._lemmas is not None and not self._glitch:
            self._lemmas(m, self.dut, fragment)
        # The domain's own reset stays low: every run starts from the registers' init values.
        m.d.comb += Assume(~ResetSignal())
        return m


def receiver_stream_harness(cfg=RECEIVER_CFG, **kwargs):
    return StreamHarness(FrameReceiver(cfg), **kwargs)


def _transmitter_lemmas(m, dut, fragment):
    # The header is held for the whole frame: the transmitter leaves IDLE only on a valid
    # header and acknowledges it in the frame's last cycle, so the stream rule keeps it valid.
    m.d.comb += Assert(~dut.busy | dut.i_reply.valid, "transmitter busy without a header")


def transmitter_stream_harness(cfg=RECEIVER_CFG, **kwargs):
    return StreamHarness(FrameTransmitter(cfg), lemmas=_transmitter_lemmas, **kwargs)


class ReceiverNoWedge(Elaboratable):
    """The frame receiver always gets back to hunting for SYNC, whatever bytes come:

    * it takes a byte in every cycle in which no frame is on offer (``i_stream.ready`` is low
      only while ``o_frame.valid`` is high);
    * at most ``FRAME_OVERHEAD + max_payload`` bytes after a SYNC it offers the frame
      (``o_frame.valid``; a too-long length is reported at once) or is hunting again;
    * the cycle after ``o_frame`` is taken it is hunting (``in_frame`` low).

    So from any state, bytes in and frames taken bring it back to HUNT in a bounded number
    of bytes: no header, length or CRC value can wedge it. (Liveness as safety: sby's
    liveness engines need ``yosys-abc``, which YoWASP does not ship.)

    The bounded count and the state it is kept in are tied together by invariants over the
    receiver's registers (its FSM state, ``index``, ``remaining``), asserted and so proved as
    well: without them k-induction fails on unreachable states (a payload countdown larger
    than the length) however deep it looks, as the bytes may stall for any number of cycles.

    ``stuck`` (fault injection): a free input freezes the receiver's registers, a receiver
    that stops advancing while it still signals ready; the proof must then fail.
    ``invariants=False`` leaves out the invariants (the fault tests, checked from reset).
    """

    def __init__(self, cfg=RECEIVER_CFG, *, stuck=False, bound=None, invariants=True):
        self.cfg = cfg
        self._invariants = invariants
        self.dut = FrameReceiver(cfg)
        self.stall = Signal()
        self._stuck = stuck
        # The byte bound the proof checks; one less than the true one must fail.
        self.bound = FRAME_OVERHEAD + cfg.max_payload if bound is None else bound

    @property
    def ports(self):
        return free_inputs(self.dut) + ([self.stall] if self._stuck else [])

    def elaborate(self, platform):
        m = Module()
        cfg, dut = self.cfg, self.dut
        fragment = elaborated(dut)
        m.submodules.dut = EnableInserter(~self.stall)(fragment) if self._stuck else fragment
        m.d.comb += Assume(~ResetSignal())

        take = dut.i_stream.valid & dut.i_stream.ready
        offered = dut.o_frame.valid
        # Bytes taken since the SYNC that started the frame (0 while hunting).
        count = Signal(range(self.bound + 2))
        with m.If(~dut.in_frame | (offered & dut.o_frame.ready)):
            m.d.sync += count.eq(0)
        with m.Elif(take & (count <= self.bound)):
            m.d.sync += count.eq(count + 1)
        released = Signal()
        m.d.sync += released.eq(offered & dut.o_frame.ready)

        m.d.comb += [
            Assert(dut.i_stream.ready | offered, "receiver refuses bytes with no frame on offer"),
            Assert(~dut.in_frame | offered | (count < self.bound),
                   "receiver still in a frame after the longest frame's bytes"),
            Assert(~released | ~dut.in_frame, "receiver not hunting after its frame was taken"),
        ]

        if not self._invariants:
            return m
        # Invariants for the induction step (proved with the rest).
        state, states = fsm_state(fragment, "rx")
        index, remaining = internal(fragment, "index"), internal(fragment, "remaining")
        length = dut.o_frame.payload.length
        m.d.comb += Assert(state < len(states), "receiver FSM in an unused encoding")
        header = {"HUNT": 0, "TYPE": 0, "SEQ": 1, "LENGTH_LO": 2, "LENGTH_HI": 3}
        for name, bytes_taken in header.items():
            with m.If(state == states[name]):
                m.d.comb += Assert(count == bytes_taken)
        with m.If(state == states["PAYLOAD"]):
            m.d.comb += Assert((length <= cfg.max_payload) & (remaining >= 1) &
                               (index + remaining == length) & (count == 4 + index))
        for k in range(4):
            with m.If(state == states[f"CRC_{k}"]):
                m.d.comb += Assert((length <= cfg.max_payload) & (count == 4 + length + k))
        return m
