"""A test harness around the datapath: scratchpad, gather engine, result writer and (V >= 4)
basis unit wired as in the core, with a host port to the scratchpad so testbenches can load
and read activations.

Not part of the core (``hw/core.py`` wires the same blocks to the sequencer); the amaranth.sim
and cocotb testbenches of the datapath use it as their DUT.
"""

import numpy as np
from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..hw.config import POW2_EXP_MAX, CoreConfig
from ..hw.basis import BasisUnit
from ..hw.engine import GatherEngine
from ..hw.layouts import LayerControl, group_layout, row_layout
from ..hw.scratchpad import BankedScratchpad
from ..hw.writer import ResultWriter
from ..sw.format import PATTERNS, GSMatrix
from ..sw.compile.image import LayerSpec, build_image

__all__ = ["Datapath", "random_weight_values", "random_gs_matrix", "layer_words"]


class Datapath(wiring.Component):
    """GatherEngine + ResultWriter + BasisUnit + BankedScratchpad, with a host scratchpad port.

    The basis unit (present when V >= 4) owns the scratchpad from its ``start`` cycle until it
    is no longer ``busy``; otherwise the engine reads and the writer (or the host) writes.

    Parameters
    ----------
    cfg : CoreConfig

    Members
    -------
    i_group : In(stream.Signature(group_layout(cfg)))
    i_row : In(stream.Signature(row_layout(cfg)))
    control : In(LayerControl)
        Layer settings, stable during a layer.
    clear : In(1)
        Zero the engine's accumulators.
    host_addr : In(col_width + 1)
        ACTS address ``buffer * buffer_size + element``.
    host_wr_en, host_wr_data : In(1), In(signed(8))
        Host write (takes priority over the writer; use only while idle).
    host_rd : In(1)
        Give the bank read ports to the host (only while idle).
    host_rd_data : Out(signed(8))
        Element at the ``host_addr`` of two cycles ago (when ``host_rd`` was high).
    issue, issue_lanes, stall, engine_idle, writer_idle : Out
        Engine and writer status.
    basis_start, n_chunks, basis : In(1), In(16), In(ArrayLayout(signed(8), 9))
        Basis layer control (V >= 4 only); ``control`` is shared.
    basis_busy, basis_done : Out(1)
    """

    def __init__(self, cfg):
        if not isinstance(cfg, CoreConfig):
            raise TypeError(f"Configuration must be a CoreConfig, not {cfg!r}")
        self._cfg = cfg
        super().__init__({
            "i_group":      In(stream.Signature(group_layout(cfg))),
            "i_row":        In(stream.Signature(row_layout(cfg))),
            "control":      In(LayerControl),
            "clear":        In(1),
            "host_addr":    In(cfg.col_width + 1),
            "host_wr_en":   In(1),
            "host_wr_data": In(signed(8)),
            "host_rd":      In(1),
            "host_rd_data": Out(signed(8)),
            "issue":        Out(1),
            "issue_lanes":  Out(range(cfg.lanes + 1)),
            "stall":        Out(1),
            "engine_idle":  Out(1),
            "writer_idle":  Out(1),
            **({"basis_start": In(1),
                "n_chunks":    In(16),
                "basis":       In(data.ArrayLayout(signed(8), 9)),
                "basis_busy":  Out(1),
                "basis_done":  Out(1)} if cfg.basis else {}),
        })

    @property
    def cfg(self):
        return self._cfg

    def elaborate(self, platform):
        m = Module()
        cfg = self._cfg
        bank_bits = cfg.bank_bits
        m.submodules.scratchpad = scratchpad = BankedScratchpad(cfg)
        m.submodules.engine = engine = GatherEngine(cfg)
        m.submodules.writer = writer = ResultWriter(cfg)

        wiring.connect(m, wiring.flipped(self.i_group), engine.i_group)
        wiring.connect(m, wiring.flipped(self.i_row), writer.i_row)
        wiring.connect(m, engine.o_sums, writer.i_sums)
        m.d.comb += [
            engine.control.eq(self.control),
            writer.control.eq(self.control),
            engine.credit.eq(writer.credit),
            engine.clear.eq(self.clear),
            self.issue.eq(engine.issue),
            self.issue_lanes.eq(engine.issue_lanes),
            self.stall.eq(engine.stall),
            self.engine_idle.eq(engine.idle),
            self.writer_idle.eq(writer.idle),
        ]

        basis = None
        if cfg.basis:
            m.submodules.basis = basis = BasisUnit(cfg)
            m.d.comb += [
                basis.control.eq(self.control),
                basis.start.eq(self.basis_start),
                basis.n_chunks.eq(self.n_chunks),
                basis.basis.eq(self.basis),
                self.basis_busy.eq(basis.busy),
                self.basis_done.eq(basis.done),
            ]
            # Chunk 0 reads in the start cycle, so the unit owns the banks from then on.
            basis_owns = basis.start | basis.busy

        element = self.host_addr[:cfg.col_width]
        host_bank = element[:bank_bits]
        host_bank_addr = Cat(element[bank_bits:], self.host_addr[cfg.col_width])
        for bank in range(cfg.lanes):
            host_write = self.host_wr_en & (host_bank == bank)
            m.d.comb += [
                scratchpad.rd_addr[bank].eq(Mux(self.host_rd, host_bank_addr,
                                                engine.rd_addr[bank])),
                engine.rd_data[bank].eq(scratchpad.rd_data[bank]),
                scratchpad.wr_en[bank].eq(host_write | writer.wr_en[bank]),
                scratchpad.wr_addr[bank].eq(Mux(host_write, host_bank_addr,
                                                writer.wr_addr[bank])),
                scratchpad.wr_data[bank].eq(Mux(host_write, self.host_wr_data,
                                                writer.wr_data[bank])),
            ]
            if basis is not None:
                m.d.comb += basis.rd_data[bank].eq(scratchpad.rd_data[bank])
                with m.If(basis_owns):
                    m.d.comb += [
                        scratchpad.rd_addr[bank].eq(basis.rd_addr[bank]),
                        scratchpad.wr_en[bank].eq(basis.wr_en[bank]),
                        scratchpad.wr_addr[bank].eq(basis.wr_addr[bank]),
                        scratchpad.wr_data[bank].eq(basis.wr_data[bank]),
                    ]
        read_bank = [Signal(range(cfg.lanes), name=f"read_bank{k}") for k in range(2)]
        m.d.sync += [read_bank[0].eq(host_bank), read_bank[1].eq(read_bank[0])]
        m.d.comb += self.host_rd_data.eq(Array(scratchpad.rd_data)[read_bank[1]])
        return m


