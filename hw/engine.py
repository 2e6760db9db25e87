"""The gather engine: one group of V weights per cycle, V conflict-free bank reads, V lane
products, a segmented adder tree and V/e accumulators that emit one sum vector per row group."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream
from amaranth.lib.wiring import In, Out

from .component import CoreComponent
from .lane import Lane, lane_nonzero
from .layouts import LayerOp, group_stream_layout, layer_control_layout
from .scratchpad import BankPort, bank_addr_width, read_latency

__all__ = ["GatherEngine", "sums_layout", "address_stages", "pipeline_depth",
           "engine_latency"]


def address_stages(cfg):
    """Registers between a group's acceptance and its bank addresses (``base + offset``):
    one with ``cfg.deep_pipeline`` (the adders would otherwise sit in front of the block
    RAMs' address inputs), none without."""
    return 1 if cfg.deep_pipeline else 0


def pipeline_depth(cfg):
    """Registered stages from a group's acceptance to the accumulators: the address
    (:func:`address_stages`), the scratchpad's read (:func:`read_latency`), the crossbar's
    second half and the negation, the lane's shift, its product, and the adder tree (one
    stage per level with ``cfg.deep_pipeline``, else one)."""
    tree_stages = cfg.lanes.bit_length() - 1 if cfg.deep_pipeline else 1
    return address_stages(cfg) + read_latency(cfg) + 3 + tree_stages


def engine_latency(cfg):
    """Cycles from a ``last`` group's acceptance to the writer starting on its sum vector:
    :func:`pipeline_depth`, then the accumulators."""
    return pipeline_depth(cfg) + 1


def sums_layout(cfg):
    """One sum vector: V accumulator values, of which slots ``j < V/e`` are meaningful."""
    return data.ArrayLayout(signed(cfg.acc_width), cfg.lanes)


class GatherEngine(CoreComponent):
    """Gather/accumulate engine.

    Lane ``i`` of a group reads bank ``lanes[i].bank`` at ``base + offset[bank]`` (wrapping at
    ``bank_depth``), ``base`` being the input base of the output pixel the group is replayed
    for. Timing: a group accepted in cycle ``t`` presents its bank addresses in cycle ``t+1``
    (registered sums of ``i_group``, which should come from a register; in cycle ``t``,
    combinationally, without ``cfg.deep_pipeline``), gets its bank data through the first
    half of the crossbar two cycles later (the scratchpad's latency), through the second half
    and negated the cycle after, then its lane products, one level of the adder tree per
    cycle (each registered) and the accumulators, :func:`pipeline_depth` cycles after ``t``;
    if it is a ``last`` group its sum vector is offered at ``o_sums`` in that same cycle,
    combinationally from the accumulator adders (:func:`engine_latency` is one more). Each
    stage is short enough for 100 MHz on an ECP5.

    ``control.op`` SUM accumulates; MAX keeps, per lane (every lane is its own segment,
    whatever ``seg_log2``), the largest product of its nonzero weights, from the most
    negative accumulator value (padding lanes are ignored).

    A ``last`` group is accepted only while the engine holds a credit; it starts with
    ``result_queue // V`` credits, takes one per accepted ``last`` group and gets one back per
    ``credit`` pulse (usable the next cycle). The consumer of ``o_sums`` must therefore be able
    to hold ``result_queue // V`` vectors and take a vector in the one cycle it is offered:
    ``o_sums.ready`` is not looked at (the credit scheme makes it always high when it
    matters), and the pipeline never stalls.

    ``control`` must be stable from a layer's first accepted group until
    ``idle``.

    Parameters
    ----------
    cfg : CoreConfig
        Checked by :class:`~gsaccel.hw.component.CoreComponent` (``TypeError`` if it is not one).

    Members
    -------
    i_group : In(stream.Signature(group_stream_layout(cfg)))
        A group word and its pixel's input base.
    control : In(layer_control_layout(cfg))
        The layer's settings; the engine uses ``op`` and ``seg_log2`` (log2 of the segment
        length e; values above ``log2(V)`` mean ``e = V``).
    banks : Out(BankPort(addr_width=BA, write=False)).array(V)
        The scratchpad's read ports (data two cycles after the address, one without
        ``cfg.deep_pipeline``).
    o_sums : Out(stream.Signature(sums_layout(cfg)))
    credit : In(1)
        One pulse per sum vector the consumer has finished.
    clear : In(1)
        Reset the accumulators (to 0, or to the most negative value for MAX; pulse it while
        ``idle`` with the new layer's ``control``, so that the groups of a previous layer
        after its last ``last`` group leave nothing behind). It is registered: the
        accumulators reset in the cycle after, before a group accepted with or after the
        pulse reaches them.
    idle : Out(1)
        No group in flight (accumulators are clear between layers).
    issue : Out(1)
        A group is accepted this cycle.
    issue_lanes : Out(range(V + 1))
        Nonzero lanes of the group accepted this cycle (0 when none is).
    stall : Out(1)
        The offered group is a ``last`` group and no credit is free.
    """

    def members(self, cfg):
        lanes, addr_width = cfg.lanes, bank_addr_width(cfg)
        return {
            "i_group":     In(stream.Signature(group_stream_layout(cfg))),
            "control":     In(layer_control_layout(cfg)),
            "banks":       Out(BankPort(addr_width=addr_width, write=False)).array(lanes),
            "o_sums":      Out(stream.Signature(sums_layout(cfg))),
            "credit":      In(1),
            "clear":       In(1),
            "idle":        Out(1),
            "issue":       Out(1),
            "issue_lanes": Out(range(lanes + 1)),
            "stall":       Out(1),
        }

    @property
    def credits(self):
        """Credits the engine starts with: sum vectors the consumer's queue holds."""
        return self._cfg.result_vectors

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        lanes, acc_width = cfg.lanes, cfg.acc_width
        group, base = self.i_group.payload.word, self.i_group.payload.base
        is_max = self.control.op == LayerOp.MAX

        # Credits ----------------------------------------------------------------------------
        # ``no_credit`` is a register (credits == 0), as ``ready`` fans out to the sequencer's
        # whole group register.
        credits = Signal(range(self.credits + 1), init=self.credits)
        no_credit = Signal(init=self.credits == 0)
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
        credits_next = Signal.like(credits)
        m.d.comb += credits_next.eq(credits - take + self.credit)
        m.d.sync += [credits.eq(credits_next), no_credit.eq(credits_next == 0)]

        nonzero = [lane_nonzero(cfg, group.lanes[i].value) for i in range(lanes)]
        m.d.comb += self.issue_lanes.eq(Mux(accept, sum(n.as_unsigned() for n in nonzero), 0))

        # Stage 0: bank addresses, the pixel's base plus each bank's offset (the packer routed
        # the offsets), registered with the deep pipeline together with the group's lanes:
        # hits[i][b]: lane i reads bank b; a padding lane hits no bank --------------------
        hits = [Cat(nonzero[i] & (group.lanes[i].bank == bank) for bank in range(lanes))
                for i in range(lanes)]
        address = m.d.sync if address_stages(cfg) else m.d.comb
        s0_hits = [Signal(lanes, name=f"s0_hits{i}") for i in range(lanes)]
        s0_value = [Signal(cfg.value_width, name=f"s0_value{i}") for i in range(lanes)]
        for i in range(lanes):
            address += [s0_hits[i].eq(hits[i]), s0_value[i].eq(group.lanes[i].value)]
        for bank, port in enumerate(self.banks):
            address += port.rd_addr.eq((base + group.offset[bank])[:cfg.act_addr_width])

        # The pipeline registers of the stages before the accumulators (valid and last of
        # each): pipeline_depth(cfg) of them.
        depth = pipeline_depth(cfg)
        valid = [accept] + [Signal(name=f"s{k}_valid") for k in range(1, depth + 1)]
        last = [accept & group.last] + [Signal(name=f"s{k}_last") for k in range(1, depth + 1)]
        for k in range(1, depth + 1):
            m.d.sync += [valid[k].eq(valid[k - 1]), last[k].eq(last[k - 1])]
        # MAX ignores padding lanes: each lane's nonzero flag goes down the pipeline to its
        # accumulator (with e = 1, lane j's product reaches accumulator j unsummed).
        kept = [Cat(lane_nonzero(cfg, value) for value in s0_value)]
        for k in range(address_stages(cfg), depth):
            kept.append(Signal(lanes, name=f"s{k + 1}_kept"))
            m.d.sync += kept[-1].eq(kept[-2])

        # Stages 1 and 2: the bank read, then the scratchpad's output register -----------
        s1_hits = [Signal(lanes, name=f"s1_hits{i}") for i in range(lanes)]
        s1_value = [Signal(cfg.value_width, name=f"s1_value{i}") for i in range(lanes)]
        s2_hits = [Signal(lanes, name=f"s2_hits{i}") for i in range(lanes)]
        s2_value = [Signal(cfg.value_width, name=f"s2_value{i}") for i in range(lanes)]
        # (Without the deep pipeline the scratchpad has no output register: no stage 2.)
        stage2 = m.d.sync if cfg.deep_pipeline else m.d.comb
        for i in range(lanes):
            m.d.sync += [s1_value[i].eq(s0_value[i]), s1_hits[i].eq(s0_hits[i])]
            stage2 += [s2_value[i].eq(s1_value[i]), s2_hits[i].eq(s1_hits[i])]

        # Stages 3 to 5: bank -> lane crossbar, then the lanes -------------------------------
        # Each stage below ends in a register, so no path crosses more than one of: the
        # crossbar's first half, its second half and a lane's negation, a lane's shift, half
        # the adder tree, the accumulator. The crossbar is an AND-OR of the one-hot hits, and
        # a padding lane reads 0. Its first half ORs the banks in groups of four and registers
        # each lane's partial byte per group: the all-to-all wiring from the V banks to the V
        # lanes is then cut by registers the placer can put between them (a bank's data went
        # 10 ns across an ECP5-85 without them).
        quad = min(4, lanes)
        s5_product = [Signal(signed(acc_width), name=f"s5_product{i}") for i in range(lanes)]
        for i in range(lanes):
            partials = []
            for first in range(0, lanes, quad):
                partial = Signal(8, name=f"s3_partial{i}_{first // quad}")
                x = Const(0, 8)
                for bank in range(first, first + quad):
                    x = x | (s2_hits[i][bank].replicate(8) &
                             self.banks[bank].rd_data.as_unsigned())
                m.d.sync += partial.eq(x)
                partials.append(partial)
            s3_value = Signal(cfg.value_width, name=f"s3_value{i}")
            m.d.sync += s3_value.eq(s2_value[i])
            # The lane registers its first step (stage 4), its product is stage 5's.
            m.submodules[f"lane{i}"] = lane = Lane(cfg, pipelined=True)
            x = partials[0]
            for partial in partials[1:]:
                x = x | partial
            m.d.comb += [lane.x.eq(x), lane.w.eq(s3_value)]
            m.d.sync += s5_product[i].eq(lane.product)

        # Stages 6 .. 5 + log2(V): segmented adder tree, one level per stage --------------
        # Level k of the tree holds the sums of aligned runs of 2**k products; segment e = 2**s
        # takes its V/e sums from level s (a seg_log2 beyond log2(V) means one segment of all
        # V lanes, as in the golden model). Stage k adds pairs while k <= seg_log2 and passes
        # the vector on unchanged after that, so the last stage holds the segment sums. (Two
        # levels in one stage took 12.5 ns on an ECP5-85: each adder's inputs came from far.)
        # Without cfg.deep_pipeline the levels are combinational and one register ends the tree.
        top = lanes.bit_length() - 1
        level = s5_product
        for k in range(1, top + 1):
            summing = (self.control.seg_log2 >= k) & ~is_max     # MAX: every lane alone
            if cfg.deep_pipeline or k == top:
                step = [Signal(signed(acc_width), name=f"tree{k}_{j}") for j in range(lanes)]
                domain = m.d.sync
            else:
                step = [Signal(signed(acc_width), name=f"tree{k}_{j}_comb")
                        for j in range(lanes)]
                domain = m.d.comb
            for j, out in enumerate(step):
                if j < lanes >> k:
                    total = (level[2 * j] + level[2 * j + 1])[:acc_width].as_signed()
                    domain += out.eq(Mux(summing, total, level[j]))
                else:
                    domain += out.eq(level[j])
            level = step
        segment_sums = level
        acc_stage = depth

        # The accumulators: sums (SUM), or the largest kept product (MAX) -------------------
        accumulators = [Signal(signed(acc_width), name=f"acc{j}") for j in range(lanes)]
        updated = [Signal(signed(acc_width), name=f"updated{j}") for j in range(lanes)]
        kept = kept[-1]
        for j in range(lanes):
            larger = kept[j] & (segment_sums[j] > accumulators[j])
            m.d.comb += updated[j].eq(Mux(
                is_max, Mux(larger, segment_sums[j], accumulators[j]),
                (accumulators[j] + segment_sums[j])[:acc_width]))
        lowest = Const(-(1 << (acc_width - 1)), signed(acc_width))
        start = Mux(is_max, lowest, 0)
        # What each accumulator does, registered a stage ahead with one copy per accumulator:
        # one valid/last pair fanned out to V * acc_width flip-flops took 8 ns across an
        # ECP5-85, and so did ``clear`` (an owner compare) ORed in after the register. The
        # board build keeps the copies apart (``keep`` on the register: Yosys would merge
        # them back into one). ``clear`` thus acts a cycle late; it is high while the
        # sequencer is between layers, several cycles before a layer's first group can
        # reach the accumulators.
        for j, accumulator in enumerate(accumulators):
            restart = Signal(name=f"restart{j}", attrs={"keep": 1})
            update = Signal(name=f"update{j}", attrs={"keep": 1})
            m.d.sync += [restart.eq(self.clear | (valid[acc_stage - 1] & last[acc_stage - 1])),
                         update.eq(valid[acc_stage - 1] & ~last[acc_stage - 1])]
            with m.If(restart):
                m.d.sync += accumulator.eq(start)
            with m.Elif(update):
                m.d.sync += accumulator.eq(updated[j])
        # A row group's sum vector goes straight from the adders into the consumer's queue
        # (no output register: V * acc_width flip-flops fewer); a credit guarantees room.
        m.d.comb += [
            self.o_sums.valid.eq(valid[acc_stage] & last[acc_stage]),
            self.o_sums.payload.eq(Cat(*updated)),
            self.idle.eq(~Cat(*valid[1:]).any()),
        ]
        return m

