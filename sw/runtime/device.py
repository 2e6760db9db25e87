"""One host API over every target: load a program, run inputs, read counters.

:class:`Device` talks frames (:mod:`gsaccel.sw.runtime.protocol`) over any
:class:`~gsaccel.sw.runtime.transport.Transport` (the Verilator harness, a serial port);
:class:`GoldenDevice` executes the same device image on the bit-exact golden model. Both share
:class:`Accelerator`'s ``load``/``run``/``counters``, so a program behaves the same on each.

Reliability (DESIGN §4): every request carries a new sequence number and every wait has a
timeout. A reply with another sequence number (a late answer to an earlier request) is
discarded. A corrupt reply, a silent device or an ``ERROR BAD_CRC`` answer makes the host
resend the request, with its sequence number, at most ``retries`` times; then it raises
:class:`FrameError`, :class:`DeviceTimeout` or :class:`DeviceError`. WRITE, READ and HELLO
are idempotent. RUN is not — a layer's output may take the scratchpad words of a tensor an
earlier layer read, the input's included — but the device executes it at most once: it
answers a RUN with its last RUN's sequence number by replaying that reply, so a resent RUN
runs only if the first never arrived (:class:`~gsaccel.sw.runtime.protocol.SequenceNumbers`).
"""

import abc
import logging
import time

import numpy as np

from ...hw.config import CoreConfig
from ...hw.layouts import COUNTER_NAMES, ErrorCode, FrameType, Memory, memory_depth
from . import protocol
from ..errors import DeviceError, DeviceTimeout, FrameError, ShapeError

__all__ = ["Accelerator", "Device", "GoldenDevice"]

logger = logging.getLogger(__name__)


