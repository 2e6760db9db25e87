"""The SmartDeal basis unit: ``z = B · x`` for each 3-element chunk of a buffer, requantised."""

from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .config import check_config
from .scratchpad import bank_addr_width
from .writer import Requantizer

__all__ = ["BasisUnit"]


class BasisUnit(wiring.Component):
    """Basis transform of ``n_chunks`` 3-element chunks, one chunk per cycle, pipelined.

    For chunk ``g``: ``x = src[3g : 3g+3]`` (three distinct banks, as V >= 4),
    ``z = B · x`` exactly, ``dst[3g+k] = requantize(z_k, shift, relu)``.

    Timing (``docs/gateware.md``): with ``start`` pulsed in cycle 0, chunk ``g`` presents its
    bank addresses in cycle ``g``, x is registered at the end of ``g+1``, z at the end of
    ``g+2``, and its three writes are driven in cycle ``g+3``. ``done`` pulses in cycle
    ``n_chunks + BASIS_LATENCY - 1`` (``BASIS_LATENCY = 3``), the last write cycle when
    ``n_chunks > 0``; ``busy`` is high from cycle 1 through that cycle, and ``start`` is ignored
    while ``busy``.

    The settings (``n_chunks``, ``basis``, ``shift``, ``relu``, ``src``, ``dst``) must be
    stable from ``start`` until ``done``.

    Parameters
    ----------
    cfg : CoreConfig

    Members
    -------
    start : In(1)
    n_chunks : In(16)
        Chunks; more than ``buffer_size // 3`` are clamped to that.
    basis : In(data.ArrayLayout(signed(8), 9))
        B, row-major.
    shift : In(5)
    relu : In(1)
    src : In(1)
    dst : In(1)
    rd_addr : Out(BA).array(V)
    rd_data : In(signed(8)).array(V)
    wr_en : Out(1).array(V)
    wr_addr : Out(BA).array(V)
    wr_data : Out(signed(8)).array(V)
    busy : Out(1)
    done : Out(1)

    Raises
    ------
    TypeError
        If ``cfg`` is not a :class:`CoreConfig`.
    ValueError
        If ``cfg.lanes`` is less than 4.
    """

    def __init__(self, cfg):
        check_config(cfg)
        if cfg.lanes < 4:
            raise ValueError(f"Basis unit lane count must be at least 4, so that a chunk's "
                             f"three elements fall in three banks, not {cfg.lanes!r}")
        self._cfg = cfg
        lanes, addr_width = cfg.lanes, bank_addr_width(cfg)
        super().__init__({
            "start":    In(1),
            "n_chunks": In(16),
            "basis":    In(data.ArrayLayout(signed(8), 9)),
            "shift":    In(5),
            "relu":     In(1),
            "src":      In(1),
            "dst":      In(1),
            "rd_addr":  Out(addr_width).array(lanes),
            "rd_data":  In(signed(8)).array(lanes),
            "wr_en":    Out(1).array(lanes),
            "wr_addr":  Out(addr_width).array(lanes),
            "wr_data":  Out(signed(8)).array(lanes),
            "busy":     Out(1),
            "done":     Out(1),
        })

    @property
    def cfg(self):
        return self._cfg

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        lanes, bank_bits, acc_width = cfg.lanes, cfg.bank_bits, cfg.acc_width

        # Control ------------------------------------------------------------------------------
        # Chunk g issues in cycle g after `start` (cycle 0); `remaining` counts down to the
        # layer's last cycle, n_chunks + BASIS_LATENCY - 1, in which `done` pulses.
        launch = Signal()
        m.d.comb += launch.eq(self.start & ~self.busy)
        # A layer covers at most one buffer: more chunks are clamped, as in the golden model.
        limit = cfg.buffer_size // 3
        n_chunks = Signal(16)
        m.d.comb += n_chunks.eq(Mux(self.n_chunks > limit, limit, self.n_chunks))
        remaining = Signal(17)
        issuing = Signal()                      # chunks 1.. left to issue
        chunk = Signal(16)                      # next chunk to issue (after chunk 0)
        col = Signal(cfg.col_width + 2)         # its first element
        with m.If(launch):
            m.d.sync += [
                self.busy.eq(1),
                remaining.eq(n_chunks + 1),
                issuing.eq(n_chunks > 1),
                chunk.eq(1),
                col.eq(3),
            ]
        with m.Elif(self.busy):
            with m.If(remaining == 0):
                m.d.comb += self.done.eq(1)
                m.d.sync += self.busy.eq(0)
            with m.Else():
                m.d.sync += remaining.eq(remaining - 1)
            with m.If(issuing):
                m.d.sync += [chunk.eq(chunk + 1), col.eq(col + 3)]
                with m.If(chunk + 1 == n_chunks):
                    m.d.sync += issuing.eq(0)
        issue = Signal()
        issue_col = Signal.like(col)
        m.d.comb += [
            issue.eq((launch & (n_chunks != 0)) | (self.busy & issuing)),
            issue_col.eq(Mux(launch, 0, col)),
        ]

        # Stage 0: read the chunk's three elements (three distinct banks) --------------------
        element = [(issue_col + k)[:cfg.col_width] for k in range(3)]
        for bank in range(lanes):
            address = 0
            for k in range(3):
                address = address | ((element[k][:bank_bits] == bank).replicate(
                    cfg.col_width - bank_bits) & element[k][bank_bits:])
            m.d.comb += self.rd_addr[bank].eq(Cat(address, self.src))

        s1_valid = Signal()
        s1_element = [Signal(cfg.col_width, name=f"s1_element{k}") for k in range(3)]
        m.d.sync += s1_valid.eq(issue)
        m.d.sync += [s1_element[k].eq(element[k]) for k in range(3)]

        # Stage 1: bank -> element crossbar, register x ---------------------------------------
        banks = Array(self.rd_data)
        s2_valid = Signal()
        s2_element = [Signal(cfg.col_width, name=f"s2_element{k}") for k in range(3)]
        x = [Signal(signed(8), name=f"x{k}") for k in range(3)]
        m.d.sync += s2_valid.eq(s1_valid)
        for k in range(3):
            m.d.sync += [x[k].eq(banks[s1_element[k][:bank_bits]]),
                         s2_element[k].eq(s1_element[k])]

        # Stage 2: z = B · x, exact (|z| <= 3 * 2**14 fits 17 bits), register z ----------------
        s3_valid = Signal()
        s3_element = [Signal(cfg.col_width, name=f"s3_element{k}") for k in range(3)]
        z = [Signal(signed(acc_width), name=f"z{k}") for k in range(3)]
        m.d.sync += s3_valid.eq(s2_valid)
        for k in range(3):
            m.d.sync += [
                z[k].eq(sum(self.basis[3 * k + i] * x[i] for i in range(3))),
                s3_element[k].eq(s2_element[k]),
            ]

        # Stage 3: requantise and write the three elements (three distinct banks) -----------
        results = []
        for k in range(3):
            m.submodules[f"requantizer{k}"] = requantizer = Requantizer(acc_width=acc_width)
            m.d.comb += [
                requantizer.value.eq(z[k]),
                requantizer.shift.eq(self.shift),
                requantizer.relu.eq(self.relu),
            ]
            results.append(requantizer.result)
        for bank in range(lanes):
            for k in range(3):
                target = s3_element[k]
                with m.If(s3_valid & (target[:bank_bits] == bank)):
                    m.d.comb += [
                        self.wr_en[bank].eq(1),
                        self.wr_addr[bank].eq(Cat(target[bank_bits:], self.dst)),
                        self.wr_data[bank].eq(results[k]),
                    ]
        return m
