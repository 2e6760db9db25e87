"""Device images: the exact memory words a program loads into the core.

:func:`build_image` turns a program's device layers (:mod:`gsaccel.sw.compile.layers`: loop
nests of packed matrices, basis transforms, clears) into words of the layouts in
:mod:`gsaccel.hw.layouts`. The golden model executes these same words, so packing is inside
the bit-exact contract.
"""

from dataclasses import dataclass, field

import numpy as np

from ...hw.config import CoreConfig
from ...hw.layouts import (LayerKind, LayerOp, Memory, layer_layout, line_record_layout,
                           memory_layout, row_line_layout, row_record_layout, word_bytes)
from ..errors import CapacityError, ShapeError
from ..format import pow2_encode
from ..format.words import pack_word
from ..golden.cycles import row_words

__all__ = ["DeviceImage", "build_image", "layer_words", "layer_sizes", "phase_ranges",
           "fill_ranges"]

#: Output pixels per row and rows a descriptor counts (``last_col``/``last_row`` are 8 bits).
MAX_OUTPUT_SIDE = 256


@dataclass
class DeviceImage:
    """Words for the LAYERS, WEIGHTS and ROWS memories (ints of their layouts)."""

    cfg: CoreConfig
    layers: list = field(default_factory=list)
    weights: list = field(default_factory=list)
    rows: list = field(default_factory=list)

    def words(self, mem):
        return {Memory.LAYERS: self.layers, Memory.WEIGHTS: self.weights,
                Memory.ROWS: self.rows}[Memory(mem)]

    def to_bytes(self, mem):
        size = word_bytes(memory_layout(self.cfg, mem))
        return b"".join(w.to_bytes(size, "little") for w in self.words(mem))

    @property
    def nbytes(self):
        """Bytes of every word a loader writes (the WRITE frames' payload)."""
        return sum(len(words) * word_bytes(memory_layout(self.cfg, mem))
                   for mem, words in self.memories())

    def memories(self):
        """``(mem, words)`` in the order a loader writes them."""
        return [(Memory.WEIGHTS, self.weights), (Memory.ROWS, self.rows),
                (Memory.LAYERS, self.layers)]


def _group_words(cfg, matrix, column_offsets):
    """The weight-memory words of ``matrix``: per lane its code and bank, per bank the
    offset (from the pixel's input base) of the column its lanes read (``group_layout``)."""
    values = matrix.group_values
    codes = pow2_encode(values) if cfg.encoding == "pow2" else values
    last = matrix.group_last
    lanes = cfg.lanes
    addr_bits = cfg.act_addr_width
    lane_bits = cfg.value_width + cfg.bank_bits
    value_mask = (1 << cfg.value_width) - 1
    cols = np.asarray(matrix.group_cols, dtype=np.int64)
    banks = cols % lanes
    offsets = np.asarray(column_offsets, dtype=np.int64)[cols] % cfg.bank_depth
    words = []
    for g in range(matrix.n_groups):
        word = int(last[g]) << (lanes * (lane_bits + addr_bits))
        offset_of = [None] * lanes
        for lane in range(lanes):
            if values[g, lane] == 0:
                continue                        # padding: bank 0, reads nothing
            bank, offset = int(banks[g, lane]), int(offsets[g, lane])
            if offset_of[bank] not in (None, offset):
                raise ShapeError(f"group {g} reads two words of bank {bank}; a GS matrix "
                                 f"must be conflict-free")
            offset_of[bank] = offset
            word |= ((int(codes[g, lane]) & value_mask) | bank << cfg.value_width) \
                << (lane * lane_bits)
        for bank, offset in enumerate(offset_of):
            word |= (offset or 0) << (lanes * lane_bits + bank * addr_bits)
        words.append(word)
    return words


def _row_records(cfg, matrix, bias):
    """The serial writer's row words: a record per slot of every row group, in order
    (``row_record_layout``)."""
    layout = row_record_layout(cfg)
    return [pack_word(layout, {"out_elem": max(int(row), 0), "valid": int(row >= 0),
                               "bias": int(bias[row]) if row >= 0 else 0})
            for members in matrix.rg_rows for row in members]


