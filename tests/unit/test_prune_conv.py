"""Pruning Conv2d layers in the core's GEMM view (DESIGN §2.1): rows = output channels,
columns (tap, channel padded to Cp = V·⌈C/V⌉), channel fastest, bank = channel mod V; grouped
and depthwise convs are block-diagonal. Every mask is checked in an independently built view
(loops here, not the pruner's mapping) with the independent GS / 1xN checkers of test_prune,
then packed with GSMatrix.from_dense."""

import hashlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, seed, settings
from hypothesis import strategies as st
from torch import nn

from gsaccel.sw.errors import ShapeError, UnsupportedError
from gsaccel.sw.format import GSMatrix
from gsaccel.sw.format.geometry import LoopNest, TensorGeometry
from gsaccel.sw.prune import (GemmLayout, PatternInfo, PruningScheduler, from_gemm_view,
                              gemm_layout, gemm_view, gs_mask, one_by_n_mask, pattern_info,
                              prunable_layers, prune, restore)
from gsaccel.sw.prune.masks import _max_groups
from test_prune import SEED, check_gs, check_one_by_n


# Independent references ------------------------------------------------------------------------

def reference_view(weight, in_channels, lanes, groups):
    """(C_out, C_in/groups, kh, kw) weights as rows × (tap, padded channel) columns, by loops."""
    c_out, in_per_group, kh, kw = weight.shape
    cp = -(-in_channels // lanes) * lanes
    view = np.zeros((c_out, kh * kw * cp), dtype=np.asarray(weight).dtype)
    out_per_group = c_out // groups
    for o in range(c_out):
        for c in range(in_per_group):
            channel = (o // out_per_group) * in_per_group + c
            for ky in range(kh):
                for kx in range(kw):
                    view[o, (ky * kw + kx) * cp + channel] = weight[o, c, ky, kx]
    return view


def conv_view(conv, lanes, values=None):
    values = conv.weight.detach().numpy() if values is None else values
    return reference_view(values, conv.in_channels, lanes, conv.groups)


def torch_mask(conv):
    return conv.weight_mask.detach().numpy() > 0


def flow_feasible(caps, per_row, p):
    """Can every row keep per_row·p weights, at most caps[r, b] in bank b and p per bank?
    Plain augmenting-path max flow on source → rows → banks → sink."""
    rows, lanes = caps.shape
    n = 2 + rows + lanes
    cap = np.zeros((n, n), dtype=np.int64)
    cap[0, 2:2 + rows] = per_row * p
    cap[2:2 + rows, 2 + rows:] = caps
    cap[2 + rows:, 1] = p
    flow = 0
    while True:
        parent = {0: None}
        queue = [0]
        while queue and 1 not in parent:
            u = queue.pop(0)
            for v in np.flatnonzero(cap[u] > 0):
                if int(v) not in parent:
                    parent[int(v)] = u
                    queue.append(int(v))
        if 1 not in parent:
            return flow == rows * per_row * p
        path, v = [], 1
        while parent[v] is not None:
            path.append((parent[v], v))
            v = parent[v]
        push = min(cap[u, v] for u, v in path)
        for u, v in path:
            cap[u, v] -= push
            cap[v, u] += push
        flow += push


# The GEMM view ---------------------------------------------------------------------------------

@pytest.mark.parametrize("c_in,c_out,kernel,groups,lanes", [
    (5, 6, (3, 3), 1, 4), (20, 12, (10, 4), 1, 16), (10, 16, (3, 3), 2, 8), (5, 5, (3, 3), 5, 8),
    (10, 20, (1, 1), 10, 4), (16, 8, (2, 3), 4, 16),
])
def test_layout_matches_reference_and_loop_nest(c_in, c_out, kernel, groups, lanes):
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, kernel, groups=groups)
    layout = gemm_layout(conv, lanes)
    view = gemm_view(conv, lanes)
    np.testing.assert_array_equal(view, conv_view(conv, lanes))
    ones = np.ones(conv.weight.shape, dtype=bool)
    np.testing.assert_array_equal(layout.candidates(), conv_view(conv, lanes, ones))
    assert layout.candidates().sum() == conv.weight.numel()
    # Column count and banks agree with the loop nest the core runs.
    src = TensorGeometry(12, 12, c_in, lanes, pad=0)
    dst = TensorGeometry(13 - kernel[0], 13 - kernel[1], c_out, lanes)
    assert view.shape == (c_out, LoopNest(src, dst, kernel).columns)
    channels = np.flatnonzero(layout.candidates().any(axis=0)) % layout.padded_channels
    assert np.array_equal(layout.banks()[layout.candidates().any(axis=0)], channels % lanes)
    # The inverse mapping.
    np.testing.assert_array_equal(from_gemm_view(conv, view, lanes), conv.weight.detach().numpy())
    assert from_gemm_view(conv, view != 0, lanes).dtype == bool


def test_view_times_patch_is_the_convolution(rng):
    """y[:, oy, ox] = view @ patch, patch[(ky·kw + kx)·Cp + c] = x[c, tap's pixel]."""
    lanes, c_in, c_out, groups = 4, 6, 9, 3
    conv = nn.Conv2d(c_in, c_out, (3, 2), stride=2, padding=1, dilation=(1, 2), groups=groups,
                     bias=False).double()
    x = torch.tensor(rng.standard_normal((1, c_in, 7, 8)))
    y = conv(x)[0].detach().numpy()
    view = gemm_layout(conv, lanes).to_gemm(conv.weight.detach().numpy())
    cp = 8
    padded = np.pad(x[0].numpy(), ((0, 0), (1, 1), (1, 1)))
    for oy in range(y.shape[1]):
        for ox in range(y.shape[2]):
            patch = np.zeros(6 * cp)
            for ky in range(3):
                for kx in range(2):
                    patch[(ky * 2 + kx) * cp:(ky * 2 + kx) * cp + c_in] = \
                        padded[:, oy * 2 + ky, ox * 2 + kx * 2]
            np.testing.assert_allclose(view @ patch, y[:, oy, ox], atol=1e-12)


def test_linear_view_is_its_weight():
    layer = nn.Linear(13, 7)
    layout = gemm_layout(layer, 8)
    assert layout.shape == (7, 13) and layout.candidates().all()
    assert np.array_equal(gemm_view(layer, 8), gemm_view(layer))
    assert np.array_equal(gemm_view(layer, 8), layer.weight.detach().numpy())


def test_linear_input_view_is_a_whole_input_kernel():
    """A Linear reading a flattened (C, H, W) tensor runs as a conv whose kernel covers it."""
    layer = nn.Linear(3 * 2 * 5, 4)
    view = gemm_view(layer, 4, input_view=(3, 2, 5))
    weight = layer.weight.detach().numpy().reshape(4, 3, 2, 5)
    np.testing.assert_array_equal(view, reference_view(weight, 3, 4, 1))
    with pytest.raises(ShapeError, match=r"^Input view must hold the layer's 30 input features, "
                                         r"not \(3, 2, 4\)$"):
        gemm_layout(layer, 4, input_view=(3, 2, 4))


def test_torch_order_view_without_lanes():
    conv = nn.Conv2d(4, 6, 3, groups=2)
    assert gemm_view(conv).shape == (6, 18)
    assert np.array_equal(gemm_view(conv)[5], conv.weight[5].detach().numpy().ravel())


def test_view_errors():
    conv = nn.Conv2d(3, 4, 3)
    layout = gemm_layout(conv, 4)
    view = np.zeros(layout.shape, dtype=bool)
    view[1, 4 + 3] = True                       # tap 1, channel 3: a padding channel
    with pytest.raises(ShapeError, match=r"^GEMM view keeps row 1, column 7 \(tap 1, channel 3\)"
                                         r", which no weight of the layer maps to$"):
        layout.to_weight(view)
    with pytest.raises(ShapeError, match=r"^GEMM view must have shape \(4, 36\), not \(4, 27\)$"):
        layout.to_weight(np.zeros((4, 27)))
    with pytest.raises(ShapeError, match=r"^Groups must divide the input and output channels "
                                         r"\(6, 4\), not 3$"):
        GemmLayout(4, 6, 4, groups=3)


# Every pruner on every kind of conv ------------------------------------------------------------

CONVS = {
    # name: (Conv2d arguments, {(pattern, e): lanes at which it is refused, and why})
    "5to6_3x3": (dict(in_channels=5, out_channels=6, kernel_size=3, padding=1),
                 {("gs-gather", 1): {8, 16}, ("gs-scatter", 1): {8, 16},
                  ("gs-gather", 2): {8, 16}}),          # 5 channels feed 5 of the V banks
    "20to12_10x4": (dict(in_channels=20, out_channels=12, kernel_size=(10, 4), stride=2,
                         padding=1), {}),
    "10to16_1x1": (dict(in_channels=10, out_channels=16, kernel_size=1),
                   {("gs-gather", 1): {16}, ("gs-scatter", 1): {16}, ("gs-gather", 2): {16}}),
    "20to10_3x3": (dict(in_channels=20, out_channels=10, kernel_size=3), {}),
    # groups = 2, 5 channels per group: V consecutive rows of one group feed 5 banks (gather);
    # scatter mixes the groups' rows. 1xN needs a multiple of V output channels per group.
    "10to16_3x3_g2": (dict(in_channels=10, out_channels=16, kernel_size=3, groups=2),
                      {("gs-gather", 1): {8, 16}, ("gs-scatter", 1): {16},
                       ("gs-gather", 2): {8, 16}, ("1xN", 1): {16}}),
    "20to32_1x1_g2": (dict(in_channels=20, out_channels=32, kernel_size=1, groups=2),
                      {("gs-gather", 1): {16}, ("gs-gather", 2): {16}}),
    # Depthwise: a row's candidates lie in one bank, so e > 1 cannot be fed; 1xN blocks of V
    # output channels read V different channels.
    "dw5_3x3": (dict(in_channels=5, out_channels=5, kernel_size=3, groups=5),
                {("gs-gather", 2): {4, 8, 16}, ("1xN", 1): {4, 8, 16}}),
    "dw16_3x3": (dict(in_channels=16, out_channels=16, kernel_size=3, groups=16, padding=1),
                 {("gs-gather", 2): {4, 8, 16}, ("1xN", 1): {4, 8, 16}}),
    "dw20_10x4": (dict(in_channels=20, out_channels=20, kernel_size=(10, 4), groups=20),
                  {("gs-gather", 2): {4, 8, 16}, ("1xN", 1): {4, 8, 16}}),
    # Channel multiplier 2: consecutive rows share a channel, so gather never feeds V banks;
    # scatter puts one row per bank in each row group when every bank has at most as many
    # rows as there are row groups (not for 10 channels: bank 0 holds channels 0, 4, 8 at
    # V = 4 and 0, 8 at V = 8; at V = 16 banks 10-15 hold none).
    "10to20_3x3_m2": (dict(in_channels=10, out_channels=20, kernel_size=3, groups=10),
                      {("gs-gather", 1): {4, 8, 16}, ("gs-scatter", 1): {4, 8, 16},
                       ("gs-gather", 2): {4, 8, 16}, ("1xN", 1): {4, 8, 16}}),
    "16to32_3x3_m2": (dict(in_channels=16, out_channels=32, kernel_size=3, groups=16),
                      {("gs-gather", 1): {4, 8, 16}, ("gs-gather", 2): {4, 8, 16},
                       ("1xN", 1): {4, 8, 16}}),
    "8to16_1x1_m2": (dict(in_channels=8, out_channels=16, kernel_size=1, groups=8),
                     {("gs-gather", 1): {4, 8, 16}, ("gs-scatter", 1): {16},
                      ("gs-gather", 2): {4, 8, 16}, ("1xN", 1): {4, 8, 16}}),
}
VARIANTS = [("gs-gather", 1), ("gs-scatter", 1), ("gs-gather", 2), ("1xN", 1),
            ("unstructured", 1)]


def build_conv(arguments, seed=0):
    torch.manual_seed(seed)
    return nn.Conv2d(**arguments)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v[0]}-e{v[1]}")
