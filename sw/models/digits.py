"""Small reference models on scikit-learn's digits set, for the pruning bench and the demo.

Everything here is deliberately small and CPU-friendly: the digits set (1797 greyscale 8×8
images, shipped with scikit-learn, no download) trains to ~97 % in a few seconds.

Both models take images shaped ``(N, 1, 8, 8)`` with values in [0, 1] and are built only from
layers the compiler lowers (Linear, Conv2d, ReLU, Flatten, AvgPool2d or MaxPool2d).

>>> data = digits_data(seed=0)
>>> model = DigitsMLP()
>>> _ = train(model, data, epochs=2, seed=0)
>>> 0.0 <= evaluate(model, data) <= 1.0
True
"""

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["DigitsData", "digits_data", "DigitsMLP", "DigitsCNN", "train", "evaluate"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DigitsData:
    """A fixed train/test split of the digits set.

    Attributes
    ----------
    x_train, x_test : torch.Tensor (N, 1, 8, 8) float32
        Pixel values scaled from 0..16 to [0, 1].
    y_train, y_test : torch.Tensor (N,) int64
        Class labels 0..9.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def digits_data(seed=0, *, test_fraction=0.25):
    """Load the digits set and split it, stratified, with a seeded shuffle.

    Parameters
    ----------
    seed : int
        Seed of the train/test split (the same seed always gives the same split).
    test_fraction : float
        Fraction of the 1797 images held out for testing (default 0.25: 450 test images).

    Returns
    -------
    DigitsData
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=test_fraction, random_state=seed,
        stratify=digits.target)
    return DigitsData(torch.from_numpy(x_train), torch.from_numpy(y_train).long(),
                      torch.from_numpy(x_test), torch.from_numpy(y_test).long())


class DigitsMLP(nn.Sequential):
    """64-128-64-10 perceptron: Flatten, Linear, ReLU, Linear, ReLU, Linear.

    Parameters
    ----------
    hidden : (int, int)
        Widths of the two hidden layers (default (128, 64)).
    """

    def __init__(self, hidden=(128, 64)):
        h1, h2 = hidden
        super().__init__(nn.Flatten(), nn.Linear(64, h1), nn.ReLU(), nn.Linear(h1, h2),
                         nn.ReLU(), nn.Linear(h2, 10))


class DigitsCNN(nn.Sequential):
    """Small CNN for 8×8 images.

    Conv 1→8 3×3 pad 1, ReLU, pool 2, Conv 8→16 3×3 pad 1, ReLU, pool 2, Flatten,
    Linear 64→10.

    Parameters
    ----------
    pool : str
        ``"avg"`` (AvgPool2d, the default) or ``"max"`` (MaxPool2d).
    """

    def __init__(self, pool="avg"):
        if pool not in ("avg", "max"):
            raise ValueError(f"Pool must be 'avg' or 'max', not {pool!r}")
        pool_class = nn.AvgPool2d if pool == "avg" else nn.MaxPool2d
        super().__init__(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), pool_class(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), pool_class(2),
                         nn.Flatten(), nn.Linear(64, 10))


def train(model, data, epochs, *, lr=3e-3, batch_size=64, seed=0, weight_decay=0.0,
          on_epoch=None, on_step=None):
    """Train ``model`` on ``data.x_train`` with Adam and cross-entropy.

    Parameters
    ----------
    model : nn.Module
    data : DigitsData
    epochs : int
        Passes over the training set.
    lr, batch_size, weight_decay
        Adam learning rate, minibatch size and weight decay.
    seed : int
        Seeds the minibatch shuffle (model initialisation is the caller's: seed torch first).
    on_epoch : callable(epoch) -> None, optional
        Called after each epoch, e.g. a pruning scheduler's ``step``.
    on_step : callable() -> None, optional
        Called after each optimiser step.

    Returns
    -------
    list of float
        Mean training loss of each epoch.
    """
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr,
                                 weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    n = data.x_train.shape[0]
    losses = []
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for start in range(0, n, batch_size):
            batch = order[start:start + batch_size]
            optimiser.zero_grad()
            loss = loss_fn(model(data.x_train[batch]), data.y_train[batch])
            loss.backward()
            optimiser.step()
            if on_step is not None:
                on_step()
            total += float(loss.detach()) * batch.numel()
        losses.append(total / n)
        logger.debug("epoch %d: loss %.4f", epoch, losses[-1])
        if on_epoch is not None:
            on_epoch(epoch)
    model.eval()
    return losses


@torch.no_grad()
def evaluate(model, data):
    """Test accuracy of ``model`` on ``data.x_test``, a float in [0, 1]."""
    model.eval()
    predicted = model(data.x_test).argmax(dim=1)
    return float((predicted == data.y_test).float().mean())