class Accelerator(abc.ABC):
    """What every target offers: raw memory access, RUN, and program-level inference.

    Subclasses implement :attr:`config`, :meth:`write`, :meth:`read` and :meth:`run_layers`.

    Attributes
    ----------
    program : Program or None
        The program last loaded.
    counters : dict
        Counters of the last :meth:`infer`, summed over its inputs (and a phased program's
        RUNs), plus ``inferences`` and ``streamed_bytes`` (the phase images written).
    """

    #: Bytes per second of the link to the core (None: no physical link).
    link_rate = None

    def __init__(self):
        self.program = None
        self._phases = None
        self.counters = {name: 0 for name in COUNTER_NAMES} | {"inferences": 0,
                                                                "streamed_bytes": 0}

    # Raw access ---------------------------------------------------------------------------
    @property
    @abc.abstractmethod
    def config(self) -> CoreConfig:
        """The core this target runs."""

    @abc.abstractmethod
    def write(self, mem, addr, words):
        """Write ``words`` to memory ``mem`` from ``addr``."""

    @abc.abstractmethod
    def read(self, mem, addr, count):
        """Read ``count`` words of memory ``mem`` from ``addr``."""

    @abc.abstractmethod
    def run_layers(self, first, count):
        """Run layers ``first .. first+count-1``; return the counters."""

    def close(self):
        """Release the target (nothing to release by default)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    # Programs -----------------------------------------------------------------------------
    def load(self, program):
        """Write ``program``'s device image (weights, rows, layer table).

        A simulated target opened without a configuration (``connect("golden")``,
        ``connect("sim")``) first becomes the program's core (the sim builds and starts
        that core's RTL).

        Raises
        ------
        DeviceError
            If the program was compiled for another core than the one this target runs
            (a board's: what it answered to HELLO; a target opened with an explicit
            configuration), naming the fields that differ.
        """
        if program.cfg != self.config:
            self._adopt(program.cfg)
        cfg = self.config
        if program.cfg != cfg:
            differ = ", ".join(f"{name} {getattr(program.cfg, name)!r} (device "
                               f"{getattr(cfg, name)!r})"
                               for name in CoreConfig.__dataclass_fields__
                               if getattr(program.cfg, name) != getattr(cfg, name))
            raise DeviceError(f"Program must target this device's core {cfg}, not "
                              f"{program.cfg}: {differ}; compile it for this core (gsaccel "
                              f"compile --board, or cfg=device.config)")
        phases = program.phase_images()
        if len(phases) == 1:
            self._write_image(phases[0][2])
            self._phases = None
            setup, _ = program.run_ranges()
            if setup:
                # The resident tensors' halos and padding channels: nothing writes them
                # again, so they are cleared once.
                self.run_layers(*setup)
        else:
            # Every inference streams each phase's image before running its layers.
            self._phases = phases
        self.program = program
        logger.info("loaded %d layers in %d phase(s), %d weight words, %d row words",
                    len(program.layers), len(phases),
                    sum(len(image.weights) for _, _, image in phases),
                    sum(len(image.rows) for _, _, image in phases))

    def _adopt(self, cfg):
        """Become a core of ``cfg`` if this target can (a simulation opened without a
        configuration); otherwise leave it as it is and let :meth:`load` refuse."""

    def _write_image(self, image):
        for mem, words in image.memories():
            if words:
                self.write(mem, 0, list(words))

    def _run_program(self, program):
        """RUN the layers of one inference of ``program`` (every layer after the setup ones;
        per phase: write its image, then RUN its layers); return the counters summed over the RUNs and the image bytes streamed."""
        if not self._phases:
            return self.run_layers(*program.run_ranges()[1]), 0
        totals, streamed = {name: 0 for name in COUNTER_NAMES}, 0
        for _, count, image in self._phases:
            self._write_image(image)
            streamed += image.nbytes
            counters = self.run_layers(0, count)
            for name in COUNTER_NAMES:
                totals[name] += counters[name]
        return totals, streamed

    def _require_program(self):
        if self.program is None:
            raise DeviceError("A program must be loaded before running inputs, not None")
        return self.program

    def infer_quantized(self, xq):
        """Run int8 inputs as :meth:`Program.quantize_input` makes them (``(N, H, W, C)``,
        or one ``(H, W, C)``); return int8 outputs ``(N,) + output_shape`` (or
        ``output_shape`` for one input).

        Per input: WRITE the input tensor's whole region (bank words ``[base, end)`` of its
        geometry in every bank, halo and padding channels zero), RUN its layers (after the
        setup layers :meth:`load` ran), READ
        the output tensor's region and gather the output from it.
        """
        program = self._require_program()
        geometry = program.input_geometry
        shape = (geometry.height, geometry.width, geometry.channels)
        xq = np.asarray(xq)
        single = xq.shape == shape
        if single:
            xq = xq[None]
        if xq.shape[1:] != shape:
            raise ShapeError(f"Quantised input must have shape (N,) + {shape}, not "
                             f"{xq.shape}")
        if xq.size and (xq.min() < -128 or xq.max() > 127):
            raise ShapeError(f"Quantised input must lie in -128..127, not "
                             f"{int(xq.min())}..{int(xq.max())}")
        in_addr, _ = program.input_region()
        out_addr, out_count = program.output_region()
        totals, streamed = {name: 0 for name in COUNTER_NAMES}, 0
        out = np.empty((len(xq),) + program.output_shape, dtype=np.int8)
        for i, sample in enumerate(xq):
            elements = [int(v) for v in program.input_elements(sample)]
            self.write(Memory.ACTS, in_addr, elements)
            counters, sample_streamed = self._run_program(program)
            for name in COUNTER_NAMES:
                totals[name] += counters[name]
            streamed += sample_streamed
            out[i] = program.output_from_elements(self.read(Memory.ACTS, out_addr, out_count))
        self.counters = totals | {"inferences": len(xq), "streamed_bytes": streamed}
        return out[0] if single else out

    def infer(self, x):
        """Run float inputs; return float32 outputs, dequantised.

        ``x`` is one input of the program's input shape, or a batch of them along axis 0.
        Every target returns the same dtype and shape: ``(N,) + output_shape`` (or
        ``output_shape`` for one input).
        """
        program = self._require_program()
        x = np.asarray(x, dtype=np.float64)
        single = x.shape == tuple(program.input_shape)
        if single:
            x = x[None]
        if x.shape[1:] != tuple(program.input_shape):
            raise ShapeError(f"Input must have shape {tuple(program.input_shape)} or "
                             f"(N, {', '.join(map(str, program.input_shape))}), not {x.shape}")
        y = program.dequantize_output(self.infer_quantized(program.quantize_input(x)))
        return y[0] if single else y

    #: The name of :meth:`infer` in earlier releases.
    run = infer


class Device(Accelerator):
    """A core behind a byte transport.

    Parameters
    ----------
    transport : Transport
        The byte pipe (``VerilatorTransport``, ``SerialTransport``, ...).
    timeout : float
        Seconds to wait for each reply. A silent device raises :class:`DeviceTimeout` after
        ``(retries + 1) * timeout`` seconds.
    retries : int
        Resends after a corrupt reply, a timeout or an ``ERROR BAD_CRC``.
    reopen : callable, optional
        ``reopen(cfg)`` returns a transport to a core of ``cfg``: a simulation opened
        without a configuration then adopts the configuration of the program it loads.

    Raises
    ------
    DeviceError
        The device answered with an error code (named in the message).
    DeviceTimeout
        No valid reply arrived within the timeout, after every retry.
    FrameError
        Replies kept arriving corrupt, or a reply had the wrong type or size.
    """

    def __init__(self, transport, *, timeout=2.0, retries=3, reopen=None):
        super().__init__()
        #: ``reopen(cfg) -> Transport`` for a simulation that may become another core.
        self._reopen = reopen
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValueError(f"Timeout must be a positive number of seconds, not {timeout!r}")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"Retry count must be a non-negative integer, not {retries!r}")
        self._transport = transport
        self._timeout = float(timeout)
        self._retries = retries
        self._numbers = protocol.SequenceNumbers()
        self._parser = protocol.FrameParser()
        self._config = None
        #: Resends so far (for reports and tests).
        self.resends = 0
        #: Replies discarded because their sequence number was stale.
        self.stale_replies = 0

    @property
    def link_rate(self):
        """The transport's bytes per second (None for a simulation)."""
        return getattr(self._transport, "link_rate", None)

    @property
    def transport(self):
        return self._transport

    def close(self):
        self._transport.close()

    # Transactions -------------------------------------------------------------------------
    def _await_reply(self, seq):
        deadline = time.monotonic() + self._timeout
        while True:
            need = self._parser.need()
            data = b""
            if need:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DeviceTimeout(f"Device must answer within {self._timeout:g} s, "
                                        f"but sent no reply to request {seq}")
                data = self._transport.recv(need, timeout=remaining)
            for event in self._parser.feed(data):
                if isinstance(event, FrameError):
                    raise event
                if event.seq != seq:
                    self.stale_replies += 1
                    logger.debug("discarding stale reply seq %d (waiting for %d)",
                                 event.seq, seq)
                    continue
                return event

    def _transact(self, type, payload):
        # A resend keeps the request's number: for RUN that is what makes it safe (the
        # device replays the reply of a RUN it executed already).
        seq = self._numbers.next(type)
        frame = protocol.encode_frame(type, seq, payload)
        attempt = 0
        while True:
            logger.debug("-> %s seq %d: %s", FrameType(type).name, seq, frame.hex())
            self._transport.send(frame)
            try:
                reply = self._await_reply(seq)
            except (DeviceTimeout, FrameError) as error:
                if isinstance(error, DeviceTimeout):
                    # The device may sit in a partial frame (bytes lost on the way): flush it.
                    self._parser.reset()
                    self._resync()
                if attempt >= self._retries:
                    if isinstance(error, DeviceTimeout):
                        raise DeviceTimeout(f"Device must answer {FrameType(type).name} within "
                                            f"{self._timeout:g} s, but stayed silent for "
                                            f"{attempt + 1} attempts") from None
                    raise FrameError(f"Reply to {FrameType(type).name} must arrive intact "
                                     f"within {attempt + 1} attempts, but: {error}") from None
                attempt += 1
                self.resends += 1
                logger.warning("resending %s after: %s", FrameType(type).name, error)
                continue
            logger.debug("<- %r", reply)
            if type == FrameType.RUN and reply.type != FrameType.ERROR:
                self._numbers.ran(seq)
            if reply.type == FrameType.ERROR:
                code = protocol.parse_error(reply.payload)
                # The host never sends an over-long frame, so BAD_LENGTH means a length byte
                # was corrupted on the way, like BAD_CRC: the frame was not executed.
                if code in (ErrorCode.BAD_CRC, ErrorCode.BAD_LENGTH) \
                        and attempt < self._retries:
                    attempt += 1
                    self.resends += 1
                    logger.warning("device answered %s; resending %s", code.name,
                                   FrameType(type).name)
                    if code == ErrorCode.BAD_LENGTH:
                        self._resync()
                    continue
                name = code.name if isinstance(code, ErrorCode) else f"unknown code {code}"
                raise DeviceError(f"Device rejected {FrameType(type).name} with {name}")
            return reply

    def _resync(self):
        """Complete any partial frame in the device's receiver (docs/protocol.md).

        ``max_payload + 9`` zero bytes finish the longest frame the device accepts; the
        rest are skipped as bytes outside a frame. A reply they provoke carries an old
        sequence number and is discarded.
        """
        max_payload = (self._config or CoreConfig()).max_payload
        self._transport.send(bytes(max_payload + protocol.FRAME_OVERHEAD))

    def _expect(self, reply, type, what):
        if reply.type != type:
            raise FrameError(f"Reply to {what} must be {type.name}, not {reply.type!r}")
        return reply.payload

    def _adopt(self, cfg):
        if self._reopen is None:
            return
        logger.info("the simulated core becomes the program's: %s", cfg)
        self._transport.close()
        self._transport = self._reopen(cfg)
        self._parser = protocol.FrameParser()
        self._config = None
        if self.hello() != cfg:
            raise DeviceError(f"Simulated core must report the configuration it was built "
                              f"for, {cfg}, not {self._config}")

    # Raw access ---------------------------------------------------------------------------
    def hello(self):
        """Ask the device for its configuration."""
        reply = self._transact(FrameType.HELLO, b"")
        cfg = protocol.parse_hello(self._expect(reply, FrameType.DATA, "HELLO"))
        self._numbers.forget_runs()
        self._config = cfg
        self._parser = protocol.FrameParser(max_payload=max(cfg.max_payload, 64))
        return cfg

    @property
    def config(self):
        """The device's :class:`CoreConfig` (asked with HELLO on first use)."""
        if self._config is None:
            self.hello()
        return self._config

    def write(self, mem, addr, words):
        """Write ``words`` to ``mem`` from ``addr``, in frames of at most ``max_payload``."""
        cfg = self.config
        mem = Memory(mem)
        words = list(words)
        step = protocol.max_write_words(cfg, mem)
        for start in range(0, len(words), step):
            payload = protocol.write_payload(cfg, mem, addr + start, words[start:start + step])
            self._expect(self._transact(FrameType.WRITE, payload), FrameType.ACK, "WRITE")

    def read(self, mem, addr, count):
        """Read ``count`` unsigned words of ``mem`` from ``addr``."""
        cfg = self.config
        mem = Memory(mem)
        depth = memory_depth(cfg, mem)
        if not 0 <= addr <= addr + count <= depth:
            raise FrameError(f"Access to {mem.name} must lie in 0..{depth}, "
                             f"not {addr}..{addr + count}")
        step = protocol.max_read_words(cfg, mem)
        words = []
        for start in range(0, count, step):
            n = min(step, count - start)
            reply = self._transact(FrameType.READ, protocol.read_payload(mem, addr + start, n))
            data = self._expect(reply, FrameType.DATA, "READ")
            if len(data) != n * protocol.word_size(cfg, mem):
                raise FrameError(f"READ reply must hold {n * protocol.word_size(cfg, mem)} "
                                 f"bytes, not {len(data)}")
            words += protocol.bytes_to_words(cfg, mem, data)
        return words

    def run_layers(self, first, count):
        """Execute layers ``first .. first+count-1``; return the RUN counters."""
        reply = self._transact(FrameType.RUN, protocol.run_payload(first, count))
        return protocol.parse_counters(self._expect(reply, FrameType.DATA, "RUN"))