@pytest.mark.parametrize("sparsity", [0.5, 0.75])
@pytest.mark.parametrize("lanes", [4, 8, 16])
@pytest.mark.parametrize("name", list(CONVS))
def test_every_pruner_on_every_conv(name, lanes, sparsity, variant):
    arguments, refused = CONVS[name]
    pattern, per_row = variant
    conv = build_conv(arguments)
    if lanes in refused.get(variant, ()):
        error = UnsupportedError if pattern == "1xN" else ShapeError
        with pytest.raises(error, match=r"^Layer weight: "):
            prune(conv, pattern, sparsity, lanes, per_row)
        assert not hasattr(conv, "weight_mask")
        return
    prune(conv, pattern, sparsity, lanes, per_row)
    assert pattern_info(conv) == PatternInfo(pattern, lanes, per_row)
    mask = torch_mask(conv)
    view = conv_view(conv, lanes, mask)
    # The torch mask is the view mask mapped back; structural zeros are never kept.
    np.testing.assert_array_equal(gemm_layout(conv, lanes).to_gemm(mask), view)
    np.testing.assert_array_equal(from_gemm_view(conv, view, lanes), mask)
    candidates = conv_view(conv, lanes, np.ones(mask.shape, dtype=bool))
    assert not (view & ~candidates).any()
    size, kept = mask.size, int(mask.sum())
    target = round((1 - sparsity) * size)
    c_out, in_per_group = conv.out_channels, conv.in_channels // conv.groups
    taps = conv.kernel_size[0] * conv.kernel_size[1]
    order = getattr(conv, "gsaccel_row_order", None)
    order = None if order is None else order.numpy()
    packed = GSMatrix.from_dense(view.astype(np.int64), pattern, lanes, per_row, "int8",
                                 row_order=order)
    np.testing.assert_array_equal(packed.to_dense() != 0, view)
    padding = packed.stats()["padding_lanes"]
    if pattern.startswith("gs"):
        assert (order is not None) == (pattern == "gs-scatter")
        expected_padding, counts = check_gs(view, lanes, per_row, order)
        assert padding == expected_padding
        assert abs(kept - target) <= lanes // 2      # half a row group's unit of rounding
        if taps * in_per_group > 1:
            assert min(counts) > 0                   # no row group left empty
        if c_out % (lanes // per_row) == 0 and taps * in_per_group > 1:
            assert padding == 0                      # full row groups: utilisation 1.0
        if conv.groups == conv.in_channels == c_out and c_out % lanes == 0:
            # Depthwise: row c keeps its largest taps, all in bank c mod V.
            weight = np.abs(conv.weight_orig.detach().numpy().reshape(c_out, taps))
            for row in range(c_out):
                kept_taps = weight[row][mask[row].reshape(taps)]
                if kept_taps.size:
                    assert kept_taps.min() >= weight[row][~mask[row].reshape(taps)].max(
                        initial=0)
    elif pattern == "1xN":
        pruned = math.floor(sparsity * in_per_group)
        check_one_by_n(mask.reshape(c_out, -1), lanes, taps, pruned)
        assert kept == (in_per_group - pruned) * taps * c_out
        if c_out % lanes == 0:
            assert padding == 0
        else:
            assert padding == (lanes - c_out % lanes) * (in_per_group - pruned) * taps
    else:
        assert kept == target


@pytest.mark.parametrize("pattern", ["gs-gather", "gs-scatter", "1xN", "unstructured"])
def test_stride_padding_dilation_do_not_change_the_mask(pattern):
    masks = set()
    for extra in ({}, dict(stride=2), dict(padding=2), dict(dilation=(2, 1), padding=(1, 3))):
        conv = build_conv(dict(in_channels=12, out_channels=16, kernel_size=3, **extra))
        prune(conv, pattern, 0.75, 8)
        masks.add(torch_mask(conv).tobytes())
    assert len(masks) == 1


def test_one_by_n_blocks_are_channels_across_taps(rng):
    """1xN in the GEMM view prunes the same blocks as in torch's order (V output channels ×
    one input channel × the whole kernel, DESIGN §1.2), groups with whole V-row blocks too."""
    for arguments in (dict(in_channels=5, out_channels=12, kernel_size=3),
                      dict(in_channels=12, out_channels=16, kernel_size=(2, 3), groups=2)):
        for tau in (0.0, 0.7):
            conv = build_conv(arguments)
            prune(conv, "1xN", 0.6, 8, tau=tau, seed=4)
            torch_order = conv.weight_orig.detach().numpy().reshape(conv.out_channels, -1)
            taps = conv.kernel_size[0] * conv.kernel_size[1]
            expected = one_by_n_mask(torch_order, 0.6, 8, taps, tau=tau, seed=4)
            np.testing.assert_array_equal(torch_mask(conv).reshape(expected.shape), expected)


def test_unstructured_conv_keeps_the_largest_weights():
    conv = build_conv(dict(in_channels=6, out_channels=10, kernel_size=3, groups=2))
    prune(conv, "unstructured", 0.7, 8)
    weight = np.abs(conv.weight_orig.detach().numpy())
    mask = torch_mask(conv)
    assert mask.sum() == round(0.3 * mask.size)
    assert weight[mask].min() >= weight[~mask].max()


def test_scatter_groups_one_row_per_bank_for_a_channel_multiplier():
    conv = build_conv(dict(in_channels=8, out_channels=16, kernel_size=3, groups=8))
    prune(conv, "gs-scatter", 0.5, 8)
    order = conv.gsaccel_row_order.numpy()
    assert sorted(order.tolist()) == list(range(16))
    # Output channel o reads input channel o // 2, in bank (o // 2) mod 8.
    for start in (0, 8):
        assert sorted((order[start:start + 8] // 2 % 8).tolist()) == list(range(8))
    view = conv_view(conv, 8, torch_mask(conv))
    packed = GSMatrix.from_dense(view.astype(np.int64), "gs-scatter", 8, 1, "int8",
                                 row_order=order)
    assert packed.stats()["padding_lanes"] == 0 and packed.stats()["utilisation"] == 1.0


# Errors ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("arguments,pattern,per_row,error,message", [
    (dict(in_channels=3, out_channels=8, kernel_size=3), "gs-gather", 1, ShapeError,
     r"^Layer weight: rows 0-7 cannot form a GS row group without padding: their candidate "
     r"weights lie in banks 0-2 only, and each group takes 1 weight from each of its rows, no "
     r"two in one bank; exclude the layer or choose another pattern$"),
    (dict(in_channels=8, out_channels=16, kernel_size=3, groups=8), "gs-gather", 1, ShapeError,
     r"^Layer weight: rows 0-7 cannot form a GS row group without padding: their candidate "
     r"weights lie in banks 0-3 only, and each group takes 1 weight from each of its rows, no "
     r"two in one bank; gs-scatter may group its rows differently; exclude the layer or choose "
     r"another pattern$"),
    (dict(in_channels=16, out_channels=16, kernel_size=3, groups=16), "gs-scatter", 2,
     ShapeError, r"^Layer weight: row \d+ cannot keep a GS group without padding: its "
                 r"candidate weights lie in bank \d+ only, fewer than e=2 banks; exclude the "
                 r"layer or choose another pattern$"),
    (dict(in_channels=10, out_channels=20, kernel_size=3, groups=10), "gs-scatter", 1,
     ShapeError, r"^Layer weight: rows cannot be grouped into GS row groups of 8 without "
                 r"padding: 2 row groups would be partial"),
    (dict(in_channels=16, out_channels=16, kernel_size=3, groups=16), "1xN", 1,
     UnsupportedError, r"^Layer weight: a 1xN block is 8 consecutive output channels reading "
                       r"the same input channel, so a grouped convolution needs a multiple of "
                       r"8 output channels per group, not 1 \(groups=16\); prune it with "
                       r"gs-gather, gs-scatter or unstructured, or exclude it$"),
])
def test_conv_errors_name_the_layer_and_leave_it(arguments, pattern, per_row, error, message):
    conv = build_conv(arguments)
    with pytest.raises(error, match=message):
        prune(conv, pattern, 0.5, 8, per_row)
    assert not hasattr(conv, "weight_mask") and pattern_info(conv) is None


def test_a_bad_conv_leaves_the_whole_model_untouched():
    model = nn.Sequential(nn.Conv2d(16, 16, 3), nn.Conv2d(16, 16, 3, groups=16),
                          nn.Conv2d(16, 32, 3, groups=16))
    with pytest.raises(ShapeError, match=r"^Layer 2: "):
        prune(model, "gs-gather", 0.5, 8)
    assert not any(hasattr(m, "weight_mask") for _, m in prunable_layers(model))
    prune(model, "gs-gather", 0.5, 8, exclude=["2"])
    assert [pattern_info(m) is not None for m in model] == [True, True, False]


# Model-level -----------------------------------------------------------------------------------

def test_grouped_scatter_survives_state_dict():
    def build():
        torch.manual_seed(3)
        return nn.Sequential(nn.Conv2d(8, 16, 3, groups=8, padding=1), nn.ReLU(),
                             nn.Conv2d(16, 16, 1, groups=2))
    model = build()
    prune(model, "gs-scatter", 0.5, 8)
    x = torch.rand(2, 8, 5, 5)
    fresh = restore(build(), model.state_dict())
    assert torch.equal(fresh(x), model(x))
    for a, b in ((model[0], fresh[0]), (model[2], fresh[2])):
        assert torch.equal(a.gsaccel_row_order, b.gsaccel_row_order)
        assert pattern_info(b) == PatternInfo("gs-scatter", 8, 1)


@pytest.mark.parametrize("pattern", ["gs-gather", "1xN", "unstructured"])
def test_scheduler_prunes_convs_in_the_view(pattern):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, groups=16 if pattern != "1xN" else 2),
                          nn.Flatten(), nn.Linear(16 * 4, 10))
    scheduler = PruningScheduler(model, pattern, 0.75, 8, t0=0, t1=3)
    for _ in range(4):
        p = scheduler.step()
        for module in (model[0], model[2]):
            view = conv_view(module, 8, torch_mask(module))
            if pattern == "gs-gather":
                check_gs(view, 8, 1)
            elif pattern == "1xN":
                taps, per_group = 9, module.in_channels // module.groups
                check_one_by_n(torch_mask(module).reshape(16, -1), 8, taps,
                               math.floor(p * per_group))
    assert scheduler.current_sparsity == pytest.approx(0.75)
    model(torch.rand(1, 8, 4, 4))


