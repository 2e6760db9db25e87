"""cocotb tests: report the Verilator builds that finished during this session (in any
process) and how long each took."""

import time

from gsaccel.sim.build import BUILD_ROOT, build_seconds

_SESSION_START = time.time()


def pytest_terminal_summary(terminalreporter):
    built = [path.parent for path in BUILD_ROOT.glob("*/.verilator-built")
             if path.stat().st_mtime >= _SESSION_START]
    if built:
        terminalreporter.section("Verilator builds finished during this session")
        for folder in sorted(built):
            terminalreporter.write_line(f"{folder.name}: {build_seconds(folder):.1f} s")
