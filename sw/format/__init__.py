"""The GS compact format: sparse weight matrices as conflict-free groups of V lanes
(:class:`GSMatrix`, the ``.gsf`` file), the weight codes, the one power-of-two rounding rule
(:func:`pow2_round`) and the memory-word codec.

Layer: imports :mod:`gsaccel.hw` and :mod:`gsaccel.sw.errors` only.
"""

from . import matrix, words
from .matrix import *       # noqa: F401,F403 -- the names in matrix.__all__
from .words import *        # noqa: F401,F403 -- the names in words.__all__

__all__ = [*matrix.__all__, *words.__all__]
