"""Runs tests/cocotb/tb_core.py (the whole GsaccelCore) on Verilator, one small build.

(Not named test_core.py: pytest's default import mode needs unique test-file basenames, and
tests/gateware/test_core.py exists.)"""

from pathlib import Path

import pytest

from gsaccel.hw.core import GsaccelCore
from gsaccel.sim.build import cached_verilog, run_cocotb
from gsaccel.sim.stimulus import loop_program_config

HERE = Path(__file__).resolve().parent

CFG = loop_program_config(4, result_queue=8)


@pytest.mark.verilator
def test_core():
    build = cached_verilog(lambda: GsaccelCore(CFG), "gsaccel_core", CFG)
    run_cocotb(build, toplevel="gsaccel_core", test_module="tb_core", test_dir=HERE, cfg=CFG,
               timeout=900)
