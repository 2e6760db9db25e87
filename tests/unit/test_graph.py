"""The fx lowering to a DAG of device ops (gsaccel.sw.compile.graph): every op's output equals
the fx node it replaces, on LeNet, DS-CNN, ResNet-8, an MLP autoencoder, functional forms and
grouped convolutions with odd shapes; unsupported models are refused naming the operation;
lowering costs memory in proportion to the kernels, not the feature maps."""

import copy
import os
import time
import tracemalloc
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils import prune as torch_prune

from gsaccel.sw.compile.graph import OP_KINDS, Graph, GraphOp, GraphTensor, lower_graph
from gsaccel.sw.errors import ShapeError, UnsupportedError
from gsaccel.sw.prune import pattern_info, prune

SEED = int(os.environ.get("GSACCEL_SEED", "1234"))


pytestmark = pytest.mark.usefixtures("one_thread")


# Models -----------------------------------------------------------------------------------------

def _randomise_batchnorms(model, seed):
    """Non-trivial running statistics and affine parameters: folding is really tested."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) * 2 + 0.25)
                if module.affine:
                    module.weight.copy_(torch.randn(n, generator=generator) * 0.5 + 1)
                    module.bias.copy_(torch.randn(n, generator=generator) * 0.3)
    return model


def _build(cls, *args, seed=SEED, **kwargs):
    torch.manual_seed(seed)
    return _randomise_batchnorms(cls(*args, **kwargs), seed).eval()


class LeNet(nn.Module):
    """conv 5x5 → ReLU → MaxPool 2 → conv 3x3 + BN + ReLU → MaxPool 3/2 with padding (after a
    ReLU) → x.view(x.size(0), -1) → FC + ReLU → Dropout → FC."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.relu = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.pool2 = nn.MaxPool2d(3, stride=2, padding=1)
        self.fc1 = nn.Linear(16 * 6 * 5, 30)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(30, 10)

    def forward(self, x):
        x = self.pool1(self.relu(self.conv1(x)))
        x = self.pool2(self.relu(self.bn2(self.conv2(x))))
        x = x.view(x.size(0), -1)
        return self.fc2(self.drop(self.relu(self.fc1(x))))


LENET_INPUT = (3, 29, 23)


class DSCNN(nn.Module):
    """The MLPerf Tiny KWS topology: conv 10x4/2 + BN + ReLU → 4 × (depthwise 3x3 + BN + ReLU +
    pointwise 1x1 + BN + ReLU) → AdaptiveAvgPool2d(1) → Flatten → Linear."""

    def __init__(self, channels=20, classes=12):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, channels, (10, 4), stride=2, padding=(5, 1), bias=False),
            nn.BatchNorm2d(channels), nn.ReLU())
        blocks = []
        for _ in range(4):
            blocks += [nn.Conv2d(channels, channels, 3, padding=1, groups=channels,
                                 bias=False),
                       nn.BatchNorm2d(channels), nn.ReLU(),
                       nn.Conv2d(channels, channels, 1, bias=False),
                       nn.BatchNorm2d(channels), nn.ReLU()]
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.blocks(self.stem(x)))))


DSCNN_INPUT = (1, 49, 10)


class ResidualBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; the shortcut is the identity
    or a 1x1 strided projection (with or without BN)."""

    def __init__(self, c_in, c_out, stride=1, projection_bn=True):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        if stride == 1 and c_in == c_out:
            self.shortcut = nn.Identity()
        elif projection_bn:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))
        else:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet8(nn.Module):
    """The MLPerf Tiny IC topology: conv 3x3 16 + BN + ReLU → stacks 16/32/64 → average pool
    over the whole map (kernel from ``out.shape[2:]``) → torch.flatten → Linear."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU())
        self.stack1 = ResidualBlock(16, 16)
        self.stack2 = ResidualBlock(16, 32, 2, projection_bn=True)
        self.stack3 = ResidualBlock(32, 64, 2, projection_bn=False)
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        out = self.stack3(self.stack2(self.stack1(self.stem(x))))
        out = F.avg_pool2d(out, out.shape[2:])
        return self.fc(torch.flatten(out, 1))


RESNET_INPUT = (3, 18, 14)


