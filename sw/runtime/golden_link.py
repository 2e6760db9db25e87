"""The golden model at the frame level: what the core answers to every byte the host sends.

:class:`GoldenReceiver` finds frames in a byte stream as the core's
:class:`~gsaccel.hw.framing.FrameReceiver` does (hunting for the sync byte, a length past
``max_payload`` reported at once, the CRC checked at the end). :class:`GoldenCommandProcessor`
answers each frame as :class:`~gsaccel.hw.command.CommandProcessor` does, in the same check
order, on a :class:`~gsaccel.sw.golden.GoldenCore`, and runs a RUN at most once (a repeat of
the last RUN's sequence number replays its counters). :class:`GoldenLink` puts both behind
the :class:`~gsaccel.sw.runtime.transport.Transport` interface, so a
:class:`~gsaccel.sw.runtime.device.Device` (and a fault-injecting transport around it) can
talk frames to the golden model: the reference that the RTL's replies are compared with,
byte for byte, in the tests.

>>> from gsaccel.hw.config import CoreConfig
>>> from gsaccel.sw.runtime.device import Device
>>> with Device(GoldenLink(CoreConfig())) as device:
...     device.hello().lanes
8
"""

from ...hw.layouts import (FRAME_SYNC, ErrorCode, FrameType, Memory, memory_depth)
from ..errors import DeviceError, DeviceTimeout
from . import protocol
from .transport import Transport

__all__ = ["GoldenReceiver", "ReceivedFrame", "GoldenCommandProcessor", "GoldenLink"]


class ReceivedFrame:
    """A frame as the receiver hands it on: header fields, payload and ``error`` (0, or the
    :class:`ErrorCode` BAD_CRC / BAD_LENGTH)."""

    __slots__ = ("type", "seq", "payload", "error")

    def __init__(self, type, seq, payload, error):
        self.type, self.seq, self.payload, self.error = type, seq, payload, error

    def __repr__(self):
        return (f"ReceivedFrame(type={self.type:#04x}, seq={self.seq}, "
                f"payload={bytes(self.payload)!r}, error={self.error})")


class GoldenReceiver:
    """The core's frame receiver, a byte at a time.

    Bytes outside a frame that are not ``FRAME_SYNC`` are skipped. A header whose length
    exceeds ``max_payload`` is handed on at once with ``BAD_LENGTH`` and the receiver hunts
    again from the next byte; any other frame is handed on after its CRC (``BAD_CRC`` if it
    does not match).
    """

    def __init__(self, max_payload):
        self._max_payload = max_payload
        self._header = None       # bytes after SYNC while in a frame (None: hunting)
        self._payload = None      # payload and CRC bytes once the header is complete

    @property
    def in_frame(self):
        return self._header is not None

    def feed(self, data):
        """Take bytes; return the :class:`ReceivedFrame` objects now complete."""
        frames = []
        for byte in data:
            if self._header is None:
                if byte == FRAME_SYNC:
                    self._header = bytearray()
                continue
            if self._payload is None:
                self._header.append(byte)
                if len(self._header) < 4:
                    continue
                type, seq = self._header[0], self._header[1]
                length = self._header[2] | self._header[3] << 8
                if length > self._max_payload:
                    frames.append(ReceivedFrame(type, seq, b"", ErrorCode.BAD_LENGTH))
                    self._header = None
                    continue
                self._length = length
                self._payload = bytearray()
                continue
            self._payload.append(byte)
            if len(self._payload) < self._length + 4:
                continue
            type, seq = self._header[0], self._header[1]
            payload = bytes(self._payload[:self._length])
            crc = int.from_bytes(self._payload[self._length:], "little")
            good = crc == protocol.frame_crc(type, seq, payload)
            frames.append(ReceivedFrame(type, seq, payload, 0 if good else ErrorCode.BAD_CRC))
            self._header = self._payload = None
        return frames


