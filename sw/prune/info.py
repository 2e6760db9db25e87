"""The pattern metadata a pruned layer carries for the compiler: the ``gsaccel_pattern`` and
``gsaccel_row_order`` buffers, saved with the model and its state_dict."""

from dataclasses import dataclass

import torch

from .view import _dense_weight

__all__ = ["PRUNE_PATTERNS", "PatternInfo", "pattern_info"]

#: Patterns :func:`prune` produces. ``smartdeal`` is W ≈ C·B (a BASIS layer then C' on the
#: engine); the others are masks that pack with :meth:`gsaccel.sw.format.GSMatrix.from_dense`
#: under the same pattern name.
PRUNE_PATTERNS = ("gs-gather", "gs-scatter", "1xN", "smartdeal", "unstructured")

# Codes in the ``gsaccel_pattern`` buffer (index in this tuple; -1 = none).
_PATTERN_CODES = ("gs-gather", "gs-scatter", "1xN", "unstructured", "dense", "smartdeal")


@dataclass(frozen=True)
class PatternInfo:
    """What the compiler needs to pack a pruned layer.

    Attributes
    ----------
    pattern : str
        One of :data:`PRUNE_PATTERNS`.
    lanes : int
        V the layer was pruned for.
    per_row : int
        e (weights per row in a group); 1 for 1xN.
    c_pattern : str or None
        SmartDeal only: the pattern of C' (pack C' with ``GSMatrix.from_dense`` under it).
    """

    pattern: str
    lanes: int
    per_row: int
    c_pattern: str = None


def _set_info(module, info, row_order=None):
    code = [_PATTERN_CODES.index(info.pattern), info.lanes, info.per_row,
            -1 if info.c_pattern is None else _PATTERN_CODES.index(info.c_pattern)]
    device = _dense_weight(module).device
    _set_buffer(module, "gsaccel_pattern", torch.tensor(code, dtype=torch.int64, device=device))
    if row_order is not None:
        _set_buffer(module, "gsaccel_row_order",
                    torch.as_tensor(row_order, dtype=torch.int64, device=device))
    elif "gsaccel_row_order" in module._buffers:
        del module._buffers["gsaccel_row_order"]


def _set_buffer(module, name, value):
    if name in module._buffers:
        module._buffers[name] = value
    else:
        module.register_buffer(name, value)


def pattern_info(module):
    """The :class:`PatternInfo` of a layer pruned by :func:`prune`, or ``None``.

    It is read from the ``gsaccel_pattern`` buffer (int64 ``[pattern, lanes, per_row,
    c_pattern]``, codes = index in ``("gs-gather", "gs-scatter", "1xN", "unstructured",
    "dense", "smartdeal")``, -1 = none), which is saved with the model and its state_dict. A
    gs-scatter layer also has ``gsaccel_row_order`` (its row groups, see :func:`gs_mask`; for
    a Conv2d, output channels).
    """
    code = getattr(module, "gsaccel_pattern", None)
    if code is None:
        return None
    pattern, lanes, per_row, c_pattern = (int(v) for v in code.tolist())
    return PatternInfo(_PATTERN_CODES[pattern], lanes, per_row,
                       None if c_pattern < 0 else _PATTERN_CODES[c_pattern])
