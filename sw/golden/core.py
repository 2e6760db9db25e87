"""The golden core: the device's memories and what a RUN does to them, word for word.

:class:`GoldenCore` interprets the same memory words (:mod:`gsaccel.sw.format.words`) the
hardware executes, with the arithmetic of :mod:`.numerics` and the cycles of :mod:`.cycles`.
"""

import numpy as np

from ...hw.config import CoreConfig
from ...hw.layouts import (COUNTER_NAMES, ErrorCode, LayerKind, Memory, group_layout,
                           layer_layout, memory_depth, memory_layout, row_layout)
from ...hw.sequencer import MIN_BASIS_CYCLES
from ..errors import DeviceError, ShapeError
from ..format import pow2_decode
from ..format.words import unpack_word
from .cycles import LAYER_OVERHEAD, RUN_OVERHEAD, basis_layer_cycles, gs_layer_cycles
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
                counters["cycles"] += LAYER_OVERHEAD + MIN_BASIS_CYCLES
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
