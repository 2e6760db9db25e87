"""The result writer: queues sum vectors, adds each output's bias, requantises it to int8 and
writes it to the scratchpad, one output per cycle (serial) or a row line of up to V outputs
per cycle (vector); and its requantiser."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from .component import CoreComponent
from .engine import sums_layout
from .layouts import layer_control_layout, row_stream_layout
from .scratchpad import BankPort, bank_addr_width

__all__ = ["Requantizer", "ResultWriter", "WRITE_LATENCY"]


class Requantizer(wiring.Component):
    """Requantisation of an accumulator value to int8 (docs/architecture.md).

    ``shift`` is sampled a cycle ahead: ``result`` uses the ``shift`` of the previous cycle
    (it is a layer constant, set long before the first value of a layer arrives). With
    ``pipelined``, the value is registered after the rounding add and again after the shift,
    so ``result`` is that of the ``value`` (and ``relu``) of two cycles ago; otherwise it is
    combinational.

    ``value`` (``acc_width`` bits, already wrapped); if ``shift > 0`` add
    ``1 << (shift - 1)`` (round half up) and shift right arithmetically, computed exactly in
    enough bits that it never wraps; saturate to [-128, 127]; then ``max(., 0)`` if ``relu``.

    Parameters
    ----------
    acc_width : int
        Width of ``value``.
    pipelined : bool
        Registers after the rounding add and after the shift (two cycles of latency).

    Members
    -------
    value : In(signed(acc_width))
    shift : In(5)
    relu : In(1)
    result : Out(signed(8))

    Raises
    ------
    TypeError
        If ``acc_width`` is not a positive integer.
    ValueError
        If ``acc_width`` is not between 8 and 32.
    """

    def __init__(self, *, acc_width, pipelined=False):
        if not isinstance(acc_width, int) or isinstance(acc_width, bool) or acc_width <= 0:
            raise TypeError(f"Accumulator width must be a positive integer, not {acc_width!r}")
        if not 8 <= acc_width <= 32:
            raise ValueError(f"Accumulator width must be between 8 and 32, not {acc_width!r}")
        self._acc_width = acc_width
        self._pipelined = bool(pipelined)
        super().__init__({
            "value":  In(signed(acc_width)),
            "shift":  In(5),
            "relu":   In(1),
            "result": Out(signed(8)),
        })

    #: Cycles from ``value`` to ``result`` when pipelined (the registers after the rounding
    #: add and after the shift); 0 otherwise.
    PIPELINED_LATENCY = 2

    @property
    def acc_width(self):
        return self._acc_width

    @property
    def latency(self):
        return self.PIPELINED_LATENCY if self._pipelined else 0

    def elaborate(self, platform):
        m = Module()
        # A shift of acc_width or more rounds every value to 0: value + 2**(shift-1) lies in
        # [0, 2**shift). Below that, value + 2**(shift-1) fits acc_width + 1 bits, so the
        # exact datapath is 25 bits wide rather than the 33 that shift 31 would need.
        width = self._acc_width + 1
        # ``shift`` is a layer constant: what depends on it alone is registered, which takes
        # the decode of ``1 << shift`` off the path through the adder and the shifter.
        in_range = Signal(init=1)           # the values for shift = 0, its reset value
        half = Signal(width)
        m.d.sync += [in_range.eq(self.shift < self._acc_width),
                     half.eq((Const(1, width + 1) << self.shift)[1:])]  # (1 << shift) >> 1
        # The rounding add, the barrel shift, the saturation compares: on an iCE40 the three
        # together are the writer's longest path, on an ECP5 at 100 MHz each needs a cycle.
        domain = m.d.sync if self._pipelined else m.d.comb
        rounded = Signal(signed(width))
        shifted = Signal(signed(width))
        relu = [self.relu]
        domain += rounded.eq(self.value + half.as_signed())
        domain += shifted.eq(rounded >> self.shift)
        if self._pipelined:
            for stage in range(self.latency):
                relu.append(Signal(name=f"relu{stage + 1}"))
                delayed = Signal(init=1, name=f"in_range{stage + 1}")
                m.d.sync += [relu[-1].eq(relu[-2]), delayed.eq(in_range)]
                in_range = delayed
        relu = relu[-1]
        saturated = Signal(signed(8))
        with m.If(shifted > 127):
            m.d.comb += saturated.eq(127)
        with m.Elif(shifted < -128):
            m.d.comb += saturated.eq(-128)
        with m.Else():
            m.d.comb += saturated.eq(shifted)
        m.d.comb += self.result.eq(Mux(~in_range | (relu & saturated[-1]), 0, saturated))
        return m


#: The writer's registered stages before the requantiser (the slot's sum and the row's bias,
#: then their sum) and after it (the saturated result, which drives the scratchpad's write
#: port).
_SUM_STAGES = 2
_RESULT_STAGES = 1
#: Cycles from a slot cycle of the writer to its scratchpad write (``wr_en`` high): the
#: stages before the requantiser, the requantiser's and the saturated result's.
WRITE_LATENCY = _SUM_STAGES + Requantizer.PIPELINED_LATENCY + _RESULT_STAGES


class ResultWriter(CoreComponent):
    """Requantising writer of sum vectors: serial (one output slot per cycle) or, with
    ``cfg.vector_writer``, vector (one row line, up to V outputs, per cycle).

    Sum vectors enter a :class:`~amaranth.lib.fifo.SyncFIFO` of ``result_queue // V``
    vectors. The writer takes the head vector with the next word of the row stream in one
    cycle (a *writer cycle*), when both are available.

    Serial (``i_row`` carries row records, :func:`~gsaccel.hw.layouts.row_record_layout`):
    writer cycle ``j`` of a vector takes its slot ``j`` (``j < V/e``) with the next record;
    in writer cycle ``s`` it registers the slot's sum, the bias and the write's bank and
    address (bank ``out_elem % V`` at ``base + out_elem // V``, wrapping). In the vector's
    last slot cycle it pops the queue and pulses ``credit``.

    Vector (``i_row`` carries row lines, :func:`~gsaccel.hw.layouts.row_line_layout`): in
    writer cycle ``s`` it registers, for every bank ``k``, the sum of slot
    ``records[k].slot`` (modulo V/e) of the head vector, the record's bias and the write's
    address (``base + records[k].offset``, wrapping). After a line with ``last`` or the
    pixel's last line (``i_row.payload.end``) it pops the queue and pulses ``credit``.

    Both then, per write, in ``s+1`` add the sum and the bias (wrapping), in ``s+2`` round,
    in ``s+3`` shift, in ``s+4`` saturate, and in ``s+5`` drive the scratchpad write (if
    the record is ``valid``): :attr:`latency` is the same.

    ``control`` must be stable during a layer.

    Parameters
    ----------
    cfg : CoreConfig
        Checked by :class:`~gsaccel.hw.component.CoreComponent` (``TypeError`` if it is not one).

    Members
    -------
    i_sums : In(stream.Signature(sums_layout(cfg)))
    i_row : In(stream.Signature(row_stream_layout(cfg)))
        The row stream: records (one per slot) or lines, in order, each with its pixel's
        output base and whether it is the pixel's last word.
    control : In(layer_control_layout(cfg))
        The layer's settings; the writer uses ``seg_log2`` (log2 of e: a vector has V/e
        slots, one for values above ``log2(V)``), ``shift`` and ``relu``.
    banks : Out(BankPort(addr_width=BA, read=False)).array(V)
        The scratchpad's write ports.
    credit : Out(1)
        Pulses in the writer cycle that pops a vector.
    idle : Out(1)
        Queue empty and no write in flight.
    """

    def members(self, cfg):
        lanes, addr_width = cfg.lanes, bank_addr_width(cfg)
        return {
            "i_sums":   In(stream.Signature(sums_layout(cfg))),
            "i_row":    In(stream.Signature(row_stream_layout(cfg))),
            "control":  In(layer_control_layout(cfg)),
            "banks":    Out(BankPort(addr_width=addr_width, read=False)).array(lanes),
            "credit":   Out(1),
            "idle":     Out(1),
        }

    @property
    def queue_depth(self):
        """Sum vectors the queue holds."""
        return self._cfg.result_vectors

    @property
    def width(self):
        """Outputs the writer can write per cycle: V (vector writer) or 1."""
        return self._cfg.lanes if self._cfg.vector_writer else 1

    @property
    def latency(self):
        """Cycles from a writer cycle to its scratchpad writes: :data:`WRITE_LATENCY`."""
        return WRITE_LATENCY

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        lanes, bank_bits, acc_width = cfg.lanes, cfg.bank_bits, cfg.acc_width
        layout = sums_layout(cfg)

        m.submodules.queue = queue = SyncFIFO(width=layout.size, depth=self.queue_depth)
        m.d.comb += [
            queue.w_data.eq(self.i_sums.payload.as_value()),
            queue.w_en.eq(self.i_sums.valid),
            self.i_sums.ready.eq(queue.w_rdy),
        ]
        head = layout(queue.r_data)

        # Writer cycle: the head vector with the next word of the row stream -----------------
        # V/e - 1, with e = V for any seg_log2 beyond log2(V) (as the engine and golden model).
        # seg_log2 is a layer constant: registered, this is off the slot -> pop -> credit path.
        last_slot = Signal(range(lanes))
        m.d.sync += last_slot.eq(Mux(self.control.seg_log2 >= bank_bits, 0,
                                     (Const(lanes, range(lanes + 1)) >> self.control.seg_log2) - 1))
        # ``queue.r_rdy`` as a register (``level_next != 0``, set a cycle ahead): it is the row
        # stream's ``ready``, which enables the row memory's every block RAM, and a compare
        # of the level there took 6 ns more across an ECP5-85.
        nonempty = Signal()
        pushed = queue.w_en & queue.w_rdy
        popped = queue.r_en & queue.r_rdy
        m.d.sync += nonempty.eq(pushed | Mux(popped, queue.level != 1, queue.level != 0))
        take = Signal()
        m.d.comb += [
            self.i_row.ready.eq(nonempty),
            take.eq(nonempty & self.i_row.valid),
        ]
        # Stage 1 registers each write's sum and bias (the queue is LUT RAM with an
        # asynchronous read, the row word comes from a register), stage 2 adds them: one
        # write (serial) or V, write k to bank k (vector).
        if cfg.vector_writer:
            stage1 = self._vector_slots(m, head, take, last_slot, queue)
        else:
            stage1 = self._serial_slot(m, head, take, last_slot, queue)
        m.d.sync += stage1.go.eq(take)

        # Sum + bias, requantise (two cycles), saturate, then write --------------------------
        ports = len(stage1.sums)
        go = [stage1.go, Signal(name="s2_go")]
        m.d.sync += go[1].eq(go[0])
        write, addr, data = [], [], []
        for k in range(ports):
            s2_value = Signal(signed(acc_width), name=f"s2_value{k}")
            s2_write = Signal(name=f"s2_write{k}")
            s2_addr = Signal.like(stage1.addrs[k], name=f"s2_addr{k}")
            m.d.sync += [
                s2_write.eq(stage1.go & stage1.writes[k]),
                s2_value.eq((stage1.sums[k] + stage1.biases[k])[:acc_width]),
                s2_addr.eq(stage1.addrs[k]),
            ]
            requantizer = Requantizer(acc_width=acc_width, pipelined=True)
            m.submodules[f"requantizer{k}" if ports > 1 else "requantizer"] = requantizer
            m.d.comb += [
                requantizer.value.eq(s2_value),
                requantizer.shift.eq(self.control.shift),
                requantizer.relu.eq(self.control.relu),
            ]
            # The requantiser's stages, then the saturated result's: the write's control goes
            # with the value, one register per stage up to the write port.
            write_k, addr_k = [s2_write], [s2_addr]
            for stage in range(_SUM_STAGES + 1, self.latency + 1):
                write_k.append(Signal(name=f"s{stage}_write{k}"))
                addr_k.append(Signal.like(s2_addr, name=f"s{stage}_addr{k}"))
                m.d.sync += [write_k[-1].eq(write_k[-2]), addr_k[-1].eq(addr_k[-2])]
            write.append(write_k[-1])
            addr.append(addr_k[-1])
            data.append(Signal(signed(8), name=f"data{k}"))
            m.d.sync += data[-1].eq(requantizer.result)
        for stage in range(_SUM_STAGES + 1, self.latency + 1):
            go.append(Signal(name=f"s{stage}_go"))
            m.d.sync += go[-1].eq(go[-2])

        # Scratchpad write, from registers ---------------------------------------------------
        if cfg.vector_writer:
            for bank, port in enumerate(self.banks):
                m.d.comb += [port.wr_en.eq(write[bank]), port.wr_addr.eq(addr[bank]),
                             port.wr_data.eq(data[bank])]
        else:
            for bank, port in enumerate(self.banks):
                m.d.comb += [
                    port.wr_en.eq(write[0] & (addr[0][:bank_bits] == bank)),
                    port.wr_addr.eq(addr[0][bank_bits:]),
                    port.wr_data.eq(data[0]),
                ]
        m.d.comb += self.idle.eq(~nonempty & ~Cat(*go).any())
        return m

    def _serial_slot(self, m, head, take, last_slot, queue):
        """Stage 1 of the serial writer: slot ``j`` of the head vector with the next row
        record; the write's element (its bank in the low bits, its bank address above)."""
        cfg = self._cfg
        bank_bits = cfg.bank_bits
        row, base = self.i_row.payload.row, self.i_row.payload.base
        stage = _Stage1(cfg, 1, cfg.col_width)
        slot = Signal(range(cfg.lanes))
        # Stage 1 loads every cycle (``go`` says whether it holds a writer cycle): ``take``
        # as the enable of its V * acc_width flip-flops took 10 ns across an ECP5-85.
        m.d.sync += [
            stage.sums[0].eq(head[slot]),
            stage.biases[0].eq(row.bias),
            stage.writes[0].eq(row.valid),
            stage.addrs[0].eq(Cat(row.out_elem[:bank_bits],
                                  (base + row.out_elem[bank_bits:])[:cfg.act_addr_width])),
        ]
        with m.If(take):
            with m.If(slot == last_slot):
                m.d.sync += slot.eq(0)
                m.d.comb += [queue.r_en.eq(1), self.credit.eq(1)]
            with m.Else():
                m.d.sync += slot.eq(slot + 1)
        return stage

    def _vector_slots(self, m, head, take, last_slot, queue):
        """Stage 1 of the vector writer: for every bank ``k`` the slot its record names
        (a V:1 multiplexer from the head vector) and the record's bias and address."""
        cfg = self._cfg
        line, base = self.i_row.payload.row, self.i_row.payload.base
        stage = _Stage1(cfg, cfg.lanes, cfg.act_addr_width)
        # Stage 1 loads every cycle, as in _serial_slot.
        for k, record in enumerate(line.records):
            slot = (record.slot & last_slot)[:max(1, cfg.bank_bits)]
            m.d.sync += [
                stage.sums[k].eq(head[slot]),
                stage.biases[k].eq(record.bias),
                stage.writes[k].eq(record.valid),
                stage.addrs[k].eq((base + record.offset)[:cfg.act_addr_width]),
            ]
        with m.If(take):
            with m.If(line.last | self.i_row.payload.end):
                m.d.comb += [queue.r_en.eq(1), self.credit.eq(1)]
        return stage


class _Stage1:
    """The registers of the writer's first stage: ``ports`` writes (sum, bias, valid,
    address of ``addr_width`` bits) and whether the stage holds a writer cycle (``go``)."""

    def __init__(self, cfg, ports, addr_width):
        self.go = Signal(name="s1_go")
        self.sums = [Signal(signed(cfg.acc_width), name=f"s1_sum{k}") for k in range(ports)]
        self.biases = [Signal(signed(cfg.acc_width), name=f"s1_bias{k}") for k in range(ports)]
        self.writes = [Signal(name=f"s1_write{k}") for k in range(ports)]
        self.addrs = [Signal(addr_width, name=f"s1_addr{k}") for k in range(ports)]
