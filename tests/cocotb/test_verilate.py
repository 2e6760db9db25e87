"""The one Verilator build path (gsaccel.sim.build.verilate) on a tiny design: it builds into
GSACCEL_CACHE, the executable runs, and a second call reuses the build."""

import subprocess

import pytest

pytestmark = pytest.mark.verilator

COUNTER = """\
module counter(input wire clk, input wire rst, output reg [7:0] count);
    always @(posedge clk) count <= rst ? 8'd0 : count + 8'd3;
endmodule
"""

HARNESS = """\
#include <cstdio>
#include "Vcounter.h"
#include "verilated.h"
int main(int argc, char **argv) {
    Verilated::commandArgs(argc, argv);
    Vcounter top;
    top.rst = 1; top.clk = 0; top.eval(); top.clk = 1; top.eval();
    top.rst = 0;
    for (int i = 0; i < 5; i++) { top.clk = 0; top.eval(); top.clk = 1; top.eval(); }
    std::printf("count=%d\\n", top.count);
    return 0;
}
"""


def test_tiny_design_builds_once_into_the_cache(tmp_path, monkeypatch, capfd):
    from gsaccel.sim.build import build_seconds, require_verilator, verilate
    require_verilator()
    monkeypatch.setenv("GSACCEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    executable = verilate("counter", COUNTER, sources={"harness.cpp": HARNESS},
                          executable="counter_sim", what="a counter", timeout=600)
    assert executable.is_relative_to(tmp_path / "cache" / "verilator")
    assert "gsaccel: building a counter with Verilator" in capfd.readouterr().err
    assert subprocess.run([executable], capture_output=True, text=True,
                          timeout=30).stdout == "count=15\n"
    folder = executable.parent.parent
    assert build_seconds(folder) > 0 and not list(folder.rglob("*.o"))
    stamp = (folder / ".built").stat().st_mtime_ns
    assert verilate("counter", COUNTER, sources={"harness.cpp": HARNESS},
                    executable="counter_sim", timeout=600) == executable
    assert (folder / ".built").stat().st_mtime_ns == stamp
    assert capfd.readouterr().err == ""
