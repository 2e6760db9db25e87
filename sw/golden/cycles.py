"""The golden cycle model: how many clock cycles the core spends on a layer and a run.

The RTL's cycle counters equal these numbers exactly (docs/architecture.md, "Cycle model").
"""

from collections import deque

import numpy as np

from ...hw.basis import basis_latency
from ...hw.config import CoreConfig
from ...hw.engine import engine_latency
from ...hw.sequencer import LAYER_OVERHEAD, RUN_OVERHEAD
from ...hw.writer import WRITE_LATENCY

__all__ = ["engine_latency", "engine_drain", "gs_layer_cycles", "basis_latency",
           "basis_layer_cycles", "clear_layer_cycles", "loop_layer_cycles", "layer_stats",
           "writer_cycles", "row_words", "WRITE_LATENCY", "LAYER_OVERHEAD", "RUN_OVERHEAD"]

# Every latency is the gateware's own (each block computes it from the stages it builds).


# Cycle model ------------------------------------------------------------------------------------

def engine_drain(cfg: CoreConfig):
    """Cycles from the issue cycle after a layer's last group to the engine being idle."""
    return engine_latency(cfg) - 1


def writer_cycles(matrix, cfg: CoreConfig):
    """The writer's cycles on each row group's sum vector of ``matrix`` (an array, one per
    row group): its V/e slots on a serial writer, its row lines
    (:meth:`GSMatrix.row_lines`) on a vector writer (``cfg.vector_writer``)."""
    if cfg.vector_writer:
        return matrix.row_lines()[1]
    return np.full(matrix.n_rowgroups, matrix.segments, dtype=np.int64)


def row_words(matrix, cfg: CoreConfig):
    """Row-memory words one pixel of a GS layer of ``matrix`` takes (its descriptor's
    ``row_count``): a record per slot (serial writer), or its row lines (vector writer)."""
    return int(writer_cycles(matrix, cfg).sum())


def gs_layer_cycles(rg_groups, writer, cfg: CoreConfig, trailing_groups=0):
    """(cycles, stall cycles) of one GS layer on the core (docs/architecture.md).

    One group issues per cycle; a row group's last group needs a credit (a free slot in the
    sum-vector queue, in-flight vectors included); the writer spends ``writer`` cycles on a
    vector (an int for every vector, or one per row group: :func:`writer_cycles`) and
    returns the credit when it is done. ``trailing_groups`` after the final ``last`` group
    (only a hand-written descriptor has them) issue but emit nothing.
    """
    rg_groups = np.asarray(rg_groups, dtype=np.int64)
    writer = np.broadcast_to(np.asarray(writer, dtype=np.int64), rg_groups.shape).tolist()
    credits = cfg.result_vectors
    returns = deque()               # cycles from which returned credits can be used
    issue = 0                       # cycle the next group issues in
    writer_free = 0                 # cycle the writer can start the next vector
    stalls = 0
    for groups, spends in zip(rg_groups.tolist(), writer):
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
        writer_free = start + spends
        returns.append(writer_free)
        issue += 1
    issue += trailing_groups
    # The writer's last write, or (after trailing groups) the engine's pipeline emptying.
    end = max(writer_free + WRITE_LATENCY, issue + engine_drain(cfg) if issue else 0)
    return LAYER_OVERHEAD + end, stalls


def layer_stats(matrix, cfg=None):
    """:meth:`GSMatrix.stats` with the ``cycles`` and ``stall_cycles`` of the matrix as one GS
    layer on a core of ``cfg`` (default: the matrix's lanes and encoding)."""
    cfg = cfg or CoreConfig(lanes=matrix.lanes, encoding=matrix.encoding)
    cycles, stalls = gs_layer_cycles(matrix.rg_groups, writer_cycles(matrix, cfg), cfg)
    return {**matrix.stats(), "cycles": cycles, "stall_cycles": stalls}


def clear_layer_cycles(words):
    """A CLEAR layer: its preamble, then one cycle per word (at least one), the last of which
    steps to the next layer."""
    return LAYER_OVERHEAD - 1 + max(int(words), 1)


def loop_layer_cycles(rg_groups, writer, pixels, cfg: CoreConfig):
    """(cycles, stall cycles) of a GS layer whose row groups (``rg_groups`` groups each, the
    last of each a ``last`` group; the writer spends ``writer`` cycles on each one's vector,
    as in :func:`gs_layer_cycles`) are replayed for ``pixels`` output pixels: the pixels'
    groups are one stream through the engine."""
    rg_groups = np.asarray(rg_groups, dtype=np.int64)
    writer = np.broadcast_to(np.asarray(writer, dtype=np.int64), rg_groups.shape)
    return gs_layer_cycles(np.tile(rg_groups, pixels), np.tile(writer, pixels), cfg)


def basis_layer_cycles(n_chunks, cfg: CoreConfig):
    return LAYER_OVERHEAD + n_chunks + basis_latency(cfg)
