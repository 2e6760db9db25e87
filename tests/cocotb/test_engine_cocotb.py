"""Runs tests/cocotb/tb_engine.py on Verilator, one build per core configuration."""

from pathlib import Path

import pytest

from gsaccel.hw.config import CoreConfig
from gsaccel.sim.build import cached_verilog, run_cocotb
from gsaccel.sim.datapath import Datapath

HERE = Path(__file__).resolve().parent

# Four builds cover V in {4, 8, 16}, both encodings and both writers; a small queue at V=4
# makes the credit stalls frequent. (The testbench's host port timing is the deep pipeline's.)
CONFIGS = [
    CoreConfig(lanes=4, bank_depth=32, encoding="pow2", result_queue=4),
    CoreConfig(lanes=8, bank_depth=32, encoding="int8", result_queue=16),
    CoreConfig(lanes=16, bank_depth=16, encoding="pow2", result_queue=32),
    CoreConfig(lanes=4, bank_depth=32, encoding="int8", result_queue=8, vector_writer=False),
]


def _name(cfg):
    return f"V{cfg.lanes}-{cfg.encoding}-{'vector' if cfg.vector_writer else 'serial'}"


@pytest.mark.verilator
@pytest.mark.parametrize("cfg", CONFIGS, ids=_name)
def test_engine(cfg):
    build = cached_verilog(lambda: Datapath(cfg), "datapath", cfg)
    run_cocotb(build, toplevel="datapath", test_module="tb_engine", test_dir=HERE, cfg=cfg,
               timeout=600)
