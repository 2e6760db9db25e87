"""Tensors in the activation scratchpad, and the loop nest of a layer over them (DESIGN §2.1).

A tensor (H, W, C) is stored HWC, channel-banked: channels are padded to ``Cp = V·⌈C/V⌉``,
and a zero *halo* of ``pad`` pixels surrounds it when its consumer pads. Element (h, w, c)
sits in bank ``c mod V`` at bank address::

    base + ((h + pad) · Wp + (w + pad)) · Cp/V + c div V        Wp = W + 2·pad

so the bank depends on the channel only. A layer's weights are a GEMM view (rows = output
channels, columns ``j = tap · Cp + c``, channel fastest): column ``j`` is in bank ``j mod V``,
and a group word stores for each bank the *offset* of its column from the pixel's base,
``(ky·dil·Wp + kx·dil)·Cp/V + c div V``. The core runs the layer as a loop nest over output
pixels (oy, ox) in raster order, replaying the layer's groups at
``bank address = in_base + offset[bank]``. A Linear layer is the one-pixel case, and a
Flatten → Linear is a "convolution" whose kernel covers the whole input.
"""

from dataclasses import dataclass

import numpy as np

from ..errors import ShapeError

__all__ = ["TensorGeometry", "LoopNest", "conv_output_size"]


def _positive(name, value, minimum=1):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ShapeError(f"{name} must be an integer of at least {minimum}, not {value!r}")
    return int(value)


def conv_output_size(size, kernel, stride=1, padding=0, dilation=1):
    """Output length of a convolution or pooling along one axis (torch's formula)."""
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    if out < 1:
        raise ShapeError(f"A kernel of {kernel} (dilation {dilation}, padding {padding}) does "
                         f"not fit an input of {size}")
    return out