def _row_lines(cfg, matrix, bias):
    """The vector writer's row words: each row group's outputs in its row lines
    (:meth:`GSMatrix.row_lines`), output channel ``c`` as record ``c mod V`` (its bank) with
    offset ``c div V``, the last line of a row group with ``last`` (``row_line_layout``)."""
    lanes = cfg.lanes
    record_layout, line_layout = line_record_layout(cfg), row_line_layout(cfg)
    record_bits, last_bit = record_layout.size, line_layout["last"].offset
    line_of, lines = matrix.row_lines()
    words = []
    for rg, members in enumerate(matrix.rg_rows.tolist()):
        line_words = [0] * int(lines[rg])
        line_words[-1] |= 1 << last_bit
        for slot, row in enumerate(members):
            if row < 0:
                continue                # a padding segment: no record writes it
            record = pack_word(record_layout, {"offset": row // lanes, "bias": int(bias[row]),
                                               "valid": 1, "slot": slot})
            line_words[line_of[rg, slot]] |= record << (row % lanes * record_bits)
        words += line_words
    return words


def _check_nest(where, cfg, nest):
    for tensor in (nest.source, nest.dest):
        if tensor.lanes != cfg.lanes:
            raise ShapeError(f"{where}: tensors have {tensor.lanes} lanes, the core {cfg.lanes}")
    for side, size in (("columns", nest.dest.width), ("rows", nest.dest.height)):
        if size > MAX_OUTPUT_SIDE:
            raise CapacityError(f"{where}: {size} output {side}; a layer counts at most "
                                f"{MAX_OUTPUT_SIDE} (split the layer)")


def layer_words(cfg, layer, group_base=0, row_base=0):
    """``(descriptor fields, group words, row words)`` of one device layer, its groups and
    rows placed at ``group_base`` and ``row_base``."""
    where = f"layer {layer.name!r}"
    kind = layer.kind
    if kind == "clear":
        return {"kind": LayerKind.CLEAR, "dst_base": layer.base, "group_count": layer.words}, \
            [], []
    if not 0 <= int(layer.shift) <= 31:
        raise ShapeError(f"{where}: shift must be in [0, 31], not {layer.shift}")
    descriptor = {"relu": int(bool(layer.relu)), "shift": int(layer.shift)}
    if kind == "basis":
        if not cfg.basis:
            raise ShapeError(f"{where}: this core has no basis unit (it needs basis=True "
                             f"and at least 4 lanes, not {cfg.lanes}); build one with it "
                             f"or prune without SmartDeal")
        if not 0 < layer.n_chunks <= 65535:
            raise ShapeError(f"{where}: chunk count must be in [1, 65535], not "
                             f"{layer.n_chunks}")
        descriptor.update(kind=LayerKind.BASIS, group_count=layer.n_chunks,
                          src_base=layer.source.base, dst_base=layer.dest.base,
                          basis=[int(v) for v in np.asarray(layer.basis).ravel()])
        return descriptor, [], []
    if kind != "gs":
        raise ShapeError(f"{where}: layer kind must be 'gs', 'basis' or 'clear', not {kind!r}")
    matrix, nest = layer.matrix, layer.nest
    if matrix.lanes != cfg.lanes or matrix.encoding != cfg.encoding:
        raise ShapeError(f"{where}: matrix has {matrix.lanes} lanes and {matrix.encoding} "
                         f"values, the core {cfg.lanes} lanes and {cfg.encoding}")
    _check_nest(where, cfg, nest)
    bias = np.asarray(layer.bias, dtype=np.int64)
    lim = 1 << (cfg.acc_width - 1)
    if (bias < -lim).any() or (bias >= lim).any():
        raise ShapeError(f"{where}: a bias is outside the {cfg.acc_width}-bit accumulator "
                         f"range")
    if matrix.n_groups > 65535:
        raise CapacityError(f"{where}: {matrix.n_groups} groups per pixel, a layer holds at "
                            f"most 65535")
    rows = (_row_lines if cfg.vector_writer else _row_records)(cfg, matrix, bias)
    dest = nest.dest
    descriptor.update(
        kind=LayerKind.GS, op=LayerOp.MAX if layer.op == "max" else LayerOp.SUM,
        seg_log2=matrix.per_row.bit_length() - 1,
        group_base=group_base, group_count=matrix.n_groups,
        row_base=row_base, row_count=len(rows),
        src_base=nest.src_base % cfg.bank_depth, dst_base=nest.dst_base % cfg.bank_depth,
        last_col=dest.width - 1, last_row=dest.height - 1,
        in_pixel_step=nest.in_pixel_step % cfg.bank_depth,
        in_row_step=nest.in_row_step % cfg.bank_depth,
        out_pixel_step=nest.out_pixel_step % cfg.bank_depth,
        out_row_step=nest.out_row_step % cfg.bank_depth)
    return descriptor, _group_words(cfg, matrix, nest.column_offsets()), rows


