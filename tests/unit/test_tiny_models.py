"""The MLPerf Tiny reference networks of the model zoo: the reference topologies (parameter
and MAC counts of DESIGN §5.1), and each pruned network compiles for a V = 16 core within
the issue's budget, runs on the golden model as its calibration said, and reports its fit
on every board's core."""

import re
import resource

import numpy as np
import pytest
import torch

from gsaccel.hw.config import CoreConfig
from gsaccel.sw.bench.tiny import measure, pruned_model, table, target_table
from gsaccel.sw.compile import compile
from gsaccel.sw.models.tiny import TINY_MODELS, mac_count, parameter_count, tiny_model

#: DESIGN §5.1: parameters (BatchNorm included) and MACs of the reference models.
REFERENCE = {"resnet8": (77.7e3, 12.5e6), "ds-cnn": (22.6e3, 2.66e6),
             "mobilenetv1": (211e3, 7.49e6), "fc-ae": (266e3, 0.26e6)}
#: A core that holds all four (MobileNetV1's 96×96 input needs 7108 words per bank).
BIG = CoreConfig(lanes=16, bank_depth=8192, weight_depth=65536, row_depth=65536,
                 layer_depth=256)


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_reference_topology_counts(name):
    cls, _ = TINY_MODELS[name]
    model = tiny_model(name)
    params, macs = REFERENCE[name]
    assert parameter_count(model) == pytest.approx(params, rel=0.03)
    assert mac_count(model, cls.input_shape) == pytest.approx(macs, rel=0.02)
    out = model(torch.zeros(2, *cls.input_shape))
    assert out.shape[0] == 2 and not torch.isnan(out).any()


def test_unknown_model_names_the_known_ones():
    with pytest.raises(KeyError, match="resnet8, ds-cnn, mobilenetv1, fc-ae"):
        tiny_model("resnet18")


@pytest.mark.parametrize("name", ["resnet8", "ds-cnn", "fc-ae",
                                  pytest.param("mobilenetv1", marks=pytest.mark.slow)])
def test_pruned_network_compiles_in_bounded_memory_and_runs_on_golden(name):
    cls, _ = TINY_MODELS[name]
    model, pruned = pruned_model(name, "gs-gather", 0.75, BIG.lanes)
    assert pruned
    x = torch.randn(8, *cls.input_shape, generator=torch.Generator().manual_seed(0))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    program = compile(model, x, cfg=BIG)       # its time: `gsaccel bench tiny` reports it
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 4 << 20   # KiB
    assert np.array_equal(program.run_golden_int(x), program.calibration_output)
    stats = program.stats()
    assert stats["phases"] == 1 and stats["utilisation"] > 0.9
    # Kernel-sized weights: stored nonzeros never exceed the dense kernels.
    kernels = sum(m.weight.numel() for m in model.modules()
                  if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    assert stats["nnz"] < kernels


@pytest.mark.verilator
def test_quick_bench_reports_every_model_on_every_board(tmp_path):
    """`gsaccel bench tiny --quick`, as `make test` runs it: every model on every board's
    core, and the shortest fitting program on the RTL, equal to golden."""
    from gsaccel.boards.catalog import BOARDS
    from gsaccel.sw.bench import tiny
    rows = measure(quick=True)
    text = tiny.write(rows, tmp_path)
    assert (tmp_path / "benchmarks-tiny.md").read_text() == text
    assert (tmp_path / "img" / "bench_tiny.png").stat().st_size > 0
    assert {(r.model, r.board) for r in rows} == {(m, b) for m in TINY_MODELS for b in BOARDS}
    for r in rows:
        assert r.status in ("fits", "phased", "no")
        if r.status == "no":
            assert "OVER" in r.reason or "layer" in r.reason
        else:
            assert r.cycles > 0 and r.latency_ms > 0 and 0 < r.utilisation <= 1
            assert (r.streamed_bytes > 0) == (r.status == "phased")
    assert table(rows).count("\n") == len(rows) + 1
    assert "resnet8" in target_table(rows)
    if any(r.status != "no" for r in rows):
        assert "1 of these programs ran one inference on the Verilator RTL" in text
        # Its RTL = golden column (the note after it names a phased program's limits).
        assert re.search(r"^\| .* \| yes \| [^|]* \|$", table(rows), re.M)
