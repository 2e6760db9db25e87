"""A check the unit tests share: a compiled program on the Verilator RTL against golden."""

import numpy as np

from gsaccel.sw.runtime.targets import connect


def assert_rtl_runs_like_golden(program, xs, cfg, timeout):
    """Run the float batch ``xs`` on the Verilator RTL of ``cfg`` (one load): its int8
    outputs must equal :meth:`Program.run_golden_int`'s and its cycles the cycle model's."""
    with connect("sim", cfg=cfg, timeout=timeout) as device:
        device.load(program)
        got = device.infer_quantized(program.quantize_input(xs))
        counters = dict(device.counters)
    assert np.array_equal(got, program.run_golden_int(xs))
    assert counters["cycles"] == program.stats()["cycles"] * len(xs)
