"""The MLPerf Tiny reference networks (ResNet-8, DS-CNN, MobileNetV1-0.25, the FC
autoencoder), as torch modules with the reference topologies (DESIGN §5.1).

Only the topologies are reproduced: no CIFAR-10, Speech Commands, Visual Wake Words or
ToyADMOS data ships with the toolkit, so these models serve latency and fit (which depend on
the topology and the sparsity alone); accuracy is measured on the digits proxies.
The layer shapes follow the mlcommons/tiny reference Keras models (``training/*/keras_model.py``):
convolutions without bias followed by BatchNorm and ReLU, "same" padding written out as
explicit padding (Keras pads the bottom/right one more than the top/left for even kernels
or strided convolutions; the output sizes are the same).

>>> model = ResNet8().eval()
>>> model(torch.zeros(1, *ResNet8.input_shape)).shape
torch.Size([1, 10])
"""

import torch
from torch import nn

__all__ = ["ResNet8", "DSCNN", "MobileNetV1", "FCAutoencoder", "TINY_MODELS", "tiny_model",
           "parameter_count", "mac_count"]


def _conv_bn_relu(in_channels, out_channels, kernel, *, stride=1, padding=0, groups=1,
                  relu=True):
    layers = [nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding,
                        groups=groups, bias=False),
              nn.BatchNorm2d(out_channels)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class _ResidualStack(nn.Module):
    """Two 3×3 convolutions and a shortcut: the identity, or a strided 1×1 projection when the
    stack changes the width or the resolution; the sum goes through a ReLU."""

    def __init__(self, in_channels, out_channels, stride):
        super().__init__()
        self.conv1 = _conv_bn_relu(in_channels, out_channels, 3, stride=stride, padding=1)
        self.conv2 = _conv_bn_relu(out_channels, out_channels, 3, padding=1, relu=False)
        self.shortcut = (nn.Identity() if stride == 1 and in_channels == out_channels else
                         nn.Conv2d(in_channels, out_channels, 1, stride=stride))
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNet8(nn.Module):
    """Image classification (CIFAR-10, 32×32×3): conv 16, three residual stacks of 16, 32
    and 64 filters (the last two strided, with 1×1 projection shortcuts), global average
    pooling, FC 10. 78 k parameters, 12.5 M MACs."""

    input_shape = (3, 32, 32)

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = _conv_bn_relu(3, 16, 3, padding=1)
        self.stack1 = _ResidualStack(16, 16, 1)
        self.stack2 = _ResidualStack(16, 32, 2)
        self.stack3 = _ResidualStack(32, 64, 2)
        self.pool = nn.AvgPool2d(8)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.stack3(self.stack2(self.stack1(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


def _depthwise_separable(in_channels, out_channels, stride):
    return nn.Sequential(_conv_bn_relu(in_channels, in_channels, 3, stride=stride, padding=1,
                                       groups=in_channels),
                         _conv_bn_relu(in_channels, out_channels, 1))


class DSCNN(nn.Sequential):
    """Keyword spotting (49×10 MFCC features): conv 64 10×4 stride 2, four depthwise-separable
    blocks of 64 channels, average pooling over the 25×5 map, FC 12. 22.6 k parameters
    (with BatchNorm), 2.7 M MACs."""

    input_shape = (1, 49, 10)

    def __init__(self, num_classes=12, channels=64):
        super().__init__(
            _conv_bn_relu(1, channels, (10, 4), stride=2, padding=(5, 1)),
            nn.Dropout(0.2),
            *[_depthwise_separable(channels, channels, 1) for _ in range(4)],
            nn.Dropout(0.4),
            nn.AvgPool2d((25, 5)),
            nn.Flatten(),
            nn.Linear(channels, num_classes))


class MobileNetV1(nn.Sequential):
    """Visual wake words (96×96×3): MobileNetV1 at width 0.25 — conv 3×3 stride 2 to 8
    channels, 13 depthwise-separable blocks (16 … 256 channels), average pooling over the
    3×3 map, FC 2. 209 k parameters (with BatchNorm), 7.5 M MACs."""

    input_shape = (3, 96, 96)
    #: (output channels at width 1, stride) of the 13 depthwise-separable blocks.
    BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
              (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))

    def __init__(self, num_classes=2, width=0.25):
        channels = int(32 * width)
        layers = [_conv_bn_relu(3, channels, 3, stride=2, padding=1)]
        for out_channels, stride in self.BLOCKS:
            out_channels = int(out_channels * width)
            layers.append(_depthwise_separable(channels, out_channels, stride))
            channels = out_channels
        super().__init__(*layers, nn.AvgPool2d(3), nn.Flatten(),
                         nn.Linear(channels, num_classes))


class FCAutoencoder(nn.Sequential):
    """Anomaly detection (ToyADMOS, 5 frames × 128 mel bins = 640 inputs): four FC 128
    layers, an FC 8 bottleneck, four FC 128 layers, FC 640; BatchNorm and ReLU after each
    hidden layer. 270 k parameters, 0.26 M MACs."""

    input_shape = (640,)

    def __init__(self, inputs=640, hidden=128, bottleneck=8):
        widths = [inputs, hidden, hidden, hidden, hidden, bottleneck,
                  hidden, hidden, hidden, hidden]
        layers = []
        for in_features, out_features in zip(widths, widths[1:]):
            layers += [nn.Linear(in_features, out_features), nn.BatchNorm1d(out_features),
                       nn.ReLU()]
        super().__init__(*layers, nn.Linear(hidden, inputs))


#: Command-line name -> (class, MLPerf Tiny task).
TINY_MODELS = {
    "resnet8":     (ResNet8, "image classification"),
    "ds-cnn":      (DSCNN, "keyword spotting"),
    "mobilenetv1": (MobileNetV1, "visual wake words"),
    "fc-ae":       (FCAutoencoder, "anomaly detection"),
}


def tiny_model(name, *, seed=0):
    """A freshly initialised reference network, in eval mode, with its BatchNorm statistics
    randomised (as after training: a folded BatchNorm is then not the identity).

    Raises
    ------
    KeyError
        ``name`` is not in :data:`TINY_MODELS` (the message lists them).
    """
    if name not in TINY_MODELS:
        raise KeyError(f"No reference model {name!r}; the MLPerf Tiny models are "
                       f"{', '.join(TINY_MODELS)}")
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = TINY_MODELS[name][0]()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                module.weight.copy_(0.75 + 0.5 * torch.rand(n, generator=generator))
                module.bias.copy_(0.1 * torch.randn(n, generator=generator))
    return model.eval()


def parameter_count(model):
    """Trainable parameters (BatchNorm's included, as the MLPerf Tiny tables count them)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def mac_count(model, input_shape):
    """Multiply-accumulates of one inference of the dense model (Conv2d and Linear)."""
    macs = []

    def count(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            kernel = module.weight[0].numel()        # (C_in / groups) · kh · kw
            macs.append(output[0].numel() * kernel)
        elif isinstance(module, nn.Linear):
            macs.append(module.in_features * module.out_features)

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for hook in hooks:
            hook.remove()
    return sum(macs)