def layer_sizes(cfg, layer):
    """``(group words, row words)`` one device layer takes in ``cfg``'s weight and row
    memories."""
    if layer.kind != "gs":
        return 0, 0
    return int(layer.matrix.n_groups), row_words(layer.matrix, cfg)


def phase_ranges(cfg: CoreConfig, layers):
    """Split ``layers`` into phases: ``[(first, count), ...]``, consecutive layers whose group
    words, row words and layer-table entries fit ``cfg``'s memories together, each phase as
    long as it can be (one phase when the whole program fits).

    Raises :class:`CapacityError` for a single layer larger than a memory.
    """
    sizes = []
    for layer in layers:
        size = layer_sizes(cfg, layer)
        for need, have, what, field_ in ((size[0], cfg.weight_depth, "group words",
                                          "weight_depth"),
                                         (size[1], cfg.row_depth, "row words", "row_depth")):
            if need > have:
                raise CapacityError(f"Layer {layer.name!r} needs {need} {what}, the core holds "
                                    f"{have} (CoreConfig.{field_}): no phase can hold it; "
                                    f"use a core with more, or prune the layer harder")
        sizes.append((*size, 1))                # and one entry of the layer table
    return [(first, end - first) for first, end in
            fill_ranges(sizes, (cfg.weight_depth, cfg.row_depth, cfg.layer_depth))]


def fill_ranges(sizes, capacity):
    """``[(first, end), ...]``: consecutive items whose ``sizes`` (tuples, one number per
    memory) add up within ``capacity`` in every memory, each range as long as it can be.
    An item larger than the capacity on its own gets a range of its own (callers check)."""
    ranges, first, used = [], 0, None
    for index, size in enumerate(sizes):
        grown = size if used is None else tuple(u + s for u, s in zip(used, size))
        if index > first and any(g > c for g, c in zip(grown, capacity)):
            ranges.append((first, index))
            first, grown = index, size
        used = grown
    if sizes:
        ranges.append((first, len(sizes)))
    return ranges


def build_image(cfg: CoreConfig, layers):
    """Pack device layers (:class:`~gsaccel.sw.compile.layers.GSLayer`, ``BasisLayer``,
    ``ClearLayer``) into a :class:`DeviceImage` for ``cfg``.

    Raises :class:`ShapeError` for a layer that does not match the core, and
    :class:`CapacityError` naming every memory the program overflows.
    """
    image = DeviceImage(cfg)
    layer_lay = layer_layout(cfg)
    for layer in layers:
        descriptor, weights, rows = layer_words(cfg, layer, len(image.weights),
                                                len(image.rows))
        image.weights += weights
        image.rows += rows
        image.layers.append(pack_word(layer_lay, descriptor))
    over = [f"{need} {what}, the core holds {have} ({field_})"
            for need, have, what, field_ in (
                (len(image.layers), cfg.layer_depth, "layers", "CoreConfig.layer_depth"),
                (len(image.weights), cfg.weight_depth, "group words",
                 "CoreConfig.weight_depth"),
                (len(image.rows), cfg.row_depth, "row words", "CoreConfig.row_depth"))
            if need > have]
    if over:
        raise CapacityError(f"Program does not fit the core: {'; '.join(over)}; use a core "
                            f"with more, a board with more memory, or prune harder")
    return image
