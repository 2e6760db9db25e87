"""The board's serial design in Verilator, behind a pseudo-terminal.

:class:`PtySimulation` compiles :class:`~gsaccel.boards.top.SerialCore` around
:class:`~gsaccel.hw.core.GsaccelCore` (UART receiver, FIFO, core, UART transmitter: everything
of a board top except the PLL, reset synchroniser and LED drivers) with a small C++ harness.
The harness opens a pty and turns every byte written to it into a start bit, 8 data bits and a
stop bit on the design's ``rx`` pin, and decodes the ``tx`` pin back into bytes, so the host's
``serial:`` target (pyserial) talks to the RTL exactly as to a board, UART PHY included.
"""

import select
import subprocess

from ..hw.config import CoreConfig
from ..sim.build import verilate
from ..sw.errors import DeviceTimeout, GsaccelError

__all__ = ["PtySimulation", "build_pty_sim"]

_HARNESS = r"""
// Bridges a pseudo-terminal to the rx/tx pins of the Verilated serial design.
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <fcntl.h>
#include <sys/prctl.h>
#include <termios.h>
#include <unistd.h>
#include "Vserial_top.h"
#include "verilated.h"

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s CLOCKS_PER_BIT\n", argv[0]); return 2; }
    const int divisor = atoi(argv[1]);
    prctl(PR_SET_PDEATHSIG, SIGTERM);           // never outlive the host process
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || grantpt(master) || unlockpt(master)) { perror("pty"); return 1; }
    struct termios tio;
    tcgetattr(master, &tio);
    cfmakeraw(&tio);
    tcsetattr(master, TCSANOW, &tio);
    fcntl(master, F_SETFL, O_NONBLOCK);
    // Hold the slave open so that reads never see a hang-up between host connections.
    int keep = open(ptsname(master), O_RDWR | O_NOCTTY);
    printf("%s\n", ptsname(master));
    fflush(stdout);

    Verilated::commandArgs(argc, argv);
    Vserial_top *top = new Vserial_top;
    std::deque<unsigned char> to_rx;
    int rx_bits = 0, rx_clock = 0, rx_frame = 0;      // line driver
    int tx_state = -1, tx_clock = 0, tx_byte = 0;      // line decoder; -1 = idle
    long idle_cycles = 0;
    top->rx = 1;
    top->rst = 1;
    for (int i = 0; i < 8; i++) { top->clk = 0; top->eval(); top->clk = 1; top->eval(); }
    top->rst = 0;
    for (unsigned long cycle = 0;; cycle++) {
        // Host bytes -> rx pin, one 8N1 frame at a time.
        if (rx_bits == 0 && to_rx.empty() && (cycle & 63) == 0) {
            unsigned char buf[256];
            ssize_t n = read(master, buf, sizeof buf);
            for (ssize_t i = 0; i < n; i++) to_rx.push_back(buf[i]);
        }
        if (rx_bits == 0 && !to_rx.empty()) {
            rx_frame = (to_rx.front() << 1) | (1 << 9);
            to_rx.pop_front();
            rx_bits = 10;
            rx_clock = 0;
        }
        if (rx_bits) {
            top->rx = rx_frame & 1;
            if (++rx_clock == divisor) {
                rx_clock = 0;
                rx_frame >>= 1;
                rx_bits--;
            }
        } else {
            top->rx = 1;
        }
        top->clk = 0; top->eval();
        top->clk = 1; top->eval();
        // tx pin -> host bytes, sampled in the middle of each bit.
        if (tx_state < 0) {
            if (!top->tx) { tx_state = 0; tx_clock = divisor / 2; tx_byte = 0; }
        } else if (--tx_clock == 0) {
            tx_clock = divisor;
            if (tx_state == 0) {
                tx_state = top->tx ? -1 : 1;                    // glitch, not a start bit
            } else if (tx_state <= 8) {
                tx_byte |= (top->tx & 1) << (tx_state - 1);
                tx_state++;
            } else {
                if (top->tx) {
                    unsigned char byte = tx_byte;
                    while (write(master, &byte, 1) < 0 && errno == EAGAIN) usleep(100);
                }
                tx_state = -1;
            }
        }
        // Nothing to do: let the host have the CPU.
        if (rx_bits == 0 && to_rx.empty() && tx_state < 0 && !top->busy) {
            if (++idle_cycles > 4096 && (cycle & 63) == 0) usleep(200);
        } else {
            idle_cycles = 0;
        }
    }
    (void)keep;
}
"""

_VERILATOR_FLAGS = ["-O3", "-Wno-fatal", "-Wno-lint", "-Wno-style", "-j", "2",
                    "-CFLAGS", "-O2", "-MAKEFLAGS", "OPT_FAST=-O2"]


def _verilog(cfg, divisor):
    from amaranth.back import verilog

    from ..hw.core import GsaccelCore
    from ..sim.verilog_text import compact_zero_memory_init
    from .top import SerialCore
    return compact_zero_memory_init(verilog.convert(
        SerialCore(core=GsaccelCore(cfg), divisor=divisor), name="serial_top", emit_src=False))


def build_pty_sim(cfg, *, divisor=4, timeout=1800):
    """Compile the serial design for ``cfg``; return the simulator executable.

    The build is cached in the user's cache folder (:func:`gsaccel.sim.build.verilate`).

    Raises
    ------
    ToolNotFound
        If Verilator, make or a C++ compiler is missing.
    GsaccelError
        If the build fails or takes longer than ``timeout`` seconds.
    """
    if not isinstance(cfg, CoreConfig):
        raise TypeError(f"Configuration must be a CoreConfig, not {cfg!r}")
    if not isinstance(divisor, int) or divisor < 4:
        raise ValueError(f"Simulated UART divisor must be an integer of at least 4, "
                         f"not {divisor!r}")
    return verilate("ptysim", _verilog(cfg, divisor), top="serial_top",
                    sources={"harness.cpp": _HARNESS},
                    flags=_VERILATOR_FLAGS, executable="serial_sim",
                    what="the board's serial design for the pty simulation", timeout=timeout)


class PtySimulation:
    """The serial design running in Verilator behind a pty; ``port`` is the pty's path.

    Use as a context manager; :meth:`close` stops the simulator.

    Parameters
    ----------
    cfg : CoreConfig
    divisor : int
        Simulated clocks per UART bit (the host's baud rate setting does not matter on a pty).
    timeout : float
        Seconds to wait for the simulator to start.
    """

    def __init__(self, cfg, *, divisor=4, timeout=30):
        executable = build_pty_sim(cfg, divisor=divisor)
        self._process = subprocess.Popen([str(executable), str(divisor)],
                                         stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        ready, _, _ = select.select([self._process.stdout], [], [], timeout)
        if not ready:
            self.close()
            raise DeviceTimeout(f"The pty simulator printed no port within {timeout} s")
        port = self._process.stdout.readline().decode().strip()
        if not port.startswith("/dev/"):
            self.close()
            raise GsaccelError(f"The pty simulator must print a /dev path, not {port!r}")
        self.port = port

    def close(self):
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        self._process.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
