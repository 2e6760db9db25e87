"""The golden model: the bit-exact integer reference of everything the core computes.

Every rule of docs/numerics.md is written here once. The gateware is held to these functions
bit for bit, and its cycle counters to :func:`gs_layer_cycles` exactly. :class:`GoldenCore`
interprets the same memory words (:mod:`gsaccel.sw.image`) the hardware executes.
"""

from collections import deque

import numpy as np

from ..hw.config import CoreConfig
from ..hw.layouts import (COUNTER_NAMES, ErrorCode, LayerKind, Memory, group_layout,
                          layer_layout, memory_depth, memory_layout, row_layout)
from .errors import DeviceError, ShapeError
from .format import GSMatrix, pow2_decode, pow2_encode
from .image import unpack_word

__all__ = [
    "wrap", "requantize", "quantize", "dequantize", "lane_products", "gs_matvec", "gs_layer",
    "basis_layer", "gs_layer_cycles", "basis_layer_cycles", "GoldenCore", "pow2_encode",
    "pow2_decode", "engine_latency", "engine_drain", "WRITE_LATENCY", "LAYER_OVERHEAD",
    "basis_latency", "RUN_OVERHEAD",
]

# Pipeline constants of the RTL (docs/architecture.md, "Cycle model").
WRITE_LATENCY = 5     # cycles from the writer's last slot to its write landing
LAYER_OVERHEAD = 5    # sequencer cycles per layer: fetch, load, prime, fill, step to the next
RUN_OVERHEAD = 1      # cycles of a RUN outside its layers (the sequencer's DONE cycle)


# Scalar rules -----------------------------------------------------------------------------------

def wrap(values, width):
    """Two's complement wrap of integers to ``width`` bits (the accumulator overflows)."""
    values = np.asarray(values, dtype=np.int64)
    half = np.int64(1) << (width - 1)
    return ((values + half) & ((np.int64(1) << width) - 1)) - half


def requantize(acc, shift, relu, acc_width=24):
    """int8 from an accumulator: wrap, round half up, arithmetic shift, saturate, ReLU.

    ``acc`` already includes the bias. The rounding add is one bit wider than the
    accumulator, so it never wraps.
    """
    if not 0 <= int(shift) <= 31:
        raise ShapeError(f"Shift must be in [0, 31], not {shift!r}")
    value = wrap(acc, acc_width)
    if shift:
        value = (value + (np.int64(1) << (shift - 1))) >> shift
    value = np.clip(value, -128, 127)
    if relu:
        value = np.maximum(value, 0)
    return value.astype(np.int8)


def quantize(x, scale_log2):
    """int8 of ``x / 2**scale_log2``, rounded half up and saturated (host-side inputs)."""
    scaled = np.asarray(x, dtype=np.float64) * 2.0 ** (-scale_log2)
    return np.clip(np.floor(scaled + 0.5), -128, 127).astype(np.int8)


def dequantize(q, scale_log2):
    return np.asarray(q, dtype=np.float64) * 2.0 ** scale_log2


# Kernels ----------------------------------------------------------------------------------------

def lane_products(values, x_cols):
    """Per-lane products: exact, as each lane computes them (shift or multiply)."""
    return np.asarray(values, dtype=np.int64) * np.asarray(x_cols, dtype=np.int64)


def _segment_sums(matrix: GSMatrix, x):
    """(row groups, V/e) accumulator values before wrapping."""
    x = np.asarray(x, dtype=np.int64)
    if x.ndim != 1 or x.shape[0] < matrix.shape[1]:
        raise ShapeError(f"Input must be a vector of at least {matrix.shape[1]} elements, not "
                         f"shape {x.shape}")
    products = lane_products(matrix.group_values, x[matrix.group_cols])
    per_segment = products.reshape(matrix.n_groups, matrix.segments, matrix.per_row).sum(axis=2)
    sums = np.zeros((matrix.n_rowgroups, matrix.segments), dtype=np.int64)
    np.add.at(sums, matrix.group_rowgroup, per_segment)
    return sums


def gs_matvec(matrix: GSMatrix, x, acc_width=24):
    """Accumulator of every row of ``matrix @ x``, wrapped to ``acc_width`` as the lanes do."""
    sums = _segment_sums(matrix, x)
    out = np.zeros(matrix.shape[0], dtype=np.int64)
    real = matrix.rg_rows >= 0
    out[matrix.rg_rows[real]] = sums[real]
    return wrap(out, acc_width)


def gs_layer(matrix: GSMatrix, x, bias=None, shift=0, relu=False, acc_width=24):
    """int8 outputs of one GS layer: ``requantize(matrix @ x + bias)``."""
    acc = gs_matvec(matrix, x, acc_width)
    if bias is not None:
        acc = acc + np.asarray(bias, dtype=np.int64)
    return requantize(acc, shift, relu, acc_width)


def basis_layer(basis, x, n_chunks, shift=0, relu=False, acc_width=24):
    """SmartDeal basis transform: ``z[3g:3g+3] = requantize(B @ x[3g:3g+3])``."""
    chunks = np.asarray(x, dtype=np.int64)[:3 * n_chunks].reshape(n_chunks, 3)
    z = chunks @ np.asarray(basis, dtype=np.int64).T
    return requantize(z.ravel(), shift, relu, acc_width)


