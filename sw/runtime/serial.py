"""A :class:`~gsaccel.sw.runtime.transport.Transport` over a serial port (a board's UART), via pyserial."""

import logging
import time

from ..errors import BoardNotFound, DeviceTimeout, GsaccelError
from .transport import Transport

__all__ = ["SerialTransport", "DEFAULT_BAUD"]

logger = logging.getLogger(__name__)

#: The UART rate the board tops use unless told otherwise.
DEFAULT_BAUD = 3_000_000   # every board top runs its UART at 3 Mbaud (docs/boards.md)


class SerialTransport(Transport):
    """Bytes to and from a serial port.

    Parameters
    ----------
    port : str
        Device path (``/dev/ttyUSB1``) or any pyserial URL (``loop://`` for a loopback).
    baud : int
        Bits per second (8N1).

    Raises
    ------
    BoardNotFound
        If the port cannot be opened.
    """

    def __init__(self, port, baud=DEFAULT_BAUD):
        if not isinstance(baud, int) or baud <= 0:
            raise ValueError(f"Baud rate must be a positive integer, not {baud!r}")
        try:
            import serial
        except ImportError:
            raise GsaccelError("The serial target needs pyserial; install gsaccel[serial]") \
                from None
        try:
            self._port = serial.serial_for_url(port, baudrate=baud, timeout=0,
                                               write_timeout=5.0)
        except (serial.SerialException, ValueError) as error:
            raise BoardNotFound(f"Serial port {port!r} cannot be opened: {error}") from None
        self._name = port
        self._baud = baud
        self._port.reset_input_buffer()

    @property
    def port(self):
        return self._name

    @property
    def baud(self):
        return self._baud

    @property
    def link_rate(self):
        """Bytes per second: a UART byte is 10 bits (start, 8 data, stop)."""
        return self._baud / 10

    def send(self, data):
        import serial
        try:
            self._port.write(data)
            self._port.flush()
        except serial.SerialException as error:
            raise BoardNotFound(f"Serial port {self._name!r} failed: {error}") from None

    def recv(self, n, *, timeout):
        import serial
        deadline = time.monotonic() + timeout
        out = bytearray()
        while len(out) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeviceTimeout(f"Serial port {self._name!r} must deliver {n} bytes within "
                                    f"{timeout:g} s, not {len(out)}")
            self._port.timeout = remaining
            try:
                out += self._port.read(n - len(out))
            except serial.SerialException as error:
                raise BoardNotFound(f"Serial port {self._name!r} failed: {error}") from None
        return bytes(out)

    def close(self):
        self._port.close()