class GoldenDevice(Accelerator):
    """The ``golden`` target: :class:`~gsaccel.sw.golden.GoldenCore` runs the device image.

    Parameters
    ----------
    cfg : CoreConfig, optional
        The core to model. Without one, the core is ``CoreConfig()`` until a program is
        loaded, and then the program's own (DESIGN §4: golden and sim run the program's
        configuration unless one is given).
    """

    def __init__(self, cfg=None):
        super().__init__()
        self._fixed = cfg is not None
        self._cfg = CoreConfig() if cfg is None else cfg
        self.core = self._new_core(self._cfg)

    @staticmethod
    def _new_core(cfg):
        from ..golden import GoldenCore
        return GoldenCore(cfg)

    @property
    def config(self):
        return self._cfg

    def load(self, program):
        if not self._fixed and program.cfg != self._cfg:
            self._cfg = program.cfg
            self.core = self._new_core(self._cfg)
        super().load(program)

    def hello(self):
        return self._cfg

    def write(self, mem, addr, words):
        words = list(words)
        protocol.write_payload(self._cfg, mem, addr, words)     # the same range checks
        # The device stores raw bits; negative ints (ACTS) become their two's complement.
        bits = 8 * protocol.word_size(self._cfg, mem)
        words = [int(w) & ((1 << bits) - 1) for w in words]
        if Memory(mem) == Memory.ACTS:
            # The golden core keeps activations as signed int8 values.
            words = [w - 256 if w > 127 else w for w in words]
        self.core.write(Memory(mem), addr, words)

    def read(self, mem, addr, count):
        protocol.read_payload(mem, addr, count)
        bits = 8 * protocol.word_size(self._cfg, mem)
        return [int(w) & ((1 << bits) - 1) for w in self.core.read(Memory(mem), addr, count)]

    def run_layers(self, first, count):
        counters = self.core.run(first, count)
        return {name: int(counters[name]) for name in COUNTER_NAMES}
