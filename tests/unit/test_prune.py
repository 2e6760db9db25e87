"""Pattern pruners: every mask is checked by an independent checker written here (not the
pruner's code path, not the format's), then packed with GSMatrix.from_dense."""

import io
import math
import os

import numpy as np
import pytest
import torch
from hypothesis import given, seed, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune as torch_prune

from gsaccel.sw.errors import PatternError, ShapeError
from gsaccel.sw.format import GSMatrix
from gsaccel.sw.prune import (PatternInfo, PruningScheduler, cubic_schedule, gemm_layout,
                              gemm_view, gs_mask, one_by_n_mask, pattern_info, prunable_layers,
                              prune, restore, unstructured_mask)

SEED = int(os.environ.get("GSACCEL_SEED", "20261125"), 0)


# Independent checkers ------------------------------------------------------------------------

def check_gs(mask, lanes, per_row, row_order=None):
    """Assert the GS rules on a keep mask; return (expected padding lanes, row group counts).

    Rules (DESIGN §1.1): rows of a row group (V/e rows, consecutive in row_order) keep the
    same count c, a multiple of e; each bank (column mod V) holds at most c/e kept weights,
    and exactly c/e in a full row group (else the engine would pad).
    """
    rows, cols = mask.shape
    height = lanes // per_row
    order = np.arange(rows) if row_order is None else np.asarray(row_order)
    assert sorted(order.tolist()) == list(range(rows))
    padding, counts = 0, []
    for start in range(0, rows, height):
        members = order[start:start + height]
        row_counts = [int(mask[r].sum()) for r in members]
        assert len(set(row_counts)) == 1, f"row group at {start}: unequal counts {row_counts}"
        count = row_counts[0]
        assert count % per_row == 0, f"row group at {start}: {count} not a multiple of e"
        p = count // per_row
        loads = [0] * lanes
        for r in members:
            for c in range(cols):
                if mask[r, c]:
                    loads[c % lanes] += 1
        assert max(loads) <= p, f"row group at {start}: bank loads {loads} exceed P={p}"
        if len(members) == height:
            assert loads == [p] * lanes, f"row group at {start}: bank loads {loads} != P={p}"
        # The engine runs max(1, P) groups of V lanes for this row group.
        padding += lanes * max(p, 1) - count * len(members)
        counts.append(count)
    return padding, counts


def check_one_by_n(mask, lanes, kernel, pruned_blocks):
    """Assert 1×N: in each group of V consecutive rows, each input channel (kernel columns)
    is kept or pruned as a whole, and exactly ``pruned_blocks`` channels are pruned."""
    rows, cols = mask.shape
    for start in range(0, rows, lanes):
        block = mask[start:start + lanes]
        pruned = 0
        for ch in range(cols // kernel):
            cells = block[:, ch * kernel:(ch + 1) * kernel]
            assert cells.all() or not cells.any(), f"rows {start}+, channel {ch}: mixed"
            pruned += not cells.any()
        assert pruned == pruned_blocks, f"rows {start}+: pruned {pruned}, not {pruned_blocks}"


def pack(mask, pattern, lanes, per_row, row_order=None):
    return GSMatrix.from_dense(mask.astype(np.int64), pattern, lanes, per_row, "int8",
                               row_order=row_order)


def model_mlp():
    torch.manual_seed(SEED % 2**31)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 24),
                         nn.ReLU(), nn.Linear(24, 10))


def model_cnn():
    torch.manual_seed(SEED % 2**31)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                         nn.Flatten(), nn.Linear(64, 10))


def layer_mask(module):
    return module.weight_mask.detach().reshape(module.weight_mask.shape[0], -1).numpy() > 0


def view_mask(module, lanes):
    """The keep mask in the layer's GEMM view (a Conv2d: tap-major, channel fastest)."""
    return gemm_layout(module, lanes).to_gemm(module.weight_mask.detach().numpy() > 0)


# GS gather / scatter -------------------------------------------------------------------------

