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
           "basis_layer_cycles", "clear_layer_cycles", "loop_layer_cycles", "layer_stats", "WRITE_LATENCY", "LAYER_OVERHEAD", "RUN_OVERHEAD"]

# Every latency is the gateware's own (each block computes it from the stages it builds).


# Cycle model ------------------------------------------------------------------------------------

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


def layer_stats(matrix, cfg=None):
    """:meth:`GSMatrix.stats` with the ``cycles`` and ``stall_cycles`` of the matrix as one GS
    layer on a core of ``cfg`` (default: the matrix's lanes and encoding)."""
    cfg = cfg or CoreConfig(lanes=matrix.lanes, encoding=matrix.encoding)
    cycles, stalls = gs_layer_cycles(matrix.rg_groups, matrix.segments, cfg)
    return {**matrix.stats(), "cycles": cycles, "stall_cycles": stalls}


def clear_layer_cycles(words):
    """A CLEAR layer: its preamble, then one cycle per word (at least one), the last of which
    steps to the next layer."""
    return LAYER_OVERHEAD - 1 + max(int(words), 1)


def loop_layer_cycles(rg_groups, segments, pixels, cfg: CoreConfig):
    """(cycles, stall cycles) of a GS layer whose row groups (``rg_groups`` groups each, the
    last of each a ``last`` group) are replayed for ``pixels`` output pixels: the pixels'
    groups are one stream through the engine."""
    return gs_layer_cycles(np.tile(np.asarray(rg_groups, dtype=np.int64), pixels), segments,
                           cfg)


def basis_layer_cycles(n_chunks, cfg: CoreConfig):
    return LAYER_OVERHEAD + n_chunks + basis_latency(cfg)
