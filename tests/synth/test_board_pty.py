# amaranth: UnusedElaboratable=no
"""The board's serial design (UART PHY + FIFO + core) in Verilator behind a pty, driven by
the host's ``serial:`` target exactly as a board would be, against the golden model."""

import os

import numpy as np
import pytest

from gsaccel.hw.config import CoreConfig

pytestmark = pytest.mark.verilator

SEED = int(os.environ.get("GSACCEL_SEED", "1234"))


@pytest.fixture(autouse=True)
def _verilator():
    from gsaccel.sim.build import require_verilator
    require_verilator()


def test_serial_target_over_pty_is_bit_exact():
    torch = pytest.importorskip("torch")
    from torch import nn

    from gsaccel.boards.ptysim import PtySimulation
    from gsaccel.sw.compile import compile
    from gsaccel.sw.runtime.device import GoldenDevice
    from gsaccel.sw.runtime.targets import connect

    cfg = CoreConfig(lanes=4, bank_depth=32, weight_depth=512, row_depth=128, layer_depth=4,
                     result_queue=8, max_payload=256)
    torch.manual_seed(SEED)
    # Sizes that are not powers of two; random weights, so outputs saturate and go negative.
    model = nn.Sequential(nn.Linear(37, 23), nn.ReLU(), nn.Linear(23, 11))
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(6, 37))
    program = compile(model, x, cfg=cfg, lanes=4)
    golden = GoldenDevice(cfg)
    golden.load(program)
    expected = golden.infer(x)
    assert np.array_equal(expected, program.run_golden(x))

    with PtySimulation(cfg) as sim, connect(f"serial:{sim.port}@3000000",
                                            timeout=20) as device:
        assert device.config == cfg
        device.load(program)
        got = device.infer(x)
        assert np.array_equal(got, expected)
        assert device.counters == golden.counters
        assert device.counters["cycles"] == len(x) * program.stats()["cycles"]


@pytest.mark.slow
def test_demo_on_the_icebreaker_core_over_pty():
    """``gsaccel demo --target serial:...`` asks the board which core it has (HELLO) and
    prunes and compiles for it: the iCEBreaker's default core (V = 4, no basis unit, 512
    group words) runs the digits MLP at 93.75 % bit for bit and cycle for cycle."""
    pytest.importorskip("torch")
    from rich.console import Console

    from gsaccel.boards.catalog import BOARDS
    from gsaccel.boards.ptysim import PtySimulation
    from gsaccel.sw.demo import run_demo

    cfg = BOARDS["icebreaker"].config
    with PtySimulation(cfg) as sim:
        result = run_demo(target=f"serial:{sim.port}@3000000", lanes=8, sparsity=0.9375,
                          epochs=6, finetune_epochs=4, console=Console(quiet=True))
    assert result["lanes"] == 4                     # the board's, not the argument's
    assert result["bit_exact"] and result["cycle_exact"]
    assert result["target_accuracy"] > 0.5
