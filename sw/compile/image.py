"""Device images: the exact memory words a program loads into the core.

:func:`build_image` turns a list of :class:`LayerSpec` (packed matrices, biases, shifts) into
words of the layouts in :mod:`gsaccel.hw.layouts`. The golden model executes these same
words, so packing is inside the bit-exact contract.
"""

from dataclasses import dataclass, field

import numpy as np
from ...hw.config import CoreConfig
from ...hw.layouts import LayerKind, Memory, group_layout, layer_layout, row_layout, word_bytes
from ..errors import CapacityError, ShapeError
from ..format import GSMatrix, pow2_encode
from ..format.words import pack_word

__all__ = ["LayerSpec", "DeviceImage", "build_image"]


# Layers -----------------------------------------------------------------------------------------

@dataclass
class LayerSpec:
    """One layer of a device program.

    ``kind="gs"``: ``matrix`` (a :class:`GSMatrix` of the core's lanes and encoding) reads
    buffer ``src`` elements ``[0, cols)`` and writes rows ``[0, rows)`` of buffer ``dst``,
    each ``requantize(sum + bias[row], shift, relu)``.
    ``kind="basis"``: ``z = basis @ x`` for ``n_chunks`` 3-element chunks (SmartDeal).
    """

    kind: str = "gs"
    matrix: GSMatrix = None
    bias: np.ndarray = None
    shift: int = 0
    relu: bool = False
    src: int = 0
    dst: int = 1
    basis: np.ndarray = None
    n_chunks: int = 0
    name: str = ""

    @property
    def in_size(self):
        return self.matrix.shape[1] if self.kind == "gs" else 3 * self.n_chunks

    @property
    def out_size(self):
        return self.matrix.shape[0] if self.kind == "gs" else 3 * self.n_chunks


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
        from ...hw.layouts import memory_layout
        size = word_bytes(memory_layout(self.cfg, mem))
        return b"".join(w.to_bytes(size, "little") for w in self.words(mem))

    def memories(self):
        """``(mem, words)`` in the order a loader writes them."""
        return [(Memory.WEIGHTS, self.weights), (Memory.ROWS, self.rows),
                (Memory.LAYERS, self.layers)]


def _group_words(cfg, matrix):
    """The weight-memory words of ``matrix``: per lane its code and bank, per bank the
    address its one reader wants (``group_layout``)."""
    values = matrix.group_values
    codes = pow2_encode(values) if cfg.encoding == "pow2" else values
    last = matrix.group_last
    lanes, bank_bits = cfg.lanes, cfg.bank_bits
    addr_bits = cfg.col_width - bank_bits
    lane_bits = cfg.value_width + bank_bits
    value_mask = (1 << cfg.value_width) - 1
    cols = np.asarray(matrix.group_cols, dtype=np.int64)
    banks, addrs = cols % lanes, cols // lanes
    words = []
    for g in range(matrix.n_groups):
        word = int(last[g]) << (lanes * (lane_bits + addr_bits))
        bank_addr = [None] * lanes
        for lane in range(lanes):
            if values[g, lane] == 0:
                continue                        # padding: bank 0, reads nothing
            bank, addr = int(banks[g, lane]), int(addrs[g, lane])
            if bank_addr[bank] not in (None, addr):
                raise ShapeError(f"group {g} reads two columns of bank {bank}; a GS matrix "
                                 f"must be conflict-free")
            bank_addr[bank] = addr
            word |= ((int(codes[g, lane]) & value_mask) | bank << cfg.value_width) \
                << (lane * lane_bits)
        for bank, addr in enumerate(bank_addr):
            word |= (addr or 0) << (lanes * lane_bits + bank * addr_bits)
        words.append(word)
    return words


