"""The ``gsaccel`` command line: :func:`main` and one module per group of subcommands.

Layer: the top of :mod:`gsaccel.sw`; may import every package below it.
"""

from .main import build_parser, main

__all__ = ["main", "build_parser"]
