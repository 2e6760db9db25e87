"""A test harness around the datapath: scratchpad, its arbiter, gather engine, result writer
and (V >= 4) basis unit wired as in the core, with the host's element port so testbenches can
load and read activations.

Not part of the core (``hw/core.py`` wires the same blocks to the sequencer and the command
processor); the amaranth.sim and cocotb testbenches of the datapath use it as their DUT.
"""

import dataclasses

from amaranth.hdl import Module, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..hw.arbiter import ScratchpadArbiter
from ..hw.config import CoreConfig
from ..hw.basis import BasisUnit
from ..hw.engine import GatherEngine
from ..hw.layouts import group_stream_layout, layer_control_layout, row_stream_layout
from ..hw.scratchpad import BankedScratchpad, ElementPort, element_addr_width
from ..hw.sequencer import ScratchpadOwner
from ..hw.writer import ResultWriter
from ..sw.compile.image import layer_words as image_layer_words
from ..sw.compile.layers import GSLayer
from ..sw.format.geometry import LoopNest, TensorGeometry

__all__ = ["Datapath", "layer_words", "one_pixel_nest", "whole_words"]


class Datapath(wiring.Component):
    """GatherEngine + ResultWriter + BasisUnit + BankedScratchpad behind the core's
    ScratchpadArbiter, with the host's element port and the arbiter's ``owner`` as ports.

    The testbench plays the sequencer: it sets ``owner`` (HOST to load and read
    activations, GS for a GS layer, BASIS for a basis layer) and the layer's ``control``.

    Parameters
    ----------
    cfg : CoreConfig

    Members
    -------
    i_group : In(stream.Signature(group_stream_layout(cfg)))
    i_row : In(stream.Signature(row_stream_layout(cfg)))
    control : In(layer_control_layout(cfg))
        Layer settings, stable during a layer.
    owner : In(ScratchpadOwner)
        Who drives the scratchpad (:class:`~gsaccel.hw.arbiter.ScratchpadArbiter`).
    clear : In(1)
        Zero the engine's accumulators.
    host : In(ElementPort(addr_width=element_addr_width(cfg)))
        The host's element port (while ``owner`` is HOST): ``rd_data`` is the element at
        the ``addr`` of ``HOST_READ_LATENCY`` cycles ago.
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
            "i_group":      In(stream.Signature(group_stream_layout(cfg))),
            "i_row":        In(stream.Signature(row_stream_layout(cfg))),
            "control":      In(layer_control_layout(cfg)),
            "owner":        In(ScratchpadOwner),
            "clear":        In(1),
            "host":         In(ElementPort(addr_width=element_addr_width(cfg))),
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
        m.submodules.scratchpad = scratchpad = BankedScratchpad(cfg)
        m.submodules.arbiter = arbiter = ScratchpadArbiter(cfg)
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

        # The scratchpad's ports, as in the core.
        m.d.comb += arbiter.owner.eq(self.owner)
        wiring.connect(m, wiring.flipped(self.host), arbiter.host)
        for bank in range(cfg.lanes):
            wiring.connect(m, engine.banks[bank], arbiter.engine[bank])
            wiring.connect(m, writer.banks[bank], arbiter.writer[bank])
            if basis is not None:
                wiring.connect(m, basis.banks[bank], arbiter.basis[bank])
            wiring.connect(m, arbiter.banks[bank], scratchpad.banks[bank])
        return m


def whole_words(matrix):
    """``matrix`` with zero columns up to a multiple of V: the GEMM view of a Linear layer,
    whose input channels are padded to whole bank words (the groups are unchanged)."""
    rows, cols = matrix.shape
    padded = -(-cols // matrix.lanes) * matrix.lanes
    return matrix if padded == cols else dataclasses.replace(matrix, shape=(rows, padded))


def one_pixel_nest(cfg, matrix, src=0, dst=None):
    """The loop nest of a Linear layer of ``matrix``: one pixel, its input at bank address
    ``src``, its output at ``dst`` (default: just past the input)."""
    rows, cols = matrix.shape
    source = TensorGeometry(1, 1, cols, cfg.lanes, base=src)
    dest = TensorGeometry(1, 1, rows, cfg.lanes, base=source.end if dst is None else dst)
    return LoopNest(source, dest, (1, 1))


def layer_words(cfg, matrix, bias, nest=None, op="sum"):
    """The group words and row words the packer produces for one GS layer of ``matrix``
    (in the GEMM view of ``nest``, by default :func:`one_pixel_nest`), and its descriptor
    fields."""
    nest = one_pixel_nest(cfg, matrix) if nest is None else nest
    layer = GSLayer("layer", "test", whole_words(matrix), bias, 0, False, op, nest, (),
                    "layer")
    descriptor, groups, rows = image_layer_words(cfg, layer)
    return groups, rows, descriptor
