"""The host ↔ device frame codec: pure functions and an incremental parser, no I/O.

A frame is ``SYNC | type u8 | seq u8 | length u16 LE | payload | crc32 u32 LE``; the CRC is
:func:`zlib.crc32` over type, seq, length and payload (``gsaccel.hw.layouts``). The device
answers every request with a frame of the same sequence number: ``ACK``, ``DATA`` or
``ERROR`` (one :class:`~gsaccel.hw.layouts.ErrorCode` byte).

Payloads of the requests (all integers little-endian):

========  ==============================================  =================================
type      request payload                                 reply
========  ==============================================  =================================
HELLO     (none)                                          DATA: ``HELLO_FORMAT``
WRITE     mem u8, addr u24, words                         ACK
READ      mem u8, addr u24, count u16                     DATA: count words
RUN       first layer u8, layer count u8                  DATA: 4 × u32 counters
========  ==============================================  =================================

RUN executes at most once: the device keeps the sequence number of the last RUN it started
and answers a RUN with that number by replaying its counters; HELLO clears it. So a resent
RUN keeps its number, and two RUNs in a row never share one (:class:`SequenceNumbers`).

A word of memory ``mem`` takes ``word_bytes(memory_layout(cfg, mem))`` bytes. Every function
here is shared by :class:`~gsaccel.sw.runtime.device.Device`, the golden device and the testbenches,
so there is one definition of the wire format on the host side.

>>> frame = encode_frame(FrameType.RUN, 7, run_payload(0, 3))
>>> frame.hex()
'a504070200000394a673ab'
>>> FrameParser().feed(b"junk" + frame)
[Frame(type=<FrameType.RUN: 4>, seq=7, payload=b'\\x00\\x03')]
"""

import struct
import zlib
from dataclasses import dataclass

from ...hw.config import ENCODINGS, CoreConfig
from ...hw.layouts import (ADDRESS_BYTES, COUNTER_NAMES, FRAME_CRC_BYTES, FRAME_HEADER_BYTES, FRAME_SYNC,
                           HELLO_FEATURE_BANK_HALVES, HELLO_FEATURE_BASIS,
                           HELLO_FEATURE_DEEP_PIPELINE, HELLO_FEATURE_LOOP_NEST,
                           HELLO_FEATURE_VECTOR_WRITER, HELLO_FORMAT,
                           HELLO_MAGIC, PROTOCOL_VERSION, ErrorCode, FrameType, Memory,
                           hello_payload, memory_depth, memory_layout, word_bytes)
from ..errors import FrameError

__all__ = [
    "Frame", "FrameParser", "frame_need", "SequenceNumbers", "encode_frame", "WRITE_HEADER_BYTES",
    "READ_BYTES", "MAX_ADDRESS", "request_header", "frame_crc", "MAX_FRAME_PAYLOAD", "FRAME_OVERHEAD",
    "word_size", "words_to_bytes", "bytes_to_words",
    "hello_payload", "parse_hello",
    "write_payload", "parse_write", "max_write_words",
    "read_payload", "parse_read", "max_read_words",
    "run_payload", "parse_run",
    "counters_payload", "parse_counters",
    "error_payload", "parse_error",
]

#: Largest length the u16 length field can carry.
MAX_FRAME_PAYLOAD = 0xFFFF

#: Bytes of a frame besides its payload: header and CRC.
FRAME_OVERHEAD = FRAME_HEADER_BYTES + FRAME_CRC_BYTES

_WRITE_HEADER = struct.Struct("<BHB")    # mem, addr (u24: low 16 bits, high 8 bits)
_READ = struct.Struct("<BHBH")           # mem, addr (u24), count
#: Payload bytes of a WRITE before its words, and of a READ.
WRITE_HEADER_BYTES = _WRITE_HEADER.size
READ_BYTES = _READ.size
#: Largest word address a WRITE or READ carries.
MAX_ADDRESS = (1 << 8 * ADDRESS_BYTES) - 1
_RUN = struct.Struct("<BB")              # first layer, layer count
_COUNTERS = struct.Struct("<" + "I" * len(COUNTER_NAMES))
_HELLO = struct.Struct(HELLO_FORMAT)


