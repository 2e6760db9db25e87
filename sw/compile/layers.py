"""Device-layer records of a natively compiled program (DESIGN §2.1): what the core runs, one
record per layer, in program order.

Plain dataclasses that the image builder turns into memory words and that the golden model
runs (:meth:`run` of each record, on a ``(V, depth)`` int8 scratchpad, in place):

* :class:`GSLayer`: a packed :class:`~gsaccel.sw.format.GSMatrix` replayed as a loop nest
  over output pixels (:class:`~gsaccel.sw.format.geometry.LoopNest`), ``op`` SUM or MAX, bias,
  shift and ReLU; convolutions, Linear layers, pooling and residual additions are all this;
* :class:`BasisLayer`: the SmartDeal basis unit, ``z = B·x`` per 3-element chunk of a
  one-pixel tensor;
* :class:`ClearLayer`: zero bank words ``[base, base + words)`` in every bank, before the
  producer of a tensor whose halo (or chunk padding) is read, since memory reuse leaves stale
  data there.

A residual addition reads two tensors at once; :class:`ResidualNest` is the loop nest whose
two taps sit at the two operands' bases.
"""

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..errors import ShapeError
from ..format import GSMatrix
from ..format.geometry import LoopNest, TensorGeometry
from ..golden.loopnest import MAX, OPS, SUM, gs_loop_layer
from ..golden.numerics import requantize

__all__ = ["SUM", "MAX", "ResidualNest", "InputTransform", "GSLayer", "BasisLayer",
           "ClearLayer", "DEVICE_LAYER_KINDS"]


@dataclass(frozen=True)
class ResidualNest(LoopNest):
    """The loop nest of an addition: one output pixel per input pixel, one tap per operand.

    ``source`` is the operands' common geometry placed at bank address 0 (they are allocated
    with identical geometry apart from ``base``), and tap ``i`` reads operand ``i``: its
    offset from the pixel's ``in_base`` is ``operand_bases[i]`` plus the halo skew, so the
    GEMM view has ``2·Cp`` columns (tap-major, channel fastest) and a pixel's two inputs are
    ``in_base + operand_bases[i] + c div V``. Offsets are bank addresses, below the
    scratchpad's depth: the same words the hardware's (wrapping) address adders compute with
    ``in_base = A.base`` and offset ``(B.base − A.base) mod depth``.
    """

    operand_bases: tuple = ()

    def __post_init__(self):
        super().__post_init__()
        bases = tuple(int(b) for b in self.operand_bases)
        object.__setattr__(self, "operand_bases", bases)
        if not bases or min(bases) < 0:
            raise ShapeError(f"Operand bases must be one or more bank addresses, not "
                             f"{self.operand_bases!r}")
        if self.source.base != 0:
            raise ShapeError(f"An addition's source geometry sits at base 0 (the taps carry "
                             f"the operands' bases), not {self.source.base}")
        if self.kernel != (1, 1) or self.stride != (1, 1) or self.padding != (0, 0):
            raise ShapeError("An addition runs one tap per operand at each pixel: kernel, "
                             "stride 1x1, padding 0")

    @property
    def taps(self):
        return len(self.operand_bases)

    def tap_offsets(self):
        skew = self.source.origin()            # pixel (0, 0) of the source, halo skipped
        return np.asarray(self.operand_bases, dtype=np.int64) + skew


