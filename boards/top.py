"""The board top: clock and reset, the UART PHY, byte FIFOs, a byte-stream core and LEDs.

Only this module and the board descriptions touch ``platform``. The core is any component with
``i_stream: In(stream.Signature(8))``, ``o_stream: Out(stream.Signature(8))``, ``busy: Out(1)``
and ``error: Out(1)`` — :class:`~gsaccel.hw.core.GsaccelCore`, or :class:`LoopbackCore` to check
a board's serial link without the accelerator.
"""

from amaranth.hdl import Cat, ClockDomain, ClockSignal, Elaboratable, Module, Signal
from amaranth.lib import cdc, fifo, io, stream, wiring
from amaranth.lib.wiring import In, Out

from ..hw.uart import UARTReceiver, UARTTransmitter, uart_divisor
from .pll import ecp5_pll, ecp5_pll_setting, ice40_pll, ice40_pll_setting

__all__ = ["BoardTop", "SerialCore", "LoopbackCore", "PulseStretcher"]

# LED timing runs on a tick every 2**14 clocks (~1.8 kHz at 30 MHz).
_PRESCALER_BITS = 14


class LoopbackCore(wiring.Component):
    """Echoes every byte back through a small FIFO; ``busy`` while bytes are queued.

    Parameters
    ----------
    depth : int
        FIFO depth in bytes.

    Members
    -------
    i_stream : ``In(stream.Signature(8))``
    o_stream : ``Out(stream.Signature(8))``
    busy : ``Out(1)``
    error : ``Out(1)``
        Always low (the echo has no failure mode).
    """

    def __init__(self, *, depth=16):
        if not isinstance(depth, int) or depth <= 0:
            raise TypeError(f"FIFO depth must be a positive integer, not {depth!r}")
        self._depth = depth
        super().__init__({
            "i_stream": In(stream.Signature(8)),
            "o_stream": Out(stream.Signature(8)),
            "busy":     Out(1),
            "error":    Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.queue = queue = fifo.SyncFIFOBuffered(width=8, depth=self._depth)
        wiring.connect(m, wiring.flipped(self.i_stream), queue.w_stream)
        wiring.connect(m, queue.r_stream, wiring.flipped(self.o_stream))
        m.d.comb += self.busy.eq(queue.r_rdy)
        return m


class PulseStretcher(wiring.Component):
    """Holds ``o`` high from a cycle in which ``i`` is high until ``ticks`` pulses of ``tick``
    have passed (LEDs would not show single-cycle events).

    A shared prescaler supplies ``tick``, so the counter here stays a few bits wide and off the
    critical path.

    Parameters
    ----------
    ticks : int

    Members
    -------
    i : ``In(1)``
    tick : ``In(1)``
    o : ``Out(1)``
    """

    def __init__(self, *, ticks):
        if not isinstance(ticks, int) or ticks <= 0:
            raise TypeError(f"Stretch length must be a positive integer, not {ticks!r}")
        self._ticks = ticks
        super().__init__({"i": In(1), "tick": In(1), "o": Out(1)})

    def elaborate(self, platform):
        m = Module()
        remaining = Signal(range(self._ticks + 1))
        with m.If(self.i):
            m.d.sync += remaining.eq(self._ticks)
        with m.Elif(self.tick & (remaining != 0)):
            m.d.sync += remaining.eq(remaining - 1)
        m.d.comb += self.o.eq(self.i | (remaining != 0))
        return m


class SerialCore(wiring.Component):
    """A byte-stream core behind a UART: what a board top wires to its pins, without the
    platform (so it can be simulated bit by bit).

    Parameters
    ----------
    core : wiring.Component
        The byte-stream core (see the module docstring).
    divisor : int, float or Fraction
        Clock cycles per UART bit, at least 4.
    rx_fifo_depth : int
        Bytes buffered between the receiver and the core, so the host may stream a frame
        while the core is still busy with the previous one.
    tx_fifo_depth : int
        Bytes queued between the core and the transmitter (0: none), which takes the UART's
        bit timing out of the core's reply handshake.

    Members
    -------
    rx : ``In(1)``
        Serial line from the host (asynchronous; a synchroniser is inside).
    tx : ``Out(1)``
        Serial line to the host.
    busy : ``Out(1)``
        The core is busy or a byte is on either line.
    error : ``Out(1)``
        The core reports an error, or the receiver saw a framing error or an overrun.
    """

    def __init__(self, *, core, divisor, rx_fifo_depth=16, tx_fifo_depth=0):
        if not isinstance(rx_fifo_depth, int) or rx_fifo_depth <= 0:
            raise TypeError(f"Receive FIFO depth must be a positive integer, "
                            f"not {rx_fifo_depth!r}")
        self._core = core
        self._rx_fifo_depth = rx_fifo_depth
        self._tx_fifo_depth = tx_fifo_depth
        # Built here so that a clock too slow for the rate fails before elaboration.
        self._rx = UARTReceiver(divisor=divisor)
        self._tx = UARTTransmitter(divisor=divisor)
        super().__init__({
            "rx":    In(1, init=1),
            "tx":    Out(1, init=1),
            "busy":  Out(1),
            "error": Out(1),
        })

    @property
    def divisor(self):
        return self._rx.divisor

    def elaborate(self, platform):
        m = Module()
        m.submodules.rx = rx = self._rx
        m.submodules.tx = tx = self._tx
        m.submodules.rx_fifo = rx_fifo = fifo.SyncFIFOBuffered(width=8,
                                                                depth=self._rx_fifo_depth)
        m.submodules.core = core = self._core
        wiring.connect(m, rx.o_stream, rx_fifo.w_stream)
        wiring.connect(m, rx_fifo.r_stream, core.i_stream)
        if self._tx_fifo_depth:
            # A small queue before the transmitter, so that the UART's bit timing is no part
            # of the core's reply handshake (a long path from the baud phase into the core's
            # FSMs at 100 MHz).
            m.submodules.tx_fifo = tx_fifo = fifo.SyncFIFOBuffered(
                width=8, depth=self._tx_fifo_depth)
            wiring.connect(m, core.o_stream, tx_fifo.w_stream)
            wiring.connect(m, tx_fifo.r_stream, tx.i_stream)
            tx_queued = tx_fifo.r_rdy
        else:
            wiring.connect(m, core.o_stream, tx.i_stream)
            tx_queued = 0
        m.d.comb += [
            rx.rx.eq(self.rx),
            self.tx.eq(tx.tx),
            self.busy.eq(core.busy | rx.busy | tx.busy | rx_fifo.r_rdy | tx_queued),
            self.error.eq(core.error | rx.framing_error | rx.overrun),
        ]
        return m


class BoardTop(Elaboratable):
    """A board design: ``core`` behind a UART at ``baud`` on the board's serial pins.

    Parameters
    ----------
    board : :class:`~gsaccel.boards.catalog.Board`
        Which board (pins, clock, LEDs).
    core : wiring.Component
        The byte-stream core (see the module docstring).
    clk_hz : float
        Core clock. If it differs from the board oscillator, a PLL makes it; the real PLL
        output frequency is available as :attr:`clk_hz` after construction.
    baud : int
        UART rate; the divisor ``clk_hz / baud`` must be at least 4.
    rx_fifo_depth : int
        Bytes buffered between the receiver and the core, so the host may stream a frame
        while the core is still busy with the previous one.
    """

    def __init__(self, *, board, core, clk_hz, baud, rx_fifo_depth=16):
        self._board = board
        self._core = core
        self._baud = baud
        self._rx_fifo_depth = rx_fifo_depth
        if abs(clk_hz - board.osc_hz) < 1:
            self._pll = None
            self._clk_hz = board.osc_hz
        elif board.family == "ice40":
            self._pll = ice40_pll_setting(board.osc_hz, clk_hz)
            self._clk_hz = self._pll.f_out
        else:
            self._pll = ecp5_pll_setting(board.osc_hz, clk_hz)
            self._clk_hz = self._pll.f_out
        self._divisor = uart_divisor(self._clk_hz, baud)
        # The ECP5 boards run at 100 MHz, where the transmitter's handshake needs the queue;
        # an iCE40 at 30 MHz does not, and the queue's flip-flops are logic cells there.
        self._serial = SerialCore(core=core, divisor=self._divisor,
                                  rx_fifo_depth=rx_fifo_depth,
                                  tx_fifo_depth=4 if board.family == "ecp5" else 0)

    @property
    def clk_hz(self):
        return self._clk_hz

    @property
    def divisor(self):
        return self._divisor

    @property
    def pll(self):
        return self._pll

    def elaborate(self, platform):
        m = Module()
        board = self._board

        # Clock and reset -----------------------------------------------------------------
        m.domains.sync = cd_sync = ClockDomain("sync")
        locked = Signal()
        if self._pll is None:
            m.d.comb += [ClockSignal("sync").eq(self._input(m, platform, platform.default_clk)),
                         locked.eq(1)]
        else:
            # nextpnr derives the clock constraint from the PLL's dividers (an explicit one
            # would name a net that synthesis renames).
            clk_pll = Signal(name="clk_pll")
            if board.family == "ice40":
                pad = platform.request(platform.default_clk, 0, dir="-")
                m.submodules.pll = ice40_pll(self._pll, pad.io, clk_pll, locked)
            else:
                clk = self._input(m, platform, platform.default_clk)
                m.submodules.pll = ecp5_pll(self._pll, clk, clk_pll, locked)
            m.d.comb += ClockSignal("sync").eq(clk_pll)

        reset_request = ~locked
        if board.reset_button is not None:
            reset_request = reset_request | self._input(m, platform, *board.reset_button)
        m.submodules.reset_sync = cdc.ResetSynchronizer(reset_request, domain="sync")
        if board.bootloader_button is not None:
            # Pulling PROGRAMN reloads the configuration from flash, i.e. the bootloader, so
            # the board can be re-flashed without unplugging it.
            button = self._input(m, platform, *board.bootloader_button)
            m.d.comb += self._output(m, platform, "program", 0).eq(button)

        # Serial link -----------------------------------------------------------------------
        m.submodules.serial = serial = self._serial
        uart = platform.request(*board.uart, dir="-")
        m.submodules.uart_rx_buffer = rx_buffer = io.Buffer("i", uart.rx)
        m.submodules.uart_tx_buffer = tx_buffer = io.Buffer("o", uart.tx)
        m.d.comb += [serial.rx.eq(rx_buffer.i), tx_buffer.o.eq(serial.tx)]

        # Status LEDs: idle, busy (stretched to ~50 ms), error (stretched to ~1 s). -------------
        prescaler = Signal(_PRESCALER_BITS)
        tick = Signal()
        m.d.sync += Cat(prescaler, tick).eq(prescaler + 1)
        tick_hz = self._clk_hz / (1 << _PRESCALER_BITS)
        m.submodules.busy_led = busy_led = PulseStretcher(ticks=max(1, round(tick_hz / 20)))
        m.submodules.error_led = error_led = PulseStretcher(ticks=max(1, round(tick_hz)))
        m.d.comb += [
            busy_led.tick.eq(tick),
            error_led.tick.eq(tick),
            busy_led.i.eq(serial.busy),
            error_led.i.eq(serial.error),
        ]
        status = {"idle": ~busy_led.o & ~error_led.o, "busy": busy_led.o,
                  "error": error_led.o}
        requested = {}
        for role, (name, number, subsignal) in board.leds.items():
            if (name, number) not in requested:
                requested[name, number] = platform.request(name, number, dir="-")
            port = requested[name, number]
            port = getattr(port, subsignal) if subsignal else port
            m.submodules[f"led_{role}_buffer"] = buffer = io.Buffer("o", port)
            m.d.comb += buffer.o.eq(status[role])
        return m

    @staticmethod
    def _input(m, platform, name, number=0):
        """The value of a one-pin input resource, through an ``io.Buffer``."""
        m.submodules[f"{name}_{number}_buffer"] = buffer = io.Buffer(
            "i", platform.request(name, number, dir="-"))
        return buffer.i

    @staticmethod
    def _output(m, platform, name, number=0):
        """The signal driving a one-pin output resource, through an ``io.Buffer``."""
        m.submodules[f"{name}_{number}_buffer"] = buffer = io.Buffer(
            "o", platform.request(name, number, dir="-"))
        return buffer.o
