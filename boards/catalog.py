"""The boards gsaccel builds for: pins, clocks, LEDs, the core size that fits, how to flash.

Each board pairs an amaranth-boards platform with the choices of its top: the core clock (a PLL
output where the oscillator is slow), the UART rate its USB bridge carries, which LED shows
what, and the largest :class:`~gsaccel.hw.config.CoreConfig` that fits and meets timing
(measured with ``gsaccel build``; see docs/boards.md).
"""

from dataclasses import dataclass, field

from amaranth.build import Attrs
from amaranth.vendor import LatticeECP5Platform
from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.orangecrab_r0_2 import OrangeCrabR0_2_25FPlatform
from amaranth_boards.resources import UARTResource
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from ..hw.config import CoreConfig
from ..sw.errors import BoardNotFound

__all__ = ["Board", "BOARDS", "get_board", "OrangeCrab25FPlatform"]


@dataclass(frozen=True)
class Board:
    """One supported board.

    Attributes
    ----------
    name : str
        Command-line name.
    title : str
    family : str
        ``"ice40"`` or ``"ecp5"``.
    device : str
        FPGA part, for reports.
    osc_hz : float
        Board oscillator.
    clk_hz : float
        Default core clock (a PLL makes it when it differs from ``osc_hz``).
    baud : int
        Default UART rate.
    config : CoreConfig
        Default core size.
    uart : tuple
        ``(resource, number)`` of the serial pins.
    leds : dict
        Role (``idle``, ``busy``, ``error``) to ``(resource, number, subsignal or None)``.
    reset_button : tuple or None
        ``(resource, number)`` of a button that resets the design.
    bootloader_button : tuple or None
        ``(resource, number)`` of a button that reboots into the USB bootloader instead.
    bitstream_ext : str
        Extension of the file ``gsaccel flash`` loads.
    """
    name: str
    title: str
    family: str
    device: str
    platform_class: type
    osc_hz: float
    clk_hz: float
    baud: int
    config: CoreConfig
    uart: tuple
    leds: dict
    reset_button: tuple = None
    bootloader_button: tuple = None
    bitstream_ext: str = "bit"
    extra_resources: tuple = field(default=())
    notes: str = ""

    def platform(self):
        """A fresh platform instance with this board's extra resources added."""
        platform = self.platform_class()
        if self.extra_resources:
            platform.add_resources(list(self.extra_resources))
        return platform


class OrangeCrab25FPlatform(OrangeCrabR0_2_25FPlatform):
    """The OrangeCrab r0.2 25F platform without its ``dfu-suffix`` build step: that tool is not
    on PyPI, so :func:`~gsaccel.boards.build.add_dfu_suffix` writes the suffix instead."""

    @property
    def required_tools(self):
        return LatticeECP5Platform.required_tools.fget(self)

    @property
    def command_templates(self):
        return LatticeECP5Platform.command_templates.fget(self)


ICEBREAKER = Board(
    name="icebreaker",
    title="1BitSquared iCEBreaker (iCE40UP5K-SG48)",
    family="ice40",
    device="iCE40UP5K",
    platform_class=ICEBreakerPlatform,
    osc_hz=12e6,
    # 30 MHz from the PLL (12 MHz * 80 / 32); 3 Mbaud (the FT2232H's top rate) is then 10
    # clocks per bit.
    clk_hz=30e6,
    baud=3_000_000,
    # V = 2 shift lanes whose scratchpad banks are the four SPRAMs, two per bank
    # (CoreConfig.bank_halves: a layer reads one half and writes the other): 32768 words per
    # bank, 65536 activations, where the 30 EBR (15 KB) left V = 4 with 128 words per bank and
    # no MLPerf Tiny network fitting. The row memory and weights go to EBR: 512 group words
    # and 512 row records; a bigger program runs in phases, a bigger layer in row-group
    # slices. 3289 LUTs, 1861 FFs, 26/30 EBR, 4/4 SPRAM, Fmax 33.5 MHz (seed 1). No deep
    # pipeline (its registers cost a logic cell each and 30 MHz does not need them). No basis
    # unit: it needs nine multipliers (the UP5K has eight DSPs), 1100 LUTs and V >= 4; a
    # two-vector result queue saves flip-flops. The serial writer: a row line would be V
    # records wide. docs/boards.md.
    config=CoreConfig(lanes=2, bank_depth=32768, weight_depth=512, row_depth=512,
                      layer_depth=32, result_queue=4, max_payload=256, basis=False,
                      deep_pipeline=False, vector_writer=False, bank_halves=True),
    uart=("uart", 0),
    # The break-off PMOD's LEDs are attached at PMOD2 when the board ships.
    leds={"idle": ("led_g", 0, None), "error": ("led_r", 0, None),
          "busy": ("led_g", 1, None)},
    reset_button=("button", 0),
    bitstream_ext="bin",
    extra_resources=tuple(ICEBreakerPlatform.break_off_pmod),
)

