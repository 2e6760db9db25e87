"""8N1 UART PHY: byte streams on one side, the ``tx``/``rx`` lines on the other.

Both directions time their bits with an exact fractional phase accumulator: ``divisor`` is the
number of clock cycles per bit as a rational ``p/q`` (``clk_hz / baud``, e.g. 12 MHz / 3 Mbaud
= 4, 25 MHz / 3 Mbaud = 25/3). Each clock adds ``q`` to the phase; a bit boundary falls when the
phase reaches ``p`` and ``p`` is subtracted. Bit ``k`` therefore starts ``ceil(k * p / q)``
cycles after the start bit: edges jitter by less than one clock and never accumulate error,
so odd ratios work as well as integer ones.

Cores never read the platform; the board top computes the divisor from its clock
(:func:`uart_divisor`).
"""

from fractions import Fraction
from numbers import Rational, Real

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import cdc, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["UARTTransmitter", "UARTReceiver", "uart_divisor", "MAX_DIVISOR_DENOMINATOR"]

#: The phase accumulator's step ``q`` is at most this; float divisors are approximated by the
#: nearest fraction with such a denominator (an error far below one part per million).
MAX_DIVISOR_DENOMINATOR = 1 << 12


def _fraction(divisor, *, minimum, who):
    if isinstance(divisor, bool) or not isinstance(divisor, Real):
        raise TypeError(f"{who} divisor must be a real number of clock cycles per bit, "
                        f"not {divisor!r}")
    if isinstance(divisor, Rational):
        value = Fraction(divisor)
    else:
        value = Fraction(divisor).limit_denominator(MAX_DIVISOR_DENOMINATOR)
    if value < minimum:
        raise ValueError(f"{who} divisor must be at least {minimum} clock cycles per bit, "
                         f"not {divisor!r}")
    if value.denominator > MAX_DIVISOR_DENOMINATOR:
        raise ValueError(f"{who} divisor must have a denominator of at most "
                         f"{MAX_DIVISOR_DENOMINATOR}, not {divisor!r}")
    return value


def uart_divisor(clk_hz, baud):
    """Clock cycles per bit as an exact fraction, ``clk_hz / baud``.

    Raises
    ------
    TypeError
        If either is not a positive number.
    """
    for name, value in (("Clock frequency", clk_hz), ("Baud rate", baud)):
        if isinstance(value, bool) or not isinstance(value, Real) or value <= 0:
            raise TypeError(f"{name} must be a positive number, not {value!r}")
    return (Fraction(clk_hz).limit_denominator(1 << 20)
            / Fraction(baud).limit_denominator(1 << 20)).limit_denominator(MAX_DIVISOR_DENOMINATOR)


class UARTTransmitter(wiring.Component):
    """8N1 transmitter: a start bit, 8 data bits LSB first, one stop bit.

    Parameters
    ----------
    divisor : int, float or Fraction
        Clock cycles per bit, at least 2 (``clk_hz / baud``).

    Members
    -------
    i_stream : ``In(stream.Signature(8))``
        Bytes to send. ``ready`` is high while the line is idle and in the last cycle of a
        stop bit, so back-to-back bytes leave no gap.
    tx : ``Out(1)``
        The serial line, high when idle (a register: no glitches on the pin).
    busy : ``Out(1)``
        High while a frame is on the line.

    Raises
    ------
    TypeError
        If ``divisor`` is not a real number.
    ValueError
        If ``divisor`` is below 2 or its denominator exceeds ``MAX_DIVISOR_DENOMINATOR``.
    """

    def __init__(self, *, divisor):
        self._divisor = _fraction(divisor, minimum=2, who="Transmitter")
        super().__init__({
            "i_stream": In(stream.Signature(8)),
            "tx":       Out(1, init=1),
            "busy":     Out(1),
        })

    @property
    def divisor(self):
        """Clock cycles per bit, an exact :class:`~fractions.Fraction`."""
        return self._divisor

    def elaborate(self, platform):
        m = Module()
        period, step = self._divisor.numerator, self._divisor.denominator

        phase = Signal(range(period + step))
        phase_next = Signal(range(period + 2 * step))
        bit_end = Signal()
        shreg = Signal(9, init=0x1FF)        # data bits then the stop bit, still to send
        remaining = Signal(range(10))        # bits after the one on the line

        m.d.comb += [
            phase_next.eq(phase + step),
            bit_end.eq(self.busy & (phase_next >= period)),
            self.i_stream.ready.eq(~self.busy | (bit_end & (remaining == 0))),
        ]

        # Bit timing: the phase keeps its remainder across bits and across back-to-back bytes.
        with m.If(self.busy):
            with m.If(bit_end):
                m.d.sync += phase.eq(phase_next - period)
            with m.Else():
                m.d.sync += phase.eq(phase_next)

        with m.If(bit_end):
            m.d.sync += [
                self.tx.eq(shreg[0]),
                shreg.eq(Cat(shreg[1:], 1)),
                remaining.eq(remaining - 1),
            ]
            with m.If(remaining == 0):
                m.d.sync += [self.busy.eq(0), self.tx.eq(1)]

        with m.If(self.i_stream.valid & self.i_stream.ready):
            m.d.sync += [
                self.busy.eq(1),
                self.tx.eq(0),                                   # start bit
                shreg.eq(Cat(self.i_stream.payload, 1)),
                remaining.eq(9),
            ]
            with m.If(~self.busy):
                m.d.sync += phase.eq(0)

        return m


