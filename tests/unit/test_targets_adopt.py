"""A simulated target opened without a configuration becomes the core of the program it
loads; one opened with a configuration, or a program for another core, is refused by name."""

import numpy as np
import pytest
import torch
from torch import nn

from gsaccel.hw.config import CoreConfig
from gsaccel.sw.compile import compile
from gsaccel.sw.errors import DeviceError
from gsaccel.sw.runtime.targets import connect

#: test_native's CNN_CFG: a build the suite already makes.
OTHER = CoreConfig(bank_depth=2048, weight_depth=16384, row_depth=1024, layer_depth=32)


def _program(cfg):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 5))
    return compile(model, torch.rand(16, 24), cfg=cfg)


def test_golden_adopts_and_a_fixed_golden_refuses():
    program = _program(OTHER)
    with connect("golden") as device:
        device.load(program)
        assert device.config == OTHER
    with connect("golden", cfg=CoreConfig()) as device:
        with pytest.raises(DeviceError, match="bank_depth 2048 \\(device 128\\)"):
            device.load(program)


@pytest.mark.verilator
def test_sim_adopts_the_programs_core():
    program = _program(OTHER)
    x = np.random.default_rng(1).random((3, 24))
    with connect("sim") as device:
        assert device.config == CoreConfig()
        device.load(program)
        assert device.config == OTHER
        assert np.array_equal(device.infer_quantized(program.quantize_input(x)),
                              program.run_golden_int(x))
    with connect("sim", cfg=CoreConfig()) as device:
        with pytest.raises(DeviceError, match="Program must target this device's core"):
            device.load(program)
