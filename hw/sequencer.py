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
from .scratchpad import ClearPort
from .layouts import (LayerKind, group_layout, group_stream_layout, layer_control_layout,
                      layer_layout, row_layout, row_stream_layout)
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
    CLEAR = 3   # the sequencer zeroes a CLEAR layer's words in every bank


def datapath_members(cfg):
    """The sequencer's ports towards the engine, writer and basis unit (its point of view)."""
    return {
        "o_group":     Out(stream.Signature(group_stream_layout(cfg))),
        "o_row":       Out(stream.Signature(row_stream_layout(cfg))),
        "owner":       Out(ScratchpadOwner),
        "control":     Out(layer_control_layout(cfg)),
        "clear":       Out(ClearPort(addr_width=cfg.act_addr_width)),
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

    A GS layer is a loop nest over its output pixels (``layer_layout``): for every pixel, in
    raster order, the sequencer streams the layer's ``group_count`` group words (read ahead
    from the synchronous weight memory, so one group per cycle, with no bubble between
    pixels) into ``o_group`` with the pixel's input base, and its ``row_count`` row-memory
    words (records, or lines with ``cfg.vector_writer``) into ``o_row`` with the pixel's
    output base and ``end`` on the pixel's last one, as the engine and the writer take them,
    until every group of every pixel is taken and the engine and writer are idle. A BASIS
    layer pulses ``basis_start`` and waits for ``basis_done``; a CLEAR layer zeroes
    ``group_count`` words of every bank from ``dst_base``, one a cycle, through ``clear``.
    The counters (``COUNTER_NAMES``) restart at ``start``.

    Timing (``counters.cycles`` counts every cycle from the first FETCH to DONE inclusive):

    * ``start`` in cycle 0, the first FETCH (layer table address) in cycle 1;
    * LOAD registers the descriptor, PRIME reads the first group word and row record and
      FILL registers them: they are offered in the first GS cycle, which is cycle 0 of
      ``gs_layer_cycles``;
    * GS ends in the first cycle in which every group is taken and the engine and writer are
      idle; that cycle also steps to the next layer (FETCH or DONE follows);
    * BASIS: BASIS_START (``basis_start``) then BASIS until ``basis_done``, then NEXT;
    * CLEAR: one cycle per word (at least one), the last of which steps to the next layer;
    * DONE (``done`` high), then idle.

    So a GS layer costs ``5 + max(issue end, writer end) + WRITE_LATENCY`` cycles, a BASIS
    layer ``5 + n_chunks + basis_latency(cfg)`` and a CLEAR layer ``4 + max(words, 1)``:
    ``LAYER_OVERHEAD = 5``, ``RUN_OVERHEAD = 1``.

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
    o_group : Out(stream.Signature(group_stream_layout(cfg)))
        To ``GatherEngine.i_group``.
    o_row : Out(stream.Signature(row_stream_layout(cfg)))
        To ``ResultWriter.i_row``.
    owner : Out(ScratchpadOwner)
    control : Out(layer_control_layout(cfg))
        The current layer's settings (stable during the layer), from its descriptor.
    clear : Out(ClearPort(addr_width=cfg.act_addr_width))
        A CLEAR layer's writes.
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
        gs_cycles = Signal(range(_MIN_GS_CYCLES))   # GS cycles so far, saturating
        cycles, lane_cycles, stalls, groups = (self.counters[i] for i in range(4))

        m.d.comb += [
            self.layer_addr.eq(index),
            *(getattr(self.control, name).eq(getattr(layer, name))
              for name in layer_control_layout(cfg).members),
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

        # The two streams ----------------------------------------------------------------
        # Each replays its memory's words for every output pixel: the group words
        # ``group_base ..`` with the pixel's input base, the row records ``row_base ..``
        # with its output base. A stream is a two-stage pipeline that stalls as a whole: the
        # memory's output (``read``: it holds a word not yet taken, read for the pixel whose
        # base is ``read_base``) and the register on offer. The memories' outputs go straight
        # into registers, as an ECP5 block RAM's slow clock-to-output (5.8 ns at speed grade
        # 6) leaves no time for logic after it. The next word's address is a register too:
        # at a pixel's last word it goes back to the first, so there is no bubble between
        # pixels.
        # The row stream never ends within a layer: after the last pixel it goes on to the
        # pixels past it, so that a descriptor whose groups emit more slots than its rows
        # cover cannot starve the writer (and hang the core).
        group = _Stream(m, "group", cfg.weight_addr_width, cfg)
        row = _Stream(m, "row", cfg.row_addr_width, cfg, wrap=cfg.row_depth, endless=True)
        group.walk(self.layer_data, self.layer_data.src_base, layer.in_pixel_step,
                   layer.in_row_step, layer)
        row.walk(self.layer_data, self.layer_data.dst_base, layer.out_pixel_step,
                 layer.out_row_step, layer)
        m.d.comb += [
            self.weight_addr.eq(group.ptr),
            self.row_addr.eq(row.ptr),
            self.o_group.valid.eq(group.valid),
            self.o_group.payload.word.eq(group.word),
            self.o_group.payload.base.eq(group.word_base),
            self.o_row.valid.eq(row.valid),
            self.o_row.payload.row.eq(row.word),
            self.o_row.payload.base.eq(row.word_base),
            self.o_row.payload.end.eq(row.word_end),
            self.group_word.eq(group.word),
            self.row_word.eq(row.word),
        ]
        # A stream's register takes the memory's word, and the memory reads on, whenever the
        # word on offer is taken or there is none: in every state (outside GS nothing is on
        # offer, so both follow the memory). The enable is one LUT of three registers (valid,
        # the word's ``last``, the engine's ``no credit``): it fans out to the whole word
        # register and to every block RAM of the memory.
        group_free = ~group.valid | self.o_group.ready
        row_free = ~row.valid | self.o_row.ready
        m.d.comb += [self.weight_en.eq(group_free), self.row_en.eq(row_free)]
        with m.If(group_free):
            m.d.sync += group.word.eq(self.weight_data)
        with m.If(row_free):
            m.d.sync += row.word.eq(self.row_data)
        running = Signal()
        m.d.comb += self.busy.eq(running)

        # A row count of 0 reads as 1 (see the row stream above).
        rows_per_pixel = Mux(layer.row_count == 0, 1, layer.row_count)

        def step_streams():
            with m.If(group_free):
                group.step(layer.group_base, layer.group_count)
            with m.If(row_free):
                row.step(layer.row_base, rows_per_pixel)

        # CLEAR: one bank word of every bank per cycle.
        clear_addr = Signal(cfg.act_addr_width)
        clear_left = Signal(16)
        m.d.comb += self.clear.addr.eq(clear_addr)

        def step_layer():
            m.d.sync += [index.eq(index + 1), left.eq(left - 1),
                         self.owner.eq(ScratchpadOwner.HOST)]
            group.stop()
            row.stop()
            with m.If(left == 1):
                m.next = "DONE"
            with m.Else():
                m.next = LAYER_STATES[0]

        # A layer's preamble, LAYER_STATES: one state a cycle, each going on to the next.
        def fetch():
            pass                    # the layer table reads ``index``

        def load():
            data_ = self.layer_data
            m.d.sync += [layer.eq(data_), gs_cycles.eq(0),
                         clear_addr.eq(data_.dst_base), clear_left.eq(data_.group_count)]
            is_gs = data_.kind == LayerKind.GS
            group.start(data_.group_base, Mux(is_gs, data_.group_count, 0))
            row.start(data_.row_base, Mux(is_gs, Mux(data_.row_count == 0, 1,
                                                     data_.row_count), 0))

        def prime():
            # Read the layer's first group word and row record (FILL registers them, so
            # that they are offered in the first GS cycle).
            step_streams()
            with m.Switch(layer.kind):
                with m.Case(LayerKind.BASIS):
                    m.d.sync += self.owner.eq(ScratchpadOwner.BASIS)
                with m.Case(LayerKind.CLEAR):
                    m.d.sync += self.owner.eq(ScratchpadOwner.CLEAR)
                with m.Default():
                    m.d.sync += self.owner.eq(ScratchpadOwner.GS)

        def fill():
            step_streams()
            with m.Switch(layer.kind):
                with m.Case(LayerKind.BASIS):
                    m.next = "BASIS_START"
                with m.Case(LayerKind.CLEAR):
                    m.next = "CLEAR"
                with m.Default():
                    m.next = "GS"

        preamble = {"FETCH": fetch, "LOAD": load, "PRIME": prime, "FILL": fill}

        with m.FSM(name="seq"):
            with m.State("IDLE"):
                # Between runs the registers follow the memories, for the host's reads, and
                # the weight memory reads at the host's address (a cycle late): its address
                # is then a register, with no multiplexer in front of its many block RAMs.
                m.d.sync += [layer.eq(self.layer_data), group.ptr.eq(self.host_addr)]
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
                # Read ahead, so that a group is offered every cycle the engine takes one.
                step_streams()
                m.d.sync += gs_cycles.eq(Mux(gs_cycles == _MIN_GS_CYCLES - 1, gs_cycles,
                                             gs_cycles + 1))
                # (No group left to read implies every pixel's groups were read.)
                with m.If(~group.read & ~group.valid & self.engine_idle &
                          self.writer_idle & (gs_cycles == _MIN_GS_CYCLES - 1)):
                    # The layer's last cycle doubles as NEXT.
                    step_layer()
            with m.State("CLEAR"):
                m.d.comb += self.clear.en.eq(clear_left != 0)
                m.d.sync += [clear_addr.eq(clear_addr + 1), clear_left.eq(clear_left - 1)]
                with m.If(clear_left <= 1):
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


class _Stream:
    """One of the sequencer's two streams of memory words, replayed for every output pixel
    (see :meth:`Sequencer.elaborate`): its registers and the statements that move it."""

    def __init__(self, m, name, ptr_width, cfg, *, wrap=None, endless=False):
        addr = cfg.act_addr_width
        self._m, self._wrap, self._endless = m, wrap, endless
        self.ptr = Signal(ptr_width, name=f"{name}_ptr")      # the word the memory reads
        self.left = Signal(17, name=f"{name}_left")           # ... of these left in the pixel
        self.read = Signal(name=f"{name}_read")               # the memory's output is a word
        self.read_base = Signal(addr, name=f"{name}_read_base")
        self.valid = Signal(name=f"{name}_valid")             # the register holds a word
        self.word = Signal(group_layout(cfg) if name == "group" else row_layout(cfg),
                           name=f"{name}_word")
        self.word_base = Signal(addr, name=f"{name}_word_base")
        # ... and whether it is the pixel's last word (the memory's, then the register's).
        self.read_end = Signal(name=f"{name}_read_end")
        self.word_end = Signal(name=f"{name}_word_end")
        # The pixel walker: the base of the pixel being read, the base of its row, and the
        # columns and rows left after it.
        self.base = Signal(addr, name=f"{name}_base")
        self.row_base = Signal(addr, name=f"{name}_row_base")
        self.col = Signal(8, name=f"{name}_col")
        self.row = Signal(8, name=f"{name}_row")

    def walk(self, loading, first_base, pixel_step, row_step, layer):
        """Set what :meth:`start` and the pixel steps use: the descriptor being loaded (the
        layer table's output in LOAD) and its first pixel's base, and the steps and sizes of
        the registered descriptor ``layer``."""
        self._loading, self._first_base = loading, first_base
        self._pixel_step, self._row_step, self._layer = pixel_step, row_step, layer

    def start(self, base, count):
        """LOAD: the layer's first word (``count`` words per pixel) and first pixel."""
        m, loading = self._m, self._loading
        m.d.sync += [self.ptr.eq(base), self.left.eq(count),
                     self.base.eq(self._first_base), self.row_base.eq(self._first_base),
                     self.col.eq(loading.last_col), self.row.eq(loading.last_row)]

    def step(self, first, count):
        """The register is free: it takes the memory's word (the caller loads ``word``),
        and the memory reads the next word, going back to ``first`` for the next pixel."""
        m = self._m
        m.d.sync += [self.valid.eq(self.read), self.word_base.eq(self.read_base),
                     self.word_end.eq(self.read_end)]
        with m.If(self.left != 0):
            m.d.sync += [self.read.eq(1), self.read_base.eq(self.base),
                         self.read_end.eq(self.left == 1)]
            with m.If(self.left == 1):
                with m.If((self.col == 0) & (self.row == 0) & (not self._endless)):
                    m.d.sync += self.left.eq(0)             # the layer's last word
                with m.Else():
                    m.d.sync += [self.ptr.eq(first), self.left.eq(count)]
                    self._next_pixel()
            with m.Else():
                m.d.sync += [self.ptr.eq(self._next(self.ptr)), self.left.eq(self.left - 1)]
        with m.Else():
            m.d.sync += self.read.eq(0)

    def stop(self):
        self._m.d.sync += [self.read.eq(0), self.valid.eq(0)]

    def _next(self, ptr):
        if self._wrap is None:
            return ptr + 1
        return Mux(ptr == self._wrap - 1, 0, ptr + 1)

    def _next_pixel(self):
        m, layer = self._m, self._layer
        with m.If(self.col == 0):
            next_row = (self.row_base + self._row_step)[:len(self.base)]
            m.d.sync += [self.row_base.eq(next_row), self.base.eq(next_row),
                         self.col.eq(layer.last_col), self.row.eq(self.row - 1)]
        with m.Else():
            m.d.sync += [self.base.eq((self.base + self._pixel_step)[:len(self.base)]),
                         self.col.eq(self.col - 1)]
