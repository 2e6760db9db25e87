"""The compiler: a torch model (captured with torch.fx) lowered to a graph of device
operations, its activation tensors planned in the scratchpad, quantised to the core's integer
numerics, packed into GS matrices, run as loop nests over output pixels, and laid out as a
device image and a ``.gsp`` program.

Layer: imports :mod:`gsaccel.sw.golden`, :mod:`gsaccel.sw.prune`, :mod:`gsaccel.sw.format`
and below.
"""

from .compiler import compile
from .native import compile_native
from .quantize import FloatLayer, quantize_weights
from .layers import BasisLayer, ClearLayer, GSLayer, InputTransform, ResidualNest
from .image import DeviceImage, build_image
from .program import Program, ProgramTensor, GSP_MAGIC, GSP_VERSION

__all__ = [
    "compile", "compile_native", "FloatLayer", "quantize_weights", "GSLayer", "BasisLayer",
    "ClearLayer", "InputTransform", "ResidualNest", "DeviceImage", "build_image", "Program",
    "ProgramTensor", "GSP_MAGIC", "GSP_VERSION",
]
