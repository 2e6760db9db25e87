"""The gather engine: one group of V weights per cycle, V conflict-free bank reads, V lane
products, a segmented adder tree and V/e accumulators that emit one sum vector per row group."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .config import check_config
from .lane import Lane, lane_nonzero
from .layouts import group_layout
from .scratchpad import bank_addr_width

__all__ = ["GatherEngine", "sums_layout"]


def sums_layout(cfg):
    """One sum vector: V accumulator values, of which slots ``j < V/e`` are meaningful."""
    return data.ArrayLayout(signed(cfg.acc_width), cfg.lanes)


class GatherEngine(wiring.Component):
    """Gather/accumulate engine.

    Timing: a group accepted in cycle ``t`` presents its bank addresses in cycle ``t``
    (combinationally from ``i_group``), gets bank data through the crossbar in ``t+1``, its
    lane products in ``t+2`` and its segment sums in ``t+3`` (each registered), adds them
    into the accumulators in ``t+4``; if it is a ``last`` group its sum vector is offered at
    ``o_sums`` in that same cycle ``t+4``, combinationally from the accumulator adders.

    A ``last`` group is accepted only while the engine holds a credit; it starts with
    ``result_queue // V`` credits, takes one per accepted ``last`` group and gets one back per
    ``credit`` pulse (usable the next cycle). The consumer of ``o_sums`` must therefore be able
    to hold ``result_queue // V`` vectors and take a vector in the one cycle it is offered:
    ``o_sums.ready`` is not looked at (the credit scheme makes it always high when it
    matters), and the pipeline never stalls.

    ``src`` and ``seg_log2`` must be stable from a layer's first accepted group until
    ``idle``.

    Parameters
    ----------
    cfg : CoreConfig

    Members
    -------
    i_group : In(stream.Signature(group_layout(cfg)))
    seg_log2 : In(3)
        log2 of the segment length e; values above ``log2(V)`` mean ``e = V``.
    src : In(1)
        Activation buffer read.
    rd_addr : Out(BA).array(V)
        Scratchpad bank read addresses.
    rd_data : In(signed(8)).array(V)
        Scratchpad bank read data (one cycle after the address).
    o_sums : Out(stream.Signature(sums_layout(cfg)))
    credit : In(1)
        One pulse per sum vector the consumer has finished.
    clear : In(1)
        Zero the accumulators (pulse it while ``idle``, e.g. when a layer starts, so that the
        groups of a previous layer after its last ``last`` group leave nothing behind).
    idle : Out(1)
        No group in flight (accumulators are clear between layers).
    issue : Out(1)
        A group is accepted this cycle.
    issue_lanes : Out(range(V + 1))
        Nonzero lanes of the group accepted this cycle (0 when none is).
    stall : Out(1)
        The offered group is a ``last`` group and no credit is free.

    Raises
    ------
    TypeError
        If ``cfg`` is not a :class:`CoreConfig`.
    """

    def __init__(self, cfg):
        check_config(cfg)
        self._cfg = cfg
        lanes, addr_width = cfg.lanes, bank_addr_width(cfg)
        super().__init__({
            "i_group":     In(stream.Signature(group_layout(cfg))),
            "seg_log2":    In(3),
            "src":         In(1),
            "rd_addr":     Out(addr_width).array(lanes),
            "rd_data":     In(signed(8)).array(lanes),
            "o_sums":      Out(stream.Signature(sums_layout(cfg))),
            "credit":      In(1),
            "clear":       In(1),
            "idle":        Out(1),
            "issue":       Out(1),
            "issue_lanes": Out(range(lanes + 1)),
            "stall":       Out(1),
        })

    @property
    def cfg(self):
        return self._cfg

    @property
    def credits(self):
        """Credits the engine starts with: sum vectors the consumer's queue holds."""
        return self._cfg.result_vectors

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        lanes, bank_bits, acc_width = cfg.lanes, cfg.bank_bits, cfg.acc_width
        group = self.i_group.payload

        # Credits ----------------------------------------------------------------------------
        credits = Signal(range(self.credits + 1), init=self.credits)
        no_credit = credits == 0
        m.d.comb += [
            self.i_group.ready.eq(~(group.last & no_credit)),
            self.stall.eq(self.i_group.valid & group.last & no_credit),
        ]
        accept = Signal()
        m.d.comb += [
            accept.eq(self.i_group.valid & self.i_group.ready),
            self.issue.eq(accept),
        ]
        take = accept & group.last
        m.d.sync += credits.eq(credits - take + self.credit)

        nonzero = [lane_nonzero(cfg, group.lanes[i].value) for i in range(lanes)]
        m.d.comb += self.issue_lanes.eq(Mux(accept, sum(n.as_unsigned() for n in nonzero), 0))

        # Stage 0: bank addresses, straight from the group word (the packer routed them) ----
        # hits[i][b]: lane i reads bank b; a padding lane hits no bank.
        hits = [Cat(nonzero[i] & (group.lanes[i].bank == bank) for bank in range(lanes))
                for i in range(lanes)]
        for bank in range(lanes):
            m.d.comb += self.rd_addr[bank].eq(Cat(group.bank_addr[bank], self.src))

        s1_valid = Signal()
        s1_last = Signal()
        s1_hits = [Signal(lanes, name=f"s1_hits{i}") for i in range(lanes)]
        s1_value = [Signal(cfg.value_width, name=f"s1_value{i}") for i in range(lanes)]
        m.d.sync += [s1_valid.eq(accept), s1_last.eq(accept & group.last)]
        for i in range(lanes):
            m.d.sync += [s1_value[i].eq(group.lanes[i].value), s1_hits[i].eq(hits[i])]

        # Stage 1: bank -> lane crossbar -----------------------------------------------------
        # Each stage below ends in a register, so no path crosses more than one of: the bank
        # RAM's output and the V:1 crossbar, a lane's shift, the adder tree, the accumulator.
        # The crossbar is an AND-OR of the one-hot hits (about 5 LUT4 per bit where a V:1
        # multiplexer on a bank index takes 7), and a padding lane reads 0.
        s2_valid = Signal()
        s2_last = Signal()
        s2_x = [Signal(signed(8), name=f"s2_x{i}") for i in range(lanes)]
        s2_value = [Signal(cfg.value_width, name=f"s2_value{i}") for i in range(lanes)]
        m.d.sync += [s2_valid.eq(s1_valid), s2_last.eq(s1_last)]
        for i in range(lanes):
            x = Const(0, 8)
            for bank in range(lanes):
                x = x | (s1_hits[i][bank].replicate(8) & self.rd_data[bank].as_unsigned())
            m.d.sync += [s2_x[i].eq(x), s2_value[i].eq(s1_value[i])]

        # Stage 2: lane products -------------------------------------------------------------
        s3_valid = Signal()
        s3_last = Signal()
        s3_product = [Signal(signed(acc_width), name=f"s3_product{i}") for i in range(lanes)]
        m.d.sync += [s3_valid.eq(s2_valid), s3_last.eq(s2_last)]
        for i in range(lanes):
            m.submodules[f"lane{i}"] = lane = Lane(cfg)
            m.d.comb += [lane.x.eq(s2_x[i]), lane.w.eq(s2_value[i])]
            m.d.sync += s3_product[i].eq(lane.product)

        # Stage 3: segmented adder tree ------------------------------------------------------
        # Level k of the tree holds the sums of aligned runs of 2**k products; segment e = 2**s
        # takes its V/e sums from level s.
        levels = [s3_product]
        while len(levels[-1]) > 1:
            prev = levels[-1]
            levels.append([(prev[2 * j] + prev[2 * j + 1])[:acc_width].as_signed()
                           for j in range(len(prev) // 2)])
        # A seg_log2 beyond log2(V) means one segment of all V lanes, as in the golden model.
        top = len(levels) - 1
        s4_valid = Signal()
        s4_last = Signal()
        segment_sums = [Signal(signed(acc_width), name=f"s4_segment_sum{j}")
                        for j in range(lanes)]
        m.d.sync += [s4_valid.eq(s3_valid), s4_last.eq(s3_last)]
        for j, total in enumerate(segment_sums):
            with m.Switch(self.seg_log2):
                for s, level in enumerate(levels[:top]):
                    if j < len(level):
                        with m.Case(s):
                            m.d.sync += total.eq(level[j])
                if j == 0:
                    with m.Default():
                        m.d.sync += total.eq(levels[top][0])

        # Stage 4: accumulators --------------------------------------------------------------
        accumulators = [Signal(signed(acc_width), name=f"acc{j}") for j in range(lanes)]
        updated = [Signal(signed(acc_width), name=f"updated{j}") for j in range(lanes)]
        m.d.comb += [updated[j].eq((accumulators[j] + segment_sums[j])[:acc_width])
                     for j in range(lanes)]
        with m.If(self.clear):
            m.d.sync += [accumulator.eq(0) for accumulator in accumulators]
        with m.If(s4_valid):
            with m.If(s4_last):
                m.d.sync += [accumulator.eq(0) for accumulator in accumulators]
            with m.Else():
                m.d.sync += [accumulators[j].eq(updated[j]) for j in range(lanes)]
        # A row group's sum vector goes straight from the adders into the consumer's queue
        # (no output register: V * acc_width flip-flops fewer); a credit guarantees room.
        m.d.comb += [
            self.o_sums.valid.eq(s4_valid & s4_last),
            self.o_sums.payload.eq(Cat(*updated)),
            self.idle.eq(~s1_valid & ~s2_valid & ~s3_valid & ~s4_valid),
        ]
        return m