class UARTReceiver(wiring.Component):
    """8N1 receiver with start-bit validation, majority-of-3 mid-bit sampling and error flags.

    The line passes a two-stage synchroniser. A low level while idle starts a frame; each bit
    is decided by the majority of three consecutive clock samples around its middle (the
    phase accumulator puts the window's centre half a bit after the detected edge). A start
    bit that reads high in its middle is a glitch and is ignored. The frame ends in the middle
    of the stop bit, so the next start edge is found even from a sender up to ~5% fast.

    Parameters
    ----------
    divisor : int, float or Fraction
        Clock cycles per bit, at least 4 (``clk_hz / baud``).

    Members
    -------
    rx : ``In(1)``
        The serial line (asynchronous; high when idle).
    o_stream : ``Out(stream.Signature(8))``
        Received bytes. One byte is held until taken; a byte that completes while the previous
        one is still held is dropped and flagged on ``overrun``.
    framing_error : ``Out(1)``
        Pulses for one cycle when a stop bit reads low; that byte is dropped and the receiver
        waits for the line to go high (a break sends nothing).
    overrun : ``Out(1)``
        Pulses for one cycle when a byte is dropped because ``o_stream`` was not drained.
    busy : ``Out(1)``
        High while a frame is being received.

    Raises
    ------
    TypeError
        If ``divisor`` is not a real number.
    ValueError
        If ``divisor`` is below 4 or its denominator exceeds ``MAX_DIVISOR_DENOMINATOR``.
    """

    def __init__(self, *, divisor):
        self._divisor = _fraction(divisor, minimum=4, who="Receiver")
        super().__init__({
            "rx":            In(1, init=1),
            "o_stream":      Out(stream.Signature(8)),
            "framing_error": Out(1),
            "overrun":       Out(1),
            "busy":          Out(1),
        })

    @property
    def divisor(self):
        """Clock cycles per bit, an exact :class:`~fractions.Fraction`."""
        return self._divisor

    def elaborate(self, platform):
        m = Module()
        period, step = self._divisor.numerator, self._divisor.denominator

        # Input synchroniser, and the two samples before the current one (majority window).
        rx_sync = Signal(init=1)
        m.submodules.rx_sync = cdc.FFSynchronizer(self.rx, rx_sync, init=1)
        history = Signal(2, init=0b11)
        m.d.sync += history.eq(Cat(rx_sync, history[0]))
        bit_value = Signal()
        m.d.comb += bit_value.eq((rx_sync & history[0]) | (rx_sync & history[1])
                                 | (history[0] & history[1]))

        phase = Signal(range(period + step))
        phase_next = Signal(range(period + 2 * step))
        sample = Signal()
        m.d.comb += [
            phase_next.eq(phase + step),
            sample.eq(phase_next >= period),
        ]
        with m.If(sample):
            m.d.sync += phase.eq(phase_next - period)
        with m.Else():
            m.d.sync += phase.eq(phase_next)

        shreg = Signal(8)
        bit_index = Signal(range(8))

        with m.If(self.o_stream.ready):
            m.d.sync += self.o_stream.valid.eq(0)
        m.d.sync += [self.framing_error.eq(0), self.overrun.eq(0)]

        with m.FSM(init="WAIT_IDLE"):
            with m.State("WAIT_IDLE"):
                # After reset or a framing error, wait for a high line before the next frame.
                with m.If(rx_sync):
                    m.next = "IDLE"

            with m.State("IDLE"):
                with m.If(~rx_sync):
                    # The first sample window is centred half a bit after this edge: its
                    # centre is the sample before the one taken when the phase wraps.
                    m.d.sync += phase.eq(period // 2)
                    m.next = "START"

            with m.State("START"):
                m.d.comb += self.busy.eq(1)
                with m.If(sample):
                    with m.If(bit_value):
                        m.next = "IDLE"                          # glitch, not a start bit
                    with m.Else():
                        m.d.sync += bit_index.eq(0)
                        m.next = "DATA"

            with m.State("DATA"):
                m.d.comb += self.busy.eq(1)
                with m.If(sample):
                    m.d.sync += [
                        shreg.eq(Cat(shreg[1:], bit_value)),
                        bit_index.eq(bit_index + 1),
                    ]
                    with m.If(bit_index == 7):
                        m.next = "STOP"

            with m.State("STOP"):
                m.d.comb += self.busy.eq(1)
                with m.If(sample):
                    with m.If(~bit_value):
                        m.d.sync += self.framing_error.eq(1)
                        m.next = "WAIT_IDLE"
                    with m.Else():
                        with m.If(self.o_stream.valid & ~self.o_stream.ready):
                            m.d.sync += self.overrun.eq(1)
                        with m.Else():
                            m.d.sync += [
                                self.o_stream.payload.eq(shreg),
                                self.o_stream.valid.eq(1),
                            ]
                        m.next = "IDLE"

        return m
