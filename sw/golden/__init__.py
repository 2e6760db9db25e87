"""The golden model: the bit-exact integer reference of everything the core computes.

Every rule of docs/numerics.md is written here once. The gateware is held to these functions
bit for bit, and its cycle counters to :func:`gs_layer_cycles` exactly. :class:`GoldenCore`
interprets the same memory words (:mod:`gsaccel.sw.format.words`) the hardware executes.
"""

from .cycles import (LAYER_OVERHEAD, RUN_OVERHEAD, WRITE_LATENCY, basis_latency,
                     basis_layer_cycles, clear_layer_cycles, engine_drain, engine_latency,
                     gs_layer_cycles, layer_stats, loop_layer_cycles, row_words,
                     writer_cycles)
from .core import GoldenCore
from .numerics import (basis_layer, dequantize, gs_layer, gs_matvec, lane_products, quantize,
                       requantize, wrap)

__all__ = [
    "wrap", "requantize", "quantize", "dequantize", "lane_products", "gs_matvec", "gs_layer",
    "basis_layer", "gs_layer_cycles", "loop_layer_cycles", "clear_layer_cycles",
    "layer_stats", "basis_layer_cycles", "GoldenCore", "engine_latency",
    "engine_drain", "WRITE_LATENCY", "LAYER_OVERHEAD", "basis_latency", "RUN_OVERHEAD",
    "writer_cycles", "row_words",
]