class Autoencoder(nn.Module):
    """The MLPerf Tiny AD shape in small: Linear + BN1d + ReLU layers, down and back up."""

    def __init__(self, widths=(37, 23, 11, 23)):
        super().__init__()
        layers = []
        for a, b in zip(widths, widths[1:]):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], widths[0]))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


AUTOENCODER_INPUT = (37,)


class Functional(nn.Module):
    """F.relu, F.max_pool2d with padding, torch.relu, Tensor.relu, torch.add, F.avg_pool2d with
    padding (count_include_pad), F.dropout(training=self.training), contiguous, torch.flatten."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 6, 3)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 6, 1)
        self.fc = nn.Linear(6 * 4 * 4, 7)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(x, 3, stride=2, padding=1)
        y = torch.relu(self.conv2(x))
        z = self.conv3(x).relu()
        x = torch.add(y, z)
        x = F.avg_pool2d(x, 2, padding=1)
        x = F.dropout(x, 0.25, training=self.training)
        x = torch.flatten(x.contiguous(), 1)
        return F.relu(self.fc(x))


FUNCTIONAL_INPUT = (2, 15, 13)


class Grouped(nn.Module):
    """groups=2 with stride and dilation, depthwise with multiplier 2, groups=3 with a 3x1
    kernel, AvgPool2d with padding on a signed input, padding='same' depthwise,
    Tensor.add(alpha), reshape(N, -1)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2)
        self.dw = nn.Conv2d(6, 12, 3, padding=1, groups=6)
        self.conv3 = nn.Conv2d(12, 9, (3, 1), padding=(1, 0), groups=3)
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.same = nn.Conv2d(9, 9, 3, padding="same", dilation=2, groups=9)
        self.fc = nn.Linear(9 * 5 * 3, 5)

    def forward(self, x):
        x = self.pool(self.conv3(self.dw(self.conv1(x))))
        x = x.add(self.same(x), alpha=0.5)
        return self.fc(x.reshape(x.shape[0], -1))


GROUPED_INPUT = (4, 17, 11)


MODELS = {
    "lenet": (LeNet, LENET_INPUT),
    "dscnn": (DSCNN, DSCNN_INPUT),
    "resnet8": (ResNet8, RESNET_INPUT),
    "autoencoder": (Autoencoder, AUTOENCODER_INPUT),
    "functional": (Functional, FUNCTIONAL_INPUT),
    "grouped": (Grouped, GROUPED_INPUT),
}


# Checks -----------------------------------------------------------------------------------------

def _inputs(shape, n=3, seed=SEED):
    return torch.randn((n,) + tuple(shape), generator=torch.Generator().manual_seed(seed))


def _fx_values(model, x):
    """Every fx node's value on ``x`` (float64 copy of the model), by node name, and the
    model's output."""
    with torch.no_grad():
        model(x)        # torch.nn.utils.prune recomputes `weight` outside autograd: copyable
    traced = fx.symbolic_trace(copy.deepcopy(model).double().eval())
    values = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node):
            result = super().run_node(node)
            values[node.name] = result
            return result

    with torch.no_grad():
        output = Recorder(traced).run(x.double())
    return values, output


def _assert_close(actual, expected, rtol=1e-9):
    """Equal to ``rtol`` of the reference's largest magnitude."""
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    deviation = float(np.abs(actual - expected).max(initial=0.0))
    assert deviation <= rtol * scale, (deviation, scale)