def build_image(cfg: CoreConfig, layers):
    """Pack ``layers`` into a :class:`DeviceImage` for ``cfg``.

    Raises :class:`ShapeError` for a layer that does not match the core, and
    :class:`CapacityError` when the program does not fit its memories.
    """
    image = DeviceImage(cfg)
    row_lay, layer_lay = row_layout(cfg), layer_layout(cfg)
    if len(layers) > cfg.layer_depth:
        raise CapacityError(f"Program has {len(layers)} layers, the core's layer table holds "
                            f"{cfg.layer_depth}")
    for index, spec in enumerate(layers):
        where = f"layer {index}{f' ({spec.name})' if spec.name else ''}"
        if spec.src not in (0, 1) or spec.dst not in (0, 1) or spec.src == spec.dst:
            raise ShapeError(f"{where}: source and destination buffers must be 0 and 1 or 1 "
                             f"and 0, not {spec.src} and {spec.dst}")
        if not 0 <= spec.shift <= 31:
            raise ShapeError(f"{where}: shift must be in [0, 31], not {spec.shift}")
        if spec.in_size > cfg.buffer_size or spec.out_size > cfg.buffer_size:
            raise CapacityError(f"{where}: {spec.in_size} inputs and {spec.out_size} outputs; "
                                f"a buffer holds {cfg.buffer_size} (lanes x bank depth)")
        descriptor = {"src": spec.src, "dst": spec.dst, "relu": int(bool(spec.relu)),
                      "shift": spec.shift}
        if spec.kind == "gs":
            matrix = spec.matrix
            if matrix.lanes != cfg.lanes or matrix.encoding != cfg.encoding:
                raise ShapeError(f"{where}: matrix has {matrix.lanes} lanes and {matrix.encoding}"
                                 f" values, the core {cfg.lanes} lanes and {cfg.encoding}")
            rows = matrix.shape[0]
            bias = np.zeros(rows, dtype=np.int64) if spec.bias is None else \
                np.asarray(spec.bias, dtype=np.int64)
            if bias.shape != (rows,):
                raise ShapeError(f"{where}: bias has shape {bias.shape}, expected ({rows},)")
            lim = 1 << (cfg.acc_width - 1)
            if (bias < -lim).any() or (bias >= lim).any():
                raise ShapeError(f"{where}: a bias is outside the {cfg.acc_width}-bit "
                                 f"accumulator range")
            if matrix.n_groups > 65535:
                raise CapacityError(f"{where}: {matrix.n_groups} groups, a layer holds at most "
                                    f"65535")
            descriptor.update(kind=LayerKind.GS, seg_log2=matrix.per_row.bit_length() - 1,
                              group_base=len(image.weights), group_count=matrix.n_groups,
                              row_base=len(image.rows))
            image.weights += _group_words(cfg, matrix)
            for members in matrix.rg_rows:
                for row in members:
                    image.rows.append(pack_word(row_lay, {
                        "out_addr": max(int(row), 0), "valid": int(row >= 0),
                        "bias": int(bias[row]) if row >= 0 else 0}))
        elif spec.kind == "basis":
            basis = np.asarray(spec.basis)
            if basis.shape != (3, 3) or (basis < -128).any() or (basis > 127).any():
                raise ShapeError(f"{where}: basis must be a 3x3 int8 matrix, not shape "
                                 f"{basis.shape}")
            if not cfg.basis:
                raise ShapeError(f"{where}: this core has no basis unit (it needs basis=True "
                                 f"and at least 4 lanes, not {cfg.lanes}); build one with it "
                                 f"or prune without SmartDeal")
            if not 0 < spec.n_chunks <= 65535:
                raise ShapeError(f"{where}: chunk count must be in [1, 65535], not "
                                 f"{spec.n_chunks}")
            descriptor.update(kind=LayerKind.BASIS, group_count=spec.n_chunks,
                              basis=[int(v) for v in basis.ravel()])
        else:
            raise ShapeError(f"{where}: layer kind must be 'gs' or 'basis', not {spec.kind!r}")
        image.layers.append(pack_word(layer_lay, descriptor))
    if len(image.weights) > cfg.weight_depth:
        raise CapacityError(f"Program needs {len(image.weights)} group words, the core's weight "
                            f"memory holds {cfg.weight_depth}")
    if len(image.rows) > cfg.row_depth:
        raise CapacityError(f"Program needs {len(image.rows)} row records, the core's row "
                            f"memory holds {cfg.row_depth}")
    return image
