"""Runs tests/cocotb/tb_core.py (the whole GsaccelCore) on Verilator, one small build per
writer (the vector writer and the serial one).

(Not named test_core.py: pytest's default import mode needs unique test-file basenames, and
tests/gateware/test_core.py exists.)"""

from pathlib import Path

import pytest

from gsaccel.hw.core import GsaccelCore
from gsaccel.sim.build import cached_verilog, run_cocotb
from gsaccel.sim.stimulus import loop_program_config

HERE = Path(__file__).resolve().parent


@pytest.mark.verilator
@pytest.mark.parametrize("vector_writer", [True, False])
def test_core(vector_writer):
    cfg = loop_program_config(4, result_queue=8, vector_writer=vector_writer)
    build = cached_verilog(lambda: GsaccelCore(cfg), "gsaccel_core", cfg)
    run_cocotb(build, toplevel="gsaccel_core", test_module="tb_core", test_dir=HERE, cfg=cfg,
               timeout=900)
