"""The compiler: a torch model (captured with torch.fx) lowered to layers, quantised
to the core's integer numerics, packed into GS matrices and laid out as a device image and a
``.gsp`` program.

Layer: imports :mod:`gsaccel.sw.golden`, :mod:`gsaccel.sw.prune`, :mod:`gsaccel.sw.format`
and below.
"""

from .compiler import compile, lower, FloatLayer, float_trace, quantize_weights
from .image import LayerSpec, DeviceImage, build_image
from .program import Program, GSP_MAGIC, GSP_VERSION

__all__ = [
    "compile", "lower", "FloatLayer", "float_trace", "quantize_weights", "LayerSpec",
    "DeviceImage", "build_image", "Program", "GSP_MAGIC", "GSP_VERSION",
]
