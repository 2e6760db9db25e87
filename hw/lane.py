"""One lane's product: an int8 activation times a weight code, sign-extended to the
accumulator width. A pow-2 code needs only a barrel shifter; int8 needs a multiplier."""

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib.wiring import In, Out

from .component import CoreComponent
from .layouts import pow2_code_layout

__all__ = ["Lane", "lane_nonzero"]


def lane_nonzero(cfg, value):
    """Whether a lane's value code (a ``cfg.value_width``-bit Value) is a nonzero weight."""
    if cfg.encoding == "pow2":
        return pow2_code_layout()(value).nonzero
    return value != 0


class Lane(CoreComponent):
    """Product of one activation and one weight code.

    ``cfg.encoding == "pow2"``: ``product = ±(x << exp)`` if ``nonzero`` else 0 (a shift lane,
    no multiplier). ``"int8"``: ``product = x * w`` with ``w`` the code read as signed 8 bits.

    Parameters
    ----------
    cfg : CoreConfig
        Checked by :class:`~gsaccel.hw.component.CoreComponent` (``TypeError`` if it is not one).
    pipelined : bool
        Register in the middle: after the activation's negation (pow2) or before the
        multiplier (int8), so ``product`` is that of the previous cycle's ``x`` and ``w``.
        Otherwise the product is combinational.

    Members
    -------
    x : In(signed(8))
        Activation.
    w : In(cfg.value_width)
        Weight code (``pow2_code_layout`` bits or a two's-complement int8).
    product : Out(signed(cfg.acc_width))
        Exact product, sign-extended.
    """

    def __init__(self, cfg, *, pipelined=False):
        self._pipelined = bool(pipelined)
        super().__init__(cfg)

    def members(self, cfg):
        return {
            "x":       In(signed(8)),
            "w":       In(cfg.value_width),
            "product": Out(signed(cfg.acc_width)),
        }

    def elaborate(self, platform):
        m = Module()
        stage = m.d.sync if self._pipelined else m.d.comb
        if self._cfg.encoding == "pow2":
            code = pow2_code_layout()(self.w)
            # Zero and negate the 8-bit activation (9 bits: -(-128) = 128) before the barrel
            # shift, not the 24-bit product after it: a third fewer LUTs per lane. The shift
            # of a signed value keeps its sign: 9 + 15 bits never wrap in acc_width >= 24.
            signed_x = Signal(signed(9))
            exp = Signal.like(code.exp)
            stage += [signed_x.eq(Mux(code.nonzero, Mux(code.sign, -self.x, self.x), 0)),
                      exp.eq(code.exp)]
            m.d.comb += self.product.eq(signed_x << exp)
        else:
            x, w = Signal.like(self.x), Signal(signed(8))
            stage += [x.eq(self.x), w.eq(self.w.as_signed())]
            m.d.comb += self.product.eq(x * w)
        return m
