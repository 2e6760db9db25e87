"""The core's command processor: executes host frames (HELLO, WRITE, READ, RUN) on the
host memories (layer table, weights, rows) and the activation scratchpad, and runs the
:class:`~gsaccel.hw.sequencer.Sequencer` for RUN."""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .component import CoreComponent
from .framing import frame_layout, reply_layout
from .layouts import (ADDRESS_BYTES, COUNTER_NAMES, ErrorCode, FrameType, Memory as MemoryId,
                      hello_payload, memory_depth, memory_layout, word_bytes)
from .memory import SimpleDualPortMemory, SinglePortMemory
from .scratchpad import ElementPort, element_addr_width
from .sequencer import Sequencer, datapath_members

__all__ = ["CommandProcessor"]

# Payload bytes before a WRITE's words (memory id, address) and of a READ (memory id,
# address, count): the header the processor reads in before it checks a request.
_WRITE_HEADER_BYTES = 1 + ADDRESS_BYTES
_HEADER_BYTES = _WRITE_HEADER_BYTES + 2


class CommandProcessor(CoreComponent):
    """Execute host frames: HELLO, WRITE, READ and RUN, and reply to each.

    Owns the layer table, weight and row memories (and, through the sequencer, the
    counters); reaches the activation scratchpad through the element port ``acts``. Every
    check of a request happens before anything is written, in this order:

    * a frame the receiver flagged (``BAD_CRC``, ``BAD_LENGTH``) is answered with that code;
    * HELLO: length 0, else ``BAD_LENGTH``;
    * WRITE: length ≥ 4 (``BAD_LENGTH``), memory LAYERS/WEIGHTS/ROWS/ACTS (``BAD_MEMORY``),
      whole words (``BAD_LENGTH``), ``addr + words ≤ depth`` (``BAD_ADDRESS``); reply ACK;
    * READ: length 6 (``BAD_LENGTH``), memory id ≤ COUNTERS (``BAD_MEMORY``),
      ``count * word_bytes ≤ max_payload`` (``BAD_LENGTH``), ``addr + count ≤ depth``
      (``BAD_ADDRESS``); reply DATA with the words, little-endian;
    * RUN: length 2 (``BAD_LENGTH``), ``1 ≤ count`` and ``first + count ≤ layer_depth``
      (``BAD_LAYER``); reply DATA with the four u32 counters when the run is done;
    * any other type: ``BAD_TYPE``.

    RUN executes at most once (DESIGN §4): the processor keeps the sequence number of the
    last RUN it started, and a RUN that carries it again (a duplicate on the link, or the
    host's resend after a lost reply) is answered with the counters of that run, which stay
    in the sequencer until the next run, without running the layers again: a second run
    would read the first one's output as its input. HELLO forgets the number (a host that
    connects starts afresh), and the host never gives two RUNs in a row one number.

    The memories are byte-granular (words padded to whole bytes): a WRITE stores each payload
    byte in its lane as it arrives and a READ picks each reply byte from the addressed word.
    The row memory is a :class:`~gsaccel.hw.memory.SinglePortMemory` (SPRAM on an iCE40
    UltraPlus), the layer table and weights block RAM. How many cycles a request takes is no
    part of the contract, only the run's (``counters.cycles``).

    Parameters
    ----------
    cfg : CoreConfig
        Checked by :class:`~gsaccel.hw.component.CoreComponent` (``TypeError`` if it is not one).

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
    acts : Out(ElementPort(addr_width=element_addr_width(cfg)))
        The activation buffers, an element at a time (through
        :class:`~gsaccel.hw.arbiter.ScratchpadArbiter`: ``rd_data`` is the element at
        ``addr`` two cycles after, only while ``owner`` is HOST).
    busy : Out(1)
        A request is being executed or answered.
    error : Out(1)
        The last reply was an ERROR (for a status LED).
    o_group, o_row, owner, control, basis, n_chunks, basis_start, basis_done, engine_idle,
    writer_idle, issue, issue_lanes, stall
        The :class:`~gsaccel.hw.sequencer.Sequencer`'s datapath ports
        (:func:`~gsaccel.hw.sequencer.datapath_members`), passed through.
    """

    def members(self, cfg):
        return {
            "i_frame":     In(stream.Signature(frame_layout(cfg))),
            "pl_addr":     Out(range(max(2, cfg.max_payload))),
            "pl_data":     In(8),
            "o_reply":     Out(stream.Signature(reply_layout())),
            "o_data":      Out(stream.Signature(8)),
            "acts":        Out(ElementPort(addr_width=element_addr_width(cfg))),
            "busy":        Out(1),
            "error":       Out(1),
            **datapath_members(cfg),
        }

    def elaborate(self, platform):

        cfg = self._cfg
        m = Module()
        m.submodules.sequencer = seq = Sequencer(cfg)

        # Sequencer datapath ports pass straight through.
        for name, member in datapath_members(cfg).items():
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
        hdr = Signal(8 * _HEADER_BYTES)       # the first payload bytes
        hdr_index = Signal(range(_HEADER_BYTES + 2))
        mem_sel = hdr[0:8]
        addr_hi = hdr[8:8 + 8 * ADDRESS_BYTES]
        hdr_count = hdr[8 + 8 * ADDRESS_BYTES:8 * _HEADER_BYTES]
        kind = Signal(range(FrameType.RUN + 1))  # request type (0: any unknown one)
        mem = Signal(range(len(MemoryId)))    # memory of the request, once checked
        cur = Signal(8 * ADDRESS_BYTES + 1)   # word address being checked, read or written
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
        depth_limit = Signal.like(cur)        # words of the request's memory
        # At most once: the sequence number of the last RUN started (while ``run_seq_valid``)
        # and whether the request repeats it (registered in DECODE).
        run_seq = Signal(8)
        run_seq_valid = Signal()
        repeat_run = Signal()
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
        # (Unless the scratchpad's banks take the SPRAMs: then block RAM, behind one port.)
        size = word_sizes[MemoryId.ROWS]
        m.submodules.row_mem = rows = SinglePortMemory(width=8 * size, depth=cfg.row_depth,
                                                       granularity=8, spram=not cfg.bank_halves)
        m.d.comb += [rows.addr.eq(Mux(seq.busy, seq.row_addr, cur)),
                     rows.rd_en.eq(seq.row_en),
                     rows.wr_en.eq(write_enables(MemoryId.ROWS, size)),
                     rows.wr_data.eq(Cat([self.pl_data] * size)),
                     seq.row_data.eq(rows.rd_data)]
        m.d.comb += [self.acts.addr.eq(cur), self.acts.wr_data.eq(self.pl_data),
                     self.acts.wr_en.eq(write_enables(MemoryId.ACTS, 1))]

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
        m.d.sync += picked[MemoryId.ACTS].eq(self.acts.rd_data)
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
        def reply_counters():
            # The RUN reply: the sequencer's counters, read as a COUNTERS READ would be.
            m.d.sync += [mem.eq(MemoryId.COUNTERS), cur.eq(0),
                         rest.eq(len(COUNTER_NAMES)), step.eq(1), last_byte.eq(3)]
            reply(FrameType.DATA, 4 * len(COUNTER_NAMES), "READ_FIRST")

        with m.FSM(name="cmd") as fsm:
            with m.State("IDLE"):
                with m.If(self.i_frame.valid):
                    with m.If(frame.error != 0):
                        error(frame.error)
                    with m.Else():
                        m.d.sync += hdr_index.eq(0)
                        m.next = "HEADER"

            with m.State("HEADER"):
                # Read the header's payload bytes (whether or not the frame has them;
                # lengths are checked before any of them is used); each arrives two cycles
                # after its address.
                m.d.comb += self.pl_addr.eq(hdr_index)
                m.d.sync += hdr_index.eq(hdr_index + 1)
                with m.Switch(hdr_index):
                    for k in range(2, _HEADER_BYTES + 2):
                        with m.Case(k):
                            m.d.sync += hdr[8 * (k - 2):8 * (k - 1)].eq(self.pl_data)
                with m.If(hdr_index == _HEADER_BYTES + 1):
                    m.next = "DECODE"

            with m.State("DECODE"):
                # Register what the checks compare: flags for the length, memory and layer
                # checks, the word size, and the start of the size loop.
                is_write = frame.type == FrameType.WRITE
                m.d.sync += [
                    kind.eq(0), mem.eq(mem_sel),
                    cur.eq(addr_hi), reply_len.eq(0),
                    rest.eq(Mux(is_write, frame.length - _WRITE_HEADER_BYTES, hdr_count)),
                    repeat_run.eq(run_seq_valid & (frame.seq == run_seq)),
                    bad_mem.eq(mem_sel > Mux(is_write, MemoryId.ACTS, MemoryId.COUNTERS)),
                    bad_layer.eq((hdr[8:16] == 0) |
                                 (hdr[0:8] + hdr[8:16] > cfg.layer_depth)),
                ]
                for type_, good_length in ((FrameType.HELLO, lambda n: n == 0),
                                           (FrameType.WRITE,
                                            lambda n: n >= _WRITE_HEADER_BYTES),
                                           (FrameType.READ, lambda n: n == _HEADER_BYTES),
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
                            m.d.sync += [ptr.eq(1), tx_byte.eq(hello[0]), run_seq_valid.eq(0)]
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
                        with m.Elif(repeat_run):
                            # Executed already: replay its reply.
                            reply_counters()
                        with m.Else():
                            m.d.comb += [seq.start.eq(1), seq.first.eq(hdr[0:8]),
                                         seq.count.eq(hdr[8:16])]
                            m.d.sync += [run_seq.eq(frame.seq), run_seq_valid.eq(1)]
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
                    m.d.sync += [cur.eq(addr_hi), ptr.eq(_WRITE_HEADER_BYTES),
                                 rest.eq(reply_len), step.eq(1),
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
                    reply_counters()

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
