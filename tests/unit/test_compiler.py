"""The compiler (gsaccel.compile): quantised loop-nest programs track float, patterns are
packed as pruned, the core's limits are reported at once, programs round-trip through .gsp.

Tolerances (docs/runtime.md): golden outputs, dequantised, are compared with the float model.
int8 weights: max |error| <= 6 % of the largest |float output|; pow2 weights (each weight
rounded to a power of two, up to ±25 % each): mean |error| <= 6 % and max |error| <= 30 %.
Structural and numerical rules of the native lowering itself are in test_compile_native.py.
"""

import os

import re

import numpy as np
import pytest
import torch
from torch import nn

from gsaccel.hw.config import CoreConfig
from gsaccel.sw.compile import GSLayer, compile, quantize_weights
from gsaccel.sw.runtime.device import GoldenDevice
from gsaccel.sw.errors import CapacityError, ShapeError, UnsupportedError
from gsaccel.sw.compile.program import Program

SEED = int(os.environ.get("GSACCEL_SEED", "1234"))


pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(shape, n=64, seed=SEED):
    return torch.randn((n,) + shape, generator=torch.Generator().manual_seed(seed))


def _check_against_float(model, x, program, encoding):
    with torch.no_grad():
        reference = model(x).numpy().reshape(len(x), -1)
    golden = program.run_golden(x.numpy()).reshape(len(x), -1)
    scale = np.abs(reference).max()
    error = np.abs(golden - reference)
    if encoding == "int8":
        assert error.max() <= 0.06 * scale, (error.max(), scale)
    else:
        assert error.mean() <= 0.06 * scale, (error.mean(), scale)
        assert error.max() <= 0.30 * scale, (error.max(), scale)
    # The device image, executed by the golden core, gives the same bits as the kernels.
    device = GoldenDevice(program.cfg)
    device.load(program)
    assert np.array_equal(device.run(x.numpy()[:8]), golden[:8].reshape(
        (8,) + program.output_shape))
    return golden, reference


def _mlp(widths, seed):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()


@pytest.mark.parametrize("encoding", ["pow2", "int8"])
@pytest.mark.parametrize("widths", [(13, 37, 11, 5), (64, 100, 10), (9, 3)])
def test_random_mlp_tracks_float(widths, encoding):
    model = _mlp(widths, SEED)
    x = _inputs((widths[0],))
    program = compile(model, x, lanes=4, encoding=encoding)
    assert [s.relu for s in program.layers] == [True] * (len(widths) - 2) + [False]
    # A Linear layer is the loop nest's one-pixel case; each reads the previous one's output.
    assert all(isinstance(s, GSLayer) and s.nest.pixels == 1 for s in program.layers)
    assert [s.inputs[0] for s in program.layers[1:]] == [s.output for s in program.layers[:-1]]
    _check_against_float(model, x, program, encoding)


