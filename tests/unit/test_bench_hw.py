"""The hardware bench: its masks are what it claims, and (slow) it runs on the RTL."""

import numpy as np
import pytest

from gsaccel.sw.bench.hw import lane_cells, pattern_masks
from gsaccel.sw.format import GSMatrix


def test_pattern_masks_pack_as_their_pattern(rng):
    weights = rng.standard_normal((40, 48)).astype(np.float32)
    for name, (pattern, per_row, mask, order) in pattern_masks(weights, 0.75, 8).items():
        assert abs(mask.mean() - 0.25) < 0.02, name
        matrix = GSMatrix.from_dense(mask.astype(np.int64), pattern, 8, per_row,
                                     row_order=order)
        np.testing.assert_array_equal(matrix.to_dense() != 0, mask)
        if pattern != "unstructured":
            assert matrix.stats()["utilisation"] > 0.95, name


def test_shift_lane_uses_no_dsp_and_fewer_luts_than_a_lut_multiplier():
    shift = lane_cells("pow2", dsp=True)
    multiplier = lane_cells("int8", dsp=False)
    assert shift.get("SB_MAC16", 0) == 0
    assert 0 < shift["SB_LUT4"] < multiplier["SB_LUT4"]


@pytest.mark.slow
@pytest.mark.verilator
def test_quick_bench_runs_on_the_rtl(tmp_path):
    from gsaccel.sw.bench.hw import run
    text = run(out_dir=tmp_path, quick=True)
    assert "matched the golden model bit for bit and cycle for cycle" in text
    assert text.count("| 75.0% |") == 5
    assert (tmp_path / "benchmarks.md").exists() and (tmp_path / "img" / "bench_hw.png").exists()