@pytest.mark.parametrize("scatter", [False, True])
@pytest.mark.parametrize("lanes,per_row", [(8, 1), (8, 8), (8, 2), (4, 4), (16, 4)])
@pytest.mark.parametrize("sparsity", [0.5, 0.75, 0.875])
def test_gs_mask_rules_padding_and_sparsity(rng, scatter, lanes, per_row, sparsity):
    rows, cols = 5 * lanes // per_row, 8 * lanes     # full row groups, no ragged edge
    weights = rng.standard_normal((rows, cols))
    mask, order = gs_mask(weights, sparsity, lanes, per_row, scatter=scatter)
    padding, _ = check_gs(mask, lanes, per_row, order)
    assert padding == 0
    target = round((1 - sparsity) * rows * cols)
    # Exact up to one unit (V weights) of rounding: the count is a sum of row-group units.
    assert abs(int(mask.sum()) - target) <= lanes // 2
    matrix = pack(mask, "gs-scatter" if scatter else "gs-gather", lanes, per_row,
                  order if scatter else None)
    assert matrix.n_groups * lanes == int(mask.sum())
    assert np.array_equal(matrix.to_dense() != 0, mask)


def test_gs_keeps_large_weights(rng):
    # A near-magnitude mask: the balanced greedy keeps most of what a free top-k keeps.
    weights = rng.standard_normal((64, 128))
    mask, _ = gs_mask(weights, 0.75, 8, 1)
    free = unstructured_mask(weights, 0.75)
    kept_energy = (weights ** 2)[mask].sum() / (weights ** 2)[free].sum()
    assert kept_energy > 0.95
    assert (mask & free).sum() > 0.85 * free.sum()


def test_gs_row_groups_keep_different_counts(rng):
    # Rows with a larger scale get more groups: the layer threshold is global.
    weights = rng.standard_normal((32, 64)) * np.repeat([4.0, 1.0, 0.25, 1.0], 8)[:, None]
    mask, _ = gs_mask(weights, 0.75, 8, 1)
    _, counts = check_gs(mask, 8, 1)
    assert counts[0] > counts[1] > counts[2]


def test_gs_scatter_groups_rows_of_similar_count(rng):
    scale = np.tile([4.0, 0.25], 16)          # gather would mix big and small rows
    weights = rng.standard_normal((32, 64)) * scale[:, None]
    gather, _ = gs_mask(weights, 0.75, 8, 1)
    scatter, order = gs_mask(weights, 0.75, 8, 1, scatter=True)
    check_gs(scatter, 8, 1, order)
    assert set(order[:8].tolist()) <= set(range(0, 32, 2))     # the big rows together
    energy = lambda m: (weights ** 2)[m].sum()                 # noqa: E731
    assert energy(scatter) > energy(gather)


@pytest.mark.parametrize("rows,cols", [(10, 9), (37, 53), (13, 17), (3, 8)])
@pytest.mark.parametrize("per_row", [1, 2, 8])
def test_gs_ragged_edges_pack(rng, rows, cols, per_row):
    weights = rng.standard_normal((rows, cols)) - 0.5
    for scatter in (False, True):
        mask, order = gs_mask(weights, 0.6, 8, per_row, scatter=scatter)
        padding, _ = check_gs(mask, 8, per_row, order)
        matrix = pack(mask, "gs-scatter" if scatter else "gs-gather", 8, per_row,
                      order if scatter else None)
        assert matrix.n_groups * 8 - int(mask.sum()) == padding
        assert np.array_equal(matrix.to_dense() != 0, mask)


@seed(SEED)
@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 40), extra_cols=st.integers(0, 40),
       lanes=st.sampled_from([2, 4, 8, 16]), e_log=st.integers(0, 4),
       sparsity=st.floats(0.0, 0.95), scatter=st.booleans(), data_seed=st.integers(0, 2**16))