ULX3S_85F = Board(
    name="ulx3s-85f",
    title="Radiona ULX3S (LFE5U-85F-6BG381C)",
    family="ecp5",
    device="LFE5U-85F",
    platform_class=ULX3S_85F_Platform,
    osc_hz=25e6,
    # V = 16 at 68.75 MHz = 25 MHz * 11 / 4: 69.4 MHz (seed 1) and 72.3 MHz (seed 2) with
    # 25521 LUT, 11886 FF, 188 of 208 DP16KD, 9 DSP (docs/boards.md). What took it there
    # from 56.25 MHz: router2's timing-driven rip-up (--tmg-ripup: 61.6 -> 69.8 MHz on one
    # placement) and no wide enables from far away (the writer's stage 1 and the row
    # stream's ready, the accumulators' clear). 3 Mbaud (the FT231X's top rate) is 22 11/12
    # clocks per bit. 8192 words per bank (131072 activations: MobileNetV1-0.25's peak of
    # 7108 per bank, protocol v6's 24-bit addresses) and 4096 group words (64 k weights: a
    # GS-75 % ResNet-8, MobileNetV1 or DS-CNN): about 64 + 90 of the 208 DP16KD.
    clk_hz=68.75e6,
    baud=3_000_000,
    config=CoreConfig(lanes=16, bank_depth=8192, weight_depth=4096, row_depth=256,
                      layer_depth=64, result_queue=64, max_payload=1024),
    uart=("uart", 0),
    leds={"idle": ("led", 0, None), "busy": ("led", 1, None), "error": ("led", 7, None)},
    reset_button=("button_fire", 0),
)

ORANGECRAB = Board(
    name="orangecrab",
    title="Good Stuff Department OrangeCrab r0.2 (LFE5U-25F-8MG285C)",
    family="ecp5",
    device="LFE5U-25F",
    platform_class=OrangeCrab25FPlatform,
    osc_hz=48e6,
    # The USB port carries the DFU bootloader, not a serial bridge: the UART is on the
    # Feather header's pins 0 (RX) and 1 (TX), for an external 3.3 V USB-serial adapter.
    # The oscillator's 48 MHz, no PLL; 3 Mbaud is 16 clocks per bit. V = 16 with 2048 words
    # per bank (DS-CNN's 1256 fit), 1024 group words and the serial writer: 16486 LUT, 8232
    # FF, 42/56 DP16KD, 9 DSP, Fmax 112.1 MHz (`gsaccel build --board orangecrab`, seed 1).
    # With the vector writer V = 16 does not fit the 25F (59/56 DP16KD, 25973/24288 LUT).
    clk_hz=48e6,
    baud=3_000_000,
    config=CoreConfig(lanes=16, bank_depth=2048, weight_depth=1024, row_depth=1024,
                      layer_depth=32, result_queue=32, max_payload=1024, vector_writer=False),
    uart=("uart", 0),
    leds={"idle": ("rgb_led", 0, "g"), "busy": ("rgb_led", 0, "b"),
          "error": ("rgb_led", 0, "r")},
    bootloader_button=("button", 0),
    extra_resources=(UARTResource(0, rx="0", tx="1", conn=("io", 0),
                                  attrs=Attrs(IO_TYPE="LVCMOS33", PULLMODE="UP")),),
    notes="UART on header pins 0 (RX, FPGA input) and 1 (TX); the button reboots into DFU",
)

#: Boards by command-line name.
BOARDS = {board.name: board for board in (ICEBREAKER, ULX3S_85F, ORANGECRAB)}


def get_board(name):
    """The :class:`Board` called ``name``.

    Raises
    ------
    BoardNotFound
        If no board has that name.
    """
    try:
        return BOARDS[name]
    except (KeyError, TypeError):
        raise BoardNotFound(f"Board must be one of {', '.join(BOARDS)}, not {name!r}") from None
