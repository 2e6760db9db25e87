"""The runtime: the frame protocol, transports (Verilator pipe, serial), the
:class:`Device` host API over them, the ``golden``/``sim``/``serial:PORT`` targets and
:func:`offload`.

Layer: imports :mod:`gsaccel.sw.compile`, :mod:`gsaccel.sim`, :mod:`gsaccel.boards` and below.
"""

from .protocol import (Frame, FrameParser, encode_frame, frame_crc, MAX_FRAME_PAYLOAD,
                       FRAME_OVERHEAD, word_size, words_to_bytes, bytes_to_words,
                       hello_payload, parse_hello, write_payload, parse_write, max_write_words,
                       read_payload, parse_read, max_read_words, run_payload, parse_run,
                       counters_payload, parse_counters, error_payload, parse_error)
from .transport import Transport
from .device import Accelerator, Device, GoldenDevice
from .targets import connect, parse_target, TARGETS
from .offload import offload, OffloadedModel

__all__ = [
    "Frame", "FrameParser", "encode_frame", "frame_crc", "MAX_FRAME_PAYLOAD",
    "FRAME_OVERHEAD", "word_size", "words_to_bytes", "bytes_to_words", "hello_payload",
    "parse_hello", "write_payload", "parse_write", "max_write_words", "read_payload",
    "parse_read", "max_read_words", "run_payload", "parse_run", "counters_payload",
    "parse_counters", "error_payload", "parse_error", "Transport", "Accelerator", "Device",
    "GoldenDevice", "connect", "parse_target", "TARGETS", "offload", "OffloadedModel",
]
