"""Formal harness of the gather engine (hw/engine.py): which bank word reaches which lane."""

from amaranth.hdl import Assert, Assume, Cat, Const, Elaboratable, Module, Mux, ResetSignal, Signal

from gsaccel.hw.config import CoreConfig
from gsaccel.hw.engine import GatherEngine, address_stages
from gsaccel.hw.lane import lane_nonzero
from gsaccel.hw.scratchpad import read_latency
from gsaccel.sim.formal import elaborated, free_inputs, internal

__all__ = ["ENGINE_CFGS", "EngineGather", "EngineCredits", "crossbar_stage"]

_SMALL = dict(bank_depth=8, weight_depth=4, row_depth=4, layer_depth=2, max_payload=8,
              basis=False, vector_writer=False)

#: The engine at V = 4 and V = 8, with and without the deep pipeline (whose register stages
#: move the bank data a cycle later relative to the address: the timing under test). The
#: bank depth only widens addresses; 8 words keep the bank tags within one byte.
ENGINE_CFGS = {
    "v4_deep": CoreConfig(lanes=4, result_queue=8, deep_pipeline=True, **_SMALL),
    "v4_shallow": CoreConfig(lanes=4, result_queue=8, deep_pipeline=False, **_SMALL),
    "v8_deep": CoreConfig(lanes=8, result_queue=16, deep_pipeline=True, **_SMALL),
}


def crossbar_stage(cfg):
    """Cycles from a group's acceptance to its lanes' bank data at the crossbar's output (the
    lane inputs): the address stage, the scratchpad's read latency, the crossbar's register."""
    return address_stages(cfg) + read_latency(cfg) + 1