@dataclass(frozen=True)
class TensorGeometry:
    """Where a (height, width, channels) tensor lives in the V-bank scratchpad.

    Parameters
    ----------
    height, width, channels : int
    lanes : int
        V, the number of banks.
    pad : int
        Zero halo around the tensor, in pixels (the largest padding of its consumers).
    base : int
        Bank address of the halo's first pixel (the same in every bank).
    """

    height: int
    width: int
    channels: int
    lanes: int
    pad: int = 0
    base: int = 0

    def __post_init__(self):
        for name in ("height", "width", "channels", "lanes"):
            _positive(name.capitalize(), getattr(self, name))
        _positive("Pad", self.pad, 0)
        _positive("Base", self.base, 0)

    @property
    def padded_channels(self):
        """Cp: channels rounded up to a multiple of V."""
        return -(-self.channels // self.lanes) * self.lanes

    @property
    def pixel_words(self):
        """Bank words per pixel: Cp / V."""
        return self.padded_channels // self.lanes

    @property
    def padded_width(self):
        return self.width + 2 * self.pad

    @property
    def padded_height(self):
        return self.height + 2 * self.pad

    @property
    def row_words(self):
        """Bank words per row of pixels, halo included."""
        return self.padded_width * self.pixel_words

    @property
    def words(self):
        """Bank words the tensor occupies in each bank, halo included."""
        return self.padded_height * self.row_words

    @property
    def end(self):
        """First bank address past the tensor."""
        return self.base + self.words

    def at(self, base):
        """The same tensor placed at bank address ``base``."""
        return TensorGeometry(self.height, self.width, self.channels, self.lanes, self.pad,
                              base)

    def origin(self):
        """Bank address of pixel (0, 0) (inside the halo)."""
        return self.base + (self.pad * self.padded_width + self.pad) * self.pixel_words

    def element_addresses(self):
        """(bank, bank address) of every element, each shaped (H, W, C)."""
        h, w, c = np.meshgrid(np.arange(self.height), np.arange(self.width),
                              np.arange(self.channels), indexing="ij")
        address = (self.base + ((h + self.pad) * self.padded_width + (w + self.pad))
                   * self.pixel_words + c // self.lanes)
        return c % self.lanes, address

    def scatter(self, values, banks):
        """Write an (H, W, C) array into ``banks`` (a (V, depth) array), halo and padding
        channels zeroed: what the host sends for an input tensor."""
        values = np.asarray(values)
        if values.shape != (self.height, self.width, self.channels):
            raise ShapeError(f"Tensor must have shape {(self.height, self.width, self.channels)}"
                             f", not {values.shape}")
        if self.end > banks.shape[1]:
            raise ShapeError(f"Tensor needs bank words [{self.base}, {self.end}), the "
                             f"scratchpad has {banks.shape[1]}")
        banks[:, self.base:self.end] = 0
        bank, address = self.element_addresses()
        banks[bank, address] = values
        return banks

    def gather(self, banks):
        """The (H, W, C) tensor read back from ``banks``."""
        bank, address = self.element_addresses()
        return banks[bank, address]

    def padded(self, banks):
        """The (Hp, Wp, Cp) array the tensor occupies, halo and padding channels included."""
        region = banks[:, self.base:self.end]                       # (V, words)
        region = region.reshape(self.lanes, self.padded_height, self.padded_width,
                                self.pixel_words)
        return region.transpose(1, 2, 3, 0).reshape(self.padded_height, self.padded_width,
                                                    self.padded_channels)


@dataclass(frozen=True)
class LoopNest:
    """A layer's loop over output pixels, and where its kernel taps fall in the input.

    Parameters
    ----------
    source, dest : TensorGeometry
        Input and output tensors; ``dest.channels`` is the layer's output channels.
    kernel : (int, int)
        Kernel height and width (taps).
    stride, dilation : (int, int)
    padding : (int, int)
        Must not exceed ``source.pad`` (the halo provides the padding's zeros).
    """

    source: TensorGeometry
    dest: TensorGeometry
    kernel: tuple = (1, 1)
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)

    def __post_init__(self):
        for name in ("kernel", "stride", "dilation"):
            pair = tuple(int(v) for v in getattr(self, name))
            for value in pair:
                _positive(name.capitalize(), value)
            object.__setattr__(self, name, pair)
        object.__setattr__(self, "padding", tuple(int(v) for v in self.padding))
        if self.source.lanes != self.dest.lanes:
            raise ShapeError(f"Source and destination must have the same lanes, not "
                             f"{self.source.lanes} and {self.dest.lanes}")
        if max(self.padding) > self.source.pad or min(self.padding) < 0:
            raise ShapeError(f"Padding {self.padding} needs a halo of {max(self.padding)} "
                             f"pixels; the source tensor has {self.source.pad}")
        expected = tuple(conv_output_size(n, k, s, p, d) for n, k, s, p, d in zip(
            (self.source.height, self.source.width), self.kernel, self.stride, self.padding,
            self.dilation))
        if expected != (self.dest.height, self.dest.width):
            raise ShapeError(f"Output must be {expected[0]}x{expected[1]} pixels, not "
                             f"{self.dest.height}x{self.dest.width}")

    @property
    def taps(self):
        return self.kernel[0] * self.kernel[1]

    @property
    def pixels(self):
        return self.dest.height * self.dest.width

    @property
    def columns(self):
        """Columns of the GEMM view: taps · Cp of the source."""
        return self.taps * self.source.padded_channels

    def tap_offsets(self):
        """Bank-address offset of each tap (raster order) from the pixel's input base."""
        src = self.source
        ky, kx = np.meshgrid(np.arange(self.kernel[0]), np.arange(self.kernel[1]),
                             indexing="ij")
        # The first tap of output (0, 0) reads padded pixel (pad - padding) on each axis.
        skew_y, skew_x = src.pad - self.padding[0], src.pad - self.padding[1]
        rows = skew_y + ky.ravel() * self.dilation[0]
        cols = skew_x + kx.ravel() * self.dilation[1]
        return (rows * src.padded_width + cols) * src.pixel_words

    def column_offsets(self):
        """Bank-address offset of every GEMM column: tap offset + ``c div V``."""
        cp = self.source.padded_channels
        j = np.arange(self.columns)
        return self.tap_offsets()[j // cp] + (j % cp) // self.source.lanes

    @property
    def src_base(self):
        """``in_base`` of output pixel (0, 0)."""
        return self.source.base

    @property
    def in_pixel_step(self):
        return self.stride[1] * self.source.pixel_words

    @property
    def in_row_step(self):
        return self.stride[0] * self.source.row_words

    @property
    def dst_base(self):
        """``out_base`` of output pixel (0, 0)."""
        return self.dest.origin()

    @property
    def out_pixel_step(self):
        return self.dest.pixel_words

    @property
    def out_row_step(self):
        return self.dest.row_words

    def in_bases(self):
        """``in_base`` of every output pixel, raster order."""
        oy, ox = np.divmod(np.arange(self.pixels), self.dest.width)
        return self.src_base + oy * self.in_row_step + ox * self.in_pixel_step

    def out_bases(self):
        """``out_base`` of every output pixel, raster order."""
        oy, ox = np.divmod(np.arange(self.pixels), self.dest.width)
        return self.dst_base + oy * self.out_row_step + ox * self.out_pixel_step
