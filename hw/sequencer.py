"""The core's control path: the command processor (WRITE/READ/HELLO/RUN frames, the host
memories) and the layer sequencer that runs a program on the datapath.

Control timing (the cycle contract with ``gsaccel.sw.golden``; docs/protocol.md): a RUN
counts ``RUN_OVERHEAD`` (= 1, its DONE cycle) plus, per layer, ``LAYER_OVERHEAD`` (= 5:
descriptor FETCH and LOAD, PRIME and FILL of the streams, and the step to the next layer) on
top of the datapath's time.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import check_config
from .framing import frame_layout, reply_layout
from .layouts import (COUNTER_NAMES, ErrorCode, FrameType, LayerKind, Memory as MemoryId,
                      group_layout, hello_payload, layer_layout, memory_depth, memory_layout,
                      row_layout, word_bytes)
from .memory import SimpleDualPortMemory, SinglePortMemory
from .writer import WRITE_LATENCY

__all__ = ["Sequencer", "CommandProcessor", "ScratchpadOwner", "LAYER_OVERHEAD", "RUN_OVERHEAD"]

#: Sequencer cycles per layer outside its datapath time: descriptor FETCH and LOAD, PRIME
#: and FILL of the streams, and the step to the next layer.
LAYER_OVERHEAD = 5
#: Cycles of a RUN outside its layers: the sequencer's DONE cycle.
RUN_OVERHEAD = 1

#: Fewest cycles a GS layer spends in the GS state. A layer with groups always takes more
#: (its last write lands WRITE_LATENCY cycles after the writer's last slot); this makes an
#: empty layer cost ``LAYER_OVERHEAD + 0 + WRITE_LATENCY`` too, as the golden model says.
_MIN_GS_CYCLES = WRITE_LATENCY + 1


class ScratchpadOwner(enum.Enum, shape=2):
    """Which block drives the scratchpad ports."""
    HOST  = 0   # the command processor (WRITE/READ of ACTS)
    GS    = 1   # gather engine reads, result writer writes
    BASIS = 2   # basis unit


def _datapath_members(cfg):
    """The sequencer's ports towards the engine, writer and basis unit (its point of view)."""
    return {
        "o_group":     Out(stream.Signature(group_layout(cfg))),
        "o_row":       Out(stream.Signature(row_layout(cfg))),
        "owner":       Out(ScratchpadOwner),
        "seg_log2":    Out(3),
        "shift":       Out(5),
        "relu":        Out(1),
        "src":         Out(1),
        "dst":         Out(1),
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


class Sequencer(wiring.Component):
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
    seg_log2, shift, relu, src, dst, basis, n_chunks : Out
        The current layer's parameters (stable during the layer).
    basis_start : Out(1)
    basis_done, engine_idle, writer_idle, issue, issue_lanes, stall : In
        Status of the basis unit, engine and writer.

    Raises
    ------
    TypeError
        If ``cfg`` is not a :class:`CoreConfig`.
    """

    def __init__(self, cfg):
        check_config(cfg)
        self._cfg = cfg
        super().__init__({
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
            **_datapath_members(cfg),
        })

    @property
    def cfg(self):
        return self._cfg

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
            self.seg_log2.eq(layer.seg_log2),
            self.shift.eq(layer.shift),
            self.relu.eq(layer.relu),
            self.src.eq(layer.src),
            self.dst.eq(layer.dst),
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
                m.next = "FETCH"

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
                        m.next = "FETCH"
            with m.State("FETCH"):
                m.next = "LOAD"
            with m.State("LOAD"):
                m.d.sync += [layer.eq(self.layer_data), gs_cycles.eq(0),
                             group_ptr.eq(self.layer_data.group_base),
                             row_ptr.eq(self.layer_data.row_base)]
                m.next = "PRIME"
            with m.State("PRIME"):
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
                m.next = "FILL"
            with m.State("FILL"):
                step_streams()
                with m.If(layer.kind == LayerKind.BASIS):
                    m.next = "BASIS_START"
                with m.Else():
                    m.next = "GS"
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


class CommandProcessor(wiring.Component):
    """Execute host frames: HELLO, WRITE, READ and RUN, and reply to each.

    Owns the layer table, weight and row memories (and, through the sequencer, the
    counters); reaches the activation scratchpad through the element port ``act_*``. Every
    check of a request happens before anything is written, in this order:

    * a frame the receiver flagged (``BAD_CRC``, ``BAD_LENGTH``) is answered with that code;
    * HELLO: length 0, else ``BAD_LENGTH``;
    * WRITE: length ≥ 3 (``BAD_LENGTH``), memory LAYERS/WEIGHTS/ROWS/ACTS (``BAD_MEMORY``),
      whole words (``BAD_LENGTH``), ``addr + words ≤ depth`` (``BAD_ADDRESS``); reply ACK;
    * READ: length 5 (``BAD_LENGTH``), memory id ≤ COUNTERS (``BAD_MEMORY``),
      ``count * word_bytes ≤ max_payload`` (``BAD_LENGTH``), ``addr + count ≤ depth``
      (``BAD_ADDRESS``); reply DATA with the words, little-endian;
    * RUN: length 2 (``BAD_LENGTH``), ``1 ≤ count`` and ``first + count ≤ layer_depth``
      (``BAD_LAYER``); reply
      DATA with the four u32 counters when the run is done;
    * any other type: ``BAD_TYPE``.

    The memories are byte-granular (words padded to whole bytes): a WRITE stores each payload
    byte in its lane as it arrives and a READ picks each reply byte from the addressed word.
    The row memory is a :class:`~gsaccel.hw.memory.SinglePortMemory` (SPRAM on an iCE40
    UltraPlus), the layer table and weights block RAM. How many cycles a request takes is no
    part of the contract, only the run's (``counters.cycles``).

    Parameters
    ----------
    cfg : CoreConfig

    Members
    -------
    i_frame : In(stream.Signature(frame_layout(cfg)))
        From :class:`~gsaccel.hw.framing.FrameReceiver`; released (``ready``) when the reply
        starts.
    pl_addr : Out(range(cfg.max_payload))
    pl_data : In(8)
        The receiver's payload buffer (the byte at the ``pl_addr`` of two cycles ago).
    o_reply : Out(stream.Signature(reply_layout()))
    o_data : Out(stream.Signature(8))
        To :class:`~gsaccel.hw.framing.FrameTransmitter`.
    act_addr : Out(range(2 * cfg.buffer_size))
        Element address in the activation buffers.
    act_wr_en : Out(1)
    act_wr_data : Out(signed(8))
    act_rd_data : In(signed(8))
        Element at ``act_addr``, two cycles after (only while ``owner`` is HOST).
    busy : Out(1)
        A request is being executed or answered.
    error : Out(1)
        The last reply was an ERROR (for a status LED).
    o_group, o_row, owner, seg_log2, shift, relu, src, dst, basis, n_chunks, basis_start,
    basis_done, engine_idle, writer_idle, issue, issue_lanes, stall
        The :class:`Sequencer`'s datapath ports, passed through.

    Raises
    ------
    TypeError
        If ``cfg`` is not a :class:`CoreConfig`.
    """

    def __init__(self, cfg):
        check_config(cfg)
        self._cfg = cfg
        super().__init__({
            "i_frame":     In(stream.Signature(frame_layout(cfg))),
            "pl_addr":     Out(range(max(2, cfg.max_payload))),
            "pl_data":     In(8),
            "o_reply":     Out(stream.Signature(reply_layout())),
            "o_data":      Out(stream.Signature(8)),
            "act_addr":    Out(range(2 * cfg.buffer_size)),
            "act_wr_en":   Out(1),
            "act_wr_data": Out(signed(8)),
            "act_rd_data": In(signed(8)),
            "busy":        Out(1),
            "error":       Out(1),
            **_datapath_members(cfg),
        })

    @property
    def cfg(self):
        return self._cfg

    def elaborate(self, platform):

        cfg = self._cfg
        m = Module()
        m.submodules.sequencer = seq = Sequencer(cfg)

        # Sequencer datapath ports pass straight through.
        for name, member in _datapath_members(cfg).items():
            if member.is_signature:
                wiring.connect(m, getattr(seq, name), wiring.flipped(getattr(self, name)))
            elif member.flow == wiring.Out:
                m.d.comb += getattr(self, name).eq(getattr(seq, name))
            else:
                m.d.comb += getattr(seq, name).eq(getattr(self, name))

        # Host memories ---------------------------------------------------------------------
        # Byte-granular (8-bit write lanes, word padded to whole bytes): a WRITE puts each
        # payload byte straight into its lane and a READ picks the byte out of the addressed
        # word, so nothing word-wide is registered or multiplexed on the host side.
        mem_ids = list(MemoryId)
        word_sizes = {mem_id: word_bytes(memory_layout(cfg, mem_id)) for mem_id in mem_ids}
        max_word = max(word_sizes.values())
        hello = hello_payload(cfg)

        frame = self.i_frame.payload
        hdr = Signal(40)                      # first five payload bytes
        hdr_index = Signal(range(7))
        mem_sel, addr_hi, hdr_count = hdr[0:8], hdr[8:24], hdr[24:40]
        kind = Signal(range(FrameType.RUN + 1))  # request type (0: any unknown one)
        mem = Signal(range(len(MemoryId)))    # memory of the request, once checked
        cur = Signal(17)                      # word address being checked, read or written
        m.d.comb += seq.host_addr.eq(cur)
        rest = Signal(16)                     # bytes (WRITE) or words (READ) still to go
        ptr = Signal(range(max(cfg.max_payload, len(hello)) + 1))  # payload / HELLO byte index
        ptr_end = Signal()                    # ``ptr`` is past the WRITE payload
        word_size = Signal(range(max_word + 1))
        last_byte = Signal(range(max_word))   # word_size - 1
        step = Signal(range(max_word + 1))    # what a word takes off ``rest``
        rest_next = rest - step
        byte_index = Signal(range(max_word))  # byte within the word
        # A payload byte arrives this cycle (only in WRITE_DATA): write it to lane ``lane`` of
        # word ``cur`` of the memory ``write_to`` (both one-hot, so that the write enables are
        # one gate from registers).
        data_fetched = Signal()               # a payload byte was addressed a cycle ago
        data_valid = Signal()
        lane = Signal(max_word)
        write_to = Signal(MemoryId.ACTS + 1)
        rd_byte = Signal(8)                   # byte ``byte_index`` of word ``cur`` (READ)
        rd_byte_q = Signal(8)                 # ... registered, a cycle later
        tx_byte = Signal(8)                   # the READ byte on ``o_data``
        tx_last = Signal()                    # ... is its word's last
        bad_len = Signal()
        bad_mem = Signal()
        bad_layer = Signal()
        bad_addr = Signal()
        fits = Signal()                       # the size loop takes another word
        over = Signal()                       # ... or has counted past max_payload
        depth_limit = Signal(17)              # words of the request's memory
        # The receiver is released (``i_frame.ready``) the cycle after the reply starts, from
        # a register: the frame is not looked at again, and the receiver's FSM is far away.
        release = Signal()
        m.d.sync += release.eq(0)
        m.d.comb += self.i_frame.ready.eq(release)
        reply_type = Signal(8)
        reply_seq = Signal(8)
        reply_len = Signal(17)                # also a READ's byte count while it is checked
        replying = Signal()

        def write_enables(mem_id, size):
            return Cat(data_valid & write_to[mem_id] & lane[k] for k in range(size))

        # The host reads words through the sequencer's registers (see Sequencer), two cycles
        # after it presents their address.
        read_data = {MemoryId.LAYERS: seq.layer_word.as_value(),
                     MemoryId.WEIGHTS: seq.group_word.as_value(),
                     MemoryId.ROWS: seq.row_word.as_value()}
        for mem_id, port_name in ((MemoryId.LAYERS, "layer"), (MemoryId.WEIGHTS, "weight")):
            size = word_sizes[mem_id]
            m.submodules[f"{port_name}_mem"] = store = SimpleDualPortMemory(
                width=8 * size, depth=memory_depth(cfg, mem_id), granularity=8)
            m.d.comb += [store.wr_addr.eq(cur), store.wr_data.eq(Cat([self.pl_data] * size)),
                         store.wr_en.eq(write_enables(mem_id, size)),
                         getattr(seq, f"{port_name}_data").eq(store.rd_data)]
            # The sequencer reads while it runs, the host otherwise.
            if port_name == "layer":
                m.d.comb += [store.rd_addr.eq(Mux(seq.busy, seq.layer_addr, cur)),
                             store.rd_en.eq(1)]
            else:
                m.d.comb += [store.rd_addr.eq(seq.weight_addr), store.rd_en.eq(seq.weight_en)]
        # The row memory is the one that fits an iCE40UP's SPRAM: the sequencer reads it only
        # while it runs and the host only while it does not, so one address port serves both.
        size = word_sizes[MemoryId.ROWS]
        m.submodules.row_mem = rows = SinglePortMemory(width=8 * size, depth=cfg.row_depth,
                                                       granularity=8)
        m.d.comb += [rows.addr.eq(Mux(seq.busy, seq.row_addr, cur)),
                     rows.rd_en.eq(seq.row_en),
                     rows.wr_en.eq(write_enables(MemoryId.ROWS, size)),
                     rows.wr_data.eq(Cat([self.pl_data] * size)),
                     seq.row_data.eq(rows.rd_data)]
        m.d.comb += [self.act_addr.eq(cur), self.act_wr_data.eq(self.pl_data),
                     self.act_wr_en.eq(write_enables(MemoryId.ACTS, 1))]

        # The registered word holds while ``cur`` does, so the bytes of a word are picked from
        # it one by one: byte ``byte_index`` of each memory's word is registered, then the
        # request's memory's (two cycles in all).
        picked = {}
        for mem_id, value in read_data.items():
            # Bits past the layout's are padding: they read as zeros, as in the golden model,
            # whatever the host wrote there.
            word = Cat(value, Const(0, 8 * word_sizes[mem_id] - len(value)))
            picked[mem_id] = Signal(8, name=f"picked_{mem_id.name.lower()}")
            # A copy of byte_index per memory (each with its own enable, so that Yosys keeps
            # them apart), placed by its word: byte_index went 7 ns across an ECP5-85.
            index = Signal.like(byte_index, name=f"byte_index_{mem_id.name.lower()}")
            if cfg.deep_pipeline:
                with m.If(mem == mem_id):
                    m.d.sync += index.eq(byte_index)
            else:
                m.d.comb += index.eq(byte_index)
            m.d.sync += picked[mem_id].eq(word.word_select(index, 8))
        picked[MemoryId.ACTS] = Signal(8, name="picked_acts")
        m.d.sync += picked[MemoryId.ACTS].eq(self.act_rd_data)
        picked[MemoryId.COUNTERS] = Signal(8, name="picked_counters")
        m.d.sync += picked[MemoryId.COUNTERS].eq(seq.counters.as_value().word_select(
            Cat(byte_index[:2], cur[:2]), 8))
        with m.Switch(mem):
            for mem_id, value in picked.items():
                with m.Case(mem_id):
                    m.d.comb += rd_byte.eq(value)
        m.d.sync += rd_byte_q.eq(rd_byte)

        m.d.comb += [
            self.o_reply.valid.eq(replying),
            self.o_reply.payload.type.eq(reply_type),
            self.o_reply.payload.seq.eq(reply_seq),
            self.o_reply.payload.length.eq(reply_len),
        ]

        def reply(type_, length, next_state):
            # Latch the header and release the receiver: the payload is no longer needed.
            m.d.sync += [reply_type.eq(type_), reply_seq.eq(frame.seq), replying.eq(1),
                         self.error.eq(type_ == FrameType.ERROR), release.eq(1)]
            if length is not None:
                m.d.sync += reply_len.eq(length)
            m.next = next_state

        def error(code):
            m.d.sync += tx_byte.eq(code)
            reply(FrameType.ERROR, 1, "SEND_ERROR")

        # The checks run over several cycles (DECODE, CHECK, SIZE, VERDICT), each deciding
        # from registers only, so no check is a long path from the frame into the FSM.
        with m.FSM(name="cmd") as fsm:
            with m.State("IDLE"):
                with m.If(self.i_frame.valid):
                    with m.If(frame.error != 0):
                        error(frame.error)
                    with m.Else():
                        m.d.sync += hdr_index.eq(0)
                        m.next = "HEADER"

            with m.State("HEADER"):
                # Read payload bytes 0..4 (whether or not the frame has them; lengths are
                # checked before any of them is used); each arrives two cycles after its
                # address.
                m.d.comb += self.pl_addr.eq(hdr_index)
                m.d.sync += hdr_index.eq(hdr_index + 1)
                with m.Switch(hdr_index):
                    for k in range(2, 7):
                        with m.Case(k):
                            m.d.sync += hdr[8 * (k - 2):8 * (k - 1)].eq(self.pl_data)
                with m.If(hdr_index == 6):
                    m.next = "DECODE"

            with m.State("DECODE"):
                # Register what the checks compare: flags for the length, memory and layer
                # checks, the word size, and the start of the size loop.
                is_write = frame.type == FrameType.WRITE
                m.d.sync += [
                    kind.eq(0), mem.eq(mem_sel),
                    cur.eq(addr_hi), reply_len.eq(0),
                    rest.eq(Mux(is_write, frame.length - 3, hdr_count)),
                    bad_mem.eq(mem_sel > Mux(is_write, MemoryId.ACTS, MemoryId.COUNTERS)),
                    bad_layer.eq((hdr[8:16] == 0) |
                                 (hdr[0:8] + hdr[8:16] > cfg.layer_depth)),
                ]
                for type_, good_length in ((FrameType.HELLO, lambda n: n == 0),
                                           (FrameType.WRITE, lambda n: n >= 3),
                                           (FrameType.READ, lambda n: n == 5),
                                           (FrameType.RUN, lambda n: n == 2)):
                    with m.If(frame.type == type_):
                        m.d.sync += [kind.eq(type_), bad_len.eq(~good_length(frame.length))]
                with m.Switch(mem_sel[:len(mem)]):
                    for mem_id in mem_ids:
                        with m.Case(mem_id):
                            size = word_sizes[mem_id]
                            # WRITE counts bytes down by whole words, READ words down by one.
                            m.d.sync += [word_size.eq(size), last_byte.eq(size - 1),
                                         step.eq(Mux(is_write, size, 1)),
                                         depth_limit.eq(memory_depth(cfg, mem_id))]
                m.next = "CHECK"

            with m.State("CHECK"):
                with m.Switch(kind):
                    with m.Case(FrameType.HELLO):
                        with m.If(bad_len):
                            error(ErrorCode.BAD_LENGTH)
                        with m.Else():
                            m.d.sync += [ptr.eq(1), tx_byte.eq(hello[0])]
                            reply(FrameType.DATA, len(hello), "SEND_HELLO")
                    with m.Case(FrameType.WRITE, FrameType.READ):
                        with m.If(bad_len):
                            error(ErrorCode.BAD_LENGTH)
                        with m.Elif(bad_mem):
                            error(ErrorCode.BAD_MEMORY)
                        with m.Else():
                            m.next = "SIZE"
                    with m.Case(FrameType.RUN):
                        with m.If(bad_len):
                            error(ErrorCode.BAD_LENGTH)
                        with m.Elif(bad_layer):
                            error(ErrorCode.BAD_LAYER)
                        with m.Else():
                            m.d.comb += [seq.start.eq(1), seq.first.eq(hdr[0:8]),
                                         seq.count.eq(hdr[8:16])]
                            m.next = "RUN"
                    with m.Default():
                        error(ErrorCode.BAD_TYPE)

            with m.State("SIZE"):
                # One word per two cycles, no multiplier or divider: a WRITE takes a word's
                # bytes off ``rest`` (its length after the header) while a whole word is left,
                # a READ one word off ``rest`` (its count) until none is left. Either way
                # ``cur`` ends at the end address and ``reply_len`` at the bytes counted;
                # past max_payload a READ stops at once, so the loop is short whatever the
                # count. The test is registered: the comparison's carry chain ends there.
                m.d.sync += [over.eq(reply_len > cfg.max_payload),
                             fits.eq((rest >= step) & ~(reply_len > cfg.max_payload))]
                m.next = "SIZE_STEP"
            with m.State("SIZE_STEP"):
                with m.If(fits):
                    m.d.sync += [rest.eq(rest_next), cur.eq(cur + 1),
                                 reply_len.eq(reply_len + word_size)]
                    m.next = "SIZE"
                with m.Else():
                    # A WRITE leaves a partial word, a READ too many bytes: BAD_LENGTH.
                    m.d.sync += bad_len.eq((rest != 0) | over)
                    m.d.sync += bad_addr.eq(cur > depth_limit)
                    m.next = "VERDICT"

            with m.State("VERDICT"):
                with m.If(bad_len):
                    error(ErrorCode.BAD_LENGTH)
                with m.Elif(bad_addr):
                    error(ErrorCode.BAD_ADDRESS)
                with m.Elif(kind == FrameType.WRITE):
                    # ``rest`` counts the payload bytes (``reply_len``) down, so that the end
                    # of the payload is a flag, not a comparison with the frame length.
                    m.d.sync += [cur.eq(addr_hi), ptr.eq(3), rest.eq(reply_len), step.eq(1),
                                 ptr_end.eq(reply_len == 0), data_fetched.eq(0),
                                 data_valid.eq(0),
                                 byte_index.eq(0), lane.eq(1),
                                 write_to.eq(Cat(mem == i for i in range(len(write_to))))]
                    m.next = "WRITE_DATA"
                with m.Else():
                    m.d.sync += [cur.eq(addr_hi), rest.eq(hdr_count)]
                    reply(FrameType.DATA, None, "READ_FIRST")   # reply_len: the bytes counted

            with m.State("WRITE_DATA"):
                # Overlapped steps per byte: address the payload buffer, wait for its
                # registered output, then write the byte that arrives into its lane of word
                # ``cur``.
                m.d.comb += self.pl_addr.eq(ptr)
                m.d.sync += [data_fetched.eq(~ptr_end), data_valid.eq(data_fetched)]
                with m.If(~ptr_end):
                    m.d.sync += [ptr.eq(ptr + 1), rest.eq(rest_next), ptr_end.eq(rest == 1)]
                with m.If(data_valid):
                    with m.If(byte_index == last_byte):
                        m.d.sync += [byte_index.eq(0), lane.eq(1), cur.eq(cur + 1)]
                    with m.Else():
                        m.d.sync += [byte_index.eq(byte_index + 1), lane.eq(lane << 1)]
                with m.If(ptr_end & ~data_fetched & ~data_valid):
                    reply(FrameType.ACK, 0, "WAIT_REPLY")

            with m.State("RUN"):
                with m.If(seq.done):
                    m.d.sync += [mem.eq(MemoryId.COUNTERS), cur.eq(0),
                                 rest.eq(len(COUNTER_NAMES)), step.eq(1), last_byte.eq(3)]
                    reply(FrameType.DATA, 4 * len(COUNTER_NAMES), "READ_FIRST")

            with m.State("READ_FIRST"):
                m.d.sync += byte_index.eq(0)
                with m.If(rest == 0):
                    m.next = "WAIT_REPLY"
                with m.Else():
                    m.next = "READ_ADDR"
            # A word's bytes go out through four registers: the word (the sequencer's, or
            # the scratchpad's output), the picked bytes, ``rd_byte_q`` and the byte on offer
            # ``tx_byte``. Reads run at the UART's pace, so the cycles this takes per byte
            # cost nothing.
            with m.State("READ_ADDR"):
                # ``cur`` is on the read ports now; its word is registered two cycles on and
                # holds.
                m.next = "READ_WAIT"
            with m.State("READ_WAIT"):
                # (The weight memory reads ``cur`` a cycle late.)
                m.next = "READ_WAIT_2"
            with m.State("READ_WAIT_2"):
                m.next = "READ_PICK"
            with m.State("READ_PICK"):
                m.next = "READ_PICK_2"
            with m.State("READ_PICK_2"):
                # ``rd_byte_q`` takes byte ``byte_index`` of the word.
                m.next = "READ_LOAD"
            with m.State("READ_LOAD"):
                m.d.sync += [tx_byte.eq(rd_byte_q), tx_last.eq(byte_index == last_byte)]
                m.next = "READ_BYTES"
            with m.State("READ_BYTES"):
                m.d.comb += [self.o_data.valid.eq(1), self.o_data.payload.eq(tx_byte)]
                with m.If(self.o_data.ready):
                    with m.If(tx_last):
                        m.d.sync += [byte_index.eq(0), cur.eq(cur + 1), rest.eq(rest_next)]
                        with m.If(rest == 1):
                            m.next = "WAIT_REPLY"
                        with m.Else():
                            m.next = "READ_ADDR"
                    with m.Else():
                        m.d.sync += byte_index.eq(byte_index + 1)
                        m.next = "READ_NEXT"
            with m.State("READ_NEXT"):
                # The per-memory copies of ``byte_index`` take the new index.
                m.next = "READ_PICK"

            with m.State("SEND_HELLO"):
                # ``tx_byte`` holds HELLO byte ``ptr - 1``.
                m.d.comb += [self.o_data.valid.eq(1), self.o_data.payload.eq(tx_byte)]
                with m.If(self.o_data.ready):
                    m.d.sync += [ptr.eq(ptr + 1),
                                 tx_byte.eq(Array(Const(b, 8) for b in hello + b"\0")[ptr])]
                    with m.If(ptr == len(hello)):
                        m.next = "WAIT_REPLY"
            with m.State("SEND_ERROR"):
                # ``tx_byte`` holds the error code.
                m.d.comb += [self.o_data.valid.eq(1), self.o_data.payload.eq(tx_byte)]
                with m.If(self.o_data.ready):
                    m.next = "WAIT_REPLY"
            with m.State("WAIT_REPLY"):
                with m.If(self.o_reply.ready):
                    m.d.sync += replying.eq(0)
                    m.next = "IDLE"

        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE") | self.i_frame.valid)
        return m