# Stimulus -------------------------------------------------------------------------------------

def random_weight_values(rng, size, encoding):
    """Nonzero weights of ``encoding``: ±2**k (0 <= k <= 15, small k likelier) or int8."""
    if encoding == "pow2":
        exponent = np.minimum(rng.geometric(0.25, size) - 1, POW2_EXP_MAX)
        return np.where(rng.random(size) < 0.5, -1, 1) << exponent
    values = rng.integers(1, 128, size) * np.where(rng.random(size) < 0.5, -1, 1)
    return np.where(values == 127, -128, values)    # reach the int8 minimum as well


def random_gs_matrix(rng, pattern, rows, cols, lanes, per_row=1, encoding="pow2",
                     density=0.3):
    """A random :class:`~gsaccel.sw.format.GSMatrix` of ``pattern`` (any row count; for the
    gs patterns ``cols >= lanes``).

    gs-gather/gs-scatter row groups keep ``e*k`` weights per row with every bank loaded
    exactly ``k`` times (``k`` random per row group); gs-scatter groups randomly permuted rows.
    """
    segments = lanes // per_row
    weights = np.zeros((rows, cols), dtype=np.int64)
    row_order = None
    if pattern == "dense":
        weights = random_weight_values(rng, (rows, cols), encoding)
        weights[rng.random((rows, cols)) < 0.1] = 0           # kept zeros of a dense matrix
    elif pattern == "unstructured":
        mask = rng.random((rows, cols)) < density
        weights[mask] = random_weight_values(rng, int(mask.sum()), encoding)
    elif pattern == "1xN":
        count = int(rng.integers(1, cols + 1))
        for start in range(0, rows, lanes):
            columns = rng.choice(cols, count, replace=False)
            block = weights[start:start + lanes]
            block[:, columns] = random_weight_values(rng, (block.shape[0], count), encoding)
    elif pattern in ("gs-gather", "gs-scatter"):
        if cols < lanes:
            raise ValueError(f"GS test matrices need at least {lanes} columns, not {cols!r}")
        order = rng.permutation(rows) if pattern == "gs-scatter" else np.arange(rows)
        per_bank = cols // lanes        # columns every bank has, so k rounds always fit
        for start in range(0, rows, segments):
            members = order[start:start + segments]
            rounds = int(rng.integers(1, per_bank + 1))
            used = {int(r): set() for r in members}
            for _ in range(rounds):
                banks = rng.permutation(lanes)
                for i, row in enumerate(members):
                    for bank in banks[i * per_row:(i + 1) * per_row]:
                        free = [c for c in range(bank, cols, lanes) if c not in used[int(row)]]
                        col = int(rng.choice(free))
                        used[int(row)].add(col)
                        weights[row, col] = random_weight_values(rng, 1, encoding)[0]
        if pattern == "gs-scatter":
            row_order = order
    else:
        raise ValueError(f"Pattern must be one of {', '.join(PATTERNS)}, not {pattern!r}")
    return GSMatrix.from_dense(weights, pattern, lanes, per_row=per_row, encoding=encoding,
                               row_order=row_order)


def layer_words(cfg, matrix, bias):
    """The group words and row words the packer produces for one GS layer of ``matrix``."""
    image = build_image(cfg, [LayerSpec(kind="gs", matrix=matrix, bias=bias, src=0, dst=1)])
    return image.weights, image.rows
