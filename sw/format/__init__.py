"""The GS compact format: sparse weight matrices as conflict-free groups of V lanes
(:class:`GSMatrix`, the ``.gsf`` file), the weight codes and the memory-word codec.

Layer: imports :mod:`gsaccel.hw` and :mod:`gsaccel.sw.errors` only.
"""

from .matrix import (PATTERNS, ENCODINGS, GSMatrix, check_pattern, pow2_encode, pow2_decode,
                     GSF_MAGIC, GSF_VERSION, seal, check_sealed)
from .words import word_fields, pack_word, unpack_word

__all__ = [
    "PATTERNS", "ENCODINGS", "GSMatrix", "check_pattern", "pow2_encode", "pow2_decode",
    "GSF_MAGIC", "GSF_VERSION", "seal", "check_sealed", "word_fields", "pack_word",
    "unpack_word",
]