@dataclass(frozen=True)
class Frame:
    """One decoded frame; ``type`` is a :class:`FrameType` when known, else the raw byte."""
    type: int
    seq: int
    payload: bytes


def frame_crc(type, seq, payload):
    """CRC-32 of a frame's type, seq, length and payload."""
    header = struct.pack("<BBH", type, seq, len(payload))
    return zlib.crc32(payload, zlib.crc32(header)) & 0xFFFFFFFF


def encode_frame(type, seq, payload=b""):
    """The bytes of one frame.

    Raises
    ------
    FrameError
        If ``type`` or ``seq`` is not a byte, or the payload is longer than the length field.
    """
    if not isinstance(type, int) or not 0 <= type <= 0xFF:
        raise FrameError(f"Frame type must be an integer in 0..255, not {type!r}")
    if not isinstance(seq, int) or not 0 <= seq <= 0xFF:
        raise FrameError(f"Sequence number must be an integer in 0..255, not {seq!r}")
    payload = bytes(payload)
    if len(payload) > MAX_FRAME_PAYLOAD:
        raise FrameError(f"Frame payload must be at most {MAX_FRAME_PAYLOAD} bytes, "
                         f"not {len(payload)}")
    return (struct.pack("<BBBH", FRAME_SYNC, type, seq, len(payload)) + payload
            + struct.pack("<I", frame_crc(type, seq, payload)))


def frame_need(buf, max_payload=MAX_FRAME_PAYLOAD):
    """Bytes a frame that starts ``buf`` still needs (1 while ``buf`` does not start with a
    sync byte; 0 once it is complete, or its length exceeds ``max_payload``)."""
    if not buf or buf[0] != FRAME_SYNC:
        return 1
    if len(buf) < FRAME_HEADER_BYTES:
        return FRAME_HEADER_BYTES - len(buf)
    length = buf[3] | buf[4] << 8
    if length > max_payload:
        return 0
    return max(0, FRAME_HEADER_BYTES + length + FRAME_CRC_BYTES - len(buf))


class FrameParser:
    """Incremental frame decoder.

    Bytes before a sync byte are skipped. A frame whose CRC does not match, or whose length
    exceeds ``max_payload``, is reported as a :class:`FrameError` *in the returned list* (in
    stream order, so the caller knows which reply went missing) and decoding resumes at the
    byte after its sync byte, because a corrupt length cannot be trusted to find the next one.

    Parameters
    ----------
    max_payload : int
        Longest payload accepted; a longer length field is treated as corruption.

    Attributes
    ----------
    skipped : int
        Bytes discarded while hunting for a sync byte.
    """

    def __init__(self, *, max_payload=MAX_FRAME_PAYLOAD):
        if not isinstance(max_payload, int) or not 0 <= max_payload <= MAX_FRAME_PAYLOAD:
            raise ValueError(f"Maximum payload must be an integer in 0..{MAX_FRAME_PAYLOAD}, "
                             f"not {max_payload!r}")
        self._max_payload = max_payload
        self._buffer = bytearray()
        self.skipped = 0

    def need(self):
        """How many more bytes the parser needs before it can decide on the next frame.

        A reader that can only ask for exact byte counts (a serial port with a timeout)
        reads this many, feeds them, and never over-reads into the next frame.
        """
        return frame_need(self._buffer, self._max_payload)

    def feed(self, data):
        """Add bytes; return the frames (and :class:`FrameError` objects) now complete."""
        self._buffer += data
        events = []
        buf = self._buffer
        while True:
            start = buf.find(FRAME_SYNC)
            if start < 0:
                self.skipped += len(buf)
                buf.clear()
                break
            if start:
                self.skipped += start
                del buf[:start]
            if len(buf) < FRAME_HEADER_BYTES:
                break
            type, seq, length = buf[1], buf[2], buf[3] | buf[4] << 8
            if length > self._max_payload:
                events.append(FrameError(f"Frame length must be at most {self._max_payload} "
                                         f"bytes, not {length}"))
                del buf[:1]
                continue
            end = FRAME_HEADER_BYTES + length + FRAME_CRC_BYTES
            if len(buf) < end:
                break
            payload = bytes(buf[FRAME_HEADER_BYTES:FRAME_HEADER_BYTES + length])
            crc, = struct.unpack_from("<I", buf, end - FRAME_CRC_BYTES)
            expected = frame_crc(type, seq, payload)
            if crc != expected:
                events.append(FrameError(f"Frame CRC must be {expected:#010x}, not {crc:#010x} "
                                         f"(type {type:#04x}, seq {seq})"))
                del buf[:1]
                continue
            del buf[:end]
            try:
                type = FrameType(type)
            except ValueError:
                pass
            events.append(Frame(type, seq, payload))
        return events

    def reset(self):
        """Forget any partial frame."""
        self._buffer.clear()


