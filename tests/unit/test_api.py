"""The public entry points that take a board: gsaccel.compile(..., board=) and
gsaccel.capacity."""

import pytest
import torch
from torch import nn

import gsaccel
from gsaccel.boards.catalog import BOARDS
from gsaccel.sw.errors import BoardNotFound, ShapeError


def _model():
    torch.manual_seed(0)
    # 888 weights: 444 group words on the iCEBreaker's V = 2 core, one load on every board.
    return nn.Sequential(nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 5))


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_compile_for_a_board_targets_its_core(board):
    x = torch.rand(16, 32)
    program = gsaccel.compile(_model(), x, board=board)
    assert program.cfg == BOARDS[board].config
    report = gsaccel.capacity(_model(), x, board=board)
    assert report.status == "fits"
    assert {limit.field for limit in report.limits} == {"bank_depth", "weight_depth",
                                                         "row_depth", "layer_depth"}
    assert all(limit.need > 0 and limit.have == getattr(program.cfg, limit.field)
               for limit in report.limits)


def test_unknown_board_and_board_with_cfg_are_refused():
    x = torch.rand(4, 32)
    with pytest.raises(BoardNotFound, match="ulx3s-85f"):
        gsaccel.compile(_model(), x, board="ulx3s")
    with pytest.raises(ShapeError, match="^Give a board or a cfg, not both"):
        gsaccel.compile(_model(), x, board="icebreaker", cfg=gsaccel.CoreConfig())
