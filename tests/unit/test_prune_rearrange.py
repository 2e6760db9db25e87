"""Row rearrangement for 1×N (rearrange_rows, row_groups): the model computes the same
function, the rows of planted groups end up together, 1×N then keeps more of the weights, and
the scheduler still reaches the sparsity with the 1×N structure intact."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from gsaccel.sw.errors import PatternError, UnsupportedError
from gsaccel.sw.prune import PruningScheduler, prune, rearrange_rows, row_groups


def planted(rng, groups, lanes, channels, keep):
    """|W|-like rows: group g puts its mass on its own ``keep`` channels; rows shuffled.
    Returns (matrix, group of each row)."""
    matrix = rng.random((groups * lanes, channels)) * 0.01
    for g in range(groups):
        matrix[g * lanes:(g + 1) * lanes, g * keep:(g + 1) * keep] += 1.0
    order = rng.permutation(groups * lanes)
    return matrix[order], (np.arange(groups * lanes) // lanes)[order]


def check_one_by_n(mask, lanes, pruned_blocks):
    """Each run of V rows keeps or drops each column together, dropping exactly
    ``pruned_blocks`` of them (written here, not the pruner's code)."""
    for start in range(0, mask.shape[0], lanes):
        block = mask[start:start + lanes]
        assert np.all(block.all(axis=0) | ~block.any(axis=0)), f"rows {start}+: mixed"
        assert int((~block.any(axis=0)).sum()) == pruned_blocks


def test_row_groups_puts_planted_groups_together():
    rng = np.random.default_rng(0)
    matrix, group = planted(rng, groups=6, lanes=8, channels=48, keep=8)
    order = row_groups(matrix, 8, 8)
    assert sorted(order.tolist()) == list(range(48))
    for start in range(0, 48, 8):
        assert len(set(group[order[start:start + 8]].tolist())) == 1, start


def test_row_groups_partial_last_group():
    rng = np.random.default_rng(1)
    matrix = rng.random((21, 16))
    order = row_groups(matrix, 8, 4)
    assert sorted(order.tolist()) == list(range(21))


def models():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 40), nn.ReLU(), nn.Linear(40, 24),
                        nn.ReLU(), nn.Dropout(0.1), nn.Linear(24, 10))
    cnn = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                        nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
                        nn.Flatten(), nn.Linear(24 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 4))
    bn = cnn[1]
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.normal_()
    bn.bias.data.normal_()
    return [(mlp, torch.rand(7, 1, 8, 8), ["1", "3"]),
            (cnn, torch.rand(7, 3, 8, 8), ["0", "3", "7"])]


@pytest.mark.parametrize("case", [0, 1])
def test_rearrange_keeps_the_function(case):
    model, x, names = models()[case]
    model.eval()
    before = model(x).detach()
    weights = {name: module.weight.detach().clone() for name, module in model.named_modules()
               if isinstance(module, (nn.Linear, nn.Conv2d))}
    assert rearrange_rows(model, 0.75, 8) == names
    assert torch.allclose(model(x), before, atol=1e-5)
    modules = dict(model.named_modules())
    for name in names:
        # The rows were reordered (their input columns too, but for the first layer): the same
        # rows, so the same row norms, in another order.
        old = weights[name].reshape(len(weights[name]), -1).abs().sum(dim=1)
        new = modules[name].weight.detach().reshape(len(old), -1).abs().sum(dim=1)
        assert not torch.equal(old, new)
        assert torch.allclose(torch.sort(old).values, torch.sort(new).values)
    # The output layer keeps its rows in order (only its input columns follow).
    last = max(weights)
    assert torch.equal(torch.sort(modules[last].weight, dim=1).values,
                       torch.sort(weights[last], dim=1).values)


def test_rearranged_one_by_n_keeps_the_planted_blocks():
    rng = np.random.default_rng(2)
    magnitude, _ = planted(rng, groups=4, lanes=8, channels=32, keep=8)
    signs = rng.choice([-1.0, 1.0], size=magnitude.shape)
    weight = torch.as_tensor(magnitude * signs, dtype=torch.float32)

    def build():
        model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5))
        with torch.no_grad():
            model[0].weight.copy_(weight)
        return model

    def kept(model):
        prune(model, "1xN", 0.75, 8, layers=["0"], alpha=0.0)
        weight = model[0].weight.detach()
        return float(weight.abs().sum() / model[0].weight_orig.detach().abs().sum())

    plain, rearranged = build(), build()
    assert rearrange_rows(rearranged, 0.75, 8, layers=["0"]) == ["0"]
    # Every row group keeps exactly its 8 planted channels: all the large weights.
    assert kept(rearranged) > 0.97 > kept(plain) + 0.3
    check_one_by_n(rearranged[0].weight_mask.numpy() > 0, 8, 24)


def test_scheduler_after_rearrange_reaches_sparsity_as_one_by_n():
    from gsaccel.sw.models import DigitsMLP, digits_data, train
    torch.manual_seed(0)
    data = digits_data(0)
    model = DigitsMLP()
    train(model, data, 2, seed=0)
    before = model(data.x_test).detach()
    rearrange_rows(model, 0.75, 8)
    assert torch.allclose(model(data.x_test), before, atol=1e-5)
    scheduler = PruningScheduler(model, "1xN", 0.75, 8, t0=0, t1=3)
    train(model, data, 5, seed=1, on_epoch=scheduler.step)
    assert scheduler.current_sparsity == pytest.approx(0.75)
    for name in ("1", "3", "5"):
        mask = dict(model.named_modules())[name].weight_mask.numpy() > 0
        channels = mask.shape[1]
        check_one_by_n(mask, 8, math.floor(0.75 * channels))
        assert 1 - mask.mean() == pytest.approx(0.75)


def test_what_is_left_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 32), nn.ReLU(),
                          nn.Linear(32, 32), nn.Softmax(dim=1), nn.Linear(32, 4))
    copies = [m.weight.detach().clone() for m in model if isinstance(m, nn.Linear)]
    # "0": one row group; "2": excluded; "4": read through a Softmax (not channel-wise);
    # "6": the model's output.
    assert rearrange_rows(model, 0.5, 8, exclude=["2"]) == []
    assert all(torch.equal(a, m.weight) for a, m in
               zip(copies, [m for m in model if isinstance(m, nn.Linear)]))
    grouped = nn.Sequential(nn.Conv2d(16, 16, 1, groups=2), nn.ReLU(), nn.Conv2d(16, 16, 1),
                            nn.ReLU(), nn.Conv2d(16, 16, 1, groups=4))
    assert rearrange_rows(grouped, 0.5, 8) == []


def test_rearrange_errors():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    with pytest.raises(UnsupportedError, match="nn.Sequential.*not a Net$"):
        rearrange_rows(Net(), 0.5, 8)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.raises(PatternError, match="^Sparsity must be"):
        rearrange_rows(model, 1.5, 8)
    prune(model, "1xN", 0.5, 8, layers=["2"])
    weight = model[0].weight.detach().clone()
    with pytest.raises(PatternError, match="^Layer 0 must be rearranged before"):
        rearrange_rows(model, 0.5, 8)
    assert torch.equal(model[0].weight, weight)