def test_gs_property(rows, extra_cols, lanes, e_log, sparsity, scatter, data_seed):
    per_row = min(1 << e_log, lanes)
    cols = lanes + extra_cols
    weights = np.random.default_rng(data_seed).standard_normal((rows, cols))
    mask, order = gs_mask(weights, sparsity, lanes, per_row, scatter=scatter)
    padding, _ = check_gs(mask, lanes, per_row, order)
    matrix = pack(mask, "gs-scatter" if scatter else "gs-gather", lanes, per_row,
                  order if scatter else None)
    assert matrix.n_groups * lanes - int(mask.sum()) == padding
    assert np.array_equal(matrix.to_dense() != 0, mask)


def test_gs_too_small_layer_names_layer():
    with pytest.raises(ShapeError, match=r"^Layer 0 has 4 input columns, fewer than the 8 lanes;"):
        prune(nn.Sequential(nn.Linear(4, 16)), "gs-gather", 0.5, 8)


# 1xN ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows,channels,kernel", [(16, 24, 1), (20, 7, 9), (5, 12, 1)])
@pytest.mark.parametrize("sparsity", [0.5, 0.75, 0.875, 0.3])
def test_one_by_n_rules(rng, rows, channels, kernel, sparsity):
    weights = rng.standard_normal((rows, channels * kernel))
    mask = one_by_n_mask(weights, sparsity, 8, kernel)
    check_one_by_n(mask, 8, kernel, math.floor(sparsity * channels))
    matrix = pack(mask, "1xN", 8, 1)
    assert np.array_equal(matrix.to_dense() != 0, mask)


@seed(SEED)
@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 40), channels=st.integers(1, 20), kernel=st.sampled_from([1, 4, 9]),
       lanes=st.sampled_from([2, 4, 8, 16]), sparsity=st.floats(0.0, 0.99),
       tau=st.sampled_from([0.0, 0.5]), data_seed=st.integers(0, 2**16))
def test_one_by_n_property(rows, channels, kernel, lanes, sparsity, tau, data_seed):
    weights = np.random.default_rng(data_seed).standard_normal((rows, channels * kernel))
    mask = one_by_n_mask(weights, sparsity, lanes, kernel, tau=tau, seed=data_seed)
    check_one_by_n(mask, lanes, kernel, math.floor(sparsity * channels))
    if mask.any():
        assert np.array_equal(pack(mask, "1xN", lanes, 1).to_dense() != 0, mask)


def test_one_by_n_prunes_low_norm_blocks(rng):
    weights = rng.standard_normal((8, 16))
    weights[:, :8] *= 0.01                       # eight weak input channels
    mask = one_by_n_mask(weights, 0.5, 8, alpha=0.0)
    assert not mask[:, :8].any() and mask[:, 8:].all()


def test_one_by_n_sampling_regrows(rng):
    weights = rng.standard_normal((16, 32))
    masks = {one_by_n_mask(weights, 0.5, 8, tau=1.0, seed=s).tobytes() for s in range(6)}
    assert len(masks) > 1                       # sampling explores other blocks
    for s in range(6):
        check_one_by_n(one_by_n_mask(weights, 0.5, 8, tau=1.0, seed=s), 8, 1, 16)


def test_one_by_n_conv_in_model():
    model = model_cnn()
    prune(model, "1xN", 0.75, 8)
    conv = model[3]
    check_one_by_n(layer_mask(conv), 8, 9, 6)
    assert pattern_info(conv) == PatternInfo("1xN", 8, 1)


# Unstructured ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.875, 0.99])
def test_unstructured_exact(rng, sparsity):
    weights = rng.standard_normal((33, 47))
    mask = unstructured_mask(weights, sparsity)
    assert int(mask.sum()) == round((1 - sparsity) * weights.size)
    if mask.any() and not mask.all():
        assert np.abs(weights[mask]).min() >= np.abs(weights[~mask]).max()


