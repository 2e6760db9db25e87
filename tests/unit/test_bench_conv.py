"""The convolution bench: its cycle target is the cycle model's, a mismatch with the golden
model raises, and (slow) its quick variant runs on the RTL and reports sane numbers."""

import math

import pytest
import torch

from gsaccel.sw import golden
from gsaccel.sw.bench import conv
from gsaccel.sw.errors import GsaccelError
from gsaccel.sw.runtime.targets import connect


def test_fixed_overhead_is_what_the_cycle_model_adds_to_the_groups(one_thread):
    from gsaccel.sw.compile.native import compile_native
    from gsaccel.sw.prune import prune
    model = prune(conv.conv_model(16), "gs-gather", 0.75, lanes=8)
    x = torch.randn(2, 16, 6, 6, generator=torch.Generator().manual_seed(0))
    program = compile_native(model, x, conv.V8, im2col_input=False)
    (layer,) = program.layers
    stats = program.stats()
    assert stats["stall_cycles"] == 0
    assert stats["groups"] == layer.nest.pixels * layer.matrix.n_groups
    writer = golden.writer_cycles(layer.matrix, conv.V8)[-1]
    assert stats["cycles"] == stats["groups"] + conv.fixed_overhead(conv.V8, writer)


class _Corrupt:
    """A golden device whose reply is off: one output byte, or one cycle."""

    def __init__(self, device, what):
        self.device, self.what = device, what

    def infer_quantized(self, xq):
        out = self.device.infer_quantized(xq)
        self.counters = dict(self.device.counters)
        if self.what == "output":
            out = out.copy()
            out.flat[0] = out.flat[0] ^ 1
        else:
            self.counters["cycles"] += 1
        return out


@pytest.mark.parametrize("what", ["output", "cycles"])
def test_check_program_raises_when_the_device_differs_from_golden(what, one_thread):
    from gsaccel.sw.compile.native import compile_native
    model = conv.conv_model(8)
    x = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(1)).numpy()
    program = compile_native(model, x, conv.V8, im2col_input=False)
    with connect("golden", cfg=conv.V8) as device, connect("golden", cfg=conv.V8) as reference:
        for d in (device, reference):
            d.load(program)
        outputs, counters = conv.check_program("same", device, reference, program, x)
        stats = program.stats()
        assert outputs.shape == (2, 8, 4, 4)
        assert counters == {name: stats[name] for name in counters}
        assert set(counters) == {"cycles", "busy_lane_cycles", "stall_cycles", "groups"}
        with pytest.raises(GsaccelError, match="differ from the golden"):
            conv.check_program("corrupt", _Corrupt(device, what), reference, program, x)


@pytest.mark.slow
@pytest.mark.verilator
def test_quick_bench_runs_on_the_rtl_and_reports_sane_numbers(tmp_path):
    m = conv.measure(quick=True)
    # 1: the same 32x288 GEMM shape and nonzeros; finite bytes per nonzero.
    for encoding, storage in m.storage.items():
        assert storage["conv"]["shape"] == storage["linear"]["shape"] == (32, 288)
        assert storage["conv"]["nnz"] == storage["linear"]["nnz"] == 32 * 288 // 4
        assert math.isfinite(storage["ratio"]) and storage["ratio"] > 0, encoding
        assert 1 <= storage["conv"]["bytes_per_nonzero"] < 4
    # 2, 3: every layer ran on the RTL (check_program raises unless it equalled golden).
    assert set(m.layers) == {"conv", "dw8", "dw8_pruned", "dw16"}
    for key, run in m.layers.items():
        assert run.inferences == conv.LAYER_BATCH[True] >= 1, key
        assert 0 < run.utilisation <= 1, key
        assert run.pixels == 16 * 16, key
        assert run.counters["groups"] == run.pixels * run.groups_per_pixel, key
        assert run.counters["busy_lane_cycles"] == run.pixels * run.nnz, key
        assert run.cycles >= run.counters["groups"] + run.overhead, key
    c = m.layers["conv"]
    assert c.nnz == 32 * 288 // 4 and c.lanes == 8
    if c.counters["stall_cycles"] == 0:
        assert c.cycles == c.counters["groups"] + c.overhead
    assert m.layers["dw16"].lanes == 16 and m.layers["dw8"].nnz == 64 * 9
    # 4: the golden program against torch on the whole test set; RTL == golden on 8 images.
    d = m.digits
    assert d["test_images"] == 450 and d["rtl_images"] == conv.DIGITS_BATCH[True] == 8
    assert 0 < d["agreement"] <= 1 and 0 < d["golden_accuracy"] <= 1
    assert d["counters"]["cycles"] > d["counters"]["groups"] > 0
    # 5: measured in a separate process.
    assert 0 < m.compile["compile_seconds"] < m.compile["process_seconds"]
    assert 0 < m.compile["baseline_bytes"] <= m.compile["peak_bytes"]
    assert m.compile["layers"] > 9
    # The table: one row or more per item, each pass, fail or information only.
    assert sorted({row.item for row in m.rows}) == ["1", "2", "3", "4", "5"]
    assert all(row.passed in (True, False, None) for row in m.rows)
    text = conv.write(m, tmp_path)
    assert (tmp_path / "benchmarks-conv.md").read_text() == text
    assert (tmp_path / "img" / "bench_conv.png").stat().st_size > 0
    assert conv.table(m.rows) in text and "writer-bound" in text
