"""Byte transports: the only thing a :class:`~gsaccel.sw.runtime.device.Device` knows of its target.

A transport moves bytes and nothing else. The Verilator harness (``gsaccel.sim``), a serial
port and a recording wrapper all implement it, so one host API serves simulation and boards.
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

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
