"""A soak: many inferences of one program through a fault-injecting link, each checked
against the golden model, to show the protocol keeps its promises (DESIGN §4).

Every inference ends in one of three ways: the right answer (outputs and counters equal the
golden model's, so nothing ran twice), a typed :class:`~gsaccel.sw.errors.GsaccelError`
(the link was too bad for the retries: the host said so), or a *wrong answer* — the one
outcome the protocol must never give. An inference that takes longer than the host's own
timeouts allow is a *hang*.

>>> from gsaccel.hw.config import CoreConfig
>>> from gsaccel.sw.runtime.golden_link import GoldenLink
>>> from gsaccel.sw.runtime.faults import LinkFaults
>>> import numpy as np, torch
>>> from gsaccel.sw.compile import compile
>>> _ = torch.manual_seed(0)
>>> model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
>>> cfg = CoreConfig(lanes=4, bank_depth=16, weight_depth=64, row_depth=64, max_payload=64)
>>> program = compile(model.eval(), torch.randn(32, 6), cfg=cfg, lanes=4)
>>> xq = program.quantize_input(np.random.default_rng(0).normal(size=(20, 6)))
>>> faults = LinkFaults.uniform(0.2, delay_s=(0, 0.02))    # a very bad link
>>> report = soak(program, lambda: GoldenLink(cfg), xq, faults, seed=3, timeout=0.01)
>>> report.wrong, report.errors, report.hangs, report.inferences
(0, 0, 0, 20)
"""

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from ...hw.layouts import COUNTER_NAMES
from ..errors import GsaccelError
from .device import Device, GoldenDevice
from .faults import FaultyTransport

__all__ = ["SoakReport", "soak"]

logger = logging.getLogger(__name__)


@dataclass
class SoakReport:
    """What a soak measured."""
    inferences: int = 0
    wrong: int = 0                 # outputs or counters differ from the golden model's
    errors: int = 0                # a typed error ended the inference
    hangs: int = 0                 # longer than the host's timeouts allow
    seconds: float = 0.0
    slowest: float = 0.0           # seconds of the slowest inference
    resends: int = 0
    stale_replies: int = 0
    injected: dict = field(default_factory=dict)
    error_messages: list = field(default_factory=list)

    def summary(self):
        faults = ", ".join(f"{direction} " + " ".join(f"{k} {v}" for k, v in kinds.items())
                           for direction, kinds in self.injected.items())
        return (f"{self.inferences} inferences in {self.seconds:.1f} s: {self.wrong} wrong, "
                f"{self.errors} errors, {self.hangs} hangs; {self.resends} resends, "
                f"{self.stale_replies} stale replies; faults injected: {faults}")


def soak(program, open_transport, inputs, faults, *, to_host=None, seed=0, timeout=0.5,
         retries=8, progress=None):
    """Run every quantised input of ``inputs`` through ``open_transport()`` behind a
    :class:`~gsaccel.sw.runtime.faults.FaultyTransport` and compare with the golden model.

    Parameters
    ----------
    program : Program
    open_transport : callable
        Returns a fresh :class:`Transport` to the device (``GoldenLink(cfg)``,
        ``VerilatorTransport(cfg)``); closed at the end.
    inputs : array (N,) + input shape, int8
    faults, to_host : LinkFaults
        Towards the device and back (``to_host`` defaults to ``faults``).
    seed : int
        The faults' seed.
    timeout, retries : float, int
        The host's (:class:`Device`).
    progress : callable, optional
        Called with the index of each inference done (a progress bar's update).

    Returns
    -------
    SoakReport
    """
    golden = GoldenDevice(program.cfg)
    golden.load(program)
    expected, expected_counters = [], []
    for sample in inputs:
        expected.append(golden.infer_quantized(sample))
        expected_counters.append({k: golden.counters[k] for k in COUNTER_NAMES})
    link = FaultyTransport(open_transport(), faults, to_host, seed=seed)
    report = SoakReport()
    # A transaction may wait ``timeout`` for each of its attempts; an inference is a few
    # transactions (a phased program's more): anything far past that is a hang.
    phases = program.phases()
    frames = 3 if len(phases) == 1 else 3 + sum(
        sum(-(-len(words) // 8) for _, words in image.memories())
        for _, _, image in program.phase_images())
    bound = 4 * frames * (retries + 1) * (timeout + 0.2) + 5.0
    start = time.monotonic()
    with Device(link, timeout=timeout, retries=retries) as device:
        device.load(program)
        for index, sample in enumerate(inputs):
            began = time.monotonic()
            try:
                out = device.infer_quantized(sample)
            except GsaccelError as error:
                report.errors += 1
                report.error_messages.append(f"inference {index}: {error}")
                logger.warning("soak inference %d ended in %s", index, error)
            else:
                counters = {k: device.counters[k] for k in COUNTER_NAMES}
                if not np.array_equal(out, expected[index]) or \
                        counters != expected_counters[index]:
                    report.wrong += 1
            spent = time.monotonic() - began
            report.slowest = max(report.slowest, spent)
            report.hangs += spent > bound
            report.inferences += 1
            if progress is not None:
                progress(index)
        report.resends, report.stale_replies = device.resends, device.stale_replies
    report.seconds = time.monotonic() - start
    report.injected = {direction: dict(kinds) for direction, kinds in link.injected.items()}
    return report