def _check_structure(graph):
    """Tensors, producers and consumers agree; ops are topological; weights have torch's
    layout and the kernel's size, not the feature map's."""
    assert isinstance(graph, Graph)
    assert graph.tensors[graph.input].producer is None
    assert list(graph.tensors)[0] == graph.input
    defined = {graph.input}
    names = [op.name for op in graph.ops]
    assert len(set(names)) == len(names)
    readers = {name: [] for name in graph.tensors}
    for op in graph.ops:
        assert isinstance(op, GraphOp) and op.kind in OP_KINDS
        assert len(op.inputs) == (2 if op.kind == "add" else 1)
        assert all(name in defined for name in op.inputs), (op.name, op.inputs)
        assert op.output not in defined
        assert op.output == op.fx_node
        out = graph.tensors[op.output]
        assert isinstance(out, GraphTensor) and out.producer == op.name
        defined.add(op.output)
        for name in op.inputs:
            if op.name not in readers[name]:
                readers[name].append(op.name)
        source = graph.tensors[op.inputs[0]]
        if op.kind == "conv":
            c_in, c_out = source.shape[0], out.shape[0]
            assert op.weight.dtype == np.float64 and op.bias.dtype == np.float64
            assert op.weight.shape == (c_out, c_in // op.groups) + tuple(op.kernel)
            assert op.bias.shape == (c_out,)
            assert c_in % op.groups == 0 and c_out % op.groups == 0
        elif op.kind == "linear":
            assert op.weight.shape == (out.shape[0], source.size)
            assert op.bias.shape == (out.shape[0],)
            assert op.input_view == (source.shape if source.is_image else None)
        elif op.kind == "add":
            assert graph.tensors[op.inputs[1]].shape == source.shape == out.shape
            assert len(op.scales) == 2
        else:
            assert op.weight is None and out.shape[0] == source.shape[0]
        if op.mask is not None:
            assert op.mask.dtype == bool and op.mask.shape == op.weight.shape
            assert not op.weight[~op.mask].any()
        for pair in (op.kernel, op.stride, op.padding, op.dilation):
            assert len(pair) == 2 and all(isinstance(v, int) for v in pair)
    assert set(defined) == set(graph.tensors)
    for name, tensor in graph.tensors.items():
        assert tensor.consumers == readers[name], name
        assert tensor.consumers or name == graph.output, f"{name} is never read"
    assert graph.tensors[graph.output].size == int(np.prod(graph.output_shape))


def _check_lowering(model, input_shape, n=3):
    """Lower ``model``; every op's output must equal its fx node's, the graph's output the
    model's."""
    x = _inputs(input_shape, n)
    graph = lower_graph(model, x)
    _check_structure(graph)
    values = graph.forward(x)
    assert set(values) == set(graph.tensors)
    fx_values, output = _fx_values(model, x)
    for op in graph.ops:
        expected = fx_values[op.fx_node].numpy()
        _assert_close(values[op.output].reshape(expected.shape), expected)
    _assert_close(graph.run(x), output.numpy())
    with torch.no_grad():
        float32 = model(x).double().numpy()
    _assert_close(graph.run(x), float32, rtol=1e-4)
    return graph


@pytest.mark.parametrize("name", list(MODELS))
def test_every_op_equals_its_fx_node(name):
    cls, shape = MODELS[name]
    _check_lowering(_build(cls), shape)


# What the models lower to ------------------------------------------------------------------------

def _kinds(graph):
    return [op.kind for op in graph.ops]


def test_lenet_fuses_relu_and_batchnorm_and_records_the_flatten_view():
    graph = lower_graph(_build(LeNet), _inputs(LENET_INPUT))
    assert _kinds(graph) == ["conv", "maxpool", "conv", "maxpool", "linear", "linear"]
    conv1, pool1, conv2, pool2, fc1, fc2 = graph.ops
    assert [op.name for op in graph.ops] == ["conv1", "pool1", "conv2", "pool2", "fc1", "fc2"]
    assert conv1.torch_op == "Conv2d+ReLU" and conv1.relu
    assert conv2.torch_op == "Conv2d+BatchNorm2d+ReLU"
    assert pool2.kernel == (3, 3) and pool2.stride == (2, 2) and pool2.padding == (1, 1)
    assert graph.tensors[pool2.inputs[0]].nonnegative
    assert graph.tensors[pool2.output].nonnegative
    assert fc1.inputs == [pool2.output] and fc1.input_view == (16, 6, 5)
    assert fc1.relu and fc2.input_view is None and not fc2.relu
    assert graph.tensors[graph.input].shape == LENET_INPUT
    assert graph.output == fc2.output and graph.output_shape == (10,)


def test_dscnn_depthwise_and_adaptive_pool():
    graph = lower_graph(_build(DSCNN), _inputs(DSCNN_INPUT))
    assert _kinds(graph) == ["conv"] * 9 + ["avgpool", "linear"]
    stem = graph.ops[0]
    assert stem.kernel == (10, 4) and stem.stride == (2, 2) and stem.padding == (5, 1)
    assert graph.tensors[stem.output].shape == (20, 25, 5)
    assert stem.torch_op == "Conv2d+BatchNorm2d+ReLU" and stem.relu
    for depthwise, pointwise in zip(graph.ops[1:9:2], graph.ops[2:9:2]):
        assert depthwise.groups == 20 and depthwise.weight.shape == (20, 1, 3, 3)
        assert pointwise.groups == 1 and pointwise.weight.shape == (20, 20, 1, 1)
        assert depthwise.relu and pointwise.relu
    pool, fc = graph.ops[-2:]
    assert pool.kernel == pool.stride == (25, 5) and pool.divisor == 125
    assert graph.tensors[pool.output].shape == (20, 1, 1)
    assert fc.input_view == (20, 1, 1)


def test_resnet8_residual_adds_and_shortcuts():
    graph = lower_graph(_build(ResNet8), _inputs(RESNET_INPUT))
    adds = [op for op in graph.ops if op.kind == "add"]
    assert len(adds) == 3 and all(op.relu and op.scales == (1.0, 1.0) for op in adds)
    assert all(op.torch_op == "operator.add+ReLU" for op in adds)
    # Stack 1: the identity shortcut reads the stem's output directly.
    stem = graph.op("stem.0")
    assert adds[0].inputs[1] == stem.output
    assert graph.tensors[stem.output].consumers == ["stack1.conv1", adds[0].name]
    # Stack 2: a 1x1 stride-2 projection with BN folded; stack 3: one without BN.
    projection = graph.op("stack2.shortcut.0")
    assert projection.kernel == (1, 1) and projection.stride == (2, 2)
    assert projection.torch_op == "Conv2d+BatchNorm2d" and not projection.relu
    assert adds[1].inputs == [graph.op("stack2.conv2").output, projection.output]
    plain = graph.op("stack3.shortcut")
    assert plain.torch_op == "Conv2d" and plain.stride == (2, 2)
    assert graph.tensors[adds[2].output].shape == (64, 5, 4)
    # The block input stays live until the add: it is read by conv1 and the shortcut.
    assert graph.tensors[adds[0].output].consumers == ["stack2.conv1", "stack2.shortcut.0"]
    pool = graph.ops[-2]
    assert pool.kind == "avgpool" and pool.kernel == (5, 4) and pool.divisor == 20
    assert graph.ops[-1].input_view == (64, 1, 1)
    assert len(graph.ops) == 1 + 3 + 4 + 4 + 1 + 1       # stem, stacks, pool, fc


def test_autoencoder_folds_batchnorm1d():
    graph = lower_graph(_build(Autoencoder), _inputs(AUTOENCODER_INPUT))
    assert _kinds(graph) == ["linear"] * 4
    assert [op.torch_op for op in graph.ops] == ["Linear+BatchNorm1d+ReLU"] * 3 + ["Linear"]
    assert [graph.tensors[op.output].shape for op in graph.ops] == [(23,), (11,), (23,), (37,)]
    assert all(op.input_view is None for op in graph.ops)


def test_functional_forms():
    graph = lower_graph(_build(Functional), _inputs(FUNCTIONAL_INPUT))
    assert _kinds(graph) == ["conv", "maxpool", "conv", "conv", "add", "avgpool", "linear"]
    labels = [op.torch_op for op in graph.ops]
    assert labels == ["Conv2d+F.relu", "F.max_pool2d", "Conv2d+torch.relu",
                      "Conv2d+Tensor.relu", "torch.add", "F.avg_pool2d", "Linear+F.relu"]
    add, pool = graph.ops[4:6]
    assert graph.tensors[add.output].nonnegative
    assert pool.padding == (1, 1) and pool.divisor == 4
    assert graph.ops[-1].input_view == (6, 4, 4)


def test_grouped_convolutions():
    graph = lower_graph(_build(Grouped), _inputs(GROUPED_INPUT))
    conv1, dw, conv3, pool, same, add, fc = graph.ops
    assert conv1.groups == 2 and conv1.weight.shape == (6, 2, 3, 3)
    assert conv1.dilation == (2, 2) and conv1.stride == (2, 2) and conv1.padding == (2, 2)
    assert dw.groups == 6 and dw.weight.shape == (12, 1, 3, 3)
    assert conv3.groups == 3 and conv3.kernel == (3, 1) and conv3.weight.shape == (9, 4, 3, 1)
    assert pool.kind == "avgpool" and pool.divisor == 9
    assert not graph.tensors[pool.inputs[0]].nonnegative
    assert same.padding == (2, 2) and same.dilation == (2, 2)
    assert add.kind == "add" and add.scales == (1.0, 0.5) and add.torch_op == "Tensor.add"
    assert fc.input_view == (9, 5, 3)


def test_pruned_layers_keep_their_mask_and_pattern():
    model = _build(LeNet)
    torch_prune.l1_unstructured(model.conv2, "weight", amount=0.6)
    prune(model, "gs-scatter", 0.5, lanes=4, layers=["fc1"])
    x = _inputs(LENET_INPUT)
    graph = _check_lowering(model, LENET_INPUT)
    conv2 = graph.op("conv2")
    assert np.array_equal(conv2.mask, model.conv2.weight_mask.numpy() != 0)
    assert not conv2.weight[~conv2.mask].any() and conv2.mask.mean() < 0.5
    fc1 = graph.op("fc1")
    assert fc1.pattern == pattern_info(model.fc1) and fc1.pattern.pattern == "gs-scatter"
    assert np.array_equal(fc1.row_order, model.fc1.gsaccel_row_order.numpy())
    assert np.array_equal(fc1.mask, model.fc1.weight_mask.numpy() != 0)
    assert graph.op("conv1").mask is None and graph.op("conv1").pattern is None
    assert graph.run(x).shape == (len(x), 10)


class _Shared(nn.Module):
    """A module called twice, a ReLU applied twice, ceil_mode without a partial window,
    AdaptiveMaxPool2d and AdaptiveAvgPool2d(k), returning a flattened image."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(5, 5, 3, padding=1)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)
        self.adaptive_max = nn.AdaptiveMaxPool2d((3, None))
        self.adaptive_avg = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        x = F.relu(F.relu(self.conv(x)))
        x = self.conv(x)
        x = self.adaptive_max(self.pool(x))
        return self.adaptive_avg(x).flatten(1)


def test_shared_module_relu_twice_adaptive_pools_and_flat_output():
    graph = _check_lowering(_build(_Shared), (5, 12, 10))
    assert [op.name for op in graph.ops] == ["conv", "conv_1", "pool", "adaptive_max",
                                             "adaptive_avg"]
    assert graph.ops[0].torch_op == "Conv2d+F.relu+F.relu"
    assert graph.op("adaptive_max").kind == "maxpool"
    assert graph.op("adaptive_max").kernel == (2, 1)
    assert graph.output_shape == (5,) and graph.tensors[graph.output].shape == (5, 1, 1)


@pytest.mark.parametrize("flatten", [
    lambda m, x: m.flatten(x),
    lambda m, x: torch.flatten(x, 1),
    lambda m, x: x.flatten(1, -1),
    lambda m, x: x.view(x.size(0), -1),
    lambda m, x: x.view(-1, 5 * 7 * 3),
    lambda m, x: x.reshape(3, -1),
    lambda m, x: torch.reshape(x, (x.shape[0], x.shape[1] * x.shape[2] * x.shape[3])),
    lambda m, x: x.view(x.size()).flatten(1).flatten(1).view(x.size(0), -1),
])
def test_flatten_forms(flatten):
    def fn(m, x):
        return m.fc(flatten(m, F.relu(m.conv(x))))
    model = _Lambda(fn, conv=nn.Conv2d(2, 5, 3), flatten=nn.Flatten(), fc=nn.Linear(105, 4))
    graph = _check_lowering(model.eval(), (2, 9, 5), n=3)
    assert _kinds(graph) == ["conv", "linear"] and graph.ops[1].input_view == (5, 7, 3)


@pytest.mark.parametrize("pool, expected", [
    (lambda x: F.avg_pool2d(x, 3, 2, divisor_override=4), dict(divisor=4, kernel=(3, 3))),
    (lambda x: F.avg_pool2d(x, (3, 2), (1, 2), (1, 0)), dict(divisor=6, padding=(1, 0))),
    (lambda x: F.adaptive_avg_pool2d(x, (2, 3)), dict(kernel=(4, 3), stride=(4, 3))),
    (lambda x: F.adaptive_max_pool2d(F.relu(x), (2, 3)), dict(kind="maxpool", kernel=(4, 3))),
    (lambda x: F.max_pool2d(F.relu(x), 3, 1, 1, 2), dict(dilation=(2, 2), padding=(1, 1))),
    (lambda x: torch.max_pool2d(x, (2, 3)), dict(kind="maxpool", stride=(2, 3))),
    (lambda x: F.avg_pool2d(x, (2, 3), ceil_mode=True), dict(kernel=(2, 3))),
])
def test_pool_options(pool, expected):
    model = _Lambda(lambda m, x: pool(m.conv(x)), conv=nn.Conv2d(3, 4, 1))
    graph = _check_lowering(model.eval(), (3, 8, 9))
    op = graph.ops[-1]
    for key, value in expected.items():
        assert getattr(op, key) == value, key


def test_lowering_traces_in_eval_mode_and_restores_the_mode():
    def fn(m, x):
        return m.fc(F.dropout(m.bn(m.linear(x)), 0.5, training=m.training))
    model = _randomise_batchnorms(_Lambda(fn, linear=nn.Linear(6, 5), bn=nn.BatchNorm1d(5),
                                          fc=nn.Linear(5, 3)), SEED).train()
    graph = lower_graph(model, _inputs((6,)))
    assert model.training and all(module.training for module in model.modules())
    model.eval()
    _check_lowering(model, (6,))
    x = _inputs((6,))
    with torch.no_grad():
        _assert_close(graph.run(x), model(x).double().numpy(), rtol=1e-5)


def test_mixed_modes_are_restored():
    model = _Lambda(lambda m, x: F.relu(m.bn(m.conv(x))), conv=nn.Conv2d(3, 4, 3),
                    bn=nn.BatchNorm2d(4)).train()
    model.bn.eval()                             # e.g. frozen statistics while fine-tuning
    lower_graph(model, _inputs((3, 6, 5)))
    assert model.training and model.conv.training and not model.bn.training


def test_a_tensor_added_to_itself():
    def fn(m, x):
        y = F.relu(m.conv(x))
        return y + y
    graph = _check_lowering(_Lambda(fn, conv=nn.Conv2d(3, 4, 3)).eval(), (3, 6, 5))
    add = graph.ops[-1]
    assert add.kind == "add" and add.inputs == [graph.ops[0].output] * 2
    assert graph.tensors[graph.ops[0].output].consumers == [add.name]


def test_dead_code_is_not_lowered():
    def fn(m, x):
        m.act(x)                                # unused: nothing to run, nothing refused
        return m.conv(x)
    graph = _lower(_Lambda(fn, conv=nn.Conv2d(3, 4, 3), act=nn.GELU()), (3, 6, 6))
    assert [op.name for op in graph.ops] == ["conv"]


def test_forward_checks_the_input_shape():
    graph = lower_graph(_build(Autoencoder), _inputs(AUTOENCODER_INPUT))
    with pytest.raises(ShapeError, match=r"Input must have shape \(N,\) \+ \(37,\)"):
        graph.forward(np.zeros((2, 36)))
    assert "net.0: linear (Linear+BatchNorm1d+ReLU) x (37,) -> net_2 (23,)" in graph.summary()


def test_lowering_memory_grows_with_the_kernel_not_the_feature_map():
    """A 64-channel conv stack on the 49x10 KWS input: unrolled, each 3x3 layer would be a
    (64·49·10)² matrix (7.9 GB); as loop nests the graph holds only the kernels."""
    torch.manual_seed(SEED)
    layers = [nn.Conv2d(1, 64, (10, 4), stride=2, padding=(5, 1)), nn.BatchNorm2d(64),
              nn.ReLU()]
    for _ in range(4):
        layers += [nn.Conv2d(64, 64, 3, padding=1, groups=64), nn.BatchNorm2d(64), nn.ReLU(),
                   nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU()]
    model = _randomise_batchnorms(nn.Sequential(*layers), SEED).eval()
    x = torch.zeros((1, 1, 49, 10))
    lower_graph(model, x)                   # warm up imports and caches
    start = time.perf_counter()
    graph = lower_graph(model, x)
    elapsed = time.perf_counter() - start
    tracemalloc.start()
    try:
        lower_graph(model, x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    kernel_bytes = sum(op.weight.nbytes for op in graph.ops)
    assert kernel_bytes < 1_500_000
    assert elapsed < 0.5, elapsed
    assert peak < 4_000_000, peak
    assert max(op.weight.size for op in graph.ops) == 64 * 64 * 9


# Refusals ---------------------------------------------------------------------------------------

def _lower(module, shape):
    return lower_graph(module.eval(), _inputs(shape, 2))


class _Lambda(nn.Module):
    """A model whose forward is ``fn(self, x)`` (the test's own modules as attributes)."""

    def __init__(self, fn, **modules):
        super().__init__()
        self.fn = fn
        for name, module in modules.items():
            setattr(self, name, module)

    def forward(self, x):
        return self.fn(self, x)


def test_unsupported_module_is_named_not_its_neighbour():
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(2, 4, 3), drop=nn.Dropout(),
                                      act=nn.GELU(), out=nn.Identity()))
    with pytest.raises(UnsupportedError) as error:
        _lower(model, (2, 7, 9))
    message = str(error.value)
    assert message.startswith("Operation module 'act' (nn.GELU) at node 'act' is not "
                              "supported; the core runs Conv2d")
    assert "drop" not in message and "out" not in message and "\n" not in message