# gs_mask with candidates -----------------------------------------------------------------------

@seed(SEED)
@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 12), lanes=st.sampled_from([2, 4, 8]), e_log=st.integers(0, 2),
       data=st.data())
def test_max_groups_is_the_max_flow(rows, lanes, e_log, data):
    per_row = min(1 << e_log, lanes)
    rows = min(rows, lanes // per_row)
    caps = np.array(data.draw(st.lists(st.lists(st.integers(0, 3), min_size=lanes,
                                                max_size=lanes), min_size=rows, max_size=rows)))
    best = max(p for p in range(0, int(caps.sum()) + 2) if p == 0 or
               flow_feasible(caps, per_row, p))
    assert _max_groups(caps, per_row) == best


@seed(SEED)
@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 24), taps=st.integers(1, 6), lanes=st.sampled_from([2, 4, 8, 16]),
       e_log=st.integers(0, 4), kinds=st.integers(1, 4), sparsity=st.floats(0.0, 0.9),
       scatter=st.booleans(), data_seed=st.integers(0, 2**16))
def test_gs_mask_with_candidates_property(rows, taps, lanes, e_log, kinds, sparsity, scatter,
                                          data_seed):
    """Rows of a few kinds, each kind with candidates at a random set of channels: the mask
    keeps candidates only, follows the GS rules, and packs with the padding check_gs predicts;
    gs-gather raises exactly when some row group cannot keep one group (max-flow oracle)."""
    per_row = min(1 << e_log, lanes)
    generator = np.random.default_rng(data_seed)
    channels = lanes + int(generator.integers(0, lanes))
    kind_channels = generator.random((kinds, channels)) < 0.6
    kind_of = generator.integers(0, kinds, rows)
    allowed = np.tile(kind_channels[kind_of], (1, taps))
    weights = generator.standard_normal(allowed.shape)
    height = lanes // per_row
    caps = np.stack([np.bincount(np.flatnonzero(a) % lanes, minlength=lanes) for a in allowed])
    feasible = all(flow_feasible(caps[s:s + height], per_row, 1) for s in range(0, rows, height))
    target = round((1 - sparsity) * allowed.sum())
    if target == 0:                     # nothing to keep: no row group to feed
        assert not gs_mask(weights, sparsity, lanes, per_row, scatter=scatter,
                           allowed=allowed)[0].any()
        return
    try:
        mask, order = gs_mask(weights, sparsity, lanes, per_row, scatter=scatter,
                              allowed=allowed)
    except ShapeError:
        assert scatter or not feasible
        return
    assert scatter or feasible
    assert not (mask & ~allowed).any()
    padding, _ = check_gs(mask, lanes, per_row, order)
    # Half a row group's unit of rounding above; below, P may be capped by the candidates.
    assert int(mask.sum()) - target <= lanes // 2
    packed = GSMatrix.from_dense(mask.astype(np.int64), "gs-scatter" if scatter else
                                 "gs-gather", lanes, per_row, "int8",
                                 row_order=order if scatter else None)
    assert packed.stats()["padding_lanes"] == padding


