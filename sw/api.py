"""The public entry points that take a board's name: ``gsaccel.compile(model, x,
board="ulx3s-85f")`` and ``gsaccel.capacity(...)``.

They sit above :mod:`gsaccel.boards` (the catalog of board cores) and delegate to
:func:`gsaccel.sw.compile.compile`, which knows only :class:`~gsaccel.hw.config.CoreConfig`.
"""

from ..hw.config import CoreConfig
from .compile import compile as compile_for_core
from .compile.native import compile_native
from .errors import ShapeError

__all__ = ["compile", "capacity", "core_for", "quantize_aware"]


def core_for(*, board=None, cfg=None, lanes=8, encoding="pow2"):
    """The :class:`CoreConfig` to compile for: ``board``'s default core, or ``cfg``, or a
    default core of ``lanes`` and ``encoding``.

    Raises
    ------
    BoardNotFound
        ``board`` is not a board gsaccel knows (the message lists them).
    ShapeError
        Both ``board`` and ``cfg`` are given.
    """
    if board is not None:
        if cfg is not None:
            raise ShapeError(f"Give a board or a cfg, not both (board {board!r}, cfg {cfg})")
        from ..boards.catalog import get_board
        return get_board(board).config
    return cfg if cfg is not None else CoreConfig(lanes=lanes, encoding=encoding)


def compile(model, example_input, lanes=8, encoding="pow2", cfg=None, *, board=None,
            phases=True):
    """Compile a torch model into a :class:`~gsaccel.sw.compile.program.Program` for a
    board's core (``board="icebreaker"``, ``"ulx3s-85f"``, ``"orangecrab"``) or a
    :class:`CoreConfig`; :func:`gsaccel.sw.compile.compile` has the rest.

    ``phases``: when only the weights exceed the core's memories, compile into phases the
    runtime streams before their layers (``program.phases()``); otherwise a CapacityError.
    """
    if board is not None:
        cfg = core_for(board=board, cfg=cfg)
        lanes, encoding = cfg.lanes, cfg.encoding
    return compile_for_core(model, example_input, lanes, encoding, cfg, phases=phases)


def capacity(model, example_input, *, board=None, cfg=None, lanes=8, encoding="pow2"):
    """The :class:`~gsaccel.sw.compile.capacity.CapacityReport` of ``model`` on a core:
    every limit (activation words, group words, row words, layers) against the model's
    needs, and whether it fits, fits in phases, or not (``report.status``)."""
    cfg = core_for(board=board, cfg=cfg, lanes=lanes, encoding=encoding)
    if not hasattr(example_input, "detach"):
        import numpy as np
        example_input = np.asarray(example_input)
    return compile_native(model, example_input, cfg, report_only=True)


def quantize_aware(model, example_input, encoding="pow2", lanes=8, cfg=None, *, board=None,
                   inplace=False):
    """The model with fake quantisation bit-exact to what :func:`compile` will do for a
    board's core (``board=``), a :class:`CoreConfig` or a default core of ``lanes`` and
    ``encoding``: :func:`gsaccel.sw.compile.qat.quantize_aware` has the rest.
    """
    from .compile.qat import quantize_aware as prepare
    if encoding not in ("pow2", "int8"):
        raise ShapeError(f"Encoding must be 'pow2' or 'int8', not {encoding!r}")
    cfg = core_for(board=board, cfg=cfg, lanes=lanes, encoding=encoding)
    return prepare(model, example_input, cfg=cfg, inplace=inplace)
