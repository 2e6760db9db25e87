"""Byte transports: the only thing a :class:`~gsaccel.sw.runtime.device.Device` knows of its target.

A transport moves bytes and nothing else. Two implement it, so one host API serves simulation
and boards: :class:`~gsaccel.sw.runtime.verilator.VerilatorTransport` (the Verilator-compiled
core behind the native harness of ``gsaccel.sim``) and
:class:`~gsaccel.sw.runtime.serial.SerialTransport` (a board's UART, or the pseudo-terminal of
``gsaccel.boards.ptysim``). Tests wrap one to damage or drop bytes on the way
(``tests/unit/test_device.py``, ``tests/cocotb/test_e2e_runtime.py``).
"""

import abc

__all__ = ["Transport"]


class Transport(abc.ABC):
    """A bidirectional byte pipe to a device."""

    @abc.abstractmethod
    def send(self, data: bytes) -> None:
        """Write all of ``data``."""

    @abc.abstractmethod
    def recv(self, n: int, *, timeout: float) -> bytes:
        """Read exactly ``n`` bytes, or raise :class:`~gsaccel.sw.errors.DeviceTimeout` when
        fewer arrived within ``timeout`` seconds."""

    def close(self) -> None:
        """Release the device; the transport is unusable afterwards."""

    #: Payload bytes per second the link carries, for link-time reports (None: not a
    #: physical link, e.g. a simulation).
    link_rate = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
