"""Setup layers: the CLEAR of a resident tensor (one whose halo or padding channels nothing
else writes) runs once, when the program is loaded, and no inference repeats it."""

import numpy as np
import pytest

from gsaccel.hw.config import CoreConfig
from gsaccel.hw.layouts import Memory
from gsaccel.sw.compile.native import compile_native
from gsaccel.sw.compile.program import Program
from gsaccel.sw.errors import FormatError
from gsaccel.sw.runtime.device import GoldenDevice

from test_compile_native import _cfg, _model, _program
from test_program import _with_header

pytestmark = pytest.mark.usefixtures("one_thread")


def _stale(device, cfg, seed):
    """Random bytes in every scratchpad word, as earlier programs leave it."""
    words = cfg.lanes * cfg.bank_depth
    device.write(Memory.ACTS, 0, np.random.default_rng(seed).integers(-128, 128, words)
                 .tolist())


def _setup_tensors(program):
    return [layer.tensor for layer in program.layers[:program.setup_layers]]


@pytest.mark.parametrize("name", ["resnet8", "lenet"])
def test_resident_halos_are_cleared_once_and_stay_clear(name):
    program = _program(name)
    resident = _setup_tensors(program)
    assert resident and all(layer.kind == "clear" for layer in program.layers[:len(resident)])
    # No other tensor ever shares a resident tensor's words: live at every step.
    last = max(t.last for t in program.plan.lifetimes.values())
    for tensor in resident:
        assert (program.plan.lifetimes[tensor].first,
                program.plan.lifetimes[tensor].last) == (0, last)
    program.plan.check()
    assert all(layer.kind != "clear" or layer.tensor not in resident
               for layer in program.layers[len(resident):])
    _, (x, x_test) = _model(name)
    cfg = program.cfg
    with GoldenDevice(cfg) as device:
        _stale(device, cfg, 1)
        device.load(program)
        # Three inferences one after the other: the later ones find the halos as the
        # earlier ones left them.
        got = device.infer_quantized(program.quantize_input(x_test[:3]))
        stats = program.stats()
        assert device.counters["cycles"] == 3 * stats["cycles"]
    assert np.array_equal(got, program.run_golden_int(x_test[:3]))
    per_layer = stats["per_layer"]
    assert stats["setup_cycles"] == 1 + sum(e["cycles"] for e in per_layer[:len(resident)])
    assert stats["cycles"] == 1 + sum(e["cycles"] for e in per_layer[len(resident):])
    # The halos matter: stale bytes written into them after the load change the outputs.
    with GoldenDevice(cfg) as device:
        device.load(program)
        _stale(device, cfg, 2)
        assert not np.array_equal(
            device.infer_quantized(program.quantize_input(x_test[:3])), got)


def test_resident_tensors_fill_what_room_is_left():
    """A scratchpad that holds the live set and some of the resident tensors: the largest
    become resident, the others are cleared before their producer in every inference."""
    model, (x, x_test) = _model("functional")
    roomy = _program("functional")
    sizes = [roomy.tensors[t].geometry.words for t in _setup_tensors(roomy)]
    bank_depth = 512
    program = compile_native(model, x, _cfg(bank_depth=bank_depth))
    resident = _setup_tensors(program)
    per_inference = [layer.tensor for layer in program.layers[program.setup_layers:]
                     if layer.kind == "clear"]
    assert 0 < len(resident) < len(sizes) and per_inference
    assert program.plan.top <= bank_depth
    with GoldenDevice(program.cfg) as device:
        _stale(device, program.cfg, 3)
        device.load(program)
        got = device.infer_quantized(program.quantize_input(x_test[:2]))
    assert np.array_equal(got, program.run_golden_int(x_test[:2]))
    assert np.array_equal(got, roomy.run_golden_int(x_test[:2]))


def test_a_phased_program_runs_its_setup_layers_in_every_inference():
    model, (x, x_test) = _model("lenet")
    whole = _program("lenet")
    cfg = CoreConfig(lanes=8, bank_depth=whole.cfg.bank_depth, weight_depth=256,
                     row_depth=65536, layer_depth=256)
    program = compile_native(model, x, cfg)
    assert program.setup_layers and len(program.phases()) > 1
    stats = program.stats()
    assert stats["setup_cycles"] == 0
    assert stats["cycles"] == len(program.phases()) + sum(e["cycles"]
                                                          for e in stats["per_layer"])
    with GoldenDevice(cfg) as device:
        _stale(device, cfg, 4)
        device.load(program)
        got = device.infer_quantized(program.quantize_input(x_test[:2]))
        assert device.counters["cycles"] == 2 * stats["cycles"]
    assert np.array_equal(got, whole.run_golden_int(x_test[:2]))


def test_setup_layers_survive_a_file_and_are_checked():
    program = _program("lenet")
    again = Program.from_bytes(program.to_bytes())
    assert again.setup_layers == program.setup_layers > 0

    def past_the_clears(header):
        header["setup_layers"] = program.setup_layers + 1

    def too_many(header):
        header["setup_layers"] = len(header["layers"])

    with pytest.raises(FormatError, match=r"^data: header: Program's setup layers must be "
                                          r"CLEAR layers before the last layer, not the "
                                          r"first \d+ of \d+$"):
        Program.from_bytes(_with_header(program, past_the_clears))
    with pytest.raises(FormatError, match=r"^data: setup_layers: must be an integer in "
                                          r"\[0, \d+\], not \d+$"):
        Program.from_bytes(_with_header(program, too_many))
