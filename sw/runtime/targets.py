"""One factory from a target name to a device: ``golden``, ``sim`` or ``serial:PORT[@BAUD]``.

>>> with connect("golden") as device:
...     device.config.lanes
8
"""

import logging

from ...hw.config import CoreConfig
from .device import Device, GoldenDevice
from ..errors import GsaccelError, ToolNotFound

__all__ = ["connect", "parse_target", "TARGETS"]

logger = logging.getLogger(__name__)

#: Target names the CLI documents.
TARGETS = ("golden", "sim", "serial:PORT[@BAUD]")


def parse_target(target):
    """``(kind, port, baud)`` of a target string; ``port``/``baud`` are None unless serial.

    Raises
    ------
    GsaccelError
        If the target is none of :data:`TARGETS`.
    """
    if not isinstance(target, str):
        raise GsaccelError(f"Target must be one of {', '.join(TARGETS)}, not {target!r}")
    if target in ("golden", "sim"):
        return target, None, None
    if target.startswith("serial:"):
        rest = target[len("serial:"):]
        port, _, baud = rest.partition("@")
        if not port:
            raise GsaccelError(f"Serial target must name a port, as in serial:/dev/ttyUSB1, "
                               f"not {target!r}")
        if baud:
            if not baud.isdigit() or int(baud) <= 0:
                raise GsaccelError(f"Baud rate of {target!r} must be a positive integer, "
                                   f"not {baud!r}")
            return "serial", port, int(baud)
        from .serial import DEFAULT_BAUD
        return "serial", port, DEFAULT_BAUD
    raise GsaccelError(f"Target must be one of {', '.join(TARGETS)}, not {target!r}")


def connect(target, *, cfg=None, program=None, timeout=None, retries=3, waves=None):
    """Open ``target`` and return its device (a context manager).

    Parameters
    ----------
    target : str
        ``golden`` (the bit-exact numpy model), ``sim`` (the Verilator-compiled core behind a
        native harness) or ``serial:PORT[@BAUD]`` (a board).
    cfg : CoreConfig, optional
        The core to model or build (``golden``, ``sim``); a board reports its own with HELLO.
        Default: ``program``'s configuration; without a program, ``CoreConfig()``, and the
        target then becomes the core of the first program it loads (``sim`` builds that
        core's RTL).
    program : Program, optional
        The program to be run: ``golden`` and ``sim`` are built for its core when ``cfg`` is
        not given (DESIGN §4). It is not loaded.
    timeout : float, optional
        Seconds to wait for each reply (default 10 for ``sim``, 2 for a board).
    retries : int
        Resends after a lost or corrupt frame.
    waves : str or Path, optional
        ``sim`` only: dump the RTL's waveform there (``.fst`` or ``.vcd``), from a separate
        trace-enabled build.

    Returns
    -------
    Accelerator
        :class:`GoldenDevice` or :class:`Device`.
    """
    kind, port, baud = parse_target(target)
    if waves is not None and kind != "sim":
        raise GsaccelError(f"Waveforms come from the sim target only, not {target!r}")
    adopt = cfg is None and program is None
    if cfg is None and program is not None:
        cfg = program.cfg
    if kind == "golden":
        return GoldenDevice(cfg)
    cfg = CoreConfig() if cfg is None else cfg
    if kind == "sim":
        try:
            from .verilator import VerilatorTransport
        except ImportError as error:
            raise ToolNotFound(f"The sim target needs gsaccel.sw.runtime.verilator, which "
                               f"cannot be imported: {error}") from None
        transport = VerilatorTransport(cfg, trace=waves)
        # Opened without a core: become the core of the first program loaded.
        reopen = (lambda new_cfg: VerilatorTransport(new_cfg, trace=waves)) if adopt else None
        device = Device(transport, timeout=10.0 if timeout is None else timeout,
                        retries=retries, reopen=reopen)
        try:
            device_cfg = device.hello()
        except BaseException:
            device.close()
            raise
        if device_cfg != cfg:
            device.close()
            raise GsaccelError(f"Simulated core must report the configuration it was built "
                               f"for, {cfg}, not {device_cfg}")
        return device
    from .serial import SerialTransport
    transport = SerialTransport(port, baud)
    device = Device(transport, timeout=2.0 if timeout is None else timeout, retries=retries)
    try:
        device.hello()
    except BaseException:
        device.close()
        raise
    logger.info("connected to %s at %d baud: %s", port, baud, device.config)
    return device