class EngineGather(Elaboratable):
    """Every lane gets the one bank word its group asked for, and no bank feeds two lanes.

    The scratchpad is replaced by a model with the real one's read latency
    (:func:`~gsaccel.hw.scratchpad.read_latency`) whose word at address ``a`` of bank ``b`` is
    the tag ``b * bank_depth + a``, so a lane's data names the bank and address it came from.
    Everything else the engine takes (groups, bases, control, credits, clear) is free.

    Asserted (``check``), for every group accepted in cycle ``t``, :func:`crossbar_stage`
    cycles later:

    * **gather** (whatever the group's lanes, not only a packer-valid one): lane ``i``'s
      crossbar output is the word at bank ``lanes[i].bank``, address ``base + offset[bank]``
      (wrapping), and 0 for a padding lane: one access of the right bank, at the right
      address, with no other bank's data mixed in;
    * **conflict-free** (``packer_valid``: assuming that the nonzero lanes of every offered
      group read distinct banks, the packer's rule for the GS patterns,
      ``sw/format/matrix.py``, ``_check_groups``): in the crossbar's select stage each bank's
      word goes to at most one lane, and each lane selects at most one bank.

    (Each bank has one read port, whose address is ``base + offset[bank]``: the group word
    stores an offset per bank, not per lane, so two lanes that read one bank read one word,
    as a 1xN group's lanes do; the packer exempts 1xN from the distinct-bank rule.)

    Fault injection for the tests that the checks can fail: ``bank_latency`` gives the model
    another read latency than the engine expects; ``packer_valid=False`` drops the
    assumption of the conflict check. ``invariants=False`` leaves out the invariants that
    only the induction step needs (the fault tests do: their counterexample is then against
    the property itself).
    """

    def __init__(self, cfg, *, check="gather", packer_valid=True, bank_latency=None,
                 invariants=True):
        if check not in ("gather", "conflict"):
            raise ValueError(f"Engine check must be 'gather' or 'conflict', not {check!r}")
        self.cfg = cfg
        self.dut = GatherEngine(cfg)
        self._check = check
        self._packer_valid = packer_valid and check == "conflict"
        self._latency = read_latency(cfg) if bank_latency is None else bank_latency
        self._invariants = invariants

    @property
    def ports(self):
        driven = {id(port.rd_data) for port in self.dut.banks}
        return [p for p in free_inputs(self.dut) if id(p) not in driven]

    def elaborate(self, platform):
        m = Module()
        cfg, dut = self.cfg, self.dut
        lanes, aw = cfg.lanes, cfg.act_addr_width
        fragment = elaborated(dut)
        m.submodules.dut = fragment
        m.d.comb += Assume(~ResetSignal())

        def tag(bank, addr):
            return Cat(addr[:aw], bank[:cfg.bank_bits])

        # The scratchpad model: each bank returns its tag of the address of `latency` ago.
        self._bank_delays = []
        for bank, port in enumerate(dut.banks):
            addr = port.rd_addr
            self._bank_delays.append([])
            for k in range(self._latency):
                delayed = Signal(aw, name=f"bank{bank}_addr_d{k + 1}")
                m.d.sync += delayed.eq(addr)
                addr = delayed
                self._bank_delays[-1].append(delayed)
            m.d.comb += port.rd_data.eq(tag(Const(bank, max(1, cfg.bank_bits)), addr))

        group, base = dut.i_group.payload.word, dut.i_group.payload.base
        accept = dut.i_group.valid & dut.i_group.ready
        nonzero = [lane_nonzero(cfg, group.lanes[i].value) for i in range(lanes)]
        if self._packer_valid:
            with m.If(dut.i_group.valid):
                for i in range(lanes):
                    for j in range(i + 1, lanes):
                        m.d.comb += Assume(~(nonzero[i] & nonzero[j]) |
                                           (group.lanes[i].bank != group.lanes[j].bank))

        # What each lane must see, carried down a pipeline as long as the engine's.
        stage = crossbar_stage(cfg)
        expected = [Signal(8, name=f"expected{i}") for i in range(lanes)]
        # Each bank's word address, then lane i's bank's (base + offset[b] for every b first:
        # the same value as base + offset[lanes[i].bank], in a form the solver matches with
        # the engine's per-bank adders instead of proving the two equal bit by bit).
        word_addr = [Signal(aw, name=f"word_addr{b}") for b in range(lanes)]
        m.d.comb += [word_addr[b].eq((base + group.offset[b])[:aw]) for b in range(lanes)]
        for i in range(lanes):
            bank = group.lanes[i].bank
            addr = Signal(aw, name=f"addr_of_lane{i}")
            with m.Switch(bank):
                for b in range(lanes):
                    with m.Case(b):
                        m.d.comb += addr.eq(word_addr[b])
            m.d.comb += expected[i].eq(Mux(nonzero[i], tag(bank, addr), 0))
        valid = accept
        valids = [accept]             # valids[k]: a group accepted k cycles ago
        expected_chain = [expected]   # expected_chain[k]: the words for the group of k ago
        for k in range(stage):
            valid_k = Signal(name=f"shadow_valid{k + 1}")
            m.d.sync += valid_k.eq(valid)
            valid = valid_k
            valids.append(valid)
            delayed = [Signal(8, name=f"shadow{k + 1}_lane{i}") for i in range(lanes)]
            m.d.sync += [d.eq(e) for d, e in zip(delayed, expected)]
            expected = delayed
            expected_chain.append(expected)

        if self._check == "gather":
            quad = min(4, lanes)
            with m.If(valid):
                for i in range(lanes):
                    x = Const(0, 8)
                    for q in range(lanes // quad):
                        x = x | internal(fragment, f"s3_partial{i}_{q}")
                    m.d.comb += Assert(x == expected[i], f"lane {i} gathered the wrong word")
            if self._invariants:
                self._stage_lemmas(m, fragment, group, nonzero, word_addr, expected_chain, tag)
        else:
            # The crossbar's select stage (the cycle before the lane inputs): bank -> lane
            # hits. Only a group's hits count: between groups the engine registers whatever
            # word is on offer, which no assumption constrains and nothing uses.
            hits = [internal(fragment, f"s2_hits{i}") for i in range(lanes)]
            with m.If(valids[stage - 1]):
                for i in range(lanes):
                    m.d.comb += Assert((hits[i] & (hits[i] - 1)) == 0,
                                       f"lane {i} selects two banks")
                for bank in range(lanes):
                    column = Cat(hits[i][bank] for i in range(lanes))
                    m.d.comb += Assert((column & (column - 1)) == 0,
                                       f"bank {bank} feeds two lanes in one cycle")
        return m

    def _stage_lemmas(self, m, fragment, group, nonzero, word_addr, expected_chain, tag):
        # Invariants for the induction step (proved with the rest): the engine registers the
        # offered word's bank hits and addresses in every cycle, accepted or not, so each of
        # its stages equals the harness's copy of what was offered that many cycles ago.
        # With them the V = 8 step is local; without, the solver relates the lane data to
        # the group four cycles back in one go, which took it over 5 minutes.
        cfg, dut, lanes = self.cfg, self.dut, self.cfg.lanes
        hits = [Cat(nonzero[i] & (group.lanes[i].bank == b) for b in range(lanes))
                for i in range(lanes)]
        first = address_stages(cfg)
        delays = {"s0_hits": first, "s1_hits": first + 1, "s2_hits": first + read_latency(cfg)}
        history = [(hits, word_addr)]
        for k in range(crossbar_stage(cfg)):
            h = [Signal(lanes, name=f"shadow{k + 1}_hits{i}") for i in range(lanes)]
            a = [Signal(len(w), name=f"shadow{k + 1}_word_addr{b}")
                 for b, w in enumerate(word_addr)]
            m.d.sync += [x.eq(y) for x, y in zip(h + a, history[-1][0] + history[-1][1])]
            history.append((h, a))
        for name, delay in delays.items():
            for i in range(lanes):
                m.d.comb += Assert(internal(fragment, f"{name}{i}") == history[delay][0][i])
        for b, port in enumerate(dut.banks):
            m.d.comb += Assert(port.rd_addr == history[first][1][b])
            # The scratchpad model's address registers, likewise.
            for k, delayed in enumerate(self._bank_delays[b], start=1):
                if first + k < len(history):
                    m.d.comb += Assert(delayed == history[first + k][1][b])
        # The expected words' pipeline, from the offered words' hits and addresses.
        for k, words in enumerate(expected_chain[1:], start=1):
            if k < len(history):
                h, a = history[k]
                for i in range(lanes):
                    word = Const(0, 8)
                    for b in range(lanes):
                        word = word | Mux(h[i][b], tag(Const(b, max(1, cfg.bank_bits)), a[b]),
                                          0)
                    m.d.comb += Assert(words[i] == word)


class EngineCredits(Elaboratable):
    """The engine never offers a sum vector its consumer has no room for.

    ``o_sums`` does not follow the stream rule (it is offered for one cycle and ``ready`` is
    not looked at); the credit scheme makes that safe instead. The consumer is modelled as a
    queue of ``capacity`` vectors (default: the engine's credits, ``cfg.result_vectors``)
    that takes every vector offered and returns one credit per vector it finishes (assumed:
    a credit only while it holds one). Asserted: a vector is offered only when the queue has
    room. Everything else (groups, control, clear, the bank data) is free.

    Invariant for the induction step (proved with the rest): the engine's credits, the
    ``last`` groups in its pipeline and the vectors the consumer holds add up to the
    capacity it started with; ``no_credit`` is ``credits == 0``.

    Fault injection: ``capacity`` one smaller than the engine's credits must FAIL
    (``invariants=False``: without the induction invariants).
    """

    def __init__(self, cfg, *, capacity=None, invariants=True):
        self.cfg = cfg
        self._invariants = invariants
        self.dut = GatherEngine(cfg)
        self.capacity = self.dut.credits if capacity is None else capacity

    @property
    def ports(self):
        return free_inputs(self.dut)

    def elaborate(self, platform):
        from gsaccel.hw.engine import pipeline_depth
        m = Module()
        cfg, dut = self.cfg, self.dut
        fragment = elaborated(dut)
        m.submodules.dut = fragment
        m.d.comb += Assume(~ResetSignal())

        total = dut.credits
        held = Signal(range(total + 2))       # vectors in the consumer's queue
        m.d.comb += Assume(~dut.credit | (held != 0))
        m.d.sync += held.eq(held + dut.o_sums.valid - dut.credit)
        m.d.comb += Assert(~dut.o_sums.valid | (held < self.capacity),
                           "sum vector offered with the consumer's queue full")

        if not self._invariants:
            return m
        depth = pipeline_depth(cfg)
        in_flight = sum((internal(fragment, f"s{k}_valid") & internal(fragment, f"s{k}_last"))
                        .as_unsigned() for k in range(1, depth + 1))
        credits, no_credit = internal(fragment, "credits"), internal(fragment, "no_credit")
        m.d.comb += [
            Assert(credits + in_flight + held == total, "credits lost or made"),
            Assert(no_credit == (credits == 0)),
        ]
        return m
