"""Formal harness of the command processor (hw/command.py): a rejected frame writes nothing.

The processor is checked from outside: its ports, and the write enables of the memories it
owns (reached through the elaborated module's submodules, not through hooks in its code).
"""

from amaranth.hdl import Assert, Assume, Cat, Elaboratable, Module, Mux, ResetSignal, Signal

from gsaccel.hw.command import CommandProcessor
from gsaccel.hw.config import CoreConfig
from gsaccel.hw.framing import frame_layout
from gsaccel.hw.layouts import FrameType
from gsaccel.sim.formal import (elaborated, free_inputs, fsm_state, internal, stream_rules,
                                submodule)

__all__ = ["COMMAND_CFG", "CommandRejects", "REQUEST_STATES", "reply_lemma"]

#: Memories of a few words and a short payload: the checks, not the sizes, are under test, and
#: a short maximum payload bounds the size loop (so the bounded check sees whole requests).
COMMAND_CFG = CoreConfig(lanes=2, bank_depth=4, weight_depth=4, row_depth=4, layer_depth=2,
                         result_queue=2, max_payload=8, basis=False, deep_pipeline=False,
                         vector_writer=False)

_MEMORIES = ("layer_mem", "weight_mem", "row_mem")

#: The processor's states before a reply starts (it checks or executes the request).
REQUEST_STATES = ("IDLE", "HEADER", "DECODE", "CHECK", "SIZE", "SIZE_STEP", "VERDICT",
                  "WRITE_DATA", "RUN")


def reply_lemma(m, dut, fragment):
    """A reply is on offer exactly in the states after a request (from the state that starts
    it until the transmitter takes it): an invariant k-induction needs (a state checking a
    request with a reply on offer, or a reply state without one, is unreachable)."""
    state, states = fsm_state(fragment, "cmd")
    requesting = Cat(state == states[name] for name in REQUEST_STATES).any()
    m.d.comb += Assert(dut.o_reply.valid == ~requesting, "reply on offer during a request")


class CommandRejects(Elaboratable):
    """A rejected frame writes no memory and starts no run.

    Free: every frame the receiver hands on (type, seq, length, its error flag), every
    payload byte, the transmitter's and the datapath's handshakes. Assumed: ``i_frame`` obeys
    the valid/ready rule (the receiver's, proved in ``formal_framing``). Asserted:

    * while a frame flagged by the receiver (``BAD_CRC``, ``BAD_LENGTH``) is on offer, no
      write enable of the layer, weight, row or activation memory is high and the sequencer
      is not started;
    * while an ERROR reply is on offer, nothing was written or started since the previous
      frame was released (a request the processor itself rejects, for its length, memory,
      address, layer or type, has written nothing by the time it says so), nor is anything.

    ``ignore_flag`` (fault injection): the processor is shown every frame as good (error
    field 0) while the property still judges the receiver's flag, as a processor that did not
    check it would behave; the check must then fail.

    ``invariants=False`` leaves out the invariants that only the induction step needs (the
    fault tests do, so that their counterexample is against the property itself).
    """

    def __init__(self, cfg=COMMAND_CFG, *, ignore_flag=False, invariants=True):
        self.cfg = cfg
        self._invariants = invariants
        self.dut = CommandProcessor(cfg)
        self._ignore_flag = ignore_flag
        self.frame = Signal(frame_layout(cfg))      # the receiver's frame, before any mask

    @property
    def ports(self):
        driven = {id(self.dut.i_frame.payload.as_value())}
        return ([self.frame.as_value()] +
                [p for p in free_inputs(self.dut) if id(p) not in driven])

    def elaborate(self, platform):
        m = Module()
        cfg, dut = self.cfg, self.dut
        fragment = elaborated(dut, platform)
        m.submodules.dut = fragment
        m.d.comb += Assume(~ResetSignal())

        m.d.comb += dut.i_frame.payload.eq(self.frame)
        if self._ignore_flag:
            m.d.comb += dut.i_frame.payload.error.eq(0)
        # The receiver holds a frame until it is taken (the rule on the input stream).
        stream_rules(m, dut, exempt=("o_reply", "o_data", "o_group", "o_row"))

        writes = [submodule(fragment, name).wr_en for name in _MEMORIES]
        sequencer = submodule(fragment, "sequencer")
        acting = Signal()
        m.d.comb += acting.eq(Cat(*writes, dut.acts.wr_en, sequencer.start).any())

        # Anything written or started since the last frame was released.
        acted = Signal()
        released = dut.i_frame.valid & dut.i_frame.ready
        m.d.sync += acted.eq(Mux(released, 0, acted | acting))

        flagged = dut.i_frame.valid & (self.frame.error != 0)
        error_reply = dut.o_reply.valid & (dut.o_reply.payload.type == FrameType.ERROR)
        m.d.comb += [
            Assert(~(flagged & acting), "a frame the receiver rejected writes or runs"),
            Assert(~(error_reply & (acted | acting)), "a rejected request wrote or ran"),
        ]

        if not self._invariants:
            return m
        # Invariants for the induction step (proved with the rest). They name the FSM's
        # states: a renamed state breaks the harness loudly (LookupError, KeyError).
        state, states = fsm_state(fragment, "cmd")

        def within(*names):
            return Cat(state == states[name] for name in names).any()

        checking = within("HEADER", "DECODE", "CHECK", "SIZE", "SIZE_STEP", "VERDICT")
        data_valid, data_fetched = internal(fragment, "data_valid"), internal(fragment,
                                                                               "data_fetched")
        reply_lemma(m, dut, fragment)
        m.d.comb += [
            Assert(state < len(states), "command FSM in an unused encoding"),
            # Memories are written only by a WRITE's data phase, a run starts only from CHECK.
            Assert(~(data_valid | data_fetched) | within("WRITE_DATA")),
            Assert(~acting | within("WRITE_DATA", "CHECK")),
            # Nothing has happened yet for the request being checked (the last one's reply
            # released its frame, which cleared ``acted``).
            Assert(~acted | ~(checking | within("IDLE"))),
            # The frame is released in the reply's first cycle (which clears ``acted``).
            Assert(~(acted & dut.o_reply.valid) | internal(fragment, "release")),
            # The frame being checked or executed is still held, as the processor saw it.
            Assert(~(checking | within("WRITE_DATA", "RUN")) |
                   (dut.i_frame.valid & (dut.i_frame.payload.error == 0))),
        ]
        return m
