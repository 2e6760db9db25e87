"""Typed errors of the host side. Each message names the bad value and what was expected;
the CLI prints it as one line and exits 1."""

__all__ = [
    "GsaccelError", "ShapeError", "PatternError", "EncodingError", "FormatError",
    "FrameError", "DeviceError", "DeviceTimeout", "ToolNotFound", "BoardNotFound",
    "UnsupportedError", "CapacityError",
]


class GsaccelError(Exception):
    """Base of every error gsaccel raises on bad input or a failing device."""


class ShapeError(GsaccelError, ValueError):
    """An array has the wrong shape or size."""


class PatternError(GsaccelError, ValueError):
    """A matrix breaks the rule of its sparsity pattern, or a pattern is unknown."""


class EncodingError(GsaccelError, ValueError):
    """A weight cannot be represented in the requested value encoding."""


class FormatError(GsaccelError):
    """A .gsf/.gsp file is truncated, corrupt, of another version or not ours."""


class FrameError(GsaccelError):
    """A protocol frame is malformed, or the device rejected one."""


class DeviceError(GsaccelError):
    """The device answered with an error code."""


class DeviceTimeout(GsaccelError, TimeoutError):
    """The device did not answer in time."""


class ToolNotFound(GsaccelError):
    """An external tool (verilator, yosys, nextpnr, openFPGALoader) is missing."""


class BoardNotFound(GsaccelError):
    """No board is connected, or the board name is unknown."""


class UnsupportedError(GsaccelError):
    """A model uses a layer or operation the compiler cannot lower."""


class CapacityError(GsaccelError):
    """A program does not fit the core's memories.

    ``report``: the :class:`~gsaccel.sw.compile.capacity.CapacityReport` of every limit,
    when the compiler made one (else None).
    """

    def __init__(self, message, *, report=None):
        super().__init__(message)
        self.report = report
