"""cocotb drivers for Amaranth ``lib.stream`` ports: source, sink and passive monitor.

Amaranth's Verilog flattens a stream ``s`` to ``s__valid``, ``s__ready`` and ``s__payload``
(a struct payload is one vector). The drivers bind to those names, pack payloads given as
dicts/lists through the shared layouts, and follow the cocotbext-axi API: ``send``/``recv``,
``*_nowait``, ``idle()``/``wait()`` and ``set_pause_generator(iterator)`` (one value per clock
edge; a true value inserts an idle cycle on a source and back-pressure on a sink).

Signals are sampled right after the rising edge, where cocotb reads the values the design
had at that edge, and driven for the next cycle.
"""

import logging
from collections import deque

import cocotb
from cocotb.triggers import Event, RisingEdge, with_timeout

__all__ = ["StreamSource", "StreamSink", "StreamMonitor", "pack_payload", "unpack_payload"]


def pack_payload(layout, payload):
    """Bits of ``payload`` (an int, or a dict/list for ``layout``) as a non-negative int."""
    if isinstance(payload, int):
        return payload
    if layout is None:
        raise TypeError(f"Payload must be an integer when the stream has no layout, "
                        f"not {payload!r}")
    return layout.const(payload).as_value().value


def unpack_payload(layout, bits):
    """``layout.from_bits(bits)`` (a ``data.Const`` with ``.field``/``[i]`` access), or the int."""
    return bits if layout is None else layout.from_bits(bits)


class _StreamPort:
    def __init__(self, dut, prefix, clock, layout):
        self._valid = getattr(dut, f"{prefix}__valid")
        self._ready = getattr(dut, f"{prefix}__ready")
        self._payload = getattr(dut, f"{prefix}__payload")
        self._clock = clock
        self._layout = layout
        self._pause = None
        self.prefix = prefix
        self.log = logging.getLogger(f"gsaccel.tb.{prefix}")

    def set_pause_generator(self, generator=None):
        """One value per clock edge; true pauses (idle on a source, back-pressure on a sink)."""
        self._pause = None if generator is None else iter(generator)

    def clear_pause_generator(self):
        self._pause = None

    def _paused(self):
        return bool(next(self._pause)) if self._pause is not None else False


class StreamSource(_StreamPort):
    """Drives ``<prefix>__valid``/``__payload`` and watches ``<prefix>__ready``."""

    def __init__(self, dut, prefix, clock, *, layout=None):
        super().__init__(dut, prefix, clock, layout)
        self._queue = deque()
        self._active = False
        self._idle_event = Event()
        self._idle_event.set()
        self.sent = 0
        self._valid.value = 0
        self._task = cocotb.start_soon(self._run())

    def count(self):
        return len(self._queue)

    def empty(self):
        return not self._queue

    def idle(self):
        """Nothing queued and nothing being offered."""
        return not self._queue and not self._active

    def send_nowait(self, payload):
        self._queue.append(pack_payload(self._layout, payload))
        self._idle_event.clear()

    async def send(self, payload):
        self.send_nowait(payload)

    async def wait(self, timeout=None, unit="ns"):
        """Until every queued payload has been taken (``timeout`` raises SimTimeoutError)."""
        if timeout is None:
            await self._idle_event.wait()
        else:
            await with_timeout(self._idle_event.wait(), timeout, unit)

    async def _run(self):
        while True:
            await RisingEdge(self._clock)
            if self._active and int(self._ready.value):
                self._active = False
                self.sent += 1
            if not self._active:
                if self._queue and not self._paused():
                    self._payload.value = self._queue.popleft()
                    self._valid.value = 1
                    self._active = True
                else:
                    self._valid.value = 0
                    if not self._queue:
                        self._idle_event.set()


class StreamSink(_StreamPort):
    """Drives ``<prefix>__ready`` and collects transfers of ``<prefix>__payload``."""

    def __init__(self, dut, prefix, clock, *, layout=None):
        super().__init__(dut, prefix, clock, layout)
        self._queue = deque()
        self._event = Event()
        self.received = 0
        self._ready.value = 1
        self._task = cocotb.start_soon(self._run())

    def count(self):
        return len(self._queue)

    def empty(self):
        return not self._queue

    def idle(self):
        return not self._queue

    def recv_nowait(self):
        """The oldest received payload; IndexError if none."""
        return unpack_payload(self._layout, self._queue.popleft())

    async def recv(self, timeout=None, unit="ns"):
        """The next payload (``timeout`` raises SimTimeoutError)."""
        while not self._queue:
            self._event.clear()
            if timeout is None:
                await self._event.wait()
            else:
                await with_timeout(self._event.wait(), timeout, unit)
        return self.recv_nowait()

    async def wait(self, timeout=None, unit="ns"):
        """Until a payload is available."""
        while not self._queue:
            self._event.clear()
            if timeout is None:
                await self._event.wait()
            else:
                await with_timeout(self._event.wait(), timeout, unit)

    async def _run(self):
        while True:
            await RisingEdge(self._clock)
            if int(self._ready.value) and int(self._valid.value):
                self._queue.append(self._payload.value.to_unsigned())
                self.received += 1
                self._event.set()
            self._ready.value = 0 if self._paused() else 1


class StreamMonitor(_StreamPort):
    """Records every transfer (``valid & ready`` at a clock edge) without driving anything."""

    def __init__(self, dut, prefix, clock, *, layout=None):
        super().__init__(dut, prefix, clock, layout)
        self._queue = deque()
        self._event = Event()
        self._task = cocotb.start_soon(self._run())

    def count(self):
        return len(self._queue)

    def recv_nowait(self):
        return unpack_payload(self._layout, self._queue.popleft())

    async def recv(self, timeout=None, unit="ns"):
        while not self._queue:
            self._event.clear()
            if timeout is None:
                await self._event.wait()
            else:
                await with_timeout(self._event.wait(), timeout, unit)
        return self.recv_nowait()

    async def _run(self):
        while True:
            await RisingEdge(self._clock)
            if int(self._ready.value) and int(self._valid.value):
                self._queue.append(self._payload.value.to_unsigned())
                self._event.set()
