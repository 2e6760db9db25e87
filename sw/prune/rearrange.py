"""Row rearrangement for 1×N pruning: the filter rearrangement of the 1×N paper (Lin et al.,
"1×N Pattern for Pruning Convolutional Neural Networks").

A 1×N block is V consecutive output rows × one input channel, and the V rows of a block keep
or lose that channel together. Which rows are consecutive is arbitrary for a hidden layer: its
output units can be reordered, and the input columns of the layer that reads them reordered to
match, without changing what the model computes. :func:`gsaccel.sw.prune.rearrange_rows`
chooses that order so that the rows of each row group want the same input channels, and so
lose less to the shared keep decision than rows in their training order (which have nothing
in common).

The hidden units are reordered in place, before pruning (``weight`` is permuted, not a mask).
"""

import math

import numpy as np
import torch
from torch import nn

from ..errors import PatternError, UnsupportedError
from .view import prunable_layers

__all__ = ["row_groups"]

# Modules that act on each channel (or unit) alone: a permutation of their input's channels
# permutes their output's the same way. BatchNorm has per-channel parameters, permuted too.
_CHANNELWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh,
                nn.Hardtanh, nn.Hardswish, nn.Dropout, nn.Identity, nn.AvgPool2d, nn.MaxPool2d,
                nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def _block_objective(importance, order, lanes, keep):
    """Importance kept when each row group of ``order`` keeps its ``keep`` best columns."""
    total = 0.0
    ordered = importance[order]
    for start in range(0, len(order), lanes):
        sums = ordered[start:start + lanes].sum(axis=0)
        total += float(np.sort(sums)[::-1][:keep].sum())
    return total


