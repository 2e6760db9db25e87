"""The GEMM view of a layer: its weights as the matrix the core runs (DESIGN §2.1).

A Conv2d runs as a loop nest over output pixels whose kernel is a matrix with rows = output
channels and columns ``j = (ky·kw + kx)·Cp + c``: tap-major, **channel fastest**, input
channels padded to ``Cp = V·⌈C_in/V⌉``. Column ``j`` reads bank ``j mod V = c mod V``, so the
bank of a weight depends on its input channel only, and the GS rule (no bank holds more than P
kept weights of a row group) is a rule on channels. The columns of the padding channels, and
for a grouped convolution the columns of the other groups' channels, are *structural zeros*:
no weight lands there, and a pruner must never keep them. A grouped convolution is therefore
block-diagonal: output channel ``o`` of group ``g = o // (C_out/groups)`` has candidates only
at the channels ``g·C_in/groups … (g+1)·C_in/groups − 1`` (depthwise: channel ``o // m`` for
a channel multiplier ``m``).

A Linear layer is the one-pixel, one-tap case and its GEMM view is its weight, columns
unpadded (padding columns would be structural zeros in banks ``col mod V`` that change
nothing).

>>> from torch import nn
>>> layout = gemm_layout(nn.Conv2d(5, 4, 3, groups=1), lanes=4)
>>> layout.shape, layout.padded_channels, layout.taps
((4, 72), 8, 9)
>>> int(layout.candidates().sum()) == 4 * 5 * 9
True
"""

from dataclasses import dataclass

import numpy as np
from torch import nn

from ..errors import ShapeError

__all__ = ["GemmLayout", "gemm_layout", "gemm_view", "from_gemm_view", "prunable_layers"]


