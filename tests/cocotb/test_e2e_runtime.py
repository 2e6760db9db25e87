"""End to end on the ``sim`` target: the Verilator-compiled core behind the native harness.

Every output and counter must equal the golden model bit for bit and the cycle model cycle
for cycle: loop-nest programs of MLPs and CNNs (max pooling, depthwise convolutions, residual
additions), every intermediate tensor, and the frame protocol's error handling on the RTL.
"""

import os

import numpy as np
import pytest
import torch
from torch import nn

from gsaccel.hw.config import CoreConfig
from gsaccel.hw.layouts import FrameType, Memory, memory_depth
from gsaccel.sw.runtime import protocol
from gsaccel.sw.compile import compile
from gsaccel.sw.runtime.device import Device, GoldenDevice
from gsaccel.sw.errors import DeviceError
from gsaccel.sw.runtime.transport import Transport

pytestmark = pytest.mark.verilator

SEED = int(os.environ.get("GSACCEL_SEED", "1234"))
#: A core for the convolutional programs (one build for all of them, and test_native's).
CNN_CFG = CoreConfig(bank_depth=2048, weight_depth=16384, row_depth=1024, layer_depth=32)


@pytest.fixture(autouse=True)
def _verilator():
    from gsaccel.sim.build import require_verilator
    require_verilator()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _sim(cfg, wrap=None, *, retries=3):
    from gsaccel.sw.runtime.verilator import VerilatorTransport
    transport = VerilatorTransport(cfg)
    return Device(transport if wrap is None else wrap(transport), timeout=30.0,
                  retries=retries)


def _assert_same_on_sim_and_golden(program, x):
    """sim == golden target == the layer golden bit for bit (int8), and the counters ==
    the golden core's == the cycle model's; returns the dequantised outputs."""
    golden = GoldenDevice(program.cfg)
    golden.load(program)
    xq = program.quantize_input(x)
    expected = golden.infer_quantized(xq)
    assert np.array_equal(expected, program.run_golden_int(x))
    with _sim(program.cfg) as device:
        device.load(program)
        got = device.infer_quantized(xq)
        assert np.array_equal(got, expected)
        assert device.counters == golden.counters
    stats = program.stats()
    for counter in ("cycles", "stall_cycles", "groups", "busy_lane_cycles"):
        assert device.counters[counter] == len(x) * stats[counter], counter
    return program.dequantize_output(got)


@pytest.fixture(scope="module")
def digits_program():
    from gsaccel.sw.models import DigitsMLP, digits_data, train
    from gsaccel.sw.prune import prune
    torch.manual_seed(SEED)
    data = digits_data(0)
    model = DigitsMLP()
    train(model, data, 6, seed=SEED)
    prune(model, "gs-gather", 0.75, lanes=8)
    train(model, data, 2, seed=SEED + 1)
    model.eval()
    return model, data, compile(model, data.x_train[:256], lanes=8)


def test_digits_test_split_is_bit_exact(digits_program):
    model, data, program = digits_program
    y = _assert_same_on_sim_and_golden(program, data.x_test.numpy())
    accuracy = (y.argmax(1) == data.y_test.numpy()).mean()
    assert accuracy > 0.85


def test_every_layer_is_bit_exact(digits_program):
    from gsaccel.sw.cli.runtime import compare_layers
    model, data, program = digits_program
    with _sim(program.cfg) as device:
        device.load(program)
        rows, summary = compare_layers(program, model, data.x_test.numpy()[:12], device)
    assert summary["bit_exact"], rows
    assert summary["agree_golden"] == 1.0


@pytest.mark.parametrize("pattern", ["gs-scatter", "1xN", "unstructured", "smartdeal"])
def test_random_pruned_mlp_is_bit_exact(pattern):
    from gsaccel.sw.prune import prune
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Linear(27, 45), nn.ReLU(), nn.Linear(45, 19), nn.ReLU(),
                          nn.Linear(19, 7)).eval()
    prune(model, pattern, 0.6, lanes=8)
    x = torch.randn(24, 27, generator=torch.Generator().manual_seed(SEED)) * 3  # saturates
    program = compile(model, x[:8], lanes=8)
    _assert_same_on_sim_and_golden(program, x.numpy())