@pytest.mark.parametrize("fn, expected", [
    (lambda m, x: torch.sigmoid(m.conv(x)), "function 'sigmoid' (torch.sigmoid) at node "
                                            "'sigmoid'"),
    (lambda m, x: m.conv(x).tanh(), "method 'tanh' (Tensor.tanh) at node 'tanh'"),
    (lambda m, x: F.gelu(m.conv(x)), "function 'gelu' (F.gelu) at node 'gelu'"),
    (lambda m, x: m.conv(x) * m.conv(x), "function 'mul' (operator.mul) at node 'mul'"),
    (lambda m, x: torch.cat([m.conv(x), m.conv(x)], 1), "function 'cat' (torch.cat) at node "
                                                        "'cat'"),
    (lambda m, x: m.conv(x)[:, :2], "function 'getitem' (operator.getitem) at node 'getitem'"),
])
def test_unsupported_functions_and_methods_are_named(fn, expected):
    with pytest.raises(UnsupportedError, match="Operation " + expected.replace("(", r"\(")
                       .replace(")", r"\)")):
        _lower(_Lambda(fn, conv=nn.Conv2d(4, 4, 1)), (4, 5, 6))


def test_batchnorm_after_a_tensor_with_two_readers():
    def fn(m, x):
        y = m.conv(x)
        return m.bn(y) + y
    with pytest.raises(UnsupportedError,
                       match=r"module 'bn' \(nn.BatchNorm2d\) at node 'bn' is not supported: "
                             r"its input 'conv' \(Conv2d 'conv'\) is also read by 'add'"):
        _lower(_Lambda(fn, conv=nn.Conv2d(3, 4, 3), bn=nn.BatchNorm2d(4)), (3, 8, 7))


