"""Every board's default core holds the demo's network: the digits MLP (64-128-64-10)
pruned to GS-gather packs into its weight, row and layer memories and its buffers, and the
golden model runs it. (gsaccel build checks that the core fits the FPGA; this checks that
the core it fits is big enough for the model it is for.)

The iCEBreaker's 512 group words (all of its block RAM that the scratchpad leaves) hold
4096 weights: the demo's 75 % (4256 weights, 532 groups at V = 8) does not fit, 87.5 % does.
"""

import numpy as np
import pytest
import torch

from gsaccel.boards.catalog import BOARDS
from gsaccel.sw.compile import compile
from gsaccel.sw.runtime.device import GoldenDevice
from gsaccel.sw.models import DigitsMLP
from gsaccel.sw.prune import prune


SPARSITY = {"icebreaker": 0.875, "ulx3s-85f": 0.75, "orangecrab": 0.75}


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_default_core_holds_the_demo_network(name):
    cfg = BOARDS[name].config
    torch.manual_seed(0)
    model = DigitsMLP()
    prune(model, "gs-gather", SPARSITY[name], lanes=cfg.lanes)
    x = torch.rand(64, 64) * 16            # digits pixels are 0..16
    program = compile(model, x, cfg=cfg)
    stats = program.stats()
    assert 0 < stats["groups"] <= cfg.weight_depth
    assert len(program.layers) == 3 <= cfg.layer_depth
    device = GoldenDevice(cfg)
    device.load(program)
    out = device.run(x[:4].numpy())
    assert out.shape == (4, 10) and np.count_nonzero(out)


def test_icebreaker_refuses_the_75_percent_demo_network_by_name():
    from gsaccel.sw.errors import CapacityError
    cfg = BOARDS["icebreaker"].config
    torch.manual_seed(0)
    model = DigitsMLP()
    prune(model, "gs-gather", 0.75, lanes=cfg.lanes)
    with pytest.raises(CapacityError, match=r"^Program needs 5\d\d group words, the core's "
                                            r"weight memory holds 512$"):
        compile(model, torch.rand(64, 64) * 16, cfg=cfg)
