"""The ``sim`` target's transport: the Verilator-compiled core behind a pipe.

:class:`VerilatorTransport` starts the native harness (``gsaccel.sim.native``) as a child
process and exchanges bytes with it over its stdin and stdout. The RTL is clocked for real;
nothing here models the core.
"""

import logging
import os
import re
import selectors
import subprocess
import tempfile
import time
from pathlib import Path

from ...hw.config import check_config
from ..errors import DeviceError, DeviceTimeout
from .transport import Transport
from ...sim.native import build_native

__all__ = ["VerilatorTransport", "SimStats"]

logger = logging.getLogger(__name__)

#: Seconds ``send`` may take to hand its bytes over (the harness takes them at one per
#: simulated cycle, about a million a second).
_SEND_TIMEOUT = 60.0

_STATS = re.compile(r"gsaccel-sim: (\w+) cycles=(\d+) bytes_in=(\d+) bytes_out=(\d+) "
                    r"seconds=([\d.]+) cycles_per_second=([\d.]+) cpu_seconds=([\d.]+)")


class SimStats:
    """What the harness reports: simulated ``cycles``, ``bytes_in``, ``bytes_out``, the
    wall-clock ``seconds`` it ran (waiting for input excluded), ``cycles_per_second`` over
    them, and the process's ``cpu_seconds``."""

    def __init__(self, cycles, bytes_in, bytes_out, seconds, cycles_per_second, cpu_seconds):
        self.cycles, self.bytes_in, self.bytes_out = cycles, bytes_in, bytes_out
        self.seconds, self.cycles_per_second = seconds, cycles_per_second
        self.cpu_seconds = cpu_seconds

    @property
    def cycles_per_cpu_second(self):
        """The model's speed, independent of how loaded the machine is."""
        return self.cycles / self.cpu_seconds if self.cpu_seconds > 0 else 0.0

    def __repr__(self):
        return (f"SimStats(cycles={self.cycles}, bytes_in={self.bytes_in}, "
                f"bytes_out={self.bytes_out}, seconds={self.seconds:.3f}, "
                f"cycles_per_second={self.cycles_per_second:.0f}, "
                f"cpu_seconds={self.cpu_seconds:.3f})")


class VerilatorTransport(Transport):
    """Bytes to and from the Verilated :class:`~gsaccel.hw.core.GsaccelCore`.

    The first use for a configuration compiles the simulation (about a minute; cached in
    the user's cache folder, see :func:`gsaccel.sim.native.build_native`).

    Parameters
    ----------
    cfg : CoreConfig
        The core to simulate.
    trace : str or Path, optional
        Write a waveform there (FST if the name ends in ``.fst``, else VCD); uses a separate
        build with tracing compiled in, which is slower.

    Attributes
    ----------
    stats : SimStats or None
        The harness's cycle count and speed, once :meth:`close` has run.

    Raises
    ------
    TypeError
        If ``cfg`` is not a :class:`CoreConfig`.
    ToolNotFound, GsaccelError
        If the simulation cannot be built.
    """

    def __init__(self, cfg, *, trace=None):
        check_config(cfg)
        self._cfg = cfg
        kind = None if trace is None else ("fst" if str(trace).endswith(".fst") else "vcd")
        self._executable = build_native(cfg, trace=kind or False)
        command = [str(self._executable)]
        if trace is not None:
            command += ["--trace", str(Path(trace).resolve())]
        # stderr goes to a file: the harness writes little there, and a pipe nobody reads
        # could fill and stall the simulation.
        self._stderr = tempfile.TemporaryFile(prefix="gsaccel-sim-")
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._stderr,
                                         bufsize=0)
        os.set_blocking(self._process.stdout.fileno(), False)
        os.set_blocking(self._process.stdin.fileno(), False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._process.stdout, selectors.EVENT_READ)
        self._pending = bytearray()
        self.stats = None

    @property
    def cfg(self):
        return self._cfg

    @property
    def executable(self):
        return self._executable

    def _check_alive(self):
        status = self._process.poll()
        if status is not None:
            raise DeviceError(f"The Verilator simulation exited with status {status}; "
                              f"its last output: {self._stderr_tail()!r}")

    def _stderr_tail(self):
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-400:].strip()

    def send(self, data):
        """Write all of ``data``, reading replies meanwhile: a host that sends a lot before it
        reads must not leave the harness blocked on a full output pipe while this blocks on
        a full input pipe."""
        if self._process is None:
            raise DeviceError("The Verilator transport is closed")
        self._check_alive()
        view = memoryview(bytes(data))
        stdin, stdout = self._process.stdin, self._process.stdout
        deadline = time.monotonic() + _SEND_TIMEOUT
        with selectors.DefaultSelector() as selector:
            selector.register(stdin, selectors.EVENT_WRITE)
            selector.register(stdout, selectors.EVENT_READ)
            while view:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeviceTimeout(f"The Verilator simulation must take {len(data)} bytes "
                                        f"within {_SEND_TIMEOUT:g} s, not "
                                        f"{len(data) - len(view)}")
                for key, _ in selector.select(remaining):
                    if key.fileobj is stdout:
                        chunk = stdout.read(65536)
                        if chunk == b"":
                            self._process.wait(timeout=5)
                            self._check_alive()
                            raise DeviceError("The Verilator simulation closed its output")
                        if chunk:
                            self._pending += chunk
                    else:
                        try:
                            written = os.write(stdin.fileno(), view[:65536])
                        except BlockingIOError:
                            continue
                        except BrokenPipeError:
                            self._process.wait(timeout=5)
                            self._check_alive()
                            raise DeviceError("The Verilator simulation closed its input") \
                                from None
                        view = view[written:]

    def recv(self, n, *, timeout):
        if self._process is None:
            raise DeviceError("The Verilator transport is closed")
        deadline = time.monotonic() + timeout
        while len(self._pending) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeviceTimeout(f"The Verilator simulation must deliver {n} bytes within "
                                    f"{timeout:g} s, not {len(self._pending)}")
            if not self._selector.select(remaining):
                continue
            chunk = self._process.stdout.read(65536)
            if chunk == b"":                      # end of file: the harness is gone
                self._process.wait(timeout=5)
                self._check_alive()
                raise DeviceError("The Verilator simulation closed its output")
            if chunk:
                self._pending += chunk
        data = bytes(self._pending[:n])
        del self._pending[:n]
        return data

    def close(self):
        """End the simulation (end of input lets the harness finish) and read its stats."""
        if self._process is None:
            return
        process, self._process = self._process, None
        self._selector.close()
        try:
            process.stdin.close()
        except BrokenPipeError:
            pass
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        process.stdout.close()
        found = _STATS.findall(self._stderr_tail())
        if found:
            _, *values = found[-1]
            self.stats = SimStats(int(values[0]), int(values[1]), int(values[2]),
                                  float(values[3]), float(values[4]), float(values[5]))
            logger.info("Verilator sim: %r", self.stats)
        self._stderr.close()

    def __del__(self):
        if getattr(self, "_process", None) is not None:
            self.close()