# Linear layers are pruned exactly as before the GEMM view --------------------------------------

LINEAR_CASES = [  # (in, out, pattern, lanes, e, sparsity, options), digest of the old pruner
    ((64, 40, "gs-gather", 8, 1, 0.75, {}), "4fe32e42e70c50ba"),
    ((37, 13, "gs-gather", 8, 2, 0.5, {}), "ac0f766c13717d25"),
    ((30, 24, "gs-gather", 4, 4, 0.875, {}), "2094bac9be544807"),
    ((53, 37, "gs-scatter", 8, 1, 0.6, {}), "9df6176ef13e163a"),
    ((48, 20, "gs-scatter", 16, 2, 0.75, {}), "834956df7a31b7f9"),
    ((40, 24, "1xN", 8, 1, 0.75, {}), "d398d9422a4b0192"),
    ((29, 10, "1xN", 4, 1, 0.5, {"tau": 0.5, "seed": 3}), "ff542ca6c04bf47b"),
    ((64, 40, "unstructured", 8, 1, 0.8, {}), "8e1d023c08887a05"),
    ((31, 12, "smartdeal", 8, 1, 0.5, {"iterations": 3}), "b08bc9ba2ab61578"),
    ((30, 16, "smartdeal", 8, 1, 0.5, {"c_pattern": "gs-scatter", "iterations": 3}),
     "2ea2706641770833"),
]


