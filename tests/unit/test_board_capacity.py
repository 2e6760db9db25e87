"""Every board's default core holds the demo's network: the digits MLP (64-128-64-10)
pruned to GS-gather packs into its weight, row and layer memories and its scratchpad (the
iCEBreaker's in phases), and the golden model runs it. (gsaccel build checks that the core
fits the FPGA; this checks that the core it fits is big enough for the model it is for.)

The iCEBreaker's core is V = 2 with its scratchpad in the SPRAMs (bank halves): its 512 group
words (the block RAM the row memory and the layer table leave) hold 1024 weights, so the
demo's 87.5 % (2128 weights, 1064 group words) runs in 3 phases of at most 512.
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
#: Phases of the demo network on each board's core.
PHASES = {"icebreaker": 3, "ulx3s-85f": 1, "orangecrab": 1}


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_default_core_holds_the_demo_network(name):
    cfg = BOARDS[name].config
    torch.manual_seed(0)
    model = DigitsMLP()
    prune(model, "gs-gather", SPARSITY[name], lanes=cfg.lanes)
    x = torch.rand(64, 64) * 16            # digits pixels are 0..16
    program = compile(model, x, cfg=cfg)
    stats = program.stats()
    assert stats["phases"] == PHASES[name]
    for _, _, image in program.phase_images():
        assert 0 < len(image.weights) <= cfg.weight_depth
        assert len(image.rows) <= cfg.row_depth
    assert 3 <= len(program.layers) <= cfg.layer_depth
    assert stats["activation_words"] <= cfg.bank_depth
    device = GoldenDevice(cfg)
    device.load(program)
    out = device.infer(x[:4].numpy())
    assert out.shape == (4, 10) and np.count_nonzero(out)
    assert np.array_equal(out, program.run_golden(x[:4].numpy()))


def test_icebreaker_refuses_the_87_percent_demo_network_in_one_load_by_name():
    # With phases allowed it runs in three (above).
    from gsaccel.sw.errors import CapacityError
    cfg = BOARDS["icebreaker"].config
    torch.manual_seed(0)
    model = DigitsMLP()
    prune(model, "gs-gather", 0.875, lanes=cfg.lanes)
    with pytest.raises(CapacityError, match=r"^Program does not fit the core: group words: "
                                            r"1064 of 512 \(CoreConfig\.weight_depth\) "
                                            r"\(largest layer \d+\) OVER\. To fit it, use a "
                                            r"core with weight_depth=2048 .* or prune harder "
                                            r"or allow phases .*\.$"):
        compile(model, torch.rand(64, 64) * 16, cfg=cfg, phases=False)
