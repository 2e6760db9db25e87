"""Formal harness of the sequencer's streams (hw/sequencer.py): ``o_group`` and ``o_row``."""

from amaranth.hdl import Assert, Signal, Value

from gsaccel.hw.sequencer import Sequencer
from gsaccel.sim.formal import fsm_state, internal

from formal_command import COMMAND_CFG
from formal_framing import StreamHarness

__all__ = ["sequencer_stream_harness"]


def _sequencer_lemmas(m, dut, fragment):
    state, states = fsm_state(fragment, "seq")
    in_gs = state == states["GS"]
    # Both streams offer words only while a GS layer runs (outside GS their registers follow
    # the memories with nothing on offer): the invariant that k-induction needs.
    m.d.comb += [Assert(~dut.o_group.valid | in_gs, "group offered outside GS"),
                 Assert(~dut.o_row.valid | in_gs, "row offered outside GS")]
    # ... and their memories' outputs hold a word only from PRIME's read on (a layer's end
    # stops both stages).
    in_fill = state == states["FILL"]
    for name in ("group", "row"):
        read, valid = internal(fragment, f"{name}_read"), internal(fragment, f"{name}_valid")
        m.d.comb += Assert(~(read | valid) | in_fill | in_gs, f"{name} stream live outside GS")
    # The row stream is endless within a layer (a descriptor whose groups emit more slots
    # than its rows cover cannot starve the writer): at the layer's end the row on offer, if
    # the writer did not take it, is withdrawn. So o_row keeps the rule within a layer: a
    # pending row stays, unchanged, unless the layer has ended.
    payload = Value.cast(dut.o_row.payload)
    pending = Signal(name="o_row_pending")
    held = Signal(len(payload), name="o_row_held")
    m.d.sync += [pending.eq(dut.o_row.valid & ~dut.o_row.ready), held.eq(payload)]
    with m.If(pending & in_gs):
        m.d.comb += Assert(dut.o_row.valid & (payload == held),
                           "o_row: row dropped or changed within a layer")


def sequencer_stream_harness(cfg=COMMAND_CFG, **kwargs):
    """The stream rule on ``o_group``; on ``o_row`` within a layer. Every input is free: the
    layer, weight and row words, ``start``/``first``/``count``, the datapath's handshakes."""
    return StreamHarness(Sequencer(cfg), exempt=("o_row",), lemmas=_sequencer_lemmas,
                         **kwargs)
