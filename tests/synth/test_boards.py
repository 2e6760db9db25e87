# amaranth: UnusedElaboratable=no
"""Real bitstream builds with the YoWASP toolchain (tier 4).

The default suite builds the iCEBreaker serial-link design and a small iCEBreaker core; the
full-size board builds are ``slow``.
"""

import dataclasses
import json

import pytest

from gsaccel.boards.build import FitError, build_board
from gsaccel.boards.catalog import BOARDS
from gsaccel.hw.config import CoreConfig

pytestmark = pytest.mark.synth

#: A core small enough to build in a few minutes on the iCEBreaker.
SMALL_ICEBREAKER = CoreConfig(lanes=2, bank_depth=32, weight_depth=64, row_depth=64,
                              layer_depth=4, result_queue=2, max_payload=64)


def check_result(result, board, out_dir):
    assert result.meets_timing, f"Fmax {result.fmax_mhz:.1f} < {result.target_mhz:.1f} MHz"
    for kind, (used, avail) in result.resources.items():
        assert 0 <= used <= avail, kind
    assert result.resources["LUT"][0] > 0 and result.resources["FF"][0] > 0
    bitstream = out_dir / f"top.{board.bitstream_ext}"
    assert result.bitstream == bitstream and bitstream.stat().st_size > 10_000
    record = json.loads((out_dir / "result.json").read_text())
    assert record["fmax_mhz"] == result.fmax_mhz and record["board"] == board.name


def test_icebreaker_loopback(tmp_path):
    board = BOARDS["icebreaker"]
    # At 30 MHz, so that the PLL path (SB_PLL40_PAD, 12 -> 30 MHz) is built too.
    result = build_board(board, out_dir=tmp_path, loopback=True, clk_hz=30e6)
    check_result(result, board, tmp_path)
    assert result.target_mhz == 30.0 and result.config is None
    # The UART echo needs the two FIFOs' block RAMs and a few hundred LUTs, not more.
    assert result.resources["LUT"][0] < 1000 and result.resources["BRAM"][0] <= 2


def test_icebreaker_small_core(tmp_path):
    board = BOARDS["icebreaker"]
    result = build_board(board, config=SMALL_ICEBREAKER, out_dir=tmp_path)
    check_result(result, board, tmp_path)
    assert result.config == SMALL_ICEBREAKER


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BOARDS))
def test_board_default_core(tmp_path, name):
    board = BOARDS[name]
    result = build_board(board, out_dir=tmp_path, timeout=7200)
    check_result(result, board, tmp_path)
    if board.name == "orangecrab":
        dfu = (tmp_path / "top.dfu").read_bytes()
        assert dfu[:-16] == result.bitstream.read_bytes() and dfu[-8:-5] == b"UFD"


@pytest.mark.slow
def test_icebreaker_too_big(tmp_path):
    too_big = dataclasses.replace(BOARDS["icebreaker"].config, lanes=16, bank_depth=256,
                                  result_queue=16)
    with pytest.raises(FitError, match=r"^Design does not fit the iCE40UP5K of icebreaker: "
                                       r"ICESTORM_\w+ \d+/\d+"):
        build_board("icebreaker", config=too_big, out_dir=tmp_path)