class GoldenCommandProcessor:
    """The core's answer to each received frame, applied to a golden core.

    The checks and their order are the device's (docs/protocol.md, ``CommandProcessor``):
    receiver errors, then per type length, memory, whole words or reply size, address, layer
    range. RUN executes at most once: a RUN with the sequence number of the last RUN started
    is answered with that run's counters (still the core's) and not executed; HELLO forgets
    the number.

    Parameters
    ----------
    core : GoldenCore
    at_most_once : bool
        False models a device without the rule (a duplicated RUN runs twice): only for
        showing that a soak catches what the rule prevents.

    Attributes
    ----------
    runs : int
        RUNs executed (not counting replays).
    replays : int
        RUNs answered from the last run's counters.
    """

    def __init__(self, core, *, at_most_once=True):
        self.core = core
        self.cfg = core.cfg
        self._at_most_once = at_most_once
        self._run_seq = None
        self.runs = 0
        self.replays = 0

    def answer(self, frame_type, seq, payload, error=0):
        """``(reply type, reply payload)`` for one frame (``error``: the receiver's flag)."""
        cfg = self.cfg

        def refuse(code):
            return FrameType.ERROR, protocol.error_payload(code)

        if error:
            return refuse(error)
        n = len(payload)
        if frame_type == FrameType.HELLO:
            if n:
                return refuse(ErrorCode.BAD_LENGTH)
            self._run_seq = None
            return FrameType.DATA, protocol.hello_payload(cfg)
        if frame_type == FrameType.WRITE:
            header = protocol.WRITE_HEADER_BYTES
            if n < header:
                return refuse(ErrorCode.BAD_LENGTH)
            mem, addr = payload[0], int.from_bytes(payload[1:header], "little")
            if mem > Memory.ACTS:
                return refuse(ErrorCode.BAD_MEMORY)
            size = protocol.word_size(cfg, mem)
            if (n - header) % size:
                return refuse(ErrorCode.BAD_LENGTH)
            words = protocol.bytes_to_words(cfg, mem, payload[header:])
            if addr + len(words) > memory_depth(cfg, mem):
                return refuse(ErrorCode.BAD_ADDRESS)
            if mem == Memory.ACTS:
                words = [(w ^ 0x80) - 0x80 for w in words]
            self.core.write(mem, addr, words)
            return FrameType.ACK, b""
        if frame_type == FrameType.READ:
            if n != protocol.READ_BYTES:
                return refuse(ErrorCode.BAD_LENGTH)
            mem, addr, count = protocol.parse_read(payload, checked=False)
            if mem > Memory.COUNTERS:
                return refuse(ErrorCode.BAD_MEMORY)
            if count * protocol.word_size(cfg, mem) > cfg.max_payload:
                return refuse(ErrorCode.BAD_LENGTH)
            if addr + count > memory_depth(cfg, mem):
                return refuse(ErrorCode.BAD_ADDRESS)
            return FrameType.DATA, protocol.words_to_bytes(cfg, mem,
                                                            self.core.read(mem, addr, count))
        if frame_type == FrameType.RUN:
            if n != 2:
                return refuse(ErrorCode.BAD_LENGTH)
            first, count = payload
            if count == 0 or first + count > cfg.layer_depth:
                return refuse(ErrorCode.BAD_LAYER)
            if self._at_most_once and seq == self._run_seq:
                self.replays += 1
                return FrameType.DATA, protocol.counters_payload(self.core.counters)
            self._run_seq = seq
            self.runs += 1
            try:
                counters = self.core.run(first, count)
            except DeviceError as err:
                return refuse(err.code)
            return FrameType.DATA, protocol.counters_payload(counters)
        return refuse(ErrorCode.BAD_TYPE)


class GoldenLink(Transport):
    """A :class:`Transport` whose far end is the golden core at the frame level.

    Every byte sent goes through :class:`GoldenReceiver` and :class:`GoldenCommandProcessor`;
    the replies are ready at once. ``recv`` raises :class:`DeviceTimeout` without waiting
    when fewer bytes are ready than asked (nothing else will come: the model answers as soon
    as a frame is complete), and keeps what it has for the next call.

    Parameters
    ----------
    cfg : CoreConfig
    at_most_once : bool
        See :class:`GoldenCommandProcessor`.
    """

    def __init__(self, cfg, *, at_most_once=True):
        from ..golden import GoldenCore
        self.cfg = cfg
        self.core = GoldenCore(cfg)
        self.processor = GoldenCommandProcessor(self.core, at_most_once=at_most_once)
        self._receiver = GoldenReceiver(cfg.max_payload)
        self._pending = bytearray()
        self._closed = False

    def send(self, data):
        if self._closed:
            raise DeviceError("The golden link is closed")
        for frame in self._receiver.feed(bytes(data)):
            reply_type, payload = self.processor.answer(frame.type, frame.seq, frame.payload,
                                                        frame.error)
            self._pending += protocol.encode_frame(reply_type, frame.seq, payload)

    def recv(self, n, *, timeout):
        if self._closed:
            raise DeviceError("The golden link is closed")
        if len(self._pending) < n:
            raise DeviceTimeout(f"The golden link must deliver {n} bytes within {timeout:g} s, "
                                f"not {len(self._pending)}")
        data = bytes(self._pending[:n])
        del self._pending[:n]
        return data

    def close(self):
        self._closed = True