def row_groups(importance, lanes, keep, *, iterations=10):
    """A row order whose runs of ``lanes`` rows share their important columns.

    Maximises Σ over row groups of the sum of the group's ``keep`` largest column sums of
    ``importance`` (rows × columns, non-negative): what a 1×N mask that keeps ``keep``
    columns per row group retains. Greedy construction (each group grows from the heaviest
    row left by the row that adds most to its best ``keep`` columns), then rounds of
    balanced reassignment (each row to the group whose current column set it feeds most,
    groups filled to V rows) while the objective improves.

    Parameters
    ----------
    importance : ndarray (rows, columns)
        E.g. |W| per 1×N block, each row normalised to sum 1 (every row counts alike).
    lanes : int
        V, rows per group (the last group takes the remainder).
    keep : int
        Columns each group keeps.
    iterations : int
        Reassignment rounds at most.

    Returns
    -------
    ndarray (rows,) int64
        The rows in their new order: group g is ``order[g·V : (g+1)·V]``.
    """
    importance = np.asarray(importance, dtype=np.float64)
    rows, cols = importance.shape
    keep = min(max(int(keep), 1), cols)
    n_groups = -(-rows // lanes)
    left = list(np.argsort(-importance.sum(axis=1), kind="stable"))
    order = []
    while left:
        group = [left.pop(0)]
        sums = importance[group[0]].copy()
        while len(group) < lanes and left:
            candidates = np.array(left)
            kept = -np.sort(-(sums[None, :] + importance[candidates]), axis=1)[:, :keep]
            best = int(candidates[int(np.argmax(kept.sum(axis=1)))])
            group.append(best)
            left.remove(best)
            sums += importance[best]
        order.extend(group)
    order = np.array(order, dtype=np.int64)
    best_value = _block_objective(importance, order, lanes, keep)
    assign = np.empty(rows, dtype=np.int64)
    assign[order] = np.arange(rows) // lanes
    capacity = np.full(n_groups, lanes)
    capacity[-1] = rows - lanes * (n_groups - 1)
    for _ in range(iterations):
        columns = np.zeros((n_groups, cols))
        for group in range(n_groups):
            top = np.argsort(-importance[assign == group].sum(axis=0), kind="stable")[:keep]
            columns[group, top] = 1.0
        gain = importance @ columns.T                       # rows × groups
        room = capacity.copy()
        new = np.full(rows, -1, dtype=np.int64)
        for flat in np.argsort(-gain, axis=None, kind="stable"):
            row, group = divmod(int(flat), n_groups)
            if new[row] < 0 and room[group] > 0:
                new[row] = group
                room[group] -= 1
        candidate = np.argsort(new, kind="stable")
        value = _block_objective(importance, candidate, lanes, keep)
        if value <= best_value + 1e-12:
            break
        assign, order, best_value = new, candidate, value
    return order


def _consumer(children, index):
    """(channel-wise modules in between, the Linear/Conv2d reading the output of
    ``children[index]``, whether a Flatten lies between), or None if something else does."""
    between, flattened = [], False
    for child in children[index + 1:]:
        if isinstance(child, _NORMS) or isinstance(child, _CHANNELWISE):
            between.append(child)
        elif isinstance(child, nn.Flatten) and not flattened:
            flattened = True
        elif isinstance(child, (nn.Linear, nn.Conv2d)):
            return between, child, flattened
        else:
            return None
    return None


def _is_pruned(module):
    return hasattr(module, "weight_mask") or getattr(module, "gsaccel_pattern", None) is not None


@torch.no_grad()
def _permute(producer, between, consumer, flattened, order):
    index = torch.as_tensor(order, device=producer.weight.device)
    producer.weight.copy_(producer.weight[index])
    if producer.bias is not None:
        producer.bias.copy_(producer.bias[index])
    for module in between:
        if isinstance(module, _NORMS):
            for name in ("weight", "bias", "running_mean", "running_var"):
                tensor = getattr(module, name, None)
                if tensor is not None:
                    tensor.copy_(tensor[index])
    weight = consumer.weight
    if flattened and isinstance(consumer, nn.Linear):
        # Flatten of (C, H, W): column c·H·W + p reads channel c.
        channels = len(order)
        view = weight.reshape(weight.shape[0], channels, -1)
        weight.copy_(view[:, index].reshape(weight.shape))
    else:
        weight.copy_(weight[:, index])


def _rearrange(model, selected, sparsity, lanes, iterations):
    """:func:`gsaccel.sw.prune.rearrange_rows` on checked arguments: ``selected`` holds the
    names of the layers that will be pruned."""
    if not isinstance(model, nn.Sequential):
        raise UnsupportedError(f"Row rearrangement follows the children of an nn.Sequential "
                               f"to the layer reading each output, not a "
                               f"{type(model).__name__}")
    names = {id(module): name for name, module in prunable_layers(model)}
    children = list(model.children())
    done = []
    for index, producer in enumerate(children):
        name = names.get(id(producer))
        if name not in selected or (isinstance(producer, nn.Conv2d) and producer.groups != 1):
            continue
        found = _consumer(children, index)
        if found is None:
            continue
        between, consumer, flattened = found
        if isinstance(consumer, nn.Conv2d) and (consumer.groups != 1 or flattened):
            continue
        rows = producer.weight.shape[0]
        if flattened and (isinstance(producer, nn.Linear) or consumer.in_features % rows):
            continue
        if not flattened and consumer.weight.shape[1] != rows:
            continue
        if rows <= lanes:
            continue                      # one row group: nothing to rearrange
        if _is_pruned(producer) or _is_pruned(consumer):
            raise PatternError(f"Layer {name} must be rearranged before it or the layer "
                               f"reading it is pruned")
        weight = producer.weight.detach().abs().double().cpu().numpy()
        importance = weight.reshape(rows, weight.shape[1], -1).sum(axis=2)
        importance = importance / np.maximum(importance.sum(axis=1, keepdims=True), 1e-30)
        channels = importance.shape[1]
        keep = channels - int(math.floor(sparsity * channels))
        order = row_groups(importance, lanes, keep, iterations=iterations)
        _permute(producer, between, consumer, flattened, order)
        done.append(name)
    return done
