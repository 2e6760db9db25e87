"""Every board's default core holds the demo's network: the digits MLP (64-128-64-10)
pruned to GS-gather packs into its weight, row and layer memories and its scratchpad, and the
golden model runs it. (gsaccel build checks that the core fits the FPGA; this checks that
the core it fits is big enough for the model it is for.)

The iCEBreaker's core is V = 4 (what fits with the loop-nest sequencer): its 512 group
words (all of its block RAM that the scratchpad leaves) hold 2048 weights, so the demo's
87.5 % (2128 weights, 536 group words) does not fit and 93.75 % does.
"""

import numpy as np
import pytest
import torch

from gsaccel.boards.catalog import BOARDS
from gsaccel.sw.compile import compile
from gsaccel.sw.runtime.device import GoldenDevice
from gsaccel.sw.models import DigitsMLP
from gsaccel.sw.prune import prune


SPARSITY = {"icebreaker": 0.9375, "ulx3s-85f": 0.75, "orangecrab": 0.75}


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_default_core_holds_the_demo_network(name):
    cfg = BOARDS[name].config
    torch.manual_seed(0)
    model = DigitsMLP()
    prune(model, "gs-gather", SPARSITY[name], lanes=cfg.lanes)
    x = torch.rand(64, 64) * 16            # digits pixels are 0..16
    program = compile(model, x, cfg=cfg)
    stats = program.stats()
    assert 0 < stats["group_words"] <= cfg.weight_depth
    assert len(program.layers) == 3 <= cfg.layer_depth
    assert stats["activation_words"] <= cfg.bank_depth
    device = GoldenDevice(cfg)
    device.load(program)
    out = device.infer(x[:4].numpy())
    assert out.shape == (4, 10) and np.count_nonzero(out)
    assert np.array_equal(out, program.run_golden(x[:4].numpy()))


def test_icebreaker_refuses_the_87_percent_demo_network_in_one_load_by_name():
    # With phases allowed it runs in two (tests/unit/test_phases.py).
    from gsaccel.sw.errors import CapacityError
    cfg = BOARDS["icebreaker"].config
    torch.manual_seed(0)
    model = DigitsMLP()
    prune(model, "gs-gather", 0.875, lanes=cfg.lanes)
    with pytest.raises(CapacityError, match=r"^Program does not fit the core: group words: "
                                            r"536 of 512 \(CoreConfig\.weight_depth\) "
                                            r"\(largest layer \d+\) OVER\. To fit it, use a "
                                            r"core with weight_depth=1024 .* or prune harder "
                                            r"or allow phases .*\.$"):
        compile(model, torch.rand(64, 64) * 16, cfg=cfg, phases=False)
