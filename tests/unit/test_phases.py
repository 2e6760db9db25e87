"""Phased programs: when only the weights exceed the core's memories, the compiler splits the
layers into phases and the runtime streams each phase's image before its RUN. Phased
execution must equal the unphased program bit for bit (golden and the Verilator RTL), and
the capacity report must name every limit."""

import numpy as np
import pytest
import torch
from torch import nn

from gsaccel.hw.config import CoreConfig
from gsaccel.sw.compile import compile
from gsaccel.sw.compile.image import phase_ranges
from gsaccel.sw.compile.native import compile_native
from gsaccel.sw.errors import CapacityError
from gsaccel.sw.prune import prune
from gsaccel.sw.runtime.device import GoldenDevice

#: The ``sim`` target's default build (shared with the demo and test_native).
CFG = CoreConfig()


def _mlp(seed=3):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 248), nn.ReLU(), nn.Linear(248, 10))
    return prune(model, "gs-gather", 0.75, lanes=CFG.lanes)


def _inputs(n, seed=4):
    return torch.rand(n, 64, generator=torch.Generator().manual_seed(seed)) * 4 - 1


def test_weights_beyond_the_weight_memory_compile_into_phases_that_fit():
    model, x = _mlp(), _inputs(32)
    report = compile_native(model, x, CFG, report_only=True)
    assert report.status == "phased"
    assert not report.limit("weight_depth").fits and report.limit("weight_depth").fits_phased
    assert report.limit("bank_depth").fits
    program = compile(model, x, cfg=CFG)
    phases = program.phases()
    assert len(phases) > 1
    assert [first for first, _ in phases] == [0] + list(np.cumsum([c for _, c in phases])[:-1])
    assert sum(count for _, count in phases) == len(program.layers)
    for _, _, image in program.phase_images():
        assert len(image.weights) <= CFG.weight_depth and len(image.rows) <= CFG.row_depth
        assert len(image.layers) <= CFG.layer_depth
    stats = program.stats()
    assert stats["phases"] == len(phases) and stats["load_bytes"] == 0
    assert stats["streamed_bytes"] == sum(image.nbytes for _, _, image in
                                          program.phase_images()) > 0


def test_phased_golden_run_equals_the_unphased_program():
    model, x = _mlp(), _inputs(32)
    phased = compile(model, x, cfg=CFG)
    whole_cfg = CoreConfig(weight_depth=8192)
    whole = compile(model, x, cfg=whole_cfg)
    assert len(whole.phases()) == 1 and len(phased.phases()) > 1
    xs = _inputs(6, seed=5)
    outputs = {}
    for name, program, cfg in (("phased", phased, CFG), ("whole", whole, whole_cfg)):
        with GoldenDevice(cfg) as device:
            device.load(program)
            outputs[name] = device.infer_quantized(program.quantize_input(xs.numpy()))
            counters = dict(device.counters)
        assert np.array_equal(outputs[name], program.run_golden_int(xs.numpy()))
        assert counters["cycles"] == program.stats()["cycles"] * len(xs)
        assert counters["streamed_bytes"] == program.stats()["streamed_bytes"] * len(xs)
    assert np.array_equal(outputs["phased"], outputs["whole"])


def test_a_layer_larger_than_the_weight_memory_is_refused_by_name():
    model, x = _mlp(), _inputs(32)
    tiny = CoreConfig(weight_depth=256)
    report = compile_native(model, x, tiny, report_only=True)
    assert report.status == "no"
    with pytest.raises(CapacityError, match=r"group words: \d+ of 256 \(CoreConfig"
                                            r"\.weight_depth\) \(largest layer \d+\) OVER"):
        compile(model, x, cfg=tiny)
    program = compile(model, x, cfg=CFG)
    with pytest.raises(CapacityError, match=r"^Layer '.*' needs \d+ group words, the core "
                                            r"holds 256 .* no phase can hold it"):
        phase_ranges(tiny, program.layers)


def test_phases_split_at_the_layer_table_too():
    program = compile(_mlp(), _inputs(32), cfg=CFG)
    short = CoreConfig(layer_depth=2, weight_depth=65536)
    assert phase_ranges(short, program.layers) == [(0, 2), (2, 2)]


@pytest.mark.verilator
def test_phased_program_on_the_rtl_equals_golden():
    from gsaccel.sw.runtime.targets import connect
    model, x = _mlp(), _inputs(32)
    program = compile(model, x, cfg=CFG)
    assert len(program.phases()) > 1
    xs = _inputs(3, seed=6).numpy()
    with connect("sim", cfg=CFG, timeout=60) as device:
        device.load(program)
        got = device.infer_quantized(program.quantize_input(xs))
        counters = dict(device.counters)
    assert np.array_equal(got, program.run_golden_int(xs))
    assert counters["cycles"] == program.stats()["cycles"] * len(xs)
