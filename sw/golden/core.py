"""The golden core: the device's memories and what a RUN does to them, word for word.

:class:`GoldenCore` interprets the same memory words (:mod:`gsaccel.sw.format.words`) the
hardware executes, with the arithmetic of :mod:`.numerics` and the cycles of :mod:`.cycles`.
"""

import functools

import numpy as np

from ...hw.config import CoreConfig
from ...hw.layouts import (COUNTER_NAMES, ErrorCode, LayerKind, LayerOp, Memory, group_layout,
                           layer_layout, memory_depth, memory_layout, row_line_layout,
                           row_record_layout)
from ...hw.sequencer import MIN_BASIS_CYCLES
from ..errors import DeviceError, ShapeError
from ..format import pow2_decode
from ..format.words import unpack_word
from .cycles import (LAYER_OVERHEAD, RUN_OVERHEAD, basis_layer_cycles, clear_layer_cycles,
                     gs_layer_cycles)
from .numerics import basis_layer, lane_products, requantize, wrap

__all__ = ["GoldenCore"]


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
        """(values, banks, offsets, last) of ``count`` group words from ``base``."""
        key = (base, count)
        if key not in self._decoded:
            cfg, lanes = self.cfg, self.cfg.lanes
            words = [self._mems[Memory.WEIGHTS][(base + g) % cfg.weight_depth]
                     for g in range(count)]
            layout = group_layout(cfg)
            codes = np.zeros((count, lanes), dtype=np.int64)
            banks = np.zeros((count, lanes), dtype=np.int64)
            offsets = np.zeros((count, lanes), dtype=np.int64)
            last = np.zeros(count, dtype=bool)
            for g, word in enumerate(words):
                fields = unpack_word(layout, word)
                for lane, lane_fields in enumerate(fields["lanes"]):
                    bank = lane_fields["bank"]
                    codes[g, lane] = lane_fields["value"]
                    banks[g, lane] = bank
                    offsets[g, lane] = fields["offset"][bank]
                last[g] = fields["last"]
            if cfg.encoding == "pow2":
                values = pow2_decode(codes)
            else:
                values = (codes ^ 0x80) - 0x80
            self._decoded[key] = values, banks, offsets, last
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
            kind = desc["kind"]
            if kind == LayerKind.CLEAR.value:
                words = (desc["dst_base"] + np.arange(desc["group_count"])) % cfg.bank_depth
                acts[(words[:, None] * cfg.lanes + np.arange(cfg.lanes)).ravel()] = 0
                counters["cycles"] += clear_layer_cycles(desc["group_count"])
            elif kind == LayerKind.BASIS.value and not cfg.basis:
                # No basis unit: the sequencer's BASIS_START and BASIS states pass at once
                # and nothing is written.
                counters["cycles"] += LAYER_OVERHEAD + MIN_BASIS_CYCLES
            elif kind == LayerKind.BASIS.value:
                n = min(desc["group_count"], cfg.act_size // 3)
                src = desc["src_base"] * cfg.lanes + np.arange(3 * n)
                if cfg.bank_halves:
                    words = np.arange(-(-3 * n // cfg.lanes))
                    self._check_halves("BASIS", desc, desc["src_base"] + words,
                                       desc["dst_base"] + words)
                z = basis_layer(np.reshape(desc["basis"], (3, 3)),
                                acts[src % cfg.act_size].astype(np.int64), n, desc["shift"],
                                desc["relu"], cfg.acc_width)
                acts[(desc["dst_base"] * cfg.lanes + np.arange(3 * n)) % cfg.act_size] = z
                counters["cycles"] += basis_layer_cycles(n, cfg)
            elif kind == LayerKind.GS.value:
                for name, value in self._run_gs(desc, acts).items():
                    counters[name] += value
            else:
                # A kind the sequencer does not know runs as nothing but its preamble and a
                # minimal GS state (no group, no row).
                counters["cycles"] += gs_layer_cycles([], 1, cfg)[0]
        self.counters = {name: int(value) & 0xFFFFFFFF for name, value in counters.items()}
        return dict(self.counters)

    def _run_gs(self, desc, acts):
        """A GS layer, a loop nest over its output pixels, as the RTL runs it: the group
        words replayed for every pixel form one stream through the engine (accumulators
        clear only at a ``last`` group), and the writer takes the sum vectors with the row
        stream, which replays ``row_count`` row-memory words per pixel: the serial writer
        pairs the k-th sum slot with the k-th record, the vector writer each line with the
        head vector (:meth:`_vector_writes`)."""
        cfg, lanes, depth = self.cfg, self.cfg.lanes, self.cfg.bank_depth
        values, banks, offsets, last = self._layer_groups(desc["group_base"],
                                                          desc["group_count"])
        e = 1 << desc["seg_log2"]
        segments = lanes // e if e <= lanes else 1
        e = lanes // segments
        width = desc["last_col"] + 1
        pixels = (desc["last_row"] + 1) * width
        n_groups = len(values)
        in_bases = _pixel_bases(desc["src_base"], desc["in_pixel_step"], desc["in_row_step"],
                                np.arange(pixels), width, depth)
        # Row group of each group of the stream: the `last` groups before it.
        per_pixel = int(last.sum())
        before = np.concatenate([[0], np.cumsum(last)[:-1]]) if n_groups else np.zeros(0, int)
        n_emit = pixels * per_pixel
        is_max = desc["op"] == LayerOp.MAX.value
        lowest = -(1 << (cfg.acc_width - 1))
        # MAX: every lane is its own segment in the engine (seg_log2 only sets how many
        # slots the writer takes); the largest product of a lane's nonzero weights.
        sums = np.full((n_emit + 1, lanes if is_max else segments), lowest if is_max else 0,
                       dtype=np.int64)
        kept = values != 0
        # Pixels at a time, so that the (pixels, groups, V) products stay small.
        chunk = max(1, (1 << 21) // max(1, n_groups * lanes))
        for start in range(0, pixels, chunk):
            p = np.arange(start, min(start + chunk, pixels))
            address = (in_bases[p][:, None, None] + offsets[None]) % depth
            x = acts[(address * lanes + banks[None]).reshape(len(p), -1)].reshape(address.shape)
            products = lane_products(values[None], x)
            rowgroup = (p[:, None] * per_pixel + before[None]).ravel()
            if is_max:
                per_lane = np.where(kept[None], products, lowest).reshape(-1, lanes)
                np.maximum.at(sums, rowgroup, per_lane)
            else:
                per_segment = products.reshape(len(p) * n_groups, segments, e).sum(axis=2)
                np.add.at(sums, rowgroup, per_segment)
        sums = wrap(sums[:n_emit, :segments], cfg.acc_width)
        pixel_bases = functools.partial(_pixel_bases, desc["dst_base"], desc["out_pixel_step"],
                                        desc["out_row_step"], width=width, depth=depth)
        rows_per_pixel = max(1, desc["row_count"])
        if cfg.vector_writer:
            address, y, valid, writer = self._vector_writes(desc, sums, rows_per_pixel,
                                                            pixel_bases)
        else:
            address, y, valid = self._serial_writes(desc, sums.ravel(), rows_per_pixel,
                                                    pixel_bases)
            writer = segments
        if cfg.bank_halves:
            taps = np.unique(offsets[kept])
            self._check_halves("GS", desc, (in_bases[:, None] + taps[None]).ravel(),
                               address[valid] // lanes)
        # Writes land in the writer's order: a later write to an element wins. Every read of
        # the layer sees the layer's input (the compiler never lets a layer's output overlap
        # its input; the RTL would read a word it has already written).
        acts[address[valid]] = y[valid]
        tail = n_groups - (np.flatnonzero(last)[-1] + 1) if per_pixel else n_groups
        stream = np.diff(np.concatenate([[-1], np.flatnonzero(np.tile(last, pixels))]))
        cycles, stalls = gs_layer_cycles(stream, writer, cfg,
                                         trailing_groups=tail if per_pixel else
                                         n_groups * pixels)
        return {"cycles": int(cycles), "stall_cycles": stalls, "groups": n_groups * pixels,
                "busy_lane_cycles": int(np.count_nonzero(values)) * pixels}

    def _requantize(self, desc, values):
        cfg = self.cfg
        return requantize(wrap(values, cfg.acc_width), desc["shift"], desc["relu"],
                          cfg.acc_width)

    def _row_words(self, desc, count, layout):
        """The first ``count`` row-memory words of the layer, unpacked."""
        return [unpack_word(layout, self._mems[Memory.ROWS][(desc["row_base"] + r) %
                                                            self.cfg.row_depth])
                for r in range(count)]

    def _check_halves(self, kind, desc, read, written):
        """On a core with bank halves a layer's reads of a half it writes are lost to the
        writes (:class:`~gsaccel.hw.memory.HalvedMemory`): such a layer has no defined
        result, and the compiler never makes one (ShapeError). ``read``, ``written``: bank
        addresses."""
        half = self.cfg.bank_depth // 2

        def halves(words):
            return set(np.unique(np.asarray(words) % self.cfg.bank_depth // half).tolist())

        both = halves(read) & halves(written)
        if both:
            raise ShapeError(f"{kind} layer (src_base {desc['src_base']}, dst_base "
                             f"{desc['dst_base']}) reads and writes half {min(both)} of the "
                             f"banks: on a core with bank halves its reads are lost (compile "
                             f"the program for this core)")

    def _serial_writes(self, desc, sums, rows_per_pixel, pixel_bases):
        """The serial writer: slot k (of all the layer's vectors, in order) takes record
        ``k % rows`` of pixel ``k // rows`` of the row stream. Returns (element addresses,
        values, valid) in write order."""
        cfg, lanes, depth = self.cfg, self.cfg.lanes, self.cfg.bank_depth
        k = np.arange(sums.size)
        record, pixel = k % rows_per_pixel, k // rows_per_pixel
        rows = self._row_words(desc, min(rows_per_pixel, sums.size), row_record_layout(cfg))
        bias = np.array([r["bias"] for r in rows], dtype=np.int64)[record]
        valid = np.array([r["valid"] for r in rows], dtype=bool)[record]
        elem = np.array([r["out_elem"] for r in rows], dtype=np.int64)[record]
        address = ((pixel_bases(pixel) + elem // lanes) % depth) * lanes + elem % lanes
        return address, self._requantize(desc, sums + bias), valid

    def _vector_writes(self, desc, sums, lines_per_pixel, pixel_bases):
        """The vector writer: line n of the row stream (line ``n % lines`` of pixel
        ``n // lines``) writes every bank k from slot ``records[k].slot mod V/e`` of the head
        vector; the vector pops after a line with ``last`` or a pixel's last line. Returns
        (element addresses, values, valid) in write order and the lines of each vector."""
        cfg, lanes, depth = self.cfg, self.cfg.lanes, self.cfg.bank_depth
        n_emit, segments = sums.shape
        if not n_emit:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty.astype(bool), empty
        # Read lines until n_emit vectors pop within the first pixel or its lines end.
        layout, lines, popped = row_line_layout(cfg), [], 0
        for r in range(lines_per_pixel):
            word = self._mems[Memory.ROWS][(desc["row_base"] + r) % cfg.row_depth]
            lines.append(unpack_word(layout, word))
            popped += lines[-1]["last"]
            if popped == n_emit:
                break
        pop = np.array([line["last"] for line in lines], dtype=bool)
        if len(lines) == lines_per_pixel:
            pop[-1] = True                          # the pixel's last line (``end``)
        pops = np.flatnonzero(pop)
        field = {name: np.array([[record[name] for record in line["records"]]
                                 for line in lines], dtype=np.int64)
                 for name in ("offset", "bias", "valid", "slot")}
        # The stream index of the line that pops vector v, and the vector of every line.
        v = np.arange(n_emit)
        pop_line = (v // pops.size) * lines_per_pixel + pops[v % pops.size]
        n = np.arange(pop_line[-1] + 1)
        vector = np.searchsorted(pop_line, n)
        r, pixel = n % lines_per_pixel, n // lines_per_pixel
        slot = field["slot"][r] & (segments - 1)
        values = sums[vector[:, None], slot] + field["bias"][r]
        address = ((pixel_bases(pixel)[:, None] + field["offset"][r]) % depth) * lanes \
            + np.arange(lanes)
        valid = field["valid"][r].astype(bool)
        writer = np.diff(np.concatenate([[-1], pop_line]))
        return (address.ravel(), self._requantize(desc, values).ravel(), valid.ravel(),
                writer)


def _pixel_bases(base, pixel_step, row_step, pixel, width, depth):
    """The stream's base for pixel index ``pixel`` (raster order, ``width`` pixels a row),
    wrapping at ``depth`` as the sequencer's adders do."""
    pixel = np.asarray(pixel, dtype=np.int64)
    return (base + (pixel // width) * row_step + (pixel % width) * pixel_step) % depth


def _device_error(code, detail):
    error = DeviceError(f"device error {code.name}: {detail}")
    error.code = code
    return error
