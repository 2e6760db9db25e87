"""torch model → device :class:`~gsaccel.sw.compile.program.Program`: the public entry point.

:func:`compile` lowers the model to a graph of device operations
(:func:`~gsaccel.sw.compile.graph.lower_graph`), plans the activation scratchpad
(:mod:`.plan`), quantises every layer to the core's integer numerics (:mod:`.quantize`) and
emits loop-nest device layers (:mod:`.native`, :mod:`.layers`); the program it returns runs
on every target. docs/runtime.md has the rules.
"""

import numpy as np

from ...hw.config import CoreConfig
from ..errors import ShapeError
from .native import compile_native

__all__ = ["compile"]


def compile(model, example_input, lanes=8, encoding="pow2", cfg=None, *, phases=True):
    """Compile a torch model into a :class:`~gsaccel.sw.compile.program.Program`.

    Parameters
    ----------
    model : torch.nn.Module
        Conv2d (any stride, padding, dilation, groups), Linear, MaxPool2d, AvgPool2d,
        AdaptiveAvg/MaxPool2d and residual additions, with BatchNorm and ReLU folded into
        them, as :func:`~gsaccel.sw.compile.graph.lower_graph` lowers it; in eval mode or not
        (it is traced in eval mode and left as it was).
    example_input : array or tensor (N, C, H, W) or (N, F)
        Calibration batch: activation scales are set so that its largest values fit int8,
        and error-feedback rounding and bias correction run on it.
    lanes : int
        V, when ``cfg`` is not given.
    encoding : str
        ``pow2`` or ``int8``, when ``cfg`` is not given.
    cfg : CoreConfig, optional
        The core to compile for (default ``CoreConfig(lanes=lanes, encoding=encoding)``).
    phases : bool
        When only the weights exceed the core's memories, compile into phases that the
        runtime streams before their layers (``program.phases()``); else a CapacityError.

    Raises
    ------
    UnsupportedError, CapacityError, ShapeError, PatternError
        CapacityError names every limit of the core the program exceeds, at once.
    """
    if cfg is None:
        cfg = CoreConfig(lanes=lanes, encoding=encoding)
    elif cfg.lanes != lanes and lanes != 8 or cfg.encoding != encoding and encoding != "pow2":
        raise ShapeError(f"Lanes and encoding must match cfg ({cfg.lanes}, {cfg.encoding}), "
                         f"not ({lanes}, {encoding})")
    if not hasattr(example_input, "detach"):
        example_input = np.asarray(example_input)
    program = compile_native(model, example_input, cfg, phases=phases)
    program.phase_images()      # the image builder's own checks (words, ranges)
    return program
