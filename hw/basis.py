"""The SmartDeal basis unit: ``z = B · x`` for each 3-element chunk of a buffer, requantised."""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data
from amaranth.lib.wiring import In, Out

from .component import CoreComponent
from .config import check_config
from .layouts import layer_control_layout
from .scratchpad import BankPort, bank_addr_width, read_latency
from .writer import Requantizer

__all__ = ["BasisUnit", "basis_latency"]


def basis_latency(cfg):
    """Cycles from a chunk's issue to its three writes: the read-address register, the
    scratchpad's read (:func:`read_latency`), the crossbar's first half, x, the products, z,
    the requantiser's stages, the saturated result and the write-port register."""
    return 1 + read_latency(cfg) + 4 + Requantizer.PIPELINED_LATENCY + 2


class BasisUnit(CoreComponent):
    """Basis transform of ``n_chunks`` 3-element chunks, one chunk per cycle, pipelined.

    For chunk ``g``: ``x`` = elements ``s + 3g .. s + 3g + 2`` of the scratchpad (three
    distinct banks, as V >= 4), ``z = B · x`` exactly, and element ``d + 3g + k`` becomes
    ``requantize(z_k, shift, relu)``, with ``s = control.src_base * V`` and
    ``d = control.dst_base * V`` (element addresses wrap at the scratchpad's size).

    Timing (``docs/gateware.md``): with ``start`` pulsed in cycle 0, chunk ``g`` issues in
    cycle ``g``, presents its bank addresses (registers) in ``g+1``, gets its bank data in
    ``g+3`` (the crossbar's first half registered at its end), x at the end of ``g+4``, the
    products at the end of ``g+5``, z at the end of ``g+6``, the requantiser's two stages at
    the ends of ``g+7`` and ``g+8``, the saturated results at the end of ``g+9``, the write
    ports at the end of ``g+10``, so its three writes are driven in cycle ``g+11``. ``done``
    pulses in cycle ``n_chunks + L - 1`` (``L = basis_latency(cfg)`` = 11; without
    ``cfg.deep_pipeline`` the bank data comes a cycle sooner and every step after it, L = 10),
    the last
    write cycle when
    ``n_chunks > 0``; ``busy`` is high from cycle 1 through that cycle, and ``start`` is ignored
    while ``busy``.

    The settings (``n_chunks``, ``basis``, ``control``) must be stable from the cycle before
    ``start`` until ``done``.

    Parameters
    ----------
    cfg : CoreConfig
        Checked by :class:`~gsaccel.hw.component.CoreComponent` (``TypeError`` if it is not one).

    Members
    -------
    start : In(1)
    n_chunks : In(16)
        Chunks; more than ``V * bank_depth // 3`` are clamped to that.
    basis : In(data.ArrayLayout(signed(8), 9))
        B, row-major.
    control : In(layer_control_layout(cfg))
        The layer's settings; the unit uses ``src_base``, ``dst_base``, ``shift`` and
        ``relu``.
    banks : Out(BankPort(addr_width=BA)).array(V)
        The scratchpad's ports (``rd_addr`` and the write members are registers).
    busy : Out(1)
    done : Out(1)

    Raises
    ------
    ValueError
        If ``cfg.lanes`` is less than 4.
    """

    def check(self, cfg):
        check_config(cfg)
        if cfg.lanes < 4:
            raise ValueError(f"Basis unit lane count must be at least 4, so that a chunk's "
                             f"three elements fall in three banks, not {cfg.lanes!r}")
        return cfg

    def members(self, cfg):
        lanes, addr_width = cfg.lanes, bank_addr_width(cfg)
        return {
            "start":    In(1),
            "n_chunks": In(16),
            "basis":    In(data.ArrayLayout(signed(8), 9)),
            "control":  In(layer_control_layout(cfg)),
            "banks":    Out(BankPort(addr_width=addr_width)).array(lanes),
            "busy":     Out(1),
            "done":     Out(1),
        }

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        lanes, bank_bits, acc_width = cfg.lanes, cfg.bank_bits, cfg.acc_width

        # Control ------------------------------------------------------------------------------
        # Chunk g issues in cycle g after `start` (cycle 0); `remaining` counts down to the
        # layer's last cycle, n_chunks + latency - 1, in which `done` pulses.
        latency = basis_latency(cfg)
        launch = Signal()
        m.d.comb += launch.eq(self.start & ~self.busy)
        # A layer covers at most the scratchpad: more chunks are clamped, as in the golden
        # model. (Registered: ``n_chunks`` is stable a cycle before ``start``.)
        limit = cfg.act_size // 3
        n_chunks = Signal(16)
        m.d.sync += n_chunks.eq(Mux(self.n_chunks > limit, limit, self.n_chunks))
        remaining = Signal(17)
        at_end = Signal()                       # remaining == 0
        issuing = Signal()                      # chunks 1.. left to issue
        to_issue = Signal(16)                   # chunks left to issue after the next one
        # The next chunk's three elements, registers (the source's first three between
        # layers: ``control`` is stable from the cycle before ``start``), so that the bank
        # addresses are decoded from registers only.
        element = [Signal(cfg.col_width + 2, init=k, name=f"element{k}") for k in range(3)]
        first = [Cat(Const(k, bank_bits), self.control.src_base) for k in range(3)]
        # The end tests are registered flags, set a cycle ahead.
        with m.If(launch):
            m.d.sync += [
                self.busy.eq(1),
                remaining.eq(n_chunks + latency - 2),
                at_end.eq(0),
                issuing.eq(n_chunks > 1),
                to_issue.eq(n_chunks - 2),
            ]
        with m.Elif(self.busy):
            with m.If(at_end):
                m.d.comb += self.done.eq(1)
                m.d.sync += self.busy.eq(0)
            with m.Else():
                m.d.sync += [remaining.eq(remaining - 1), at_end.eq(remaining == 1)]
            with m.If(issuing):
                m.d.sync += to_issue.eq(to_issue - 1)
                with m.If(to_issue == 0):
                    m.d.sync += issuing.eq(0)
        issue = Signal()
        m.d.comb += issue.eq((launch & (n_chunks != 0)) | (self.busy & issuing))
        with m.If(issue):
            m.d.sync += [element[k].eq(element[k] + 3) for k in range(3)]
        with m.Elif(~self.busy):
            m.d.sync += [element[k].eq(first[k]) for k in range(3)]

        # Stages 0 and 1: decode the chunk's three elements (three distinct banks) into the
        # read ports, which are registers: the unit may sit far from the banks ---------------
        element = [element[k][:cfg.col_width] for k in range(3)]
        for bank in range(lanes):
            address = 0
            for k in range(3):
                address = address | ((element[k][:bank_bits] == bank).replicate(
                    cfg.col_width - bank_bits) & element[k][bank_bits:])
            m.d.sync += self.banks[bank].rd_addr.eq(address)

        # The pipeline's valid bits: valid[k] is chunk g's in cycle g + k.
        valid = [issue] + [Signal(name=f"s{k}_valid") for k in range(1, latency)]
        for k in range(1, latency):
            m.d.sync += valid[k].eq(valid[k - 1])

        # Stage 3: bank -> element crossbar (the bank data arrives two cycles after its
        # address), its first half: as in the engine, each element's partial byte per group
        # of four banks is registered, which cuts the long wires from the banks ------------
        bank_of = [[element[k][:bank_bits]] for k in range(3)]
        for k in range(3):
            for stage in range(1, 4 if cfg.deep_pipeline else 3):
                bank_of[k].append(Signal(bank_bits, name=f"s{stage}_bank{k}"))
                m.d.sync += bank_of[k][-1].eq(bank_of[k][-2])
        quad = min(4, lanes)
        x = []
        for k in range(3):
            partials = []
            for first in range(0, lanes, quad):
                partial = Signal(8, name=f"partial{k}_{first // quad}")
                value = Const(0, 8)
                for bank in range(first, first + quad):
                    value = value | ((bank_of[k][-1] == bank).replicate(8) &
                                     self.banks[bank].rd_data.as_unsigned())
                m.d.sync += partial.eq(value)
                partials.append(partial)
            value = partials[0]
            for partial in partials[1:]:
                value = value | partial
            x.append(Signal(signed(8), name=f"x{k}"))
            m.d.sync += x[-1].eq(value)         # a DSP's multiply takes 4 ns: x is a register

        # Stages 5 and 6: z = B · x, exact (|z| <= 3 * 2**14 fits 17 bits): the nine products
        # are registered, then their sums ----------------------------------------------------
        products = [[Signal(signed(16), name=f"p{k}{i}") for i in range(3)] for k in range(3)]
        m.d.sync += [products[k][i].eq(self.basis[3 * k + i] * x[i])
                     for k in range(3) for i in range(3)]
        z = [Signal(signed(acc_width), name=f"z{k}") for k in range(3)]
        m.d.sync += [z[k].eq(products[k][0] + products[k][1] + products[k][2])
                     for k in range(3)]

        # Stages 7 to 10: requantise (two cycles), saturate, and write the three elements (three
        # distinct banks) of the chunk that reaches the end: its elements count up by 3 from
        # the destination's first, as the reads did ----------------------------
        written = valid[latency - 1]
        targets = [Signal(cfg.col_width + 2, init=k, name=f"target{k}") for k in range(3)]
        with m.If(launch):
            m.d.sync += [target.eq(Cat(Const(k, bank_bits), self.control.dst_base))
                         for k, target in enumerate(targets)]
        with m.Elif(written):
            m.d.sync += [target.eq(target + 3) for target in targets]
        results = []
        for k in range(3):
            m.submodules[f"requantizer{k}"] = requantizer = Requantizer(acc_width=acc_width,
                                                                        pipelined=True)
            m.d.comb += [
                requantizer.value.eq(z[k]),
                requantizer.shift.eq(self.control.shift),
                requantizer.relu.eq(self.control.relu),
            ]
            result = Signal(signed(8), name=f"result{k}")
            m.d.sync += result.eq(requantizer.result)
            results.append(result)
        # The write ports are registers: the scratchpad's RAMs take them without logic between.
        for bank in range(lanes):
            m.d.sync += self.banks[bank].wr_en.eq(0)
            for k in range(3):
                target = targets[k][:cfg.col_width]
                with m.If(written & (target[:bank_bits] == bank)):
                    m.d.sync += [
                        self.banks[bank].wr_en.eq(1),
                        self.banks[bank].wr_addr.eq(target[bank_bits:]),
                        self.banks[bank].wr_data.eq(results[k]),
                    ]
        return m