@dataclass(frozen=True)
class InputTransform:
    """What the host does to the model's input before it writes it into the scratchpad.

    ``kind="none"``: the (C, H, W) input (a flat (F,) input is (F, 1, 1)) is stored HWC, its
    channels zero-padded to ``channels`` (a SmartDeal first layer reads whole 3-element
    chunks). ``kind="im2col"``: the first convolution's patches are sent instead — a
    (Ho, Wo, kh·kw·C) tensor whose channel ``(ky·kw + kx)·C + c`` is input channel ``c`` at tap
    (ky, kx) of output pixel (oy, ox), zero outside the image — and that convolution runs as a
    1x1 convolution over kh·kw·C channels. ``kind="flatten"``: an image read only by Linear
    layers (after a flatten) is sent flat, one pixel of C·H·W channels in torch's CHW order,
    so that its C channels do not each take a bank word per pixel.
    """

    kind: str = "none"
    kernel: tuple = (1, 1)
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    channels: int = None

    KINDS: ClassVar[tuple] = ("none", "im2col", "flatten")

    def __post_init__(self):
        if self.kind not in self.KINDS:
            raise ShapeError(f"Input transform must be one of {', '.join(self.KINDS)}, not "
                             f"{self.kind!r}")

    def apply(self, x):
        """(N, H', W', C') float64, HWC, of a batch in the model's layout ((N, C, H, W) or
        (N, F))."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 2:
            x = x[:, :, None, None]
        if x.ndim != 4:
            raise ShapeError(f"Input must be a batch (N, C, H, W) or (N, F), not shape "
                             f"{x.shape}")
        if self.kind == "im2col":
            x = im2col(x, self.kernel, self.stride, self.padding, self.dilation)
        elif self.kind == "flatten":
            x = x.reshape(len(x), -1, 1, 1)
        hwc = x.transpose(0, 2, 3, 1)
        if self.channels is not None and self.channels > hwc.shape[3]:
            hwc = np.pad(hwc, ((0, 0), (0, 0), (0, 0), (0, self.channels - hwc.shape[3])))
        return hwc


def im2col(x, kernel, stride, padding, dilation):
    """(N, kh·kw·C, Ho, Wo) patches of an (N, C, H, W) batch, channel ``tap·C + c`` (tap in
    raster order), zero padding; the same convolution geometry as ``torch.nn.Conv2d``."""
    x = np.asarray(x)
    n, c, h, w = x.shape
    (kh, kw), (sy, sx), (py, px), (dy, dx) = kernel, stride, padding, dilation
    padded = np.pad(x, ((0, 0), (0, 0), (py, py), (px, px)))
    ho = (h + 2 * py - dy * (kh - 1) - 1) // sy + 1
    wo = (w + 2 * px - dx * (kw - 1) - 1) // sx + 1
    taps = []
    for ky in range(kh):
        for kx in range(kw):
            taps.append(padded[:, :, ky * dy:ky * dy + sy * (ho - 1) + 1:sy,
                               kx * dx:kx * dx + sx * (wo - 1) + 1:sx])
    return np.concatenate(taps, axis=1)


@dataclass
class GSLayer:
    """A loop-nest layer on the engine.

    Attributes
    ----------
    name, torch_op : str
        The device layer's name (the graph op's, ``.cprime`` for SmartDeal's C') and the torch
        operations it implements (``Conv2d+BatchNorm2d+ReLU``, ``MaxPool2d``, ``add``).
    matrix : GSMatrix
        The weights in the GEMM view of ``nest``: rows = output channels, columns
        ``tap·Cp + c`` of the source.
    bias : ndarray of int64, (rows,)
        In accumulator units.
    shift : int
        Requantiser shift, 0..31.
    relu : bool
    op : str
        ``"sum"`` or ``"max"`` (max pooling: the largest kept product, e = 1).
    nest : LoopNest
        Source and destination geometries (bases included), kernel, stride, padding,
        dilation; a :class:`ResidualNest` for an addition.
    inputs : tuple of str
        Tensors read (an addition: its two operands, tap order).
    output : str
        Tensor written.
    """

    name: str
    torch_op: str
    matrix: GSMatrix
    bias: np.ndarray
    shift: int
    relu: bool
    op: str
    nest: LoopNest
    inputs: tuple
    output: str

    kind: ClassVar[str] = "gs"

    def __post_init__(self):
        if self.op not in OPS:
            raise ShapeError(f"Operation must be one of {', '.join(OPS)}, not {self.op!r}")
        if self.matrix.exp_bias:
            # Fractional powers of two: the codes are the weights / 2**exp_bias, so the
            # requantiser shifts exp_bias less; the device only ever sees plain codes.
            self.shift = int(self.shift) - self.matrix.exp_bias
            self.matrix = dataclasses.replace(self.matrix, exp_bias=0)
        if not 0 <= int(self.shift) <= 31:
            raise ShapeError(f"Shift must be in [0, 31], not {self.shift!r}")
        self.bias = np.asarray(self.bias, dtype=np.int64)
        rows, cols = self.matrix.shape
        if self.bias.shape != (rows,):
            raise ShapeError(f"Bias must have shape ({rows},), not {self.bias.shape}")
        if (rows, cols) != (self.nest.dest.channels, self.nest.columns):
            raise ShapeError(f"Matrix of layer {self.name!r} must be {self.nest.dest.channels}"
                             f" x {self.nest.columns} (output channels x taps·Cp), not "
                             f"{rows} x {cols}")

    def run(self, acts, acc_width=24):
        """Run the layer on the scratchpad ``acts`` (golden loop nest), in place."""
        return gs_loop_layer(self.matrix, self.nest, acts, self.bias, self.shift, self.relu,
                             self.op, acc_width)


@dataclass
class BasisLayer:
    """The SmartDeal basis unit: ``z[3g:3g+3] = requantize(B · x[3g:3g+3], shift, relu)`` for
    ``n_chunks`` chunks of a one-pixel source tensor (elements ``0 .. 3·n_chunks − 1``, bank
    ``c mod V`` at ``base + c div V``), written to the one-pixel ``dest``.

    Attributes
    ----------
    basis : ndarray of int64, (3, 3)
        int8 values.
    n_chunks : int
    source, dest : TensorGeometry
        One pixel each, no halo, at least ``3·n_chunks`` channels.
    """

    name: str
    torch_op: str
    basis: np.ndarray
    n_chunks: int
    source: TensorGeometry
    dest: TensorGeometry
    shift: int
    relu: bool
    inputs: tuple
    output: str

    kind: ClassVar[str] = "basis"

    def __post_init__(self):
        self.basis = np.asarray(self.basis, dtype=np.int64)
        if self.basis.shape != (3, 3) or self.basis.min() < -128 or self.basis.max() > 127:
            raise ShapeError(f"Basis must be a 3x3 int8 matrix, not {self.basis!r}")
        if not 0 <= int(self.shift) <= 31:
            raise ShapeError(f"Shift must be in [0, 31], not {self.shift!r}")
        for what in ("source", "dest"):
            geometry = getattr(self, what)
            if (geometry.height, geometry.width, geometry.pad) != (1, 1, 0) or \
                    geometry.channels < 3 * self.n_chunks:
                raise ShapeError(f"Basis {what} must be one pixel without halo and hold "
                                 f"{3 * self.n_chunks} elements, not {geometry}")

    def _addresses(self, geometry):
        c = np.arange(3 * self.n_chunks)
        return c % geometry.lanes, geometry.base + c // geometry.lanes

    def run(self, acts, acc_width=24):
        bank, address = self._addresses(self.source)
        chunks = acts[bank, address].astype(np.int64).reshape(self.n_chunks, 3)
        z = requantize((chunks @ self.basis.T).ravel(), self.shift, self.relu, acc_width)
        bank, address = self._addresses(self.dest)
        acts[bank, address] = z
        return acts


@dataclass
class ClearLayer:
    """Zero bank words ``[base, base + words)`` in every bank: tensor ``tensor``'s region,
    before its producer writes it (its halo and unwritten padding then read as zeros)."""

    name: str
    tensor: str
    base: int
    words: int

    kind: ClassVar[str] = "clear"
    torch_op: ClassVar[str] = "clear"

    @property
    def output(self):
        """The tensor it prepares (for program walks; it reads nothing)."""
        return self.tensor

    @property
    def inputs(self):
        return ()

    def run(self, acts, acc_width=24):
        if self.base + self.words > acts.shape[1]:
            raise ShapeError(f"Clear of [{self.base}, {self.base + self.words}) exceeds the "
                             f"scratchpad's {acts.shape[1]} words")
        acts[:, self.base:self.base + self.words] = 0
        return acts


#: The record types of a native program, by ``kind``.
DEVICE_LAYER_KINDS = {cls.kind: cls for cls in (GSLayer, BasisLayer, ClearLayer)}
