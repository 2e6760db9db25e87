"""PLL settings and instances for iCE40 (``SB_PLL40_PAD``) and ECP5 (``EHXPLLL``).

The solvers search the same divider spaces as Project IceStorm's ``icepll`` and Project
Trellis's ``ecppll`` and return the setting closest to the requested output; the board top
constrains the output net at the frequency actually reached, so timing is checked at the real
clock.
"""

from dataclasses import dataclass

from amaranth.hdl import Instance

__all__ = ["ICE40PLLSetting", "ECP5PLLSetting", "ice40_pll_setting", "ecp5_pll_setting",
           "ice40_pll", "ecp5_pll"]


@dataclass(frozen=True)
class ICE40PLLSetting:
    """Dividers of an iCE40 PLL in SIMPLE feedback mode: ``f_out = f_in * (divf + 1) /
    ((divr + 1) * 2**divq)``."""
    f_in: float
    divr: int
    divf: int
    divq: int

    @property
    def f_pfd(self):
        return self.f_in / (self.divr + 1)

    @property
    def f_vco(self):
        return self.f_pfd * (self.divf + 1)

    @property
    def f_out(self):
        return self.f_vco / (1 << self.divq)

    @property
    def filter_range(self):
        # Loop filter setting for the phase detector frequency (iCE40 sysCLOCK PLL guide).
        for limit, value in ((17e6, 1), (26e6, 2), (44e6, 3), (66e6, 4), (101e6, 5)):
            if self.f_pfd < limit:
                return value
        return 6


@dataclass(frozen=True)
class ECP5PLLSetting:
    """Dividers of an ECP5 EHXPLLL with CLKOP feedback: ``f_out = f_in * clkfb_div /
    clki_div``, VCO = ``f_out * clkop_div``."""
    f_in: float
    clki_div: int
    clkfb_div: int
    clkop_div: int

    @property
    def f_out(self):
        return self.f_in * self.clkfb_div / self.clki_div

    @property
    def f_vco(self):
        return self.f_out * self.clkop_div


def _check_freqs(f_in, f_out, lo, hi, family):
    for name, value in (("Input frequency", f_in), ("Output frequency", f_out)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise TypeError(f"{name} must be a positive number of hertz, not {value!r}")
    if not lo <= f_out <= hi:
        raise ValueError(f"{family} PLL output frequency must be between {lo / 1e6:g} and "
                         f"{hi / 1e6:g} MHz, not {f_out / 1e6:g} MHz")


def ice40_pll_setting(f_in, f_out):
    """The iCE40 PLL setting whose output is closest to ``f_out`` (icepll's search).

    Raises
    ------
    TypeError
        If a frequency is not a positive number.
    ValueError
        If ``f_out`` is outside 16–275 MHz or no divider setting reaches it.
    """
    _check_freqs(f_in, f_out, 16e6, 275e6, "iCE40")
    best = None
    for divr in range(16):
        f_pfd = f_in / (divr + 1)
        if not 10e6 <= f_pfd <= 133e6:
            continue
        for divf in range(128):
            f_vco = f_pfd * (divf + 1)
            if not 533e6 <= f_vco <= 1066e6:
                continue
            for divq in range(1, 7):
                setting = ICE40PLLSetting(f_in, divr, divf, divq)
                if best is None or abs(setting.f_out - f_out) < abs(best.f_out - f_out):
                    best = setting
    if best is None:
        raise ValueError(f"iCE40 PLL cannot make {f_out / 1e6:g} MHz from "
                         f"{f_in / 1e6:g} MHz")
    return best


def ecp5_pll_setting(f_in, f_out):
    """The ECP5 EHXPLLL setting whose output is closest to ``f_out`` (ecppll's search).

    Raises
    ------
    TypeError
        If a frequency is not a positive number.
    ValueError
        If ``f_out`` is outside 10–400 MHz.
    """
    _check_freqs(f_in, f_out, 10e6, 400e6, "ECP5")
    best = None
    for clki_div in range(1, 129):
        if f_in / clki_div < 3.125e6:
            break
        for clkfb_div in range(1, 81):
            out = f_in * clkfb_div / clki_div
            if not 10e6 <= out <= 400e6:
                continue
            # The VCO divider nearest the middle of the 400-800 MHz VCO range.
            clkop_div = max(1, min(128, round(600e6 / out)))
            setting = ECP5PLLSetting(f_in, clki_div, clkfb_div, clkop_div)
            if not 400e6 <= setting.f_vco <= 800e6:
                continue
            if best is None or abs(out - f_out) < abs(best.f_out - f_out):
                best = setting
    return best


def ice40_pll(setting, pad, clk_out, locked):
    """An ``SB_PLL40_PAD`` fed straight from the clock pad ``pad`` (a ``dir="-"`` request)."""
    return Instance(
        "SB_PLL40_PAD",
        p_FEEDBACK_PATH="SIMPLE",
        p_DIVR=setting.divr,
        p_DIVF=setting.divf,
        p_DIVQ=setting.divq,
        p_FILTER_RANGE=setting.filter_range,
        i_PACKAGEPIN=pad,
        i_RESETB=1,
        i_BYPASS=0,
        o_PLLOUTGLOBAL=clk_out,
        o_LOCK=locked,
    )


def ecp5_pll(setting, clk_in, clk_out, locked):
    """An ``EHXPLLL`` with CLKOP feedback, annotated with its frequencies for nextpnr."""
    return Instance(
        "EHXPLLL",
        a_FREQUENCY_PIN_CLKI=f"{setting.f_in / 1e6:g}",
        a_FREQUENCY_PIN_CLKOP=f"{setting.f_out / 1e6:g}",
        a_ICP_CURRENT="12",
        a_LPF_RESISTOR="8",
        a_MFG_ENABLE_FILTEROPAMP="1",
        a_MFG_GMCREF_SEL="2",
        p_PLLRST_ENA="DISABLED",
        p_INTFB_WAKE="DISABLED",
        p_STDBY_ENABLE="DISABLED",
        p_DPHASE_SOURCE="DISABLED",
        p_OUTDIVIDER_MUXA="DIVA",
        p_OUTDIVIDER_MUXB="DIVB",
        p_OUTDIVIDER_MUXC="DIVC",
        p_OUTDIVIDER_MUXD="DIVD",
        p_CLKI_DIV=setting.clki_div,
        p_CLKOP_ENABLE="ENABLED",
        p_CLKOP_DIV=setting.clkop_div,
        p_CLKOP_CPHASE=setting.clkop_div - 1,
        p_CLKOP_FPHASE=0,
        p_FEEDBK_PATH="CLKOP",
        p_CLKFB_DIV=setting.clkfb_div,
        i_RST=0,
        i_STDBY=0,
        i_CLKI=clk_in,
        o_CLKOP=clk_out,
        i_CLKFB=clk_out,
        i_PHASESEL0=0,
        i_PHASESEL1=0,
        i_PHASEDIR=1,
        i_PHASESTEP=1,
        i_PHASELOADREG=1,
        i_PLLWAKESYNC=0,
        i_ENCLKOP=0,
        o_LOCK=locked,
    )
