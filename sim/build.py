"""Verilog export and cached Verilator builds for the cocotb testbenches.

``cached_verilog`` writes a component's Verilog into ``build/sim/<name>-<hash>/`` (the hash
covers the Verilog text and the config), and ``run_cocotb`` builds it once with Verilator
(a stamp file marks a finished build; a lock file keeps parallel pytest workers from
building the same folder twice) and runs a cocotb test module against it.
"""

import contextlib
import fcntl
import hashlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

from amaranth.back import verilog

from ..hw.config import CoreConfig
from ..sw.errors import ToolNotFound
from .toolchain import MIN_VERILATOR, verilator_env, verilator_version
from .verilog_text import compact_zero_memory_init

__all__ = ["cached_verilog", "run_cocotb", "require_verilator", "BUILD_ROOT"]

logger = logging.getLogger(__name__)

#: Where simulation builds go (git-ignored).
BUILD_ROOT = Path(__file__).resolve().parent.parent / "build" / "sim"

_STAMP = ".verilator-built"


def _cfg_json(cfg):
    if cfg is None:
        return "null"
    if not isinstance(cfg, CoreConfig):
        raise TypeError(f"Configuration must be a CoreConfig or None, not {cfg!r}")
    return cfg.to_json()


def cached_verilog(component, name, cfg=None, *, platform=None, models=""):
    """Write ``component``'s Verilog to ``build/sim/<name>-<hash>/<name>.v``; return the folder.

    Parameters
    ----------
    component : wiring.Component or callable returning one
        The design; its top module is called ``name``.
    name : str
        Module and folder name (a Verilog identifier).
    cfg : CoreConfig, optional
        Stored next to the Verilog as ``cfg.json`` and part of the hash.
    platform : amaranth.build.Platform, optional
        Elaborate for this platform (its primitives then need ``models``).
    models : str
        Verilog appended to the design, e.g. simulation models of vendor primitives.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"Module name must be a Verilog identifier, not {name!r}")
    if callable(component) and not hasattr(component, "elaborate"):
        component = component()
    cfg_text = _cfg_json(cfg)
    text = compact_zero_memory_init(verilog.convert(component, name=name, emit_src=False,
                                                    platform=platform))
    if models:
        text += "\n" + models + "\n"
    digest = hashlib.sha256((text + "\0" + cfg_text).encode()).hexdigest()[:12]
    build_dir = BUILD_ROOT / f"{name}-{digest}"
    build_dir.mkdir(parents=True, exist_ok=True)
    source = build_dir / f"{name}.v"
    if not source.exists() or source.read_text() != text:
        tmp = build_dir / f".{name}.v.{os.getpid()}"
        tmp.write_text(text)
        tmp.replace(source)                      # atomic: readers never see half a file
        (build_dir / "cfg.json").write_text(cfg_text)
    return build_dir


def require_verilator():
    """Skip the calling test when Verilator is missing or too old, or fail under ``CI=true``."""
    import pytest
    try:
        version = verilator_version()
    except ToolNotFound as error:
        reason = str(error)
    else:
        if version >= MIN_VERILATOR:
            return
        reason = (f"Verilator {version[0]}.{version[1]:03d} is older than the "
                  f"{MIN_VERILATOR[0]}.{MIN_VERILATOR[1]:03d} cocotb 2.x needs")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@contextlib.contextmanager
def _environment(env):
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _deadline(seconds, what):
    """Raise TimeoutError in the main thread after ``seconds`` (kills a hung simulator)."""
    if seconds is None or not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(signum, frame):
        raise TimeoutError(f"{what} did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _build(runner, build_dir, toplevel, timeout):
    """Run Verilator once per folder; other workers wait on the lock and reuse the result."""
    source = next(build_dir.glob(f"{toplevel}.v"), None)
    if source is None:
        raise FileNotFoundError(f"No {toplevel}.v in {build_dir}; call cached_verilog() first")
    stamp = build_dir / _STAMP
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists():
            return
        started = time.monotonic()
        # The PyPI wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so the precompiled
        # header is passed to the compiler as an input file and parallel builds of designs
        # with "Slow" objects fail ("Vtop__pch.h.slow: linker input file not found").
        # Variables in MAKEFLAGS act as command-line definitions and restore GCC's option.
        os.environ["MAKEFLAGS"] = " ".join(
            filter(None, [os.environ.get("MAKEFLAGS", ""), "CFG_CXXFLAGS_PCH_I=-include"]))
        with _deadline(timeout, f"Verilator build of {build_dir.name}"):
            runner.build(sources=[source], hdl_toplevel=toplevel, build_dir=build_dir,
                         build_args=["-Wno-fatal"], always=True,
                         log_file=build_dir / "build.log")
        stamp.write_text(f"{time.monotonic() - started:.1f} s\n")
        logger.info("Built %s in %.1f s", build_dir.name, time.monotonic() - started)


def run_cocotb(build_dir, *, toplevel, test_module, test_dir, cfg=None, extra_env=None,
               timeout=300, testcase=None):
    """Build (once) and run the cocotb module ``test_module`` against ``build_dir``'s design.

    Parameters
    ----------
    build_dir : Path
        From :func:`cached_verilog`.
    toplevel : str
        The ``name`` given to :func:`cached_verilog`.
    test_module : str
        Module of cocotb tests, found in ``test_dir``.
    test_dir : Path
        Folder of ``test_module`` (put on ``sys.path``, so the simulator's Python finds it).
    cfg : CoreConfig, optional
        Passed to the testbench as JSON in ``GSACCEL_CFG``.
    extra_env : dict, optional
        More environment variables for the testbench.
    timeout : float
        Seconds for the build and, separately, for the simulation.
    testcase : str or list of str, optional
        Run only these cocotb tests.

    Raises
    ------
    AssertionError
        If a cocotb test fails (the message names the results file and log).
    TimeoutError
        If the build or the simulation overruns ``timeout``.
    """
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    require_verilator()
    build_dir = Path(build_dir)
    test_dir = str(Path(test_dir).resolve())
    if test_dir not in sys.path:
        sys.path.insert(0, test_dir)
    env = verilator_env()
    with _environment(env):
        runner = get_runner("verilator")
        _build(runner, build_dir, toplevel, timeout)
        test_env = {"GSACCEL_CFG": _cfg_json(cfg),
                    "GSACCEL_SEED": os.environ.get("GSACCEL_SEED", ""),
                    **(extra_env or {})}
        test_env = {key: str(value) for key, value in test_env.items() if value != ""}
        log = build_dir / f"{test_module}-{os.getpid()}.log"

        def failure(reason):
            tail = log.read_text(errors="replace").splitlines()[-60:] if log.exists() else []
            return AssertionError(f"cocotb tests in {test_module} {reason}; log {log}:\n" +
                                  "\n".join(tail))

        try:
            with _deadline(timeout, f"cocotb run of {test_module} on {build_dir.name}"):
                results = runner.test(test_module=test_module, hdl_toplevel=toplevel,
                                      hdl_toplevel_lang="verilog", build_dir=build_dir,
                                      test_dir=build_dir, extra_env=test_env,
                                      testcase=testcase, log_file=log)
        except SystemExit as exit:           # how the runner reports failures under pytest
            raise failure(f"failed (exit {exit.code})") from None
    # Outside pytest the runner only returns the results file: check it here too, and treat
    # a run that ran no test (a testcase filter that matched nothing) as a failure.
    tests, failed = get_results(results)
    if failed or not tests:
        raise failure(f"failed {failed} of {tests}")
    return log


def build_seconds(build_dir):
    """How long the Verilator build of ``build_dir`` took, or None if it has not been built."""
    stamp = Path(build_dir) / _STAMP
    return float(stamp.read_text().split()[0]) if stamp.exists() else None