@pytest.mark.parametrize("index", range(len(LINEAR_CASES)))
def test_linear_masks_unchanged(index):
    """Digests of the masks (and row orders) the pruner gave before conv layers moved to the
    GEMM view (commit 108d72d), on fixed numpy weights."""
    (n_in, n_out, pattern, lanes, per_row, sparsity, options), expected = LINEAR_CASES[index]
    layer = nn.Linear(n_in, n_out)
    with torch.no_grad():
        layer.weight.copy_(torch.as_tensor(np.random.default_rng([5, index]).standard_normal(
            (n_out, n_in)), dtype=torch.float32))
    prune(layer, pattern, sparsity, lanes, per_row, **options)
    digest = hashlib.sha256()
    if pattern == "smartdeal":
        digest.update((layer.smartdeal_C.numpy() != 0).tobytes())
    else:
        digest.update(layer.weight_mask.numpy().astype(bool).tobytes())
    order = getattr(layer, "gsaccel_row_order", None)
    if order is not None:
        digest.update(order.numpy().astype(np.int64).tobytes())
    assert digest.hexdigest()[:16] == expected


def test_conv_forward_matches_masked_weights(rng):
    conv = build_conv(dict(in_channels=8, out_channels=12, kernel_size=3, groups=2, padding=1))
    prune(conv, "gs-gather", 0.5, 4)
    x = torch.tensor(rng.random((1, 8, 5, 5)), dtype=torch.float32)
    expected = F.conv2d(x, conv.weight_orig * torch.as_tensor(torch_mask(conv)), conv.bias,
                        padding=1, groups=2)
    assert torch.allclose(conv(x), expected)


