"""The digits models and training loop that the bench and the demo reuse."""

import torch
from torch import nn

from gsaccel.sw.models import DigitsCNN, DigitsMLP, digits_data, evaluate, train

LOWERABLE = (nn.Linear, nn.Conv2d, nn.ReLU, nn.Flatten, nn.AvgPool2d, nn.BatchNorm2d,
             nn.BatchNorm1d, nn.Sequential)


def test_digits_split_is_seeded_and_disjoint():
    a, b = digits_data(0), digits_data(1)
    assert torch.equal(a.x_test, digits_data(0).x_test) and not torch.equal(a.x_test, b.x_test)
    assert a.x_train.shape == (1347, 1, 8, 8) and a.x_test.shape == (450, 1, 8, 8)
    assert 0.0 <= float(a.x_train.min()) and float(a.x_train.max()) <= 1.0
    assert set(a.y_test.tolist()) == set(range(10))
    train_rows = {tuple(r) for r in a.x_train.reshape(-1, 64).tolist()}
    overlap = sum(tuple(r) in train_rows for r in a.x_test.reshape(-1, 64).tolist())
    assert overlap < 10          # the digits set has a few duplicate images, no more


def test_models_use_only_lowerable_layers():
    for model in (DigitsMLP(), DigitsCNN()):
        assert all(isinstance(m, LOWERABLE) for m in model.modules())
        assert model(torch.rand(5, 1, 8, 8)).shape == (5, 10)
    shapes = [m.weight.shape for m in DigitsMLP().modules() if isinstance(m, nn.Linear)]
    assert shapes == [(128, 64), (64, 128), (10, 64)]


def test_training_learns_and_is_reproducible():
    torch.set_num_threads(1)
    data = digits_data(0)
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = DigitsMLP()
        losses = train(model, data, epochs=4, seed=0)
        results.append((losses, evaluate(model, data)))
    assert results[0] == results[1]
    losses, accuracy = results[0]
    assert losses[-1] < losses[0] / 3
    assert accuracy > 0.85


def test_on_epoch_callback_and_evaluate_range():
    data = digits_data(2)
    torch.manual_seed(2)
    model = DigitsCNN()
    seen = []
    train(model, data, epochs=2, seed=2, on_epoch=seen.append)
    assert seen == [0, 1]
    assert 0.0 <= evaluate(model, data) <= 1.0
    assert not model.training