# Model-level API ------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern", ["gs-gather", "gs-scatter", "1xN", "unstructured"])
@pytest.mark.parametrize("build", [model_mlp, model_cnn])
def test_prune_model_patterns_and_metadata(pattern, build):
    model = build()
    x = torch.rand(3, 1, 8, 8)
    # The CNN's first conv reads one channel, i.e. one of the 8 banks: no GS row group.
    exclude = ["0"] if build is model_cnn and pattern.startswith("gs") else []
    prune(model, pattern, 0.75, 8, exclude=exclude)
    for name, module in prunable_layers(model):
        if name in exclude:
            assert pattern_info(module) is None
            continue
        mask = layer_mask(module)
        info = pattern_info(module)
        assert info == PatternInfo(pattern, 8, 1)
        weight = module.weight.detach().reshape(mask.shape).numpy()
        assert np.all(weight[~mask] == 0)
        if pattern.startswith("gs"):
            order = getattr(module, "gsaccel_row_order", None)
            order = None if order is None else order.numpy()
            assert (order is not None) == (pattern == "gs-scatter")
            check_gs(view_mask(module, 8), 8, 1, order)
        elif pattern == "1xN":
            kernel = mask.shape[1] // module.weight.shape[1]
            channels = module.weight.shape[1]
            check_one_by_n(mask, 8, kernel, math.floor(0.75 * channels))
    model(x)


def test_masks_survive_state_dict_and_remove(tmp_path):
    model = model_mlp()
    prune(model, "gs-scatter", 0.75, 8, 2)
    x = torch.rand(4, 64)
    expected = model(x)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = restore(model_mlp_fresh(), torch.load(buffer))
    assert torch.equal(fresh(x), expected)
    for (_, a), (_, b) in zip(prunable_layers(model), prunable_layers(fresh)):
        assert torch.equal(a.weight_mask, b.weight_mask)
        assert pattern_info(b) == PatternInfo("gs-scatter", 8, 2)
        assert torch.equal(a.gsaccel_row_order, b.gsaccel_row_order)
    # Whole-model save keeps everything too.
    torch.save(model, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    assert torch.equal(loaded(x), expected)
    # prune.remove makes the zeros permanent; the metadata stays.
    for _, module in prunable_layers(model):
        mask = module.weight_mask.clone()
        torch_prune.remove(module, "weight")
        assert not hasattr(module, "weight_mask")
        assert torch.all(module.weight[mask == 0] == 0)
        assert pattern_info(module) == PatternInfo("gs-scatter", 8, 2)
    assert torch.equal(model(x), expected)


def model_mlp_fresh():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 24),
                         nn.ReLU(), nn.Linear(24, 10))


def test_reprune_replaces_mask(rng):
    layer = nn.Linear(32, 16)
    prune(layer, "gs-gather", 0.875, 8)
    prune(layer, "gs-gather", 0.5, 8)           # a lower sparsity regrows weights
    assert abs(float(layer.weight_mask.mean()) - 0.5) < 0.02
    check_gs(layer_mask(layer), 8, 1)


def test_layers_and_exclude():
    model = model_mlp()
    prune(model, "unstructured", 0.5, exclude=["5"])
    assert pattern_info(model[5]) is None and not hasattr(model[5], "weight_mask")
    assert pattern_info(model[1]).pattern == "unstructured"
    model = model_mlp()
    prune(model, "unstructured", 0.5, layers=["3"])
    assert [n for n, m in prunable_layers(model) if pattern_info(m)] == ["3"]
    with pytest.raises(PatternError, match=r"^Layer names must name Linear or Conv2d layers, "
                                           r"not '2'$"):
        prune(model, "unstructured", 0.5, layers=["2"])


def test_exclude_must_name_layers():
    model = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(), nn.Linear(8, 8))
    for bad in ("3", "1", "conv"):
        with pytest.raises(PatternError, match=rf"^Excluded layer names must name Linear or "
                                               rf"Conv2d layers, not '{bad}'$"):
            prune(model, "unstructured", 0.5, 4, exclude=["0", bad])
        with pytest.raises(PatternError, match=rf"'{bad}'$"):
            PruningScheduler(model, "unstructured", 0.5, 4, t1=3, exclude=[bad])
    assert not any(hasattr(m, "weight_mask") for _, m in prunable_layers(model))
    prune(model, "unstructured", 0.5, 4, exclude="2")          # one name, not its characters
    assert pattern_info(model[2]) is None and pattern_info(model[0]) is not None


