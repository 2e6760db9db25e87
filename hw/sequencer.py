"""The core's control path: the command processor (WRITE/READ/HELLO/RUN frames, the host
memories) and the layer sequencer that runs a program on the datapath.

Control timing (the cycle contract with ``gsaccel.sw.golden``; docs/protocol.md): a RUN
counts ``RUN_OVERHEAD`` (= 1, its DONE cycle) plus, per layer, ``LAYER_OVERHEAD`` (= 3:
descriptor FETCH, LOAD, and the step to the next layer) on top of the datapath's time.
"""

from amaranth.hdl import Array, Const, Module, Mux, Signal, signed
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .config import check_config
from .framing import frame_layout, reply_layout
from .layouts import (COUNTER_NAMES, ErrorCode, FrameType, LayerKind, Memory as MemoryId, group_layout,
                      layer_layout, memory_depth, memory_layout, row_layout, word_bytes)

__all__ = ["Sequencer", "CommandProcessor", "ScratchpadOwner"]

#: Fewest cycles a GS layer spends in the GS state. A layer with groups always takes more
#: (its last write lands WRITE_LATENCY = 2 cycles after the writer's last slot); this makes an
#: empty layer cost ``LAYER_OVERHEAD + 0 + WRITE_LATENCY`` too, as the golden model says.
_MIN_GS_CYCLES = 3


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
    * LOAD registers the descriptor and primes the streams: the first group and row record
      are offered in the first GS cycle, which is cycle 0 of ``gs_layer_cycles``;
    * GS ends in the first cycle in which every group is taken and the engine and writer are
      idle; that cycle also steps to the next layer (FETCH or DONE follows);
    * BASIS: BASIS_START (``basis_start``) then BASIS until ``basis_done``, then NEXT;
    * DONE (``done`` high), then idle.

    So a GS layer costs ``3 + max(issue end, writer end) + WRITE_LATENCY`` cycles and a BASIS
    layer ``3 + n_chunks + BASIS_LATENCY``: ``LAYER_OVERHEAD = 3``, ``RUN_OVERHEAD = 1``.

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
    row_addr, row_en, row_data : Out, Out(1), In(row_layout(cfg))
        Row memory read port (likewise).
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
            **_datapath_members(cfg),
        })

    @property
    def cfg(self):
        return self._cfg

    def elaborate(self, platform):
        cfg = self._cfg
        m = Module()

        layer = Signal(layer_layout(cfg))
        index = Signal(8)           # layer being run
        left = Signal(9)            # layers left, including this one
        group_ptr = Signal(cfg.weight_addr_width)
        groups_left = Signal(17)
        row_ptr = Signal(cfg.row_addr_width)
        group_valid = Signal()
        gs_cycles = Signal(range(_MIN_GS_CYCLES))   # GS cycles so far, saturating
        row_valid = Signal()
        cycles, lane_cycles, stalls, groups = (self.counters[i] for i in range(4))

        m.d.comb += [
            self.layer_addr.eq(index),
            self.weight_addr.eq(group_ptr),
            self.row_addr.eq(row_ptr),
            self.o_group.valid.eq(group_valid),
            self.o_group.payload.eq(self.weight_data),
            self.o_row.valid.eq(row_valid),
            self.o_row.payload.eq(self.row_data),
            self.seg_log2.eq(layer.seg_log2),
            self.shift.eq(layer.shift),
            self.relu.eq(layer.relu),
            self.src.eq(layer.src),
            self.dst.eq(layer.dst),
            self.basis.eq(layer.basis if cfg.basis else 0),
            self.n_chunks.eq(layer.group_count),
        ]

        # Counters: every cycle of a run counts; the datapath reports its own events.
        with m.If(self.busy):
            m.d.sync += [
                cycles.eq(cycles + 1),
                lane_cycles.eq(lane_cycles + Mux(self.issue, self.issue_lanes, 0)),
                stalls.eq(stalls + self.stall),
                groups.eq(groups + self.issue),
            ]

        def step_layer():
            m.d.sync += [index.eq(index + 1), left.eq(left - 1),
                         self.owner.eq(ScratchpadOwner.HOST)]
            with m.If(left == 1):
                m.next = "DONE"
            with m.Else():
                m.next = "FETCH"

        with m.FSM(name="seq"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [index.eq(self.first), left.eq(self.count)]
                    m.d.sync += [c.eq(0) for c in (cycles, lane_cycles, stalls, groups)]
                    with m.If(self.count == 0):
                        m.next = "DONE"
                    with m.Else():
                        m.next = "FETCH"
            with m.State("FETCH"):
                m.d.comb += self.busy.eq(1)
                m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [layer.eq(self.layer_data), gs_cycles.eq(0)]
                # Prime the group and row streams from the descriptor now, so that the first
                # group is offered in the first GS cycle.
                m.d.comb += [self.weight_addr.eq(self.layer_data.group_base),
                             self.weight_en.eq(1),
                             self.row_addr.eq(self.layer_data.row_base), self.row_en.eq(1)]
                with m.If(self.layer_data.kind != LayerKind.BASIS):
                    m.d.sync += [group_valid.eq(self.layer_data.group_count != 0),
                                 row_valid.eq(1)]
                m.d.sync += [
                    group_ptr.eq(self.layer_data.group_base + 1),
                    groups_left.eq(Mux(self.layer_data.group_count != 0,
                                       self.layer_data.group_count - 1, 0)),
                    row_ptr.eq(Mux(self.layer_data.row_base == cfg.row_depth - 1, 0,
                                   self.layer_data.row_base + 1)),
                ]
                # Any kind but BASIS runs as GS, as in the golden model.
                with m.If(self.layer_data.kind == LayerKind.BASIS):
                    m.d.sync += self.owner.eq(ScratchpadOwner.BASIS)
                    m.next = "BASIS_START"
                with m.Else():
                    m.d.sync += self.owner.eq(ScratchpadOwner.GS)
                    m.next = "GS"
            with m.State("GS"):
                m.d.comb += self.busy.eq(1)
                # Groups: read ahead so that a group is offered every cycle the engine takes
                # one. The read port's data holds while its enable is low.
                group_slot_free = ~group_valid | self.o_group.ready
                m.d.comb += self.weight_en.eq(group_slot_free)
                with m.If(group_slot_free):
                    with m.If(groups_left != 0):
                        m.d.sync += [group_valid.eq(1), groups_left.eq(groups_left - 1),
                                     group_ptr.eq(group_ptr + 1)]
                    with m.Else():
                        m.d.sync += group_valid.eq(0)
                # Rows: the layer does not say how many it has; offer them while it runs.
                row_slot_free = ~row_valid | self.o_row.ready
                m.d.comb += self.row_en.eq(row_slot_free)
                with m.If(row_slot_free):
                    m.d.sync += [row_valid.eq(1),
                                 row_ptr.eq(Mux(row_ptr == cfg.row_depth - 1, 0, row_ptr + 1))]
                m.d.sync += gs_cycles.eq(Mux(gs_cycles == _MIN_GS_CYCLES - 1, gs_cycles,
                                             gs_cycles + 1))
                with m.If((groups_left == 0) & ~group_valid & self.engine_idle &
                          self.writer_idle & (gs_cycles == _MIN_GS_CYCLES - 1)):
                    # The layer's last cycle doubles as NEXT.
                    m.d.sync += [row_valid.eq(0), group_valid.eq(0)]
                    step_layer()
            with m.State("BASIS_START"):
                m.d.comb += [self.busy.eq(1), self.basis_start.eq(1)]
                m.next = "BASIS"
            with m.State("BASIS"):
                m.d.comb += self.busy.eq(1)
                with m.If(self.basis_done):
                    m.next = "NEXT"
            with m.State("NEXT"):
                m.d.comb += self.busy.eq(1)
                step_layer()
            with m.State("DONE"):
                m.d.comb += [self.busy.eq(1), self.done.eq(1)]
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
        The receiver's payload buffer (synchronous read).
    o_reply : Out(stream.Signature(reply_layout()))
    o_data : Out(stream.Signature(8))
        To :class:`~gsaccel.hw.framing.FrameTransmitter`.
    act_addr : Out(range(2 * cfg.buffer_size))
        Element address in the activation buffers.
    act_wr_en : Out(1)
    act_wr_data : Out(signed(8))
    act_rd_data : In(signed(8))
        Element at ``act_addr``, the cycle after (only while ``owner`` is HOST).
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
        from ..sw.protocol import hello_payload   # the one definition of the HELLO reply

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
        host_mems = {}
        for mem_id, layout, port_name in ((MemoryId.LAYERS, layer_layout(cfg), "layer"),
                                          (MemoryId.WEIGHTS, group_layout(cfg), "weight"),
                                          (MemoryId.ROWS, row_layout(cfg), "row")):
            mem = Memory(shape=layout.size, depth=memory_depth(cfg, mem_id), init=[])
            m.submodules[f"{port_name}_mem"] = mem
            host_mems[mem_id] = (mem.write_port(), mem.read_port(), port_name)

        mem_ids = list(MemoryId)
        word_sizes = {mem_id: word_bytes(memory_layout(cfg, mem_id)) for mem_id in mem_ids}
        max_word = max(word_sizes.values())
        hello = hello_payload(cfg)

        frame = self.i_frame.payload
        hdr = Signal(40)                      # first five payload bytes
        hdr_index = Signal(range(6))
        mem_sel = Signal(8)                   # memory id of the request
        addr_hi = hdr[8:24]
        cur = Signal(17)                      # word address being read or written
        count = Signal(17)                    # words left to read
        words = Signal(17)                    # words in a WRITE
        rest = Signal(17)                     # bytes of a WRITE not yet counted into words
        ptr = Signal(17)                      # payload byte index
        byte_index = Signal(range(max_word))  # byte within the word
        word = Signal(8 * max_word)
        data_valid = Signal()                 # a payload byte arrives this cycle
        write_pending = Signal()              # ``word`` is complete: write it this cycle
        err_code = Signal(8)
        reply_type = Signal(8)
        reply_seq = Signal(8)
        reply_len = Signal(16)
        replying = Signal()

        word_size = Signal(8)
        depth = Signal(17)
        read_bytes = Signal(16 + 8)           # bytes a READ of hdr's count would return
        with m.Switch(mem_sel):
            for mem_id in mem_ids:
                with m.Case(mem_id):
                    # Constant products: no multiplier for one size check.
                    m.d.comb += [word_size.eq(word_sizes[mem_id]),
                                 depth.eq(memory_depth(cfg, mem_id)),
                                 read_bytes.eq(hdr[24:40] * word_sizes[mem_id])]

        # Memory ports: the sequencer reads while it runs, the host otherwise.
        for mem_id, (wr, rd, port_name) in host_mems.items():
            m.d.comb += [
                wr.addr.eq(cur), wr.data.eq(word),
                wr.en.eq(write_pending & (mem_sel == mem_id)),
                getattr(seq, f"{port_name}_data").eq(rd.data),
            ]
            if port_name == "layer":
                m.d.comb += rd.addr.eq(Mux(seq.busy, seq.layer_addr, cur))
            else:
                m.d.comb += [rd.addr.eq(Mux(seq.busy, getattr(seq, f"{port_name}_addr"), cur)),
                             rd.en.eq(~seq.busy | getattr(seq, f"{port_name}_en"))]
        m.d.comb += [self.act_addr.eq(cur), self.act_wr_data.eq(word[:8]),
                     self.act_wr_en.eq(write_pending & (mem_sel == MemoryId.ACTS))]

        m.d.comb += [
            self.o_reply.valid.eq(replying),
            self.o_reply.payload.type.eq(reply_type),
            self.o_reply.payload.seq.eq(reply_seq),
            self.o_reply.payload.length.eq(reply_len),
        ]

        def reply(type_, length, next_state):
            # Latch the header and release the receiver: the payload is no longer needed.
            m.d.sync += [reply_type.eq(type_), reply_seq.eq(frame.seq), reply_len.eq(length),
                         replying.eq(1), self.error.eq(type_ == FrameType.ERROR)]
            m.d.comb += self.i_frame.ready.eq(1)
            m.next = next_state

        def error(code):
            m.d.sync += err_code.eq(code)
            reply(FrameType.ERROR, 1, "SEND_ERROR")

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
                # checked before any of them is used).
                m.d.comb += self.pl_addr.eq(hdr_index)
                m.d.sync += hdr_index.eq(hdr_index + 1)
                with m.Switch(hdr_index):
                    for k in range(1, 6):
                        with m.Case(k):
                            m.d.sync += hdr[8 * (k - 1):8 * k].eq(self.pl_data)
                            if k == 1:
                                m.d.sync += mem_sel.eq(self.pl_data)
                with m.If(hdr_index == 5):
                    m.next = "DECODE"

            with m.State("DECODE"):
                with m.Switch(frame.type):
                    with m.Case(FrameType.HELLO):
                        with m.If(frame.length != 0):
                            error(ErrorCode.BAD_LENGTH)
                        with m.Else():
                            m.d.sync += ptr.eq(0)
                            reply(FrameType.DATA, len(hello), "SEND_HELLO")
                    with m.Case(FrameType.WRITE):
                        with m.If(frame.length < 3):
                            error(ErrorCode.BAD_LENGTH)
                        with m.Elif(mem_sel > MemoryId.ACTS):
                            error(ErrorCode.BAD_MEMORY)
                        with m.Else():
                            m.d.sync += [rest.eq(frame.length - 3), words.eq(0)]
                            m.next = "WRITE_SIZE"
                    with m.Case(FrameType.READ):
                        read_count = hdr[24:40]
                        with m.If(frame.length != 5):
                            error(ErrorCode.BAD_LENGTH)
                        with m.Elif(mem_sel > MemoryId.COUNTERS):
                            error(ErrorCode.BAD_MEMORY)
                        with m.Elif(read_bytes > cfg.max_payload):
                            error(ErrorCode.BAD_LENGTH)
                        with m.Elif(addr_hi + read_count > depth):
                            error(ErrorCode.BAD_ADDRESS)
                        with m.Else():
                            m.d.sync += [cur.eq(addr_hi), count.eq(read_count)]
                            reply(FrameType.DATA, read_bytes, "READ_FIRST")
                    with m.Case(FrameType.RUN):
                        first, layers = hdr[0:8], hdr[8:16]
                        with m.If(frame.length != 2):
                            error(ErrorCode.BAD_LENGTH)
                        with m.Elif((layers == 0) | (first + layers > cfg.layer_depth)):
                            error(ErrorCode.BAD_LAYER)
                        with m.Else():
                            m.d.comb += [seq.start.eq(1), seq.first.eq(first),
                                         seq.count.eq(layers)]
                            m.next = "RUN"
                    with m.Default():
                        error(ErrorCode.BAD_TYPE)

            with m.State("WRITE_SIZE"):
                # Count whole words by repeated subtraction (no divider for one check).
                with m.If(rest >= word_size):
                    m.d.sync += [rest.eq(rest - word_size), words.eq(words + 1)]
                with m.Elif(rest != 0):
                    error(ErrorCode.BAD_LENGTH)
                with m.Elif(addr_hi + words > depth):
                    error(ErrorCode.BAD_ADDRESS)
                with m.Else():
                    m.d.sync += [cur.eq(addr_hi), ptr.eq(3), byte_index.eq(0),
                                 data_valid.eq(0), write_pending.eq(0)]
                    m.next = "WRITE_DATA"

            with m.State("WRITE_DATA"):
                # Three overlapped steps per byte: address the payload buffer, place the byte
                # in ``word``, write a completed word (``word`` is sampled at the same edge
                # the next word's first byte lands, so no cycle is lost).
                m.d.comb += self.pl_addr.eq(ptr)
                with m.If(ptr != frame.length):
                    m.d.sync += [ptr.eq(ptr + 1), data_valid.eq(1)]
                with m.Else():
                    m.d.sync += data_valid.eq(0)
                m.d.sync += write_pending.eq(0)
                with m.If(data_valid):
                    m.d.sync += word.word_select(byte_index, 8).eq(self.pl_data)
                    with m.If(byte_index == word_size - 1):
                        m.d.sync += [byte_index.eq(0), write_pending.eq(1)]
                    with m.Else():
                        m.d.sync += byte_index.eq(byte_index + 1)
                with m.If(write_pending):
                    m.d.sync += cur.eq(cur + 1)
                with m.If((ptr == frame.length) & ~data_valid & ~write_pending):
                    reply(FrameType.ACK, 0, "WAIT_REPLY")

            with m.State("RUN"):
                with m.If(seq.done):
                    m.d.sync += [mem_sel.eq(MemoryId.COUNTERS), cur.eq(0),
                                 count.eq(len(COUNTER_NAMES))]
                    reply(FrameType.DATA, 4 * len(COUNTER_NAMES), "READ_FIRST")

            with m.State("READ_FIRST"):
                with m.If(count == 0):
                    m.next = "WAIT_REPLY"
                with m.Else():
                    m.next = "READ_ADDR"
            with m.State("READ_ADDR"):
                # ``cur`` is on the read ports now; the word arrives next cycle.
                m.next = "READ_LATCH"
            with m.State("READ_LATCH"):
                with m.Switch(mem_sel):
                    for mem_id, (wr, rd, _) in host_mems.items():
                        with m.Case(mem_id):
                            m.d.sync += word.eq(rd.data)
                    with m.Case(MemoryId.ACTS):
                        m.d.sync += word.eq(self.act_rd_data.as_unsigned())
                    with m.Case(MemoryId.COUNTERS):
                        m.d.sync += word.eq(Array(seq.counters[i] for i in range(4))[cur[:2]])
                m.d.sync += byte_index.eq(0)
                m.next = "READ_BYTES"
            with m.State("READ_BYTES"):
                m.d.comb += [self.o_data.valid.eq(1),
                             self.o_data.payload.eq(word.word_select(byte_index, 8))]
                with m.If(self.o_data.ready):
                    with m.If(byte_index == word_size - 1):
                        m.d.sync += [byte_index.eq(0), cur.eq(cur + 1), count.eq(count - 1)]
                        with m.If(count == 1):
                            m.next = "WAIT_REPLY"
                        with m.Else():
                            m.next = "READ_ADDR"
                    with m.Else():
                        m.d.sync += byte_index.eq(byte_index + 1)

            with m.State("SEND_HELLO"):
                m.d.comb += [self.o_data.valid.eq(1),
                             self.o_data.payload.eq(Array(Const(b, 8) for b in hello)[ptr])]
                with m.If(self.o_data.ready):
                    m.d.sync += ptr.eq(ptr + 1)
                    with m.If(ptr == len(hello) - 1):
                        m.next = "WAIT_REPLY"
            with m.State("SEND_ERROR"):
                m.d.comb += [self.o_data.valid.eq(1), self.o_data.payload.eq(err_code)]
                with m.If(self.o_data.ready):
                    m.next = "WAIT_REPLY"
            with m.State("WAIT_REPLY"):
                with m.If(self.o_reply.ready):
                    m.d.sync += replying.eq(0)
                    m.next = "IDLE"

        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE") | self.i_frame.valid)
        return m