class SequenceNumbers:
    """The host's sequence numbers: one per request, wrapping at 256, and never, for a RUN,
    a number the device may hold as its last RUN's (it answers a repeat of that number by
    replaying the reply, without running).

    The device holds the number of the last RUN a reply came back for, or of a RUN sent
    since whose reply never came (it may have run): a new RUN skips all of these.

    >>> numbers = SequenceNumbers(start=254)
    >>> numbers.next(FrameType.RUN), numbers.next(FrameType.WRITE), numbers.next(FrameType.READ)
    (254, 255, 0)
    >>> numbers = SequenceNumbers(start=7)
    >>> first = numbers.next(FrameType.RUN)
    >>> [numbers.next(FrameType.WRITE) for _ in range(255)][-1]
    6
    >>> numbers.next(FrameType.RUN)        # 7 was the last RUN's: skipped
    8
    """

    def __init__(self, *, start=0):
        self._next = start & 0xFF
        self._runs = set()        # numbers the device may hold as its last RUN's

    def next(self, type):
        """The number for a new request of ``type``."""
        if type == FrameType.RUN:
            while self._next in self._runs:
                self._next = (self._next + 1) & 0xFF
        seq, self._next = self._next, (self._next + 1) & 0xFF
        if type == FrameType.RUN:
            self._runs.add(seq)
        return seq

    def ran(self, seq):
        """The reply to RUN ``seq`` arrived: ``seq`` is the device's last RUN."""
        self._runs = {seq}

    def forget_runs(self):
        """The device forgot its last RUN (it answered HELLO)."""
        self._runs = set()


# Words -----------------------------------------------------------------------------------------

def word_size(cfg, mem):
    """Bytes per word of memory ``mem``."""
    return word_bytes(memory_layout(cfg, Memory(mem)))


def words_to_bytes(cfg, mem, words):
    """Little-endian bytes of ``words``; negative values are stored in two's complement."""
    size = word_size(cfg, mem)
    mask = (1 << (8 * size)) - 1
    out = bytearray()
    for word in words:
        word = int(word)
        if not -(1 << (8 * size - 1)) <= word <= mask:
            raise FrameError(f"Word of memory {Memory(mem).name} must fit {8 * size} bits, "
                             f"not {word!r}")
        out += (word & mask).to_bytes(size, "little")
    return bytes(out)


def bytes_to_words(cfg, mem, data):
    """Unsigned words from little-endian bytes."""
    size = word_size(cfg, mem)
    if len(data) % size:
        raise FrameError(f"Data of memory {Memory(mem).name} must be a multiple of {size} "
                         f"bytes, not {len(data)}")
    return [int.from_bytes(data[i:i + size], "little") for i in range(0, len(data), size)]


