"""The core's layer sequencer: runs layers of the layer table on the datapath.

Control timing (the cycle contract with ``gsaccel.sw.golden``; docs/protocol.md): a RUN
counts ``RUN_OVERHEAD`` (= 1, its DONE cycle) plus, per layer, ``LAYER_OVERHEAD`` (= 5:
descriptor FETCH and LOAD, PRIME and FILL of the streams, and the step to the next layer) on
top of the datapath's time. The host side (frames, the memories the sequencer reads) is
:class:`~gsaccel.hw.command.CommandProcessor`'s.
"""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, enum, stream
from amaranth.lib.wiring import In, Out

from .component import CoreComponent
from .layouts import LayerControl, LayerKind, group_layout, layer_layout, row_layout
from .writer import WRITE_LATENCY

__all__ = ["Sequencer", "ScratchpadOwner", "datapath_members", "LAYER_STATES",
           "LAYER_OVERHEAD", "RUN_OVERHEAD", "MIN_BASIS_CYCLES"]

#: The states a layer passes through before its datapath time, one cycle each and in this
#: order: descriptor FETCH (the layer table's address) and LOAD, PRIME (the first reads of
#: the group and row streams) and FILL (their first words registered).
LAYER_STATES = ("FETCH", "LOAD", "PRIME", "FILL")
#: Sequencer cycles per layer outside its datapath time: the :data:`LAYER_STATES` and the
#: step to the next layer (the GS state's last cycle, or NEXT after a BASIS layer).
LAYER_OVERHEAD = len(LAYER_STATES) + 1
#: Cycles of a RUN outside its layers: the sequencer's DONE cycle.
RUN_OVERHEAD = 1
#: Cycles a BASIS layer spends in BASIS_START and BASIS (one each) when ``basis_done`` is
#: high from the start: a core without a basis unit ties it high and writes nothing.
MIN_BASIS_CYCLES = 2

_MIN_GS_CYCLES = WRITE_LATENCY + 1


class ScratchpadOwner(enum.Enum, shape=2):
    """Which block drives the scratchpad ports."""
    HOST  = 0   # the command processor (WRITE/READ of ACTS)
    GS    = 1   # gather engine reads, result writer writes
    BASIS = 2   # basis unit


def datapath_members(cfg):
    """The sequencer's ports towards the engine, writer and basis unit (its point of view)."""
    return {
        "o_group":     Out(stream.Signature(group_layout(cfg))),
        "o_row":       Out(stream.Signature(row_layout(cfg))),
        "owner":       Out(ScratchpadOwner),
        "control":     Out(LayerControl),
        "basis":       Out(data.ArrayLayout(signed(8), 9)),
        "n_chunks":    Out(16),
        "basis_start": Out(1),
        "basis_done":  In(1),
        "engine_idle": In(1),
        "writer_idle": In(1),
        "issue":       In(1),
        "issue_lanes": In(range(cfg.lanes + 1)),
        "stall":       In(1),
    }


