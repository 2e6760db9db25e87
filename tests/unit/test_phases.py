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
from gsaccel.sw.compile.program import Program
from gsaccel.sw.format import GSMatrix
from gsaccel.sw.errors import CapacityError, FormatError
from gsaccel.sw.prune import prune
from gsaccel.sw.prune.masks import gs_mask, one_by_n_mask
from gsaccel.sw.runtime.device import GoldenDevice

from rtl_check import assert_rtl_runs_like_golden
from test_program import _with_header

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


def test_a_layer_larger_than_the_weight_memory_runs_as_row_group_slices():
    """A layer beyond one load of the weight memory becomes consecutive device layers of its
    row groups, each of which fits; the result equals the whole layer's bit for bit."""
    model, x = _mlp(), _inputs(32)
    tiny = CoreConfig(weight_depth=256)
    whole = compile(model, x, cfg=CoreConfig(weight_depth=8192))
    assert max(layer.matrix.n_groups for layer in whole.layers) > 256
    report = compile_native(model, x, tiny, report_only=True)
    assert report.status == "phased"
    assert report.limit("weight_depth").largest <= 256
    program = compile(model, x, cfg=tiny)
    parts = [info for info in program.info if "part_of" in info]
    assert parts and {info["part_of"] for info in parts} < {layer.name for layer in whole.layers}
    for layer, info in zip(program.layers, program.info):
        assert layer.matrix.n_groups <= 256
        if "part_of" in info:
            assert layer.name.startswith(info["part_of"] + ".")
    # Every output row is computed by exactly one slice of its layer.
    for name in {info["part_of"] for info in parts}:
        slices = [layer for layer, info in zip(program.layers, program.info)
                  if info.get("part_of") == name]
        rows = np.concatenate([layer.matrix.rg_rows.ravel() for layer in slices])
        rows = rows[rows >= 0]
        assert sorted(rows.tolist()) == list(range(slices[0].matrix.shape[0]))
    for _, _, image in program.phase_images():
        assert len(image.weights) <= 256
    xs = _inputs(5, seed=7).numpy()
    assert np.array_equal(program.run_golden_int(xs), whole.run_golden_int(xs))
    with GoldenDevice(tiny) as device:
        device.load(program)
        assert np.array_equal(device.infer_quantized(program.quantize_input(xs)),
                              whole.run_golden_int(xs))
    # A .gsp holds the slices: each stored whole, with its row groups' range.
    again = Program.from_bytes(program.to_bytes())
    assert again.to_bytes() == program.to_bytes()
    for layer, back in zip(program.layers, again.layers):
        assert back.matrix == layer.matrix and \
            back.matrix.rowgroup_offset == layer.matrix.rowgroup_offset
    assert np.array_equal(again.run_golden_int(xs), whole.run_golden_int(xs))
    # A slice's range must be the one its whole matrix was stored for.
    sliced = next(i for i, info in enumerate(program.info) if "part_of" in info)

    def shifted(header):
        first, end = header["layers"][sliced]["rowgroups"]
        header["layers"][sliced]["rowgroups"] = [first, end - 1] if end - first > 1 else \
            [first + 1, end + 1]

    def backwards(header):
        header["layers"][sliced]["rowgroups"] = [1, 1]

    with pytest.raises(FormatError, match=rf"^data: layers\[{sliced}\]\.rowgroups: a slice "
                                          r"\d+\.\.\d+ is stored whole with one empty group"):
        Program.from_bytes(_with_header(program, shifted))
    with pytest.raises(FormatError, match=rf"^data: layers\[{sliced}\]\.rowgroups: must be a "
                                          r"range of the matrix's \d+ row groups, not 1\.\.1$"):
        Program.from_bytes(_with_header(program, backwards))


@pytest.mark.parametrize("pattern", ["gs-gather", "gs-scatter", "1xN", "unstructured"])
def test_a_slice_as_a_whole_matrix_gives_the_slice_back(pattern):
    rng = np.random.default_rng(3)
    rows, cols, lanes = 37, 50, 4
    dense = rng.choice([-4, -1, 1, 2, 8], (rows, cols))
    if pattern == "1xN":
        dense = dense * one_by_n_mask(dense.astype(float), 0.5, lanes)
    elif pattern != "unstructured":
        dense = dense * gs_mask(dense.astype(float), 0.5, lanes,
                                scatter=pattern == "gs-scatter")[0]
    matrix = GSMatrix.from_dense(dense, pattern, lanes)
    for first, end in ((0, 2), (3, matrix.n_rowgroups), (1, matrix.n_rowgroups - 1)):
        part = matrix.take_rowgroups(first, end)
        assert part.is_slice and not matrix.is_slice
        whole = GSMatrix.from_bytes(part.as_whole().to_bytes())
        back = whole.take_rowgroups(first, end)
        assert back == part and back.rowgroup_offset == first
        # The whole matrix's other row groups hold nothing.
        kept = np.zeros(rows, dtype=bool)
        kept[part.rg_rows[part.rg_rows >= 0]] = True
        assert not whole.to_dense()[~kept].any()
        assert np.array_equal(whole.to_dense()[kept], dense[kept])


def test_a_row_group_larger_than_the_weight_memory_is_refused_by_name():
    model, x = _mlp(), _inputs(32)
    program = compile(model, x, cfg=CFG)
    most = max(int(layer.matrix.rg_groups.max()) for layer in program.layers)
    tiny = CoreConfig(weight_depth=most - 1)
    report = compile_native(model, x, tiny, report_only=True)
    assert report.status == "no"
    with pytest.raises(CapacityError, match=rf"group words: \d+ of {most - 1} \(CoreConfig"
                                            r"\.weight_depth\) \(largest layer \d+\) OVER"):
        compile(model, x, cfg=tiny)
    with pytest.raises(CapacityError, match=r"^Layer '.*' needs \d+ group words, the core "
                                            rf"holds {most - 1} .* no phase can hold it"):
        phase_ranges(tiny, program.layers)


def test_phases_split_at_the_layer_table_too():
    program = compile(_mlp(), _inputs(32), cfg=CFG)
    short = CoreConfig(layer_depth=2, weight_depth=65536)
    assert phase_ranges(short, program.layers) == [(0, 2), (2, 2)]


@pytest.mark.verilator
def test_phased_program_on_the_rtl_equals_golden():
    model, x = _mlp(), _inputs(32)
    program = compile(model, x, cfg=CFG)
    assert len(program.phases()) > 1
    assert_rtl_runs_like_golden(program, _inputs(3, seed=6).numpy(), CFG, timeout=60)