def _check_range(cfg, mem, addr, count):
    mem = Memory(mem)
    depth = memory_depth(cfg, mem)
    if not isinstance(addr, int) or addr < 0 or addr + count > depth:
        raise FrameError(f"Access to {mem.name} must lie in 0..{depth}, "
                         f"not {addr!r}..{addr + count if isinstance(addr, int) else '?'}")
    if addr > MAX_ADDRESS:
        raise FrameError(f"Address must fit {8 * ADDRESS_BYTES} bits, not {addr!r}")


# HELLO -----------------------------------------------------------------------------------------
# (hello_payload, the device's side, is in gsaccel.hw.layouts: the gateware sends its bytes.)

def parse_hello(payload):
    """The :class:`CoreConfig` a HELLO reply describes.

    Raises
    ------
    FrameError
        If the payload has the wrong size, magic, protocol version or an invalid config.
    """
    if len(payload) != _HELLO.size:
        raise FrameError(f"HELLO reply must be {_HELLO.size} bytes, not {len(payload)}")
    (magic, version, lanes, bank_depth, encoding, acc_width, weight_depth, row_depth,
     layer_depth, result_queue, max_payload, features) = _HELLO.unpack(payload)
    if magic != HELLO_MAGIC:
        raise FrameError(f"HELLO magic must be {HELLO_MAGIC!r}, not {magic!r}")
    if version != PROTOCOL_VERSION or not features & HELLO_FEATURE_LOOP_NEST:
        raise FrameError(f"Protocol version must be {PROTOCOL_VERSION} with loop nests, not "
                         f"{version}{'' if features & HELLO_FEATURE_LOOP_NEST else ' without'}: "
                         f"the device runs an older bitstream; rebuild and flash it "
                         f"(gsaccel build, gsaccel flash)")
    if encoding >= len(ENCODINGS):
        raise FrameError(f"HELLO encoding must be below {len(ENCODINGS)}, not {encoding}")
    try:
        return CoreConfig(lanes=lanes, bank_depth=bank_depth, encoding=ENCODINGS[encoding],
                          acc_width=acc_width, weight_depth=weight_depth, row_depth=row_depth,
                          layer_depth=layer_depth, result_queue=result_queue,
                          max_payload=max_payload, basis=bool(features & HELLO_FEATURE_BASIS),
                          deep_pipeline=bool(features & HELLO_FEATURE_DEEP_PIPELINE),
                          vector_writer=bool(features & HELLO_FEATURE_VECTOR_WRITER),
                          bank_halves=bool(features & HELLO_FEATURE_BANK_HALVES))
    except (TypeError, ValueError) as error:
        raise FrameError(f"HELLO reply describes an invalid core: {error}") from None


# WRITE / READ ----------------------------------------------------------------------------------

def max_write_words(cfg, mem):
    """Most words of ``mem`` one WRITE frame may carry within ``cfg.max_payload``."""
    n = (cfg.max_payload - _WRITE_HEADER.size) // word_size(cfg, mem)
    if n < 1:
        raise FrameError(f"Maximum payload must hold one {Memory(mem).name} word, "
                         f"not {cfg.max_payload} bytes")
    return n


