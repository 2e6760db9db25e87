"""The pruning bench's measurements (fast) and its quick run (slow)."""

import numpy as np
import pytest
import torch
from torch import nn

from gsaccel.sw.bench.pruning import _quantise_pow2, measure
from gsaccel.sw.prune import prune


def test_quantise_pow2_keeps_pattern(rng):
    matrix = rng.standard_normal((16, 24)) * (rng.random((16, 24)) < 0.3)
    matrix[0, 0] = 1e-9                      # tiny but kept
    q = _quantise_pow2(matrix)
    assert np.array_equal(q != 0, matrix != 0)
    nonzero = np.abs(q[q != 0])
    assert np.all(nonzero & (nonzero - 1) == 0) and nonzero.max() == 2 ** 15
    assert np.array_equal(np.sign(q), np.sign(matrix).astype(np.int64))


def test_measure_sparsity_bytes_utilisation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
    dense_sparsity, dense_bytes, dense_util = measure(model)
    assert dense_sparsity == 0.0 and dense_util == 1.0
    prune(model, "gs-gather", 0.75, 8)
    sparsity, nbytes, util = measure(model)
    assert sparsity == pytest.approx(0.75, abs=0.01)
    assert util == 1.0                       # GS: no padding
    assert nbytes < dense_bytes / 2
    torch.manual_seed(0)
    loose = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
    prune(loose, "unstructured", 0.75, 8)
    assert measure(loose)[2] < 1.0          # unstructured carries padding


@pytest.mark.slow
def test_quick_bench_rewrites_its_section(tmp_path):
    from gsaccel.sw.bench.pruning import run
    (tmp_path / "pruning.md").write_text("# Pruning\nhand-written text\n"
                                         "<!-- bench:pruning:start -->\nold\n"
                                         "<!-- bench:pruning:end -->\ntail text\n")
    section = run(out_dir=tmp_path, quick=True)
    text = (tmp_path / "pruning.md").read_text()
    assert text.startswith("# Pruning\nhand-written text\n") and text.endswith("tail text\n")
    # The two sections returned, each written in place ("golden" holds "old": match lines).
    pruning, qat = section.split("\n\n<!-- bench:qat:start -->")
    assert "\nold\n" not in text and pruning in text and "<!-- bench:qat:start -->" + qat in text
    assert "| MLP | GS-gather e=1 | 75.0% |" in section
    # The QAT rows: the device equals the fine-tuned model's own forward, so it agrees always.
    assert text.count("<!-- bench:qat:start -->") == 1 and "## Quantisation" in text
    for row in ("| MLP | GS-gather e=1 75% |", "| MLP | SmartDeal (C' 1×N) 75% |",
                "| DS-CNN 16 ch | dense |"):
        line = next(line for line in section.splitlines() if line.startswith(row))
        assert line.split("|")[-3].strip() == "100.00 ± 0.00", line
    assert (tmp_path / "img" / "pruning.png").stat().st_size > 1000