class Sequencer(CoreComponent):
    """Run layers ``first .. first+count-1`` of the layer table on the datapath.

    For a GS layer it streams the layer's group words (read ahead from the synchronous weight
    memory, so one group per cycle) into ``o_group`` and row records from ``row_base`` on into
    ``o_row`` as the writer takes them, until every group is taken and the engine and writer
    are idle. For a BASIS layer it pulses ``basis_start`` and waits for ``basis_done``. Layers
    of another kind run as GS layers. The counters (``COUNTER_NAMES``) restart at ``start``.

    Timing (``counters.cycles`` counts every cycle from the first FETCH to DONE inclusive):

    * ``start`` in cycle 0, the first FETCH (layer table address) in cycle 1;
    * LOAD registers the descriptor, PRIME reads the first group word and row record and
      FILL registers them: they are offered in the first GS cycle, which is cycle 0 of
      ``gs_layer_cycles``;
    * GS ends in the first cycle in which every group is taken and the engine and writer are
      idle; that cycle also steps to the next layer (FETCH or DONE follows);
    * BASIS: BASIS_START (``basis_start``) then BASIS until ``basis_done``, then NEXT;
    * DONE (``done`` high), then idle.

    So a GS layer costs ``5 + max(issue end, writer end) + WRITE_LATENCY`` cycles and a BASIS
    layer ``5 + n_chunks + basis_latency(cfg)``: ``LAYER_OVERHEAD = 5``,
    ``RUN_OVERHEAD = 1``.

    Every memory read goes into a register before any logic sees it: the descriptor
    (``layer_word``), the group word on offer and the row record on offer. Between runs they
    follow the memories' read ports (a cycle late), for the command processor's reads.

    Parameters
    ----------
    cfg : CoreConfig
        Checked by :class:`~gsaccel.hw.component.CoreComponent` (``TypeError`` if it is not one).

    Members
    -------
    start : In(1)
        Begin a run (ignored while ``busy``).
    first, count : In(8)
        Layer range; the command processor checks it against the table.
    busy : Out(1)
    done : Out(1)
        Pulses in the last cycle of a run.
    counters : Out(data.ArrayLayout(32, 4))
        cycles, busy lane-cycles, stall cycles, groups.
    layer_addr : Out(range(cfg.layer_depth))
    layer_data : In(layer_layout(cfg))
        Layer table read port (synchronous).
    weight_addr, weight_en, weight_data : Out, Out(1), In(group_layout(cfg))
        Weight memory read port (synchronous; data holds while ``weight_en`` is low).
        ``weight_addr`` is a register; between runs it follows ``host_addr``.
    host_addr : In(17)
        The command processor's word address.
    row_addr, row_en, row_data : Out, Out(1), In(row_layout(cfg))
        Row memory read port (likewise).
    layer_word : Out(layer_layout(cfg))
    group_word : Out(group_layout(cfg))
    row_word : Out(row_layout(cfg))
        The registered descriptor, group word and row record.
    o_group : Out(stream.Signature(group_layout(cfg)))
        To ``GatherEngine.i_group``.
    o_row : Out(stream.Signature(row_layout(cfg)))
        To ``ResultWriter.i_row``.
    owner : Out(ScratchpadOwner)
    control : Out(LayerControl)
        The current layer's settings (stable during the layer), from its descriptor.
    basis, n_chunks : Out(data.ArrayLayout(signed(8), 9)), Out(16)
        A BASIS layer's basis and chunk count (its ``group_count``).
    basis_start : Out(1)
    basis_done, engine_idle, writer_idle, issue, issue_lanes, stall : In
        Status of the basis unit, engine and writer.
    """

    def members(self, cfg):
        return {
            "start":       In(1),
            "first":       In(8),
            "count":       In(8),
            "busy":        Out(1),
            "done":        Out(1),
            "counters":    Out(data.ArrayLayout(32, 4)),
            "layer_addr":  Out(range(cfg.layer_depth)),
            "layer_data":  In(layer_layout(cfg)),
            "weight_addr": Out(cfg.weight_addr_width),
            "weight_en":   Out(1),
            "weight_data": In(group_layout(cfg)),
            "row_addr":    Out(cfg.row_addr_width),
            "row_en":      Out(1),
            "row_data":    In(row_layout(cfg)),
            "host_addr":   In(17),
            "layer_word":  Out(layer_layout(cfg)),
            "group_word":  Out(group_layout(cfg)),
            "row_word":    Out(row_layout(cfg)),
            **datapath_members(cfg),
        }

    def elaborate(self, platform):
        cfg = self._cfg
        m = Module()

        layer = self.layer_word     # the descriptor being run, registered
        index = Signal(8)           # layer being run
        left = Signal(9)            # layers left, including this one
        group_ptr = Signal(cfg.weight_addr_width)   # next group word to read
        groups_left = Signal(17)                    # ... of this many
        row_ptr = Signal(cfg.row_addr_width)
        # Each stream is a two-stage pipeline that stalls as a whole: the memory's output
        # (``*_read``: it holds a word not yet taken) and the register on offer. The
        # memories' outputs go straight into registers, as an ECP5 block RAM's slow
        # clock-to-output (5.8 ns at speed grade 6) leaves no time for logic after it.
        group_read, row_read = Signal(), Signal()
        group_valid, row_valid = Signal(), Signal()
        group_word = Signal(group_layout(cfg))
        row_word = Signal(row_layout(cfg))
        gs_cycles = Signal(range(_MIN_GS_CYCLES))   # GS cycles so far, saturating
        cycles, lane_cycles, stalls, groups = (self.counters[i] for i in range(4))

        m.d.comb += [
            self.layer_addr.eq(index),
            self.weight_addr.eq(group_ptr),
            self.row_addr.eq(row_ptr),
            self.o_group.valid.eq(group_valid),
            self.o_group.payload.eq(group_word),
            self.o_row.valid.eq(row_valid),
            self.o_row.payload.eq(row_word),
            self.group_word.eq(group_word),
            self.row_word.eq(row_word),
            *(getattr(self.control, name).eq(getattr(layer, name))
              for name in data.Layout.cast(LayerControl).members),
            self.basis.eq(layer.basis if cfg.basis else 0),
            self.n_chunks.eq(layer.group_count),
        ]

        # Counters: every cycle of a run counts; the datapath reports its own events. They
        # are counted a cycle late, from registers, so that the 32-bit adds are a path of
        # their own. A layer's last group issues cycles before its end, so the sums are
        # complete at DONE.
        issued_lanes = Signal.like(self.issue_lanes)
        stalled = Signal()
        issued = Signal()
        m.d.sync += [issued_lanes.eq(Mux(self.issue, self.issue_lanes, 0)),
                     stalled.eq(self.stall), issued.eq(self.issue)]
        with m.If(self.busy):
            m.d.sync += [
                cycles.eq(cycles + 1),
                lane_cycles.eq(lane_cycles + issued_lanes),
                stalls.eq(stalls + stalled),
                groups.eq(groups + issued),
            ]

        # A stream's register takes the memory's word, and the memory reads on, whenever the
        # word on offer is taken or there is none: in every state (outside GS nothing is on
        # offer, so both follow the memory). The enable is one LUT of three registers (valid,
        # the word's ``last``, the engine's ``no credit``): it fans out to the whole word
        # register and to every block RAM of the memory.
        group_free = ~group_valid | self.o_group.ready
        row_free = ~row_valid | self.o_row.ready
        m.d.comb += [self.weight_en.eq(group_free), self.row_en.eq(row_free)]
        with m.If(group_free):
            m.d.sync += group_word.eq(self.weight_data)
        with m.If(row_free):
            m.d.sync += row_word.eq(self.row_data)
        running = Signal()
        m.d.comb += self.busy.eq(running)

        def step_streams():
            """Move each stream whose offered word is free (taken or absent) on by one: the
            memory's word is valid in the register if it was read for the layer, and the
            next word is read (group words while any are left, row records always,
            wrapping)."""
            with m.If(group_free):
                m.d.sync += group_valid.eq(group_read)
                with m.If(groups_left != 0):
                    m.d.sync += [group_read.eq(1), groups_left.eq(groups_left - 1),
                                 group_ptr.eq(group_ptr + 1)]
                with m.Else():
                    m.d.sync += group_read.eq(0)
            with m.If(row_free):
                m.d.sync += [row_valid.eq(row_read),
                             row_ptr.eq(Mux(row_ptr == cfg.row_depth - 1, 0, row_ptr + 1))]

        def step_layer():
            m.d.sync += [index.eq(index + 1), left.eq(left - 1), group_read.eq(0),
                         row_read.eq(0), group_valid.eq(0), row_valid.eq(0),
                         self.owner.eq(ScratchpadOwner.HOST)]
            with m.If(left == 1):
                m.next = "DONE"
            with m.Else():
                m.next = LAYER_STATES[0]

        # A layer's preamble, LAYER_STATES: one state a cycle, each going on to the next.
        def fetch():
            pass                    # the layer table reads ``index``

        def load():
            m.d.sync += [layer.eq(self.layer_data), gs_cycles.eq(0),
                         group_ptr.eq(self.layer_data.group_base),
                         row_ptr.eq(self.layer_data.row_base)]

        def prime():
            # Read the layer's first group word and row record (FILL registers them, so
            # that they are offered in the first GS cycle).
            is_gs = layer.kind != LayerKind.BASIS     # any kind but BASIS runs as GS
            m.d.sync += [
                group_read.eq(is_gs & (layer.group_count != 0)),
                row_read.eq(is_gs),
                group_ptr.eq(group_ptr + 1),
                groups_left.eq(Mux(layer.group_count != 0, layer.group_count - 1, 0)),
                row_ptr.eq(Mux(row_ptr == cfg.row_depth - 1, 0, row_ptr + 1)),
                self.owner.eq(Mux(is_gs, ScratchpadOwner.GS, ScratchpadOwner.BASIS)),
            ]

        def fill():
            step_streams()
            with m.If(layer.kind == LayerKind.BASIS):
                m.next = "BASIS_START"
            with m.Else():
                m.next = "GS"

        preamble = {"FETCH": fetch, "LOAD": load, "PRIME": prime, "FILL": fill}

        with m.FSM(name="seq"):
            with m.State("IDLE"):
                # Between runs the registers follow the memories, for the host's reads, and
                # the weight memory reads at the host's address (a cycle late): its address
                # is then a register, with no multiplexer in front of its many block RAMs.
                m.d.sync += [layer.eq(self.layer_data), group_ptr.eq(self.host_addr)]
                with m.If(self.start):
                    m.d.sync += [index.eq(self.first), left.eq(self.count), running.eq(1)]
                    m.d.sync += [c.eq(0) for c in (cycles, lane_cycles, stalls, groups)]
                    with m.If(self.count == 0):
                        m.next = "DONE"
                    with m.Else():
                        m.next = LAYER_STATES[0]

            for state, following in zip(LAYER_STATES, LAYER_STATES[1:] + (None,)):
                with m.State(state):
                    preamble[state]()
                    if following is not None:
                        m.next = following
            with m.State("GS"):
                # Read ahead, so that a group is offered every cycle the engine takes one; the
                # rows are offered while the layer runs (it does not say how many it has).
                step_streams()
                m.d.sync += gs_cycles.eq(Mux(gs_cycles == _MIN_GS_CYCLES - 1, gs_cycles,
                                             gs_cycles + 1))
                # (No group left to read implies groups_left == 0.)
                with m.If(~group_read & ~group_valid & self.engine_idle &
                          self.writer_idle & (gs_cycles == _MIN_GS_CYCLES - 1)):
                    # The layer's last cycle doubles as NEXT.
                    step_layer()
            with m.State("BASIS_START"):
                m.d.comb += self.basis_start.eq(1)
                m.next = "BASIS"
            with m.State("BASIS"):
                with m.If(self.basis_done):
                    m.next = "NEXT"
            with m.State("NEXT"):
                step_layer()
            with m.State("DONE"):
                m.d.comb += self.done.eq(1)
                m.d.sync += running.eq(0)
                m.next = "IDLE"
        return m