# The views the compiler runs layers in (example_input) ----------------------------------------

def _im2col_reference(weight):
    """(C_out, C, kh, kw) as rows × columns (ky·kw + kx)·C + c, by loops: the im2col'd
    first layer the compiler emits (unpadded channels, bank = column mod V)."""
    c_out, c_in, kh, kw = weight.shape
    view = np.zeros((c_out, kh * kw * c_in), dtype=np.asarray(weight).dtype)
    for o in range(c_out):
        for c in range(c_in):
            for ky in range(kh):
                for kx in range(kw):
                    view[o, (ky * kw + kx) * c_in + c] = weight[o, c, ky, kx]
    return view


def test_a_first_conv_is_pruned_in_its_im2col_view_and_compiles_gs():
    from gsaccel.hw.config import CoreConfig
    from gsaccel.sw.compile import compile
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1))
    x = torch.randn(8, 3, 9, 7)
    with pytest.raises(ShapeError, match="cannot form a GS row group"):
        prune(model, "gs-gather", 0.75, lanes=16, layers=["0"])       # the padded view
    prune(model, "gs-gather", 0.75, lanes=16, example_input=x)
    mask = _im2col_reference(model[0].weight_mask.numpy())
    check_gs(mask, 16, 1)
    assert mask.mean() == pytest.approx(0.25, abs=0.02)
    program = compile(model, x, cfg=CoreConfig(lanes=16, bank_depth=256))
    assert [(info["name"], info["pattern"]) for info in program.info
            if info["kind"] == "gs"] == [("0", "gs-gather"), ("2", "gs-gather")]
    first = next(layer for layer in program.layers if layer.name == "0")
    assert first.matrix.stats()["utilisation"] == 1.0


def test_a_linear_after_a_flatten_is_pruned_in_the_images_hwc_view():
    from gsaccel.hw.config import CoreConfig
    from gsaccel.sw.compile import compile
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(8 * 3 * 2, 5))
    x = torch.randn(8, 8, 6, 5)
    prune(model, "gs-gather", 0.5, lanes=8, example_input=x)
    hwc = gemm_layout(model[4], 8, input_view=(8, 3, 2)).to_gemm(model[4].weight_mask.numpy())
    check_gs(hwc, 8, 1)
    program = compile(model, x, cfg=CoreConfig(lanes=8, bank_depth=256))
    assert [info["pattern"] for info in program.info if info["kind"] == "gs"] == \
        ["gs-gather", "gs-gather", "gs-gather"]
