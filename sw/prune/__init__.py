"""Pruning torch models into the patterns the core runs at full rate: GS (gather and
scatter), SubP 1×N blocks, SmartDeal ``W ≈ C·B`` and unstructured magnitude pruning, in the
conventions of ``torch.nn.utils.prune``. Conv2d layers (grouped and depthwise included) are
pruned in the GEMM view the core runs (:mod:`.view`).

Modules by job: :mod:`.view` (GEMM view), :mod:`.masks` (mask algorithms on a matrix),
:mod:`.rearrange` (row order for 1×N), :mod:`.smartdeal`, :mod:`.info` (pattern metadata),
:mod:`.pruning` (the torch API, and every public name).

Layer: beside :mod:`gsaccel.sw.compile`; imports :mod:`gsaccel.sw.format` and below.
"""

from . import pruning
from .pruning import *      # noqa: F401,F403 -- the names in pruning.__all__
# Models saved while this package was one module (gsaccel/sw/prune.py) name the SmartDeal
# parametrisation here; torch.load finds it under that name.
from .pruning import _SmartDealWeight  # noqa: F401

__all__ = list(pruning.__all__)