def test_gemm_view_of_conv():
    conv = nn.Conv2d(3, 5, (2, 3))
    view = gemm_view(conv)
    assert view.shape == (5, 18)
    assert np.array_equal(view[4, 6:12], conv.weight[4, 1].detach().numpy().ravel())


# Scheduler ------------------------------------------------------------------------------------

def test_cubic_schedule():
    assert cubic_schedule(0, 0.8, 2, 6) == 0.0
    assert cubic_schedule(2, 0.8, 2, 6) == 0.0
    assert cubic_schedule(4, 0.8, 2, 6) == pytest.approx(0.8 * 0.125)
    assert cubic_schedule(6, 0.8, 2, 6) == pytest.approx(0.8)
    assert cubic_schedule(60, 0.8, 2, 6) == pytest.approx(0.8)


@pytest.mark.parametrize("pattern", ["1xN", "gs-gather", "unstructured"])
def test_scheduler_follows_schedule(pattern):
    model = model_mlp()
    scheduler = PruningScheduler(model, pattern, 0.75, 8, t0=0, t1=4)
    for t in range(1, 7):
        p = scheduler.step()
        assert p == pytest.approx(cubic_schedule(t, 0.75, 0, 4))
        mask = layer_mask(model[1])
        if pattern == "1xN":
            check_one_by_n(mask, 8, 1, math.floor(p * 64))
        elif pattern == "gs-gather":
            check_gs(mask, 8, 1)
            assert abs(mask.sum() - round((1 - p) * mask.size)) <= 4
        else:
            assert mask.sum() == round((1 - p) * mask.size)
    assert scheduler.current_sparsity == pytest.approx(0.75)


# Errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,message", [
    (dict(pattern="2:4", sparsity=0.5), r"^Pattern must be one of gs-gather, gs-scatter, 1xN, "
                                         r"smartdeal, unstructured, not '2:4'$"),
    (dict(pattern="gs-gather", sparsity=1.0), r"^Sparsity must be a number in \[0, 1\), "
                                              r"not 1\.0$"),
    (dict(pattern="gs-gather", sparsity=-0.1), r"^Sparsity must be a number in \[0, 1\), "
                                               r"not -0\.1$"),
    (dict(pattern="gs-gather", sparsity="half"), r"^Sparsity must be a number in \[0, 1\), "
                                                 r"not 'half'$"),
    (dict(pattern="gs-gather", sparsity=0.5, lanes=6), r"^Lane count must be a power of two in "
                                                       r"2\.\.16, not 6$"),
    (dict(pattern="gs-gather", sparsity=0.5, per_row=3), r"^Weights per row e must divide the "
                                                          r"lane count 8, not 3$"),
    (dict(pattern="1xN", sparsity=0.5, per_row=2), r"^Pattern 1xN shares one column across all "
                                                    r"lanes, so e must be 1, not 2$"),
    (dict(pattern="gs-gather", sparsity=0.5, tau=1), r"^Option 'tau' is not one of pattern "
                                                      r"'gs-gather''s options \(none\)$"),
])
def test_bad_arguments(kwargs, message):
    model = model_mlp()
    with pytest.raises(PatternError, match=message):
        prune(model, **kwargs)
    assert not any(hasattr(m, "weight_mask") for _, m in prunable_layers(model))


def test_bad_layer_leaves_model_untouched():
    model = nn.Sequential(nn.Linear(64, 16), nn.Linear(16, 4), nn.Linear(4, 8))
    with pytest.raises(ShapeError):
        prune(model, "gs-gather", 0.5, 8)
    assert not any(hasattr(m, "weight_mask") for _, m in prunable_layers(model))
