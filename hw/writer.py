"""The result writer: queues sum vectors, adds each slot's bias, requantises it to int8 and
writes it to the scratchpad; and its requantiser."""

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
    """Requantising writer of sum vectors.

    Sum vectors enter a :class:`~amaranth.lib.fifo.SyncFIFO` of ``result_queue // V``
    vectors. The writer takes slot ``j`` (``j < V/e``) of the head vector with the next row
    record in one cycle (a *slot cycle*), when both are available: in slot cycle ``s`` it
    registers the slot's sum, the bias and the write's bank and address (bank
    ``out_elem % V`` at ``base + out_elem // V``, wrapping), in ``s+1`` adds the sum and the
    bias (wrapping), in ``s+2`` rounds, in ``s+3`` shifts, in ``s+4`` saturates, and in
    ``s+5`` drives the scratchpad write (if the record is ``valid``).
    In the last slot cycle of a vector it pops the queue and pulses ``credit``.

    ``control`` must be stable during a layer.

    Parameters
    ----------
    cfg : CoreConfig
        Checked by :class:`~gsaccel.hw.component.CoreComponent` (``TypeError`` if it is not one).

    Members
    -------
    i_sums : In(stream.Signature(sums_layout(cfg)))
    i_row : In(stream.Signature(row_stream_layout(cfg)))
        One record per slot, in order, with its pixel's output base.
    control : In(layer_control_layout(cfg))
        The layer's settings; the writer uses ``seg_log2`` (log2 of e: a vector has V/e
        slots, one for values above ``log2(V)``), ``shift`` and ``relu``.
    banks : Out(BankPort(addr_width=BA, read=False)).array(V)
        The scratchpad's write ports.
    credit : Out(1)
        Pulses in the last slot cycle of each vector.
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
    def latency(self):
        """Cycles from a slot cycle to its scratchpad write: :data:`WRITE_LATENCY`."""
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

        # Slot cycle: pick slot j of the head vector, add the row's bias ---------------------
        slot = Signal(range(lanes))
        # V/e - 1, with e = V for any seg_log2 beyond log2(V) (as the engine and golden model).
        # seg_log2 is a layer constant: registered, this is off the slot -> pop -> credit path.
        last_slot = Signal(range(lanes))
        m.d.sync += last_slot.eq(Mux(self.control.seg_log2 >= bank_bits, 0,
                                     (Const(lanes, range(lanes + 1)) >> self.control.seg_log2) - 1))
        take = Signal()
        m.d.comb += [
            self.i_row.ready.eq(queue.r_rdy),
            take.eq(queue.r_rdy & self.i_row.valid),
        ]
        row, base = self.i_row.payload.row, self.i_row.payload.base
        # Stage 1 registers the slot's sum and the row's bias (the queue is LUT RAM with an
        # asynchronous read, the row record comes from a register), stage 2 adds them.
        s1_go, s1_write = Signal(), Signal()
        s1_sum, s1_bias = Signal(signed(acc_width)), Signal.like(row.bias)
        # The write's element: its bank in the low bits, its bank address above them.
        s1_addr = Signal(cfg.col_width)
        m.d.sync += s1_go.eq(take)
        with m.If(take):
            m.d.sync += [
                s1_sum.eq(head[slot]),
                s1_bias.eq(row.bias),
                s1_write.eq(row.valid),
                s1_addr.eq(Cat(row.out_elem[:bank_bits],
                               (base + row.out_elem[bank_bits:])[:cfg.act_addr_width])),
            ]
            with m.If(slot == last_slot):
                m.d.sync += slot.eq(0)
                m.d.comb += [queue.r_en.eq(1), self.credit.eq(1)]
            with m.Else():
                m.d.sync += slot.eq(slot + 1)
        s2_go, s2_write = Signal(), Signal()
        s2_value = Signal(signed(acc_width))
        s2_addr = Signal(cfg.col_width)
        m.d.sync += [
            s2_go.eq(s1_go),
            s2_write.eq(s1_go & s1_write),
            s2_value.eq((s1_sum + s1_bias)[:acc_width]),
            s2_addr.eq(s1_addr),
        ]

        # Requantise (two cycles), saturate, then write ---------------------------------------
        m.submodules.requantizer = requantizer = Requantizer(acc_width=acc_width,
                                                              pipelined=True)
        m.d.comb += [
            requantizer.value.eq(s2_value),
            requantizer.shift.eq(self.control.shift),
            requantizer.relu.eq(self.control.relu),
        ]
        # The requantiser's stages, then the saturated result's (``data``): the write's
        # control goes with the value, one register per stage up to the write port.
        go, write, addr = [s2_go], [s2_write], [s2_addr]
        for stage in range(_SUM_STAGES + 1, self.latency + 1):
            go.append(Signal(name=f"s{stage}_go"))
            write.append(Signal(name=f"s{stage}_write"))
            addr.append(Signal(cfg.col_width, name=f"s{stage}_addr"))
            m.d.sync += [go[-1].eq(go[-2]), write[-1].eq(write[-2]), addr[-1].eq(addr[-2])]

        # Scratchpad write, from registers ---------------------------------------------------
        data = Signal(signed(8))
        m.d.sync += data.eq(requantizer.result)
        for bank, port in enumerate(self.banks):
            m.d.comb += [
                port.wr_en.eq(write[-1] & (addr[-1][:bank_bits] == bank)),
                port.wr_addr.eq(addr[-1][bank_bits:]),
                port.wr_data.eq(data),
            ]
        m.d.comb += self.idle.eq(~queue.r_rdy & ~Cat(s1_go, *go).any())
        return m