# Cycle model ------------------------------------------------------------------------------------

def engine_latency(cfg: CoreConfig):
    """Cycles from a ``last`` group's acceptance to the writer starting its vector: the bank
    read, its register, the crossbar's first half, the negation, the shift, one stage per
    level of the adder tree (log2 V) and the accumulators; without ``cfg.deep_pipeline`` the
    bank read's register goes and the tree is one stage."""
    if cfg.deep_pipeline:
        return 6 + cfg.lanes.bit_length() - 1
    return 6


def engine_drain(cfg: CoreConfig):
    """Cycles from the issue cycle after a layer's last group to the engine being idle."""
    return engine_latency(cfg) - 1


def gs_layer_cycles(rg_groups, segments, cfg: CoreConfig, trailing_groups=0):
    """(cycles, stall cycles) of one GS layer on the core (docs/architecture.md).

    One group issues per cycle; a row group's last group needs a credit (a free slot in the
    sum-vector queue, in-flight vectors included); the writer spends ``segments`` cycles per
    vector and returns the credit when it is done. ``trailing_groups`` after the final
    ``last`` group (only a hand-written descriptor has them) issue but emit nothing.
    """
    credits = cfg.result_vectors
    returns = deque()               # cycles from which returned credits can be used
    issue = 0                       # cycle the next group issues in
    writer_free = 0                 # cycle the writer can start the next vector
    stalls = 0
    for groups in np.asarray(rg_groups, dtype=np.int64).tolist():
        issue += groups - 1
        while returns and returns[0] <= issue:
            returns.popleft()
            credits += 1
        if not credits:
            stalls += returns[0] - issue
            issue = returns.popleft()
            credits += 1
        credits -= 1
        start = max(issue + engine_latency(cfg), writer_free)
        writer_free = start + segments
        returns.append(writer_free)
        issue += 1
    issue += trailing_groups
    # The writer's last write, or (after trailing groups) the engine's pipeline emptying.
    end = max(writer_free + WRITE_LATENCY, issue + engine_drain(cfg) if issue else 0)
    return LAYER_OVERHEAD + end, stalls


def basis_latency(cfg: CoreConfig):
    """Cycles from the last basis chunk's issue to its write (one fewer without
    ``cfg.deep_pipeline``: no register after the scratchpad's banks)."""
    return 11 if cfg.deep_pipeline else 10


def basis_layer_cycles(n_chunks, cfg: CoreConfig):
    return LAYER_OVERHEAD + n_chunks + basis_latency(cfg)


# The core ---------------------------------------------------------------------------------------

