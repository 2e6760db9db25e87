"""cocotb tests: report the Verilator builds that finished during this session (in any
process, the native and pty sims included) and how long each took."""

import time

from gsaccel.sim.build import build_seconds, builds_since

_SESSION_START = time.time()


def pytest_terminal_summary(terminalreporter):
    built = builds_since(_SESSION_START)
    if built:
        terminalreporter.section("Verilator builds finished during this session")
        for folder in built:
            terminalreporter.write_line(f"{folder.name}: {build_seconds(folder):.1f} s "
                                        f"({folder.parent})")