def prunable_layers(model):
    """``(name, module)`` of every ``nn.Linear`` and ``nn.Conv2d`` in ``model`` (``""`` for the
    model itself)."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv2d))]


def _dense_weight(module):
    """The weight before masking (``weight_orig`` of a pruned module)."""
    return module.weight_orig if hasattr(module, "weight_orig") else module.weight


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ShapeError(f"{name} must be a positive integer, not {value!r}")
    return int(value)


@dataclass(frozen=True)
class GemmLayout:
    """Where each weight of a layer sits in its GEMM view.

    Parameters
    ----------
    out_channels, in_channels : int
        Rows of the view, and the input channels C (for a Linear: its input features).
    lanes : int
        V; the view's columns are padded per tap to ``Cp = V·⌈C/V⌉`` channels when
        ``pad_channels``.
    kernel : (int, int)
        (kh, kw): the taps, raster order.
    groups : int
        Convolution groups (divides both channel counts); ``in_channels`` = groups is
        depthwise.
    pad_channels : bool
        Pad the channels of every tap to a multiple of V (a convolution); a Linear layer's
        view is unpadded.
    weight_shape : tuple, optional
        Shape of the torch weight (default ``(C_out, C_in/groups, kh, kw)``); the weights, in
        torch's row-major order, are ``(o, c, ky, kx)`` with c the channel inside the group.

    Attributes
    ----------
    shape : (int, int)
        (rows, columns) of the view: ``(C_out, kh·kw·Cp)``.
    """

    out_channels: int
    in_channels: int
    lanes: int
    kernel: tuple = (1, 1)
    groups: int = 1
    pad_channels: bool = True
    weight_shape: tuple = None

    def __post_init__(self):
        for name in ("out_channels", "in_channels", "lanes", "groups"):
            _positive(name.replace("_", " ").capitalize(), getattr(self, name))
        kernel = tuple(int(_positive("Kernel size", k)) for k in self.kernel)
        if len(kernel) != 2:
            raise ShapeError(f"Kernel must be (height, width), not {self.kernel!r}")
        object.__setattr__(self, "kernel", kernel)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ShapeError(f"Groups must divide the input and output channels "
                             f"({self.in_channels}, {self.out_channels}), not {self.groups}")
        natural = (self.out_channels, self.in_per_group, *kernel)
        shape = natural if self.weight_shape is None else tuple(self.weight_shape)
        if int(np.prod(shape)) != int(np.prod(natural)):
            raise ShapeError(f"Weight shape must hold {natural} weights, not {shape}")
        object.__setattr__(self, "weight_shape", shape)

    @property
    def taps(self):
        return self.kernel[0] * self.kernel[1]

    @property
    def in_per_group(self):
        return self.in_channels // self.groups

    @property
    def out_per_group(self):
        return self.out_channels // self.groups

    @property
    def padded_channels(self):
        """Cp: the channels of one tap in the view."""
        if not self.pad_channels:
            return self.in_channels
        return -(-self.in_channels // self.lanes) * self.lanes

    @property
    def shape(self):
        return (self.out_channels, self.taps * self.padded_channels)

    def columns(self):
        """The view column of every weight, shaped (C_out, C_in/groups, kh, kw)."""
        o, c, t = np.meshgrid(np.arange(self.out_channels), np.arange(self.in_per_group),
                              np.arange(self.taps), indexing="ij")
        channel = (o // self.out_per_group) * self.in_per_group + c
        return (t * self.padded_channels + channel).reshape(
            self.out_channels, self.in_per_group, *self.kernel)

    def _flat(self):
        rows = np.repeat(np.arange(self.out_channels), self.in_per_group * self.taps)
        return rows, self.columns().reshape(-1)

    def candidates(self):
        """(rows, cols) bool: True where a weight of the layer lands; False at the structural
        zeros (padding channels, other groups' channels)."""
        allowed = np.zeros(self.shape, dtype=bool)
        allowed[self._flat()] = True
        return allowed

    def banks(self):
        """Bank of every view column: ``column mod V`` (the input channel mod V)."""
        return np.arange(self.shape[1]) % self.lanes

    def to_gemm(self, weight):
        """The view of ``weight`` (anything with the layer's weight count, in torch order);
        structural zeros are 0 (False for a bool array)."""
        weight = np.asarray(weight)
        if weight.size != int(np.prod(self.weight_shape)):
            raise ShapeError(f"Weight must have shape {self.weight_shape}, not {weight.shape}")
        view = np.zeros(self.shape, dtype=weight.dtype)
        view[self._flat()] = weight.reshape(-1)
        return view

    def to_weight(self, view):
        """Inverse of :meth:`to_gemm`: the torch-shaped weight (``weight_shape``) of a view.

        Raises :class:`ShapeError` if ``view`` has the wrong shape or a nonzero structural
        zero (a mask that keeps a column no weight maps to)."""
        view = np.asarray(view)
        if view.shape != self.shape:
            raise ShapeError(f"GEMM view must have shape {self.shape}, not {view.shape}")
        outside = view.astype(bool) & ~self.candidates()
        if outside.any():
            row, col = (int(v[0]) for v in np.nonzero(outside))
            raise ShapeError(f"GEMM view keeps row {row}, column {col} (tap "
                             f"{col // self.padded_channels}, channel "
                             f"{col % self.padded_channels}), which no weight of the layer "
                             f"maps to")
        return view[self._flat()].reshape(self.weight_shape)


def gemm_layout(module, lanes, *, input_view=None):
    """The :class:`GemmLayout` of an ``nn.Conv2d`` or ``nn.Linear`` for ``lanes`` banks.

    ``input_view`` (C, H, W), Linear only: the layer reads a flattened (C, H, W) tensor, so
    the core runs it as a convolution whose kernel covers the input (DESIGN §2.1: a
    Flatten → Linear); its view then has columns ``(h·W + w)·Cp + c``.
    """
    if isinstance(module, nn.Conv2d):
        if input_view is not None:
            raise ShapeError("Input view applies to a Linear layer only, not a Conv2d")
        return GemmLayout(module.out_channels, module.in_channels, lanes,
                          tuple(module.kernel_size), module.groups,
                          weight_shape=tuple(_dense_weight(module).shape))
    if isinstance(module, nn.Linear):
        shape = tuple(_dense_weight(module).shape)
        if input_view is None:
            return GemmLayout(module.out_features, module.in_features, lanes,
                              pad_channels=False, weight_shape=shape)
        channels, height, width = (int(v) for v in input_view)
        if channels * height * width != module.in_features:
            raise ShapeError(f"Input view must hold the layer's {module.in_features} input "
                             f"features, not {tuple(input_view)}")
        return GemmLayout(module.out_features, channels, lanes, (height, width),
                          weight_shape=shape)
    raise ShapeError(f"Layer must be an nn.Linear or nn.Conv2d, not {type(module).__name__}")


def gemm_view(module, lanes=None, *, input_view=None):
    """The layer's weight (before any mask) as a float32 numpy matrix.

    With ``lanes``: the GEMM view the core runs (:class:`GemmLayout`; a Conv2d has
    ``kh·kw·Cp`` columns, channel fastest, structural zeros at padding channels and other
    groups' channels). Without: torch's own ``weight.reshape(C_out, -1)``, columns (channel in
    group, kh, kw) — the layout of ``weight_mask.reshape(C_out, -1)``; the same matrix for a
    Linear layer.
    """
    weight = _dense_weight(module).detach().cpu().numpy().astype(np.float32)
    if lanes is None:
        if input_view is not None:
            raise ShapeError("Input view needs the lane count")
        return weight.reshape(weight.shape[0], -1)
    return gemm_layout(module, lanes, input_view=input_view).to_gemm(weight)


def from_gemm_view(module, view, lanes, *, input_view=None):
    """Inverse of :func:`gemm_view`: the torch-shaped numpy array (the weight's shape) of a
    view (values or a mask); raises :class:`ShapeError` if it keeps a structural zero."""
    return gemm_layout(module, lanes, input_view=input_view).to_weight(view)