def test_relu_after_a_tensor_with_two_readers():
    def fn(m, x):
        y = m.drop(m.conv(x))                  # through an alias: still two readers
        return F.relu(y) + y
    with pytest.raises(UnsupportedError,
                       match=r"function 'relu' \(F.relu\) at node 'relu' is not supported: "
                             r"its input 'conv' .* also read by 'add'"):
        _lower(_Lambda(fn, conv=nn.Conv2d(3, 4, 3), drop=nn.Dropout()), (3, 8, 7))


def test_two_inputs():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x, y):
            return self.fc(x) + self.fc(y)
    with pytest.raises(UnsupportedError, match=r"Model input 'y' is not supported: the model "
                                               r"must take exactly one input tensor"):
        _lower(TwoInputs(), (4,))


def test_max_pool_padding_on_a_signed_input():
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3), pool=nn.MaxPool2d(3, 2, 1)))
    with pytest.raises(UnsupportedError,
                       match=r"module 'pool' \(nn.MaxPool2d\) at node 'pool' is not supported: "
                             r"torch pads with -inf .* its input 'conv' can be negative"):
        _lower(model, (3, 9, 8))
    # Without padding, or after a ReLU, it is fine.
    _check_lowering(nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(3, 2)).eval(), (3, 9, 8))
    _check_lowering(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(3, 2, 1)).eval(),
                    (3, 9, 8))