def max_read_words(cfg, mem):
    """Most words of ``mem`` one READ reply may carry within ``cfg.max_payload``."""
    n = min(cfg.max_payload // word_size(cfg, mem), 0xFFFF)
    if n < 1:
        raise FrameError(f"Maximum payload must hold one {Memory(mem).name} word, "
                         f"not {cfg.max_payload} bytes")
    return n


def write_payload(cfg, mem, addr, words):
    """WRITE request payload: ``words`` to memory ``mem`` from word address ``addr``."""
    mem = Memory(mem)
    words = list(words)
    if mem == Memory.COUNTERS:
        raise FrameError("Memory to write must not be COUNTERS, which is read-only")
    _check_range(cfg, mem, addr, len(words))
    return _WRITE_HEADER.pack(mem, addr & 0xFFFF, addr >> 16) + words_to_bytes(cfg, mem, words)


def parse_write(cfg, payload):
    """``(mem, addr, words)`` of a WRITE payload (the device side)."""
    if len(payload) < _WRITE_HEADER.size:
        raise FrameError(f"WRITE payload must be at least {_WRITE_HEADER.size} bytes, "
                         f"not {len(payload)}")
    mem, addr_lo, addr_hi = _WRITE_HEADER.unpack_from(payload)
    addr = addr_lo | addr_hi << 16
    try:
        mem = Memory(mem)
    except ValueError:
        raise FrameError(f"Memory id must be one of {[int(m) for m in Memory]}, "
                         f"not {mem}") from None
    return mem, addr, bytes_to_words(cfg, mem, payload[_WRITE_HEADER.size:])


def request_header(mem, addr):
    """The ``mem u8, addr u24`` that WRITE and READ payloads start with, unchecked (tests
    build bad requests from it)."""
    return bytes([mem]) + int(addr).to_bytes(3, "little")


def read_payload(mem, addr, count):
    """READ request payload."""
    if not isinstance(addr, int) or not 0 <= addr <= MAX_ADDRESS:
        raise FrameError(f"Address must be an integer in 0..{MAX_ADDRESS}, not {addr!r}")
    if not isinstance(count, int) or not 0 <= count <= 0xFFFF:
        raise FrameError(f"Word count must be an integer in 0..65535, not {count!r}")
    return _READ.pack(Memory(mem), addr & 0xFFFF, addr >> 16, count)


def parse_read(payload, *, checked=True):
    """``(mem, addr, count)`` of a READ payload (``mem`` a :class:`Memory`, or with
    ``checked=False`` the raw byte, for the device side that answers BAD_MEMORY itself)."""
    if len(payload) != _READ.size:
        raise FrameError(f"READ payload must be {_READ.size} bytes, not {len(payload)}")
    mem, addr_lo, addr_hi, count = _READ.unpack(payload)
    addr = addr_lo | addr_hi << 16
    if not checked:
        return mem, addr, count
    try:
        mem = Memory(mem)
    except ValueError:
        raise FrameError(f"Memory id must be one of {[int(m) for m in Memory]}, "
                         f"not {mem}") from None
    return mem, addr, count


# RUN / counters / errors -----------------------------------------------------------------------

def run_payload(first, count):
    """RUN request payload: execute layers ``first .. first+count-1``."""
    for name, value in (("First layer", first), ("Layer count", count)):
        if not isinstance(value, int) or not 0 <= value <= 0xFF:
            raise FrameError(f"{name} must be an integer in 0..255, not {value!r}")
    return _RUN.pack(first, count)


def parse_run(payload):
    """``(first, count)`` of a RUN payload."""
    if len(payload) != _RUN.size:
        raise FrameError(f"RUN payload must be {_RUN.size} bytes, not {len(payload)}")
    return _RUN.unpack(payload)


def counters_payload(counters):
    """The RUN reply: the counters named in ``COUNTER_NAMES``, u32 each (wrapping)."""
    return _COUNTERS.pack(*(int(counters[name]) & 0xFFFFFFFF for name in COUNTER_NAMES))


def parse_counters(payload):
    """Counters dict of a RUN reply or a COUNTERS read."""
    if len(payload) != _COUNTERS.size:
        raise FrameError(f"Counters payload must be {_COUNTERS.size} bytes, "
                         f"not {len(payload)}")
    return dict(zip(COUNTER_NAMES, _COUNTERS.unpack(payload)))


def error_payload(code):
    """ERROR reply payload."""
    return bytes([ErrorCode(code)])


def parse_error(payload):
    """The :class:`ErrorCode` of an ERROR reply (the raw byte if the code is unknown)."""
    if len(payload) != 1:
        raise FrameError(f"ERROR payload must be 1 byte, not {len(payload)}")
    try:
        return ErrorCode(payload[0])
    except ValueError:
        return payload[0]