class GoldenCore:
    """The core as the golden model sees it: its memories and what RUN does to them.

    ``write``/``read`` take and return words (ints of the memory's layout; signed int8 for
    ACTS); errors raise :class:`DeviceError` with the device's :class:`ErrorCode` in
    ``.code``, as the core would answer.
    """

    def __init__(self, cfg: CoreConfig):
        self.cfg = cfg
        self._mems = {mem: [0] * memory_depth(cfg, mem) for mem in Memory}
        self._mems[Memory.ACTS] = np.zeros(memory_depth(cfg, Memory.ACTS), dtype=np.int8)
        self._decoded = {}
        self.counters = dict.fromkeys(COUNTER_NAMES, 0)

    def _check(self, mem, addr, count):
        try:
            mem = Memory(mem)
        except ValueError:
            raise _device_error(ErrorCode.BAD_MEMORY, f"memory {mem!r}") from None
        if addr < 0 or count < 0 or addr + count > memory_depth(self.cfg, mem):
            raise _device_error(ErrorCode.BAD_ADDRESS,
                                f"{mem.name} words {addr}..{addr + count - 1} of "
                                f"{memory_depth(self.cfg, mem)}")
        return mem

    def write(self, mem, addr, words):
        mem = self._check(mem, addr, len(words))
        if mem == Memory.COUNTERS:
            raise _device_error(ErrorCode.BAD_MEMORY, "COUNTERS is read-only")
        if mem == Memory.ACTS:
            self._mems[mem][addr:addr + len(words)] = np.asarray(words, dtype=np.int64)
            return
        width = memory_layout(self.cfg, mem).size
        for i, word in enumerate(words):
            self._mems[mem][addr + i] = int(word) & ((1 << width) - 1)
        self._decoded.clear()

    def read(self, mem, addr, count):
        mem = self._check(mem, addr, count)
        if mem == Memory.COUNTERS:
            return [self.counters[name] for name in COUNTER_NAMES][addr:addr + count]
        if mem == Memory.ACTS:
            return self._mems[mem][addr:addr + count].astype(np.int64).tolist()
        return list(self._mems[mem][addr:addr + count])

    def load(self, image):
        for mem, words in image.memories():
            self.write(mem, 0, words)

    def _layer_groups(self, base, count):
        key = (base, count)
        if key not in self._decoded:
            cfg, lanes = self.cfg, self.cfg.lanes
            words = self._mems[Memory.WEIGHTS][base:base + count]
            layout = group_layout(cfg)
            codes = np.zeros((count, lanes), dtype=np.int64)
            cols = np.zeros((count, lanes), dtype=np.int64)
            last = np.zeros(count, dtype=bool)
            for g, word in enumerate(words):
                fields = unpack_word(layout, word)
                for lane, lane_fields in enumerate(fields["lanes"]):
                    bank = lane_fields["bank"]
                    codes[g, lane] = lane_fields["value"]
                    cols[g, lane] = fields["bank_addr"][bank] * lanes + bank
                last[g] = fields["last"]
            if cfg.encoding == "pow2":
                values = pow2_decode(codes)
            else:
                values = (codes ^ 0x80) - 0x80
            self._decoded[key] = values, cols, last
        return self._decoded[key]

    def run(self, first, count):
        """Execute layers ``first .. first+count-1``; returns the counters."""
        cfg = self.cfg
        if first < 0 or count < 1 or first + count > cfg.layer_depth:
            raise _device_error(ErrorCode.BAD_LAYER, f"layers {first}..{first + count - 1} of "
                                                     f"{cfg.layer_depth}")
        counters = dict.fromkeys(COUNTER_NAMES, 0)
        counters["cycles"] = RUN_OVERHEAD
        acts = self._mems[Memory.ACTS]
        for index in range(first, first + count):
            desc = unpack_word(layer_layout(cfg), self._mems[Memory.LAYERS][index])
            src = acts[desc["src"] * cfg.buffer_size:][:cfg.buffer_size].astype(np.int64)
            dst_base = desc["dst"] * cfg.buffer_size
            if desc["kind"] == LayerKind.BASIS.value and not cfg.basis:
                # No basis unit: the sequencer's BASIS_START and BASIS states pass at once
                # and nothing is written.
                counters["cycles"] += LAYER_OVERHEAD + 2
                continue
            if desc["kind"] == LayerKind.BASIS.value:
                n = desc["group_count"]
                if 3 * n > cfg.buffer_size:
                    n = cfg.buffer_size // 3
                z = basis_layer(np.reshape(desc["basis"], (3, 3)), src, n, desc["shift"],
                                desc["relu"], cfg.acc_width)
                writes = np.arange(3 * n), z
                counters["cycles"] += basis_layer_cycles(n, cfg)
            else:
                writes, layer_counters = self._run_gs(desc, src)
                for name, value in layer_counters.items():
                    counters[name] += value
            # src == dst is a descriptor build_image refuses: the RTL then writes while it
            # reads; here every read sees the layer's input, which matches it only where no
            # write overtakes a read.
            addrs, values = writes
            acts[dst_base + addrs] = values
        self.counters = {name: int(value) & 0xFFFFFFFF for name, value in counters.items()}
        return dict(self.counters)

    def _run_gs(self, desc, src):
        cfg = self.cfg
        values, cols, last = self._layer_groups(desc["group_base"], desc["group_count"])
        e = 1 << desc["seg_log2"]
        segments = cfg.lanes // e if e <= cfg.lanes else 1
        e = cfg.lanes // segments
        # Groups after the final `last` accumulate but never emit: they cost issue cycles only.
        n_emit = int(last.sum())
        ends = np.flatnonzero(last)
        rg_groups = np.diff(np.concatenate([[-1], ends]))
        products = lane_products(values, src[cols])
        per_segment = products.reshape(len(values), segments, e).sum(axis=2)
        rowgroup = np.searchsorted(ends, np.arange(len(values)))
        sums = np.zeros((n_emit + 1, segments), dtype=np.int64)
        np.add.at(sums, rowgroup, per_segment)
        sums = sums[:n_emit].ravel()
        row_words = self._mems[Memory.ROWS][desc["row_base"]:desc["row_base"] + sums.size]
        row_words += [0] * (sums.size - len(row_words))
        rows = [unpack_word(row_layout(cfg), w) for w in row_words]
        bias = np.array([r["bias"] for r in rows], dtype=np.int64)
        valid = np.array([r["valid"] for r in rows], dtype=bool)
        addrs = np.array([r["out_addr"] for r in rows], dtype=np.int64)
        y = requantize(wrap(sums, cfg.acc_width) + bias, desc["shift"], desc["relu"],
                       cfg.acc_width)
        addrs, y = addrs[valid], y[valid]
        # Later writes to one address win, as in the hardware's write order.
        _, keep = np.unique(addrs[::-1], return_index=True)
        keep = len(addrs) - 1 - keep
        tail = len(values) - (ends[-1] + 1 if n_emit else 0)
        cycles, stalls = gs_layer_cycles(rg_groups, segments, cfg, trailing_groups=tail)
        counters = {"cycles": int(cycles), "stall_cycles": stalls, "groups": len(values),
                    "busy_lane_cycles": int(np.count_nonzero(values))}
        return (addrs[keep], y[keep]), counters


def _device_error(code, detail):
    error = DeviceError(f"device error {code.name}: {detail}")
    error.code = code
    return error