class ConvNet(nn.Module):
    """Conv (stride 2, padding 1) + BatchNorm + ReLU + AvgPool + Linear, odd sizes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(5)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(5 * 2 * 2, 7)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn(self.conv(x))))
        return self.fc(x.view(x.size(0), -1))


def _convnet():
    torch.manual_seed(SEED)
    model = ConvNet()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 2.0)
        model.bn.weight.uniform_(0.5, 1.5)
        model.bn.bias.uniform_(-0.1, 0.1)
    return model.eval()


@pytest.mark.parametrize("encoding", ["pow2", "int8"])
def test_conv_avgpool_linear_tracks_float(encoding):
    model = _convnet()
    x = _inputs((3, 9, 9))
    program = compile(model, x, lanes=8, encoding=encoding)
    assert [i["torch_op"] for i in program.info] == ["Conv2d+BatchNorm2d+torch.relu",
                                                     "AvgPool2d", "Linear"]
    conv, pool, fc = program.layers
    # The 3x9x9 input is sent im2col'd: the stride-2, padding-1 conv runs as a 1x1 conv over
    # 27 channels at its 5x5 output pixels.
    transform = program.input_transform
    assert (transform.kind, transform.stride, transform.padding) == ("im2col", (2, 2), (1, 1))
    assert (conv.nest.pixels, conv.nest.kernel, conv.nest.source.channels) == (25, (1, 1), 27)
    # A 2x2 average: ones (pow2 codes) and a shift, one per tap of each channel.
    dense = pool.matrix.to_dense()
    assert dense.shape == (5, 4 * 8) and pool.nest.kernel == (2, 2)
    if encoding == "pow2":
        assert set(np.unique(dense)) == {0, 1}
    assert ((dense != 0).sum(axis=1) == 4).all()
    # The flatten → Linear is a "convolution" whose 2x2 kernel covers the pooled tensor.
    assert fc.nest.kernel == (2, 2) and fc.nest.pixels == 1
    _check_against_float(model, x, program, encoding)


def test_conv_variants_track_float():
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2),
                                    groups=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(24, 3)).eval()
    x = _inputs((4, 7, 6))
    _check_against_float(model, x, compile(model, x, lanes=4, encoding="int8"), "int8")


def test_flatten_keeps_channel_major_order():
    # A conv whose output channels differ only by a scale: a channel-order bug (the device
    # stores HWC, torch flattens CHW) shows up as a permuted Linear input.
    torch.manual_seed(SEED)
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.Flatten(), nn.Linear(3 * 4 * 5, 2)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 2.0, -3.0]).reshape(3, 1, 1, 1))
    x = _inputs((1, 4, 5))
    _check_against_float(model, x, compile(model, x, lanes=4, encoding="int8"), "int8")


@pytest.mark.parametrize("pattern, per_row", [("gs-gather", 1), ("gs-gather", 2),
                                              ("gs-scatter", 1), ("1xN", 1),
                                              ("unstructured", 1)])
def test_each_pruning_pattern_is_packed_as_pruned(pattern, per_row):
    from gsaccel.sw.prune import prune
    model = _mlp((24, 40, 17, 6), SEED)
    prune(model, pattern, 0.75, lanes=8, per_row=per_row)
    x = _inputs((24,))
    program = compile(model, x, lanes=8)
    for spec, module in zip(program.layers, [m for m in model if isinstance(m, nn.Linear)]):
        assert spec.matrix.pattern == pattern
        # The mask survives quantisation exactly (the columns past the input's features are
        # its padding channels, never kept).
        mask = module.weight_mask.numpy() != 0
        dense = spec.matrix.to_dense()
        assert np.array_equal(dense[:, :mask.shape[1]] != 0, mask)
        assert not dense[:, mask.shape[1]:].any()
    _check_against_float(model, x, program, "pow2")


def test_smartdeal_becomes_basis_and_pow2_layers():
    from gsaccel.sw.prune import prune
    model = _mlp((30, 20, 6), SEED)
    prune(model, "smartdeal", 0.5, lanes=8, layers=["2"])
    x = _inputs((30,))
    program = compile(model, x, lanes=8)
    assert [s.kind for s in program.layers] == ["clear", "gs", "basis", "gs"]
    clear, first, basis, _ = program.layers
    assert basis.n_chunks == 7
    # The basis unit reads 21 elements of the 20-wide hidden tensor: it is stored with 21
    # channels and cleared before its producer writes the first 20.
    assert clear.tensor == first.output == basis.inputs[0]
    assert program.tensors[first.output].geometry.channels == 21
    assert first.matrix.shape[0] == 20
    _check_against_float(model, x, program, "pow2")


def test_smartdeal_first_layer_reads_a_zero_padded_input():
    from gsaccel.sw.prune import prune
    model = _mlp((31, 20, 6), SEED)
    prune(model, "smartdeal", 0.5, lanes=8)
    x = _inputs((31,))
    program = compile(model, x, lanes=8)
    assert [s.kind for s in program.layers] == ["clear", "basis", "gs", "basis", "gs"]
    assert program.input_geometry.channels == 33 and program.input_shape == (31,)
    assert (program.quantize_input(x.numpy())[..., 31:] == 0).all()
    _check_against_float(model, x, program, "pow2")


def test_trained_digits_mlp_agrees_with_float():
    from gsaccel.sw.models import DigitsMLP, digits_data, train
    from gsaccel.sw.prune import prune
    torch.manual_seed(0)
    data = digits_data(0)
    model = DigitsMLP()
    train(model, data, 12, seed=0)
    prune(model, "gs-gather", 0.75, lanes=8)
    train(model, data, 4, seed=1)
    model.eval()
    with torch.no_grad():
        reference = model(data.x_test).numpy().argmax(1)
    y = data.y_test.numpy()
    results = {}
    for encoding in ("int8", "pow2"):
        program = compile(model, data.x_train[:512], lanes=8, encoding=encoding)
        out = program.run_golden(data.x_test.numpy()).argmax(1)
        results[encoding] = ((out == reference).mean(), (out == y).mean())
    float_accuracy = (reference == y).mean()
    assert results["int8"][0] >= 0.99, results
    # pow2 weights are coarser: argmax may move on close calls, accuracy must not drop much.
    assert results["pow2"][0] >= 0.97, results
    assert results["pow2"][1] >= float_accuracy - 0.015, (results, float_accuracy)


def test_quantize_weights_pow2_rounding_and_kept_weights():
    w = np.array([[1.49, 1.5, -3.0, 0.01, 0.0, 70000.0]])
    mask = np.array([[True, True, True, True, False, True]])
    q = quantize_weights(w, mask, 0, "pow2")
    assert q.tolist() == [[1, 2, -4, 1, 0, 2 ** 15]]
    q8 = quantize_weights(np.array([[0.2, -0.2, 126.6, -500.0]]), None, 0, "int8")
    assert q8.tolist() == [[1, -1, 127, -127]]


def test_accumulator_never_wraps():
    model = _mlp((200, 300, 10), SEED)
    with torch.no_grad():
        model[0].weight.mul_(50)
    x = _inputs((200,))
    cfg = CoreConfig(lanes=8, bank_depth=128, acc_width=24, weight_depth=16384, row_depth=2048)
    program = compile(model, x, cfg=cfg)
    for spec in program.layers:
        worst = np.abs(spec.matrix.to_dense()).sum(axis=1) * 128 + np.abs(spec.bias)
        assert worst.max() < 2 ** 23


@pytest.mark.parametrize("model, message", [
    (nn.Sequential(nn.Linear(4, 4), nn.Tanh()),
     r"^Operation module '1' \(nn.Tanh\) at node '_1' is not supported; the core runs"),
    (nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.BatchNorm1d(4)),
     r"^Operation module '2' \(nn.BatchNorm1d\) at node '_2' is not supported: it follows "
     r"the ReLU"),
    (nn.Sequential(nn.ReLU(), nn.Linear(4, 4)),
     r"^Operation module '0' \(nn.ReLU\) at node '_0' is not supported: it applies to the "
     r"model's input"),
])
def test_unsupported_operations_are_named(model, message):
    with pytest.raises(UnsupportedError, match=message):
        compile(model.eval(), _inputs((4,), n=4))


def test_max_pool_and_residual_add_compile():
    """What the Toeplitz compiler refused: max pooling (a MAX loop nest) and a residual
    addition (a SUM layer with one tap per operand)."""
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3)
            self.pool = nn.MaxPool2d(2)
            self.fc = nn.Linear(4 * 2 * 2, 16)
            self.fc2 = nn.Linear(16, 16)

        def forward(self, x):
            y = self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))
            return y + torch.relu(self.fc2(y))

    torch.manual_seed(SEED)
    model = Residual().eval()
    x = _inputs((2, 6, 6))
    program = compile(model, x, lanes=4, encoding="int8")
    ops = [(s.kind, getattr(s, "op", None)) for s in program.layers]
    assert ("gs", "max") in ops and len(program.layers) == 5
    _check_against_float(model, x, program, "int8")


def test_capacity_errors_name_every_limit_at_once():
    model = _mlp((40, 600, 300, 3), SEED)
    # The serial writer: one row record per output (a vector writer's row lines hold V).
    small = CoreConfig(lanes=8, bank_depth=16, weight_depth=64, row_depth=256, layer_depth=2,
                       vector_writer=False)
    with pytest.raises(CapacityError, match=(
            r"^Program does not fit the core: activation words per bank: 113 of 16 "
            r"\(CoreConfig.bank_depth\) OVER — at step 1 the live tensors need 113 words per "
            r"bank — _1 \(75\), _3 \(38\) — against the scratchpad's 16 words per bank; "
            r"group words: \d+ of 64 \(CoreConfig.weight_depth\) \(largest layer \d+\) OVER; "
            r"row words: \d+ of 256 \(CoreConfig.row_depth\) \(largest layer \d+\) OVER; "
            r"layers: 3 of 2 \(CoreConfig.layer_depth\) \(largest layer 1\) phased\. To fit "
            r"it, use a core with bank_depth=128, weight_depth=\d+, row_depth=1024, "
            r"layer_depth=4 \(a CoreConfig, or a board with more memory\) or prune harder or "
            r"use a smaller input or more lanes\.$")) as caught:
        compile(model, _inputs((40,), n=8), cfg=small)
    report = caught.value.report
    assert [limit.field for limit in report.limits if not limit.fits] == [
        "bank_depth", "weight_depth", "row_depth", "layer_depth"]
    assert report.status == "no"
    with pytest.raises(CapacityError, match=r"^Program does not fit the core: group words: "
                                            r"\d+ of 32 \(CoreConfig\.weight_depth\) "
                                            r"\(largest layer \d+\) OVER\. To fit it, use a "
                                            r"core with weight_depth=\d+ .* or prune harder\.$"):
        # A row group (40 groups) larger than the weight memory: no phase, no slice holds it.
        compile(_mlp((40, 64, 3), SEED), _inputs((40,), n=8),
                cfg=CoreConfig(lanes=8, weight_depth=32))


def test_example_input_must_be_a_batch():
    with pytest.raises(ShapeError, match=r"^Example input must be a non-empty batch"):
        compile(_mlp((4, 2), SEED), np.zeros(4))


def test_program_round_trips_through_gsp(tmp_path):
    model = _convnet()
    x = _inputs((3, 9, 9), n=16)
    program = compile(model, x, lanes=8)
    program.save(tmp_path / "m.gsp")
    again = Program.load(tmp_path / "m.gsp")
    assert again.cfg == program.cfg and again.info == program.info
    assert np.array_equal(again.run_golden(x.numpy()), program.run_golden(x.numpy()))
    assert again.image() == program.image()
    assert again.stats() == program.stats()


def test_a_layer_pruned_for_another_v_warns_with_its_utilisation(caplog):
    from gsaccel.sw.prune import prune
    model = _mlp((64, 48, 5), SEED)
    prune(model, "gs-gather", 0.75, lanes=8)
    with caplog.at_level("WARNING", logger="gsaccel.sw.compile.quantize"):
        compile(model, _inputs((64,), n=8), lanes=16)
    assert re.search(r"layer 0 was pruned gs-gather for V = 8, the core has V = 16: packed "
                     r"\S+ at \d+\.\d% lane utilisation; prune it with lanes=16", caplog.text)
