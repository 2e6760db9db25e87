"""Cores whose scratchpad banks are two single-port halves (``CoreConfig.bank_halves``, the
iCEBreaker's: SPRAMs). Compiled programs put every layer's inputs in the half its output is
not in, and run bit-exact on the golden model and the Verilator RTL; the golden model refuses
a layer that reads a half it writes, whose reads the RTL would lose."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from gsaccel.hw.config import CoreConfig
from gsaccel.sw.compile import compile
from gsaccel.sw.errors import CapacityError, ShapeError
from gsaccel.sw.golden.core import GoldenCore
from gsaccel.sw.prune import prune
from gsaccel.sw.runtime.device import GoldenDevice

from rtl_check import assert_rtl_runs_like_golden

#: Small enough for a quick Verilator build; odd shapes, every layer kind but BASIS.
CFG = CoreConfig(lanes=2, bank_depth=2048, weight_depth=256, row_depth=256, layer_depth=8,
                 result_queue=4, max_payload=256, basis=False, deep_pipeline=False,
                 vector_writer=False, bank_halves=True)


class _Residual(nn.Module):
    """conv, a residual block with an identity shortcut, max pooling, global average
    pooling, a linear head: 3×9×7 in."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(6, 6, 3, padding=1))
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.block(x) + x)
        return self.head(self.pool(x))


def _model():
    torch.manual_seed(11)
    model = _Residual().eval()
    return prune(model, "gs-gather", 0.5, lanes=CFG.lanes,
                 layers=["stem.0", "block.0", "block.2", "head.2"])


def _inputs(n, seed):
    return torch.randn(n, 3, 9, 7, generator=torch.Generator().manual_seed(seed))


def test_every_layer_reads_the_half_it_does_not_write():
    program = compile(_model(), _inputs(16, 1), cfg=CFG)
    plan, half = program.plan, CFG.bank_depth // 2
    assert set(plan.halves.values()) == {0, 1}
    for layer in program.layers:
        if layer.kind != "gs":
            continue
        written = plan.halves[layer.output]
        for name in layer.inputs:
            assert plan.halves[name] != written, (layer.name, name)
        for name in (*layer.inputs, layer.output):
            tensor = program.tensors[name]
            assert tensor.geometry.base // half == tensor.geometry.end // half \
                or tensor.geometry.end == half * (plan.halves[name] + 1)
    xs = _inputs(4, 2).numpy()
    with GoldenDevice(CFG) as device:
        device.load(program)
        got = device.infer_quantized(program.quantize_input(xs))
    assert np.array_equal(got, program.run_golden_int(xs))


def test_golden_refuses_a_layer_reading_the_half_it_writes():
    # One phase, so that one image holds the program.
    whole = dataclasses.replace(CFG, bank_halves=False, weight_depth=1024, layer_depth=16)
    program = compile(_model(), _inputs(16, 1), cfg=whole)
    halves = {name: t.geometry.base // (CFG.bank_depth // 2)
              for name, t in program.tensors.items()}
    assert any(halves[layer.output] in {halves[n] for n in layer.inputs}
               for layer in program.layers if layer.kind == "gs")
    core = GoldenCore(dataclasses.replace(whole, bank_halves=True))
    core.load(program.image())
    with pytest.raises(ShapeError, match=r"reads and writes half \d of the banks"):
        core.run(0, len(program.layers))


def test_halves_too_small_are_reported_with_the_depth_that_fits():
    small = dataclasses.replace(CFG, bank_depth=1024)
    with pytest.raises(CapacityError, match=r"activation words per bank: \d+ of 1024 .*with "
                                            r"bank halves .* the halves need \d+ and \d+ of "
                                            r"512 words"):
        compile(_model(), _inputs(16, 1), cfg=small)


@pytest.mark.verilator
def test_bank_halves_core_runs_like_golden_on_the_rtl():
    program = compile(_model(), _inputs(16, 1), cfg=CFG)
    assert_rtl_runs_like_golden(program, _inputs(3, 3).numpy(), CFG, timeout=120)
