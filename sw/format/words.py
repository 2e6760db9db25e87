"""Memory words: packing nested field values into the bit layouts of :mod:`gsaccel.hw.layouts`.

The device image (:mod:`gsaccel.sw.compile.image`) packs with these functions and the golden
model (:mod:`gsaccel.sw.golden`) unpacks with them, so both read the words the hardware reads.
"""

import numpy as np
from amaranth.hdl import Shape
from amaranth.lib import data

__all__ = ["word_fields", "pack_word", "unpack_word"]

def _width(shape):
    return shape.size if isinstance(shape, data.Layout) else Shape.cast(shape).width


def word_fields(layout, prefix=(), offset=0):
    """Flatten a layout into ``(path, offset, width, signed)`` leaves, LSB first."""
    if isinstance(layout, data.StructLayout):
        leaves = []
        for name, fld in layout:
            leaves += word_fields(fld.shape, prefix + (name,), offset + fld.offset)
        return leaves
    if isinstance(layout, data.ArrayLayout):
        elem = _width(layout.elem_shape)
        leaves = []
        for index in range(layout.length):
            leaves += word_fields(layout.elem_shape, prefix + (index,), offset + index * elem)
        return leaves
    shape = Shape.cast(layout)
    return [(prefix, offset, shape.width, shape.signed)]


def pack_word(layout, value):
    """An int holding ``value`` (nested dicts/lists/ints/enums) in ``layout``'s bits.

    Missing fields are 0; a value that does not fit its field raises ValueError.
    """
    word = 0
    for path, offset, width, is_signed in word_fields(layout):
        item = value
        for key in path:
            if isinstance(item, dict):
                item = item.get(key, 0)
            elif isinstance(item, (list, tuple, np.ndarray)):
                item = item[key]
            # else: a missing struct or array reads as zero all the way down
        item = int(getattr(item, "value", item))
        lo, hi = (-(1 << (width - 1)), (1 << (width - 1))) if is_signed else (0, 1 << width)
        if not lo <= item < hi:
            raise ValueError(f"Field {'.'.join(map(str, path))} must be in [{lo}, {hi}), "
                             f"not {item}")
        word |= (item & ((1 << width) - 1)) << offset
    return word


def unpack_word(layout, word):
    """Nested dicts/lists of ints from a word of ``layout``; the inverse of :func:`pack_word`."""
    def build(shape, offset):
        if isinstance(shape, data.StructLayout):
            return {name: build(fld.shape, offset + fld.offset) for name, fld in shape}
        if isinstance(shape, data.ArrayLayout):
            elem = _width(shape.elem_shape)
            return [build(shape.elem_shape, offset + i * elem) for i in range(shape.length)]
        cast = Shape.cast(shape)
        value = (word >> offset) & ((1 << cast.width) - 1)
        if cast.signed and value >> (cast.width - 1):
            value -= 1 << cast.width
        return value
    return build(layout, 0)
