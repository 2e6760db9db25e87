"""A fault-injecting transport: a link that drops, duplicates, corrupts and delays frames, in
both directions, around any :class:`~gsaccel.sw.runtime.transport.Transport`.

It is how the suite proves the protocol's promises (DESIGN §4: every inference right or a
typed error, nothing run twice, nothing hanging) against the RTL (``sim``) and the golden
link alike, and how a user can try a host program against a bad cable before a board does.

Faults act on whole frames: each ``send`` of the host (one request, or the resynchronisation
padding) is one unit towards the device; replies are cut into frames at their sync byte and
length before the faults act on them towards the host. A delayed frame arrives late but in
order: later frames queue behind it, as on a serial line, so a duplicate never overtakes the
frame after it.

>>> from gsaccel.hw.config import CoreConfig
>>> from gsaccel.sw.runtime.device import Device
>>> from gsaccel.sw.runtime.golden_link import GoldenLink
>>> link = FaultyTransport(GoldenLink(CoreConfig()), LinkFaults(drop=0.5), seed=1)
>>> Device(link, timeout=0.01, retries=10).hello().lanes
8
>>> link.injected["to_device"]["drop"] + link.injected["to_host"]["drop"] > 0
True
"""

import random
import time
from dataclasses import dataclass

from ...hw.layouts import FRAME_SYNC
from ..errors import DeviceTimeout
from .protocol import frame_need
from .transport import Transport

__all__ = ["LinkFaults", "FaultyTransport", "FAULT_KINDS"]

#: What can happen to a frame, besides nothing.
FAULT_KINDS = ("drop", "duplicate", "corrupt", "delay")

# How long the transport waits on the inner one at a time while frames are held back.
_POLL_S = 0.002


@dataclass(frozen=True)
class LinkFaults:
    """Per-frame probabilities of each fault (they add up to at most 1), and the delay range.

    ``corrupt`` flips one random bit of one random byte; ``delay`` holds the frame back for
    a time drawn uniformly from ``delay_s``.
    """
    drop: float = 0.0
    duplicate: float = 0.0
    corrupt: float = 0.0
    delay: float = 0.0
    delay_s: tuple = (0.0, 0.1)

    def __post_init__(self):
        for kind in FAULT_KINDS:
            rate = getattr(self, kind)
            if not isinstance(rate, (int, float)) or not 0 <= rate <= 1:
                raise ValueError(f"Rate of {kind} must be a probability in 0..1, not {rate!r}")
        if sum(getattr(self, kind) for kind in FAULT_KINDS) > 1 + 1e-9:
            raise ValueError(f"Fault rates must add up to at most 1, not "
                             f"{sum(getattr(self, k) for k in FAULT_KINDS):g}")
        low, high = self.delay_s
        if not 0 <= low <= high:
            raise ValueError(f"Delay range must be 0 <= low <= high seconds, not {self.delay_s!r}")

    @classmethod
    def uniform(cls, total, **kwargs):
        """``total`` split evenly over the four kinds (``uniform(0.05)``: a 5 % bad link)."""
        return cls(**{kind: total / len(FAULT_KINDS) for kind in FAULT_KINDS}, **kwargs)


class FaultyTransport(Transport):
    """``inner`` behind a link with ``to_device`` and ``to_host`` faults.

    Parameters
    ----------
    inner : Transport
    to_device, to_host : LinkFaults
        ``to_host`` defaults to ``to_device``.
    seed : int
        Faults are drawn from ``random.Random(seed)``: a soak is repeatable.

    Attributes
    ----------
    injected : dict
        ``{"to_device" | "to_host": {kind: count}}`` of the faults injected so far.
    """

    def __init__(self, inner, to_device=LinkFaults(), to_host=None, *, seed=0):
        self._inner = inner
        self._faults = {"to_device": to_device,
                        "to_host": to_device if to_host is None else to_host}
        self._rng = random.Random(seed)
        self.injected = {direction: dict.fromkeys(FAULT_KINDS, 0) for direction in self._faults}
        # Frames on their way, each (arrival time, bytes), in order.
        self._to_device = []
        self._to_host = []
        self._delivered = bytearray()     # bytes the host may read
        self._reply = bytearray()         # a reply frame being cut out of the inner stream

    @property
    def link_rate(self):
        return getattr(self._inner, "link_rate", None)

    def _apply(self, direction, frame, queue):
        """Put ``frame`` (bytes) on ``queue`` as the link treats it."""
        faults, rng = self._faults[direction], self._rng
        roll, kind = rng.random(), None
        for candidate in FAULT_KINDS:
            rate = getattr(faults, candidate)
            if roll < rate:
                kind = candidate
                break
            roll -= rate
        # Behind the frame before it, whatever happens to this one.
        now = max([time.monotonic()] + [at for at, _ in queue[-1:]])
        if kind is not None:
            self.injected[direction][kind] += 1
        if kind == "drop":
            return
        if kind == "corrupt":
            frame = bytearray(frame)
            frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
            frame = bytes(frame)
        if kind == "delay":
            now += rng.uniform(*faults.delay_s)
        queue.append((now, frame))
        if kind == "duplicate":
            queue.append((now, frame))

    def _release(self):
        """Hand on every frame whose time has come (in order: none overtakes another)."""
        now = time.monotonic()
        while self._to_device and self._to_device[0][0] <= now:
            self._inner.send(self._to_device.pop(0)[1])
        while self._to_host and self._to_host[0][0] <= now:
            self._delivered += self._to_host.pop(0)[1]

    def _pull(self, timeout):
        """Take what the inner transport has, within ``timeout``, cutting it into frames;
        whether anything came."""
        try:
            self._reply += self._inner.recv(frame_need(self._reply), timeout=timeout)
        except DeviceTimeout:
            return False
        if self._reply[0] != FRAME_SYNC:
            # A byte outside any frame (the device sends none): passed on as it is.
            self._to_host.append((time.monotonic(), bytes(self._reply)))
            self._reply.clear()
        elif frame_need(self._reply) == 0:
            self._apply("to_host", bytes(self._reply), self._to_host)
            self._reply.clear()
        return True

    def send(self, data):
        self._apply("to_device", bytes(data), self._to_device)
        self._release()

    def recv(self, n, *, timeout):
        deadline = time.monotonic() + timeout
        while True:
            self._release()
            if len(self._delivered) >= n:
                data = bytes(self._delivered[:n])
                del self._delivered[:n]
                return data
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeviceTimeout(f"The link must deliver {n} bytes within {timeout:g} s, "
                                    f"not {len(self._delivered)}")
            held = self._to_device or self._to_host
            start = time.monotonic()
            wait = min(remaining, _POLL_S) if held else remaining
            if not self._pull(wait) and time.monotonic() - start < wait:
                # The inner transport gave up early (a model with nothing more to say):
                # wait a little for held frames, or the deadline, instead of spinning.
                time.sleep(min(_POLL_S, max(0.0, deadline - time.monotonic())))

    def close(self):
        self._inner.close()