class TinyLeNet(nn.Module):
    """LeNet in small: conv 5x5 (padding 2, im2col'd) → ReLU → MaxPool 2 → conv 3x3 + BN +
    ReLU → MaxPool 3/2 with padding (a halo, cleared) → flatten → FC + ReLU → FC."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 5, padding=2)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.pool2 = nn.MaxPool2d(3, stride=2, padding=1)
        self.fc1 = nn.Linear(16 * 3 * 3, 24)
        self.fc2 = nn.Linear(24, 10)

    def forward(self, x):
        x = self.pool1(torch.relu(self.conv1(x)))
        x = self.pool2(torch.relu(self.bn2(self.conv2(x))))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def _conv_net(cls, *args):
    torch.manual_seed(SEED)
    model = cls(*args)
    generator = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator)
                                          * 0.3)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
    return model.eval()


def _conv_inputs(shape, n):
    return torch.randn((n,) + shape, generator=torch.Generator().manual_seed(SEED)) * 1.5


def test_small_cnn_with_max_pooling_is_bit_exact():
    model = _conv_net(TinyLeNet)
    x = _conv_inputs((3, 12, 12), 12)
    program = compile(model, x[:8], cfg=CNN_CFG)
    assert {getattr(layer, "op", None) for layer in program.layers} >= {"max", "sum"}
    assert "clear" in {layer.kind for layer in program.layers}
    _assert_same_on_sim_and_golden(program, x.numpy())


def test_small_cnn_every_tensor_is_bit_exact():
    from gsaccel.sw.cli.runtime import compare_layers
    model = _conv_net(TinyLeNet)
    x = _conv_inputs((3, 12, 12), 4)
    program = compile(model, x, cfg=CNN_CFG)
    with _sim(program.cfg) as device:
        device.load(program)
        rows, summary = compare_layers(program, model, x.numpy(), device)
    assert summary["bit_exact"], rows
    assert summary["agree_golden"] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dscnn", "resnet8", "digits-cnn"])
def test_dscnn_resnet8_and_digits_cnn_are_bit_exact(name):
    """A DS-CNN (depthwise 3x3 + pointwise, global average pool of 25x5: a divisor folded into
    the FC), a ResNet-8 (residual additions, strided projections) and the digits CNN (average
    pools), each at a small size."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))
    from test_graph import DSCNN, ResNet8
    from gsaccel.sw.models import DigitsCNN
    model, shape = {"dscnn": (lambda: _conv_net(DSCNN, 16), (1, 25, 10)),
                    "resnet8": (lambda: _conv_net(ResNet8), (3, 12, 10)),
                    "digits-cnn": (lambda: _conv_net(DigitsCNN), (1, 8, 8))}[name]
    model = model()
    x = _conv_inputs(shape, 6)
    program = compile(model, x, cfg=CNN_CFG)
    _assert_same_on_sim_and_golden(program, x.numpy())


def test_offload_forward_runs_on_the_sim(digits_program):
    from gsaccel.sw.runtime.offload import offload
    model, data, program = digits_program
    with offload(model, target="sim", example_input=data.x_train[:256]) as fast:
        assert fast.device.config == program.cfg        # the sim is built for the program
        y = fast(data.x_test[:16])
        assert isinstance(y, torch.Tensor) and y.shape == (16, 10)
        assert np.array_equal(y.numpy(), program.run_golden(data.x_test[:16].numpy()))
        assert fast.counters["inferences"] == 16


class _CorruptOnce(Transport):
    """Flips one bit of the n-th frame sent (its middle byte, or byte ``byte``), or of the
    reply bytes, once."""

    def __init__(self, inner, *, request=None, reply=None, byte=None):
        self.inner, self.request, self.reply, self.byte = inner, request, reply, byte
        self.sent = 0

    def send(self, data):
        data = bytearray(data)
        if self.sent == self.request:
            data[len(data) // 2 if self.byte is None else self.byte] ^= 0x04
        self.sent += 1
        self.inner.send(bytes(data))

    def recv(self, n, *, timeout):
        data = bytearray(self.inner.recv(n, timeout=timeout))
        if self.reply is not None and self.sent == self.reply and n >= 4:
            data[-1] ^= 0x10
            self.reply = None
        return bytes(data)

    def close(self):
        self.inner.close()


@pytest.mark.parametrize("where", ["request", "reply"])
def test_rtl_rejects_a_corrupt_frame_and_the_host_retries(where):
    cfg = CoreConfig()
    wrap = lambda t: _CorruptOnce(t, **{where: 2})
    with _sim(cfg, wrap) as device:
        device.hello()
        device.write(Memory.ACTS, 7, [1, -2, 3])
        assert device.read(Memory.ACTS, 7, 3) == [1, 254, 3]
        assert device.resends == 1


def test_rtl_error_codes_reach_the_host():
    cfg = CoreConfig()
    with _sim(cfg) as device:
        depth = memory_depth(cfg, Memory.ACTS)
        bad_read = protocol.read_payload(Memory.ACTS, depth - 1, 2)
        with pytest.raises(DeviceError, match=r"^Device rejected READ with BAD_ADDRESS$"):
            device._transact(FrameType.READ, bad_read)
        with pytest.raises(DeviceError, match=r"^Device rejected RUN with BAD_LAYER$"):
            device.run_layers(cfg.layer_depth - 1, 2)
        with pytest.raises(DeviceError, match=r"^Device rejected WRITE with BAD_MEMORY$"):
            device._transact(FrameType.WRITE, b"\x04\x00\x00\x01\x00\x00\x00")


def test_rtl_answers_a_corrupt_crc_with_bad_crc_and_does_not_execute_it():
    """The third frame (a WRITE) arrives with its CRC's last byte damaged: the RTL answers
    ERROR BAD_CRC, which the host, with no retries left, reports; the write did not happen."""
    cfg = CoreConfig()
    wrap = lambda t: _CorruptOnce(t, request=2, byte=-1)
    with _sim(cfg, wrap, retries=0) as device:
        device.hello()
        device.write(Memory.ACTS, 7, [9, 9, 9])
        with pytest.raises(DeviceError, match=r"^Device rejected WRITE with BAD_CRC$"):
            device.write(Memory.ACTS, 7, [1, -2, 3])
        assert device.read(Memory.ACTS, 7, 3) == [9, 9, 9]
        assert device.resends == 0