def test_view_to_a_non_flat_shape():
    with pytest.raises(UnsupportedError,
                       match=r"method 'view' \(Tensor.view\) at node 'view' is not supported: "
                             r"it reshapes \(2, 4, 5, 5\) to \(2, 4, 25\); only flattening"):
        _lower(_Lambda(lambda m, x: m.conv(x).view(x.size(0), 4, -1),
                       conv=nn.Conv2d(3, 4, 3)), (3, 7, 7))


@pytest.mark.parametrize("fn, shape, expected", [
    (lambda m, x: torch.flatten(m.conv(x)), (3, 7, 7), r"it flattens dims 0\.\.-1"),
    (lambda m, x: F.dropout(m.conv(x), 0.2), (3, 7, 7), r"training=True"),
    (lambda m, x: F.avg_pool2d(m.conv(x), 3, 2, 1, count_include_pad=False), (3, 7, 7),
     r"count_include_pad=False"),
    (lambda m, x: F.adaptive_avg_pool2d(m.conv(x), 2), (3, 7, 7),
     r"an output of 2x2 from 5x5 pixels has windows of unequal size"),
    (lambda m, x: m.conv(x) + 1, (3, 7, 7), r"it adds 1, which is not an activation"),
    (lambda m, x: m.conv(x) + m.offset, (3, 7, 7), r"it adds 'offset', which is not an "),
    (lambda m, x: m.conv(x) + m.wide(x), (3, 7, 7), r"operands 'conv' \(4, 5, 5\) and 'wide' "
                                                    r"\(4, 7, 7\) differ in shape"),
    (lambda m, x: m.fc(m.conv(x)), (3, 7, 7), r"flatten it first"),
    (lambda m, x: m.bn(F.relu(m.conv(x))), (3, 7, 7), r"put the BatchNorm before the ReLU"),
    (lambda m, x: m.bn(F.max_pool2d(m.conv(x), 2)), (3, 8, 8),
     r"only be folded into the Conv2d that produces its input, not into MaxPool2d|"
     r"not into F.max_pool2d"),
    (lambda m, x: m.bn(x), (4, 7, 7), r"applies to the model's input 'x'"),
    (lambda m, x: F.relu(x), (4, 7, 7), r"applies to the model's input 'x'"),
    (lambda m, x: F.max_pool2d(F.relu(m.conv(x)), 2, ceil_mode=True), (3, 9, 9),
     r"ceil_mode=True adds a partial window"),
    (lambda m, x: m.reflect(x), (3, 7, 7), r"padding_mode='reflect'"),
    (lambda m, x: m.indices(F.relu(m.conv(x)))[0], (3, 8, 8), r"returns indices"),
    (lambda m, x: (m.conv(x), m.conv(x)), (3, 7, 7), r"Model output must be exactly one "
                                                      r"activation tensor, not tuple"),
    (lambda m, x: x, (3, 7, 7), r"at least one Conv2d"),
    (lambda m, x: m.even(x), (3, 7, 7), r"padding='same' with an even kernel"),
])
def test_refusals(fn, shape, expected):
    modules = dict(conv=nn.Conv2d(3, 4, 3), bn=nn.BatchNorm2d(4), fc=nn.Linear(4, 2),
                   reflect=nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
                   even=nn.Conv2d(3, 4, 2, padding="same"), wide=nn.Conv2d(3, 4, 1),
                   indices=nn.MaxPool2d(2, return_indices=True))
    model = _Lambda(fn, **modules)
    model.offset = nn.Parameter(torch.ones(4, 1, 1))
    with pytest.raises(UnsupportedError, match=expected):
        _lower(model, shape)


def test_untraceable_model():
    def fn(m, x):
        return m.conv(x) if x.sum() > 0 else m.conv(-x)
    with pytest.raises(UnsupportedError, match="Model must be traceable by "
                                               "torch.fx.symbolic_trace"):
        _lower(_Lambda(fn, conv=nn.Conv2d(3, 4, 3)), (3, 7, 7))


def test_example_input_and_layer_shapes():
    with pytest.raises(ShapeError, match=r"Example input must be a non-empty batch"):
        lower_graph(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.zeros(3, 7, 7))
    with pytest.raises(ShapeError, match=r"expects 3 input channels, but its input has shape "
                                         r"\(2, 7, 7\)"):
        lower_graph(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.zeros(1, 2, 7, 7))
    with pytest.raises(ShapeError, match=r"must fit its 2x2 input"):
        lower_graph(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.zeros(1, 3, 2, 2))
    with pytest.raises(ShapeError, match=r"Linear at node 'fc' expects 6 features"):
        lower_graph(nn.Sequential(OrderedDict(fc=nn.Linear(6, 2))), torch.zeros(1, 5))
