"""torch model → device :class:`~gsaccel.sw.compile.program.Program`.

Three steps (docs/runtime.md has the full rules):

1. **Lower** (:func:`lower`): ``torch.fx.symbolic_trace`` the model and turn its chain of
   operations into float layers that each act on the *flattened, channel-major* activation
   (``(C, H, W)`` order, exactly what ``nn.Flatten`` produces, so Flatten is free):

   * ``Linear`` → its weight matrix;
   * ``Conv2d`` (any stride, padding, dilation, groups) → its unrolled (Toeplitz) matrix over
     the flattened input, computed by pushing the identity through the convolution — no
     im2col buffer exists at run time, the engine gathers the input columns directly;
   * ``AvgPool2d``/``AdaptiveAvgPool2d`` → a matrix of ``1/window`` (with pow2 weights: ones
     and a shift, so the window must be a power of two);
   * ``BatchNorm1d/2d`` → folded into the preceding Linear/Conv rows;
   * ``ReLU`` → the previous layer's requantiser clamps at zero;
   * ``Flatten``, ``Dropout``, ``Identity`` → nothing;
   * a SmartDeal layer (``prune(..., pattern="smartdeal")``) → a BASIS layer (z = B·x per
     3-element chunk) and the power-of-two matrix C';
   * anything else (MaxPool, additions, ...) → :class:`UnsupportedError` naming op and node.

2. **Calibrate**: run the float layers on the example batch; every activation gets a
   power-of-two scale ``2**s`` with ``max|a| / 2**s <= 127``.

3. **Quantise and pack**: weights get a per-layer power-of-two scale, then each weight becomes
   the nearest signed power of two (``pow2``: exponent 0..15, rounded at 1.5·2**k) or an int8;
   a kept (unmasked) weight never rounds to zero, so the pruning pattern survives exactly. The
   weight scale is the finest one whose worst-case accumulator (all inputs at ±128) stays
   inside ``acc_width`` bits, so the accumulator never wraps. Bias is quantised to the
   accumulator scale ``2**(s_x + s_w)``; the requantiser shifts by ``s_y − s_x − s_w``. Each
   matrix is packed with its layer's pruning pattern (``gsaccel.sw.prune.pattern_info``), or the
   first pattern its mask satisfies (gs-gather, 1xN), else ``unstructured``.
"""

import logging
import math
from dataclasses import dataclass, field

import numpy as np

from ...hw.config import POW2_EXP_MAX, CoreConfig
from ..errors import CapacityError, PatternError, ShapeError, UnsupportedError
from ..format import GSMatrix, pow2_exponent
from .image import LayerSpec
from .program import Program

__all__ = ["compile", "lower", "FloatLayer", "float_trace", "quantize_weights"]

logger = logging.getLogger(__name__)


@dataclass
class FloatLayer:
    """One device layer before quantisation, acting on flattened activations.

    ``kind="gs"``: ``y = relu?(weight @ x + bias)``; ``mask`` marks the kept weights (None:
    all kept). ``kind="basis"``: ``y[3g:3g+3] = basis @ x[3g:3g+3]`` for ``n_chunks`` chunks.
    """

    kind: str
    name: str
    op: str
    out_shape: tuple
    weight: np.ndarray = None
    bias: np.ndarray = None
    mask: np.ndarray = None
    relu: bool = False
    pattern: object = None          # PatternInfo from the pruner, if any
    row_order: np.ndarray = None    # gs-scatter row groups from the pruner
    exact_pow2: bool = False        # average pool: every weight is one power of two
    basis: np.ndarray = None
    n_chunks: int = 0
    foldable: bool = False          # Linear/Conv rows a BatchNorm may fold into

    @property
    def in_size(self):
        return self.weight.shape[1] if self.kind == "gs" else 3 * self.n_chunks

    @property
    def out_size(self):
        return int(np.prod(self.out_shape))

    def forward(self, x):
        """Float output for a batch ``x`` of shape (N, >= in_size)."""
        x = np.asarray(x, dtype=np.float64)
        if self.kind == "basis":
            if x.shape[1] < 3 * self.n_chunks:      # the host zero-pads the input
                x = np.pad(x, ((0, 0), (0, 3 * self.n_chunks - x.shape[1])))
            chunks = x[:, :3 * self.n_chunks].reshape(len(x), self.n_chunks, 3)
            y = (chunks @ self.basis.T).reshape(len(x), -1)
        else:
            y = x[:, :self.weight.shape[1]] @ self.weight.T + self.bias
        return np.maximum(y, 0) if self.relu else y


def float_trace(layers, x):
    """Each float layer's output (N, out_size) for inputs ``x`` (N, ...)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    outputs = []
    for layer in layers:
        x = layer.forward(x)
        outputs.append(x)
    return outputs


# Lowering ---------------------------------------------------------------------------------------

def _torch():
    import torch
    return torch


def _masked_weight(module):
    """(weight, kept mask) of a Linear/Conv2d, honouring torch.nn.utils.prune reparametrisation."""
    torch = _torch()
    with torch.no_grad():
        if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
            mask = module.weight_mask.detach().cpu().double().numpy() != 0
            weight = (module.weight_orig * module.weight_mask).detach().cpu().double().numpy()
            return weight, mask
        weight = module.weight.detach().cpu().double().numpy()
        return weight, None


def _unrolled(fn, in_shape):
    """The matrix of the linear map ``fn`` over the flattened input (out × in), float64."""
    torch = _torch()
    n_in = int(np.prod(in_shape))
    with torch.no_grad():
        eye = torch.eye(n_in, dtype=torch.float64).reshape((n_in,) + tuple(in_shape))
        out = fn(eye)
    return out.reshape(n_in, -1).T.numpy().copy(), tuple(out.shape[1:])


def _pattern_of(module):
    try:
        from ..prune import pattern_info
    except ImportError:     # the pruner is optional for compiling unpruned models
        return None, None
    info = pattern_info(module)
    order = getattr(module, "gsaccel_row_order", None)
    return info, None if order is None else order.detach().cpu().numpy()


def _describe(node):
    if node.op == "call_module":
        return f"module {node.target!r}"
    target = getattr(node.target, "__name__", node.target)
    return f"{node.op.replace('call_', '')} {target!r}"


def lower(model, input_shape):
    """Float layers equivalent to ``model`` on inputs of shape ``(N,) + input_shape``.

    Raises
    ------
    UnsupportedError
        For an operation the core cannot run, naming it and its graph node.
    """
    torch = _torch()
    from torch import fx, nn
    import torch.nn.functional as F

    try:
        graph = fx.symbolic_trace(model)
    except Exception as error:     # tracing failures come in many types; report them as one
        raise UnsupportedError(f"Model must be traceable by torch.fx.symbolic_trace, but: "
                               f"{type(error).__name__}: {error}") from None
    modules = dict(graph.named_modules())
    layers = []
    shape = tuple(input_shape)
    value = None                   # the node carrying the activation

    activations = set()            # every node that carried the activation so far

    def uses_value(node):
        found = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n))
        return [n for n in found if n in activations]

    def unsupported(node, why=""):
        raise UnsupportedError(f"Operation {_describe(node)} at node {node.name!r} is not "
                               f"supported{': ' + why if why else ''}")

    def is_flatten_args(args, kwargs):
        start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
        end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
        return start == 1 and end == -1

    for node in graph.graph.nodes:
        if node.op == "placeholder":
            if value is not None:
                unsupported(node, "the model must take exactly one input")
            value = node
            activations.add(node)
            continue
        if node.op == "output":
            if node.args[0] is not value:
                unsupported(node, "the model must return the single activation tensor")
            break
        if node.op == "get_attr":
            continue
        if not uses_value(node):
            continue            # static shape arithmetic, e.g. on x.size(0)
        if (node.op == "call_method" and node.target in ("size", "dim")) or \
                (node.op == "call_function" and getattr(node.target, "__name__", "") ==
                 "getattr" and node.args[1:] == ("shape",)):
            continue            # x.size(0), x.shape: read the shape, not the activation
        if len(uses_value(node)) != 1 or node.args[0] is not value:
            unsupported(node, "only a chain of single-input layers can be compiled")

        kind = None
        module = modules.get(node.target) if node.op == "call_module" else None
        target = node.target
        if module is not None:
            if isinstance(module, nn.Linear):
                kind = "linear"
            elif isinstance(module, nn.Conv2d):
                kind = "conv"
            elif isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
                kind = "avgpool"
            elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                kind = "batchnorm"
            elif isinstance(module, nn.ReLU):
                kind = "relu"
            elif isinstance(module, nn.Flatten):
                if module.start_dim != 1 or module.end_dim != -1:
                    unsupported(node, f"Flatten must flatten dims 1..-1, not "
                                      f"{module.start_dim}..{module.end_dim}")
                kind = "flatten"
            elif isinstance(module, (nn.Dropout, nn.Identity)):
                kind = "identity"
            elif isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool2d)):
                unsupported(node, "the core has no max unit; use AvgPool2d")
        elif node.op == "call_function":
            if target in (F.relu, torch.relu, torch.relu_):
                kind = "relu"
            elif target is torch.flatten:
                if not is_flatten_args(node.args, node.kwargs):
                    unsupported(node, "flatten must flatten dims 1..-1")
                kind = "flatten"
            elif target in (F.dropout,):
                kind = "identity"
        elif node.op == "call_method":
            if target in ("relu", "relu_"):
                kind = "relu"
            elif target == "flatten":
                if not is_flatten_args(node.args, node.kwargs):
                    unsupported(node, "flatten must flatten dims 1..-1")
                kind = "flatten"
            elif target in ("view", "reshape"):
                dims = node.args[1:]
                if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
                    dims = tuple(dims[0])
                if len(dims) == 2 and dims[1] == -1:
                    kind = "flatten"       # x.view(x.size(0), -1)
                else:
                    unsupported(node, "only view/reshape to (N, -1) is supported")
            elif target == "contiguous":
                kind = "identity"
        if kind is None:
            unsupported(node)

        name = str(node.target) if node.op == "call_module" else node.name
        if kind == "identity":
            pass
        elif kind == "flatten":
            # Activations are always stored flattened in (C, H, W) order: nothing to do.
            shape = (int(np.prod(shape)),)
        elif kind == "relu":
            if not layers:
                unsupported(node, "a ReLU must follow a Linear, Conv2d or pooling layer to be "
                                  "fused into its requantiser")
            layers[-1].relu = True
        elif kind == "linear":
            if len(shape) != 1 or shape[0] != module.in_features:
                raise UnsupportedError(f"Linear at node {name!r} expects {module.in_features} "
                                       f"features, but its input has shape {shape}; flatten first")
            weight, mask = _masked_weight(module)
            bias = np.zeros(module.out_features) if module.bias is None else \
                module.bias.detach().cpu().double().numpy()
            info, order = _pattern_of(module)
            if info is not None and info.pattern == "smartdeal":
                layers += _lower_smartdeal(module, name, weight, bias, info, order, layers,
                                           shape)
            else:
                layers.append(FloatLayer("gs", name, "Linear", (module.out_features,), weight,
                                         bias, mask, pattern=info, row_order=order,
                                         foldable=True))
            shape = (module.out_features,)
        elif kind == "conv":
            if len(shape) != 3:
                raise UnsupportedError(f"Conv2d at node {name!r} needs a (C, H, W) input, "
                                       f"not shape {shape}")
            info, order = _pattern_of(module)
            if info is not None and info.pattern == "smartdeal":
                unsupported(node, "SmartDeal is compiled for Linear layers only")
            weight, mask = _masked_weight(module)
            w = torch.from_numpy(weight)
            conv = lambda x, w=w, m=module: m._conv_forward(x, w, None)
            matrix, out_shape = _unrolled(conv, shape)
            # A kept kernel weight is kept at every position it lands on; the other entries
            # of the unrolled matrix are structural zeros (unpruned: every kernel weight kept).
            kept = np.ones(weight.shape) if mask is None else mask.astype(np.float64)
            mconv = lambda x, m=module, k=torch.from_numpy(kept): m._conv_forward(x, k, None)
            tmask = _unrolled(mconv, shape)[0] != 0
            bias = np.zeros(module.out_channels) if module.bias is None else \
                module.bias.detach().cpu().double().numpy()
            bias = np.repeat(bias, int(np.prod(out_shape[1:])))
            layers.append(FloatLayer("gs", name, "Conv2d", out_shape, matrix, bias, tmask,
                                     pattern=None, foldable=True))
            shape = out_shape
        elif kind == "avgpool":
            if len(shape) != 3:
                raise UnsupportedError(f"Pooling at node {name!r} needs a (C, H, W) input, "
                                       f"not shape {shape}")
            matrix, out_shape = _unrolled(module, shape)
            values = np.unique(matrix[matrix != 0])
            exact = values.size == 1 and math.log2(values[0]).is_integer()
            layers.append(FloatLayer("gs", name, type(module).__name__, out_shape, matrix,
                                     np.zeros(matrix.shape[0]), matrix != 0,
                                     exact_pow2=exact))
            shape = out_shape
        elif kind == "batchnorm":
            prev = layers[-1] if layers else None
            if prev is None or not prev.foldable or prev.relu:
                unsupported(node, "BatchNorm must directly follow a Linear or Conv2d to be "
                                  "folded into it")
            channels = module.num_features
            if module.running_mean is None:
                unsupported(node, "BatchNorm without running statistics cannot be folded")
            mean = module.running_mean.detach().cpu().double().numpy()
            var = module.running_var.detach().cpu().double().numpy()
            gamma = np.ones(channels) if module.weight is None else \
                module.weight.detach().cpu().double().numpy()
            beta = np.zeros(channels) if module.bias is None else \
                module.bias.detach().cpu().double().numpy()
            scale = gamma / np.sqrt(var + module.eps)
            per_channel = prev.out_size // channels
            if per_channel * channels != prev.out_size:
                unsupported(node, f"{channels} channels do not divide {prev.out_size} outputs")
            s = np.repeat(scale, per_channel)
            prev.weight = prev.weight * s[:, None]
            prev.bias = s * (prev.bias - np.repeat(mean, per_channel)) + np.repeat(beta,
                                                                                  per_channel)
            prev.foldable = False
            prev.op += "+BatchNorm"
        value = node
        activations.add(node)
    if not layers:
        raise UnsupportedError("Model must contain at least one Linear, Conv2d or pooling "
                               "layer, not none")
    return layers


def _lower_smartdeal(module, name, weight, bias, info, order, layers, shape):
    """BASIS layer + C' layer for a SmartDeal Linear (W ≈ C·B per 3-element chunk)."""
    from ..prune import smartdeal_factors
    c, basis = smartdeal_factors(module)
    rows, cols = weight.shape
    n_chunks = -(-cols // 3)
    if 3 * n_chunks != cols:
        # The basis unit reads whole chunks: the elements past `cols` must be zero. Pad the
        # producing layer with zero rows (or, for the first layer, the host pads the input).
        if layers:
            prev = layers[-1]
            if prev.kind != "gs" or prev.out_size != cols:
                raise UnsupportedError(f"SmartDeal layer {name!r} needs {3 * n_chunks} inputs; "
                                       f"its producer cannot be padded")
            extra = 3 * n_chunks - cols
            prev.weight = np.vstack([prev.weight, np.zeros((extra, prev.weight.shape[1]))])
            prev.bias = np.concatenate([prev.bias, np.zeros(extra)])
            if prev.mask is not None:
                prev.mask = np.vstack([prev.mask, np.zeros((extra, prev.mask.shape[1]), bool)])
            else:
                prev.mask = np.vstack([np.ones(prev.weight.shape, bool)[:-extra],
                                       np.zeros((extra, prev.weight.shape[1]), bool)])
            prev.out_shape = (prev.out_size + extra,)
            prev.pattern = None
    cprime = c.reshape(rows, 3 * n_chunks)
    return [FloatLayer("basis", f"{name}.basis", "SmartDeal B", (3 * n_chunks,),
                       basis=np.asarray(basis, dtype=np.float64), n_chunks=n_chunks),
            FloatLayer("gs", f"{name}.cprime", "SmartDeal C'", (rows,), cprime, bias,
                       cprime != 0, pattern=type(info)(info.c_pattern, info.lanes, info.per_row),
                       row_order=order)]


# Quantisation -----------------------------------------------------------------------------------

def _scale_log2(max_abs, limit=127):
    """Smallest s with max_abs / 2**s <= limit (0 for an all-zero tensor)."""
    if not max_abs > 0 or not math.isfinite(max_abs):
        return 0
    return math.ceil(math.log2(max_abs / limit))


def quantize_weights(weight, mask, scale_log2, encoding):
    """Integer weights ``≈ weight / 2**scale_log2`` in ``encoding``; kept weights never 0.

    pow2: :func:`gsaccel.sw.format.pow2_exponent` (midpoint 1.5·2**k) with exponents clipped
    to 0..POW2_EXP_MAX (tiny kept weights become ±1); int8: rounded half away from zero and
    clipped to ±127.
    """
    v = np.asarray(weight, dtype=np.float64) / 2.0 ** scale_log2
    kept = np.ones(v.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    sign = np.where(v < 0, -1, 1)
    if encoding == "pow2":
        exp = pow2_exponent(v, 0, POW2_EXP_MAX).astype(np.int64)
        q = sign * (np.int64(1) << exp)
    else:
        q = np.clip(np.sign(v) * np.floor(np.abs(v) + 0.5), -127, 127).astype(np.int64)
        q = np.where(q == 0, sign, q)
    return np.where(kept, q, 0).astype(np.int64)


def _choose_weight_scale(layer, s_x, cfg, encoding):
    """The finest weight scale whose worst-case accumulator fits ``acc_width`` bits."""
    weight, bias = layer.weight, layer.bias
    kept = np.ones(weight.shape, bool) if layer.mask is None else layer.mask
    max_w = float(np.abs(weight[kept]).max()) if kept.any() else 0.0
    if layer.exact_pow2 and encoding == "pow2":
        # Average pooling: weights of exactly 1, the division is the requantiser's shift.
        s = int(round(math.log2(max_w)))
    elif max_w == 0:
        s = 0
    else:
        s = _scale_log2(max_w, 2 ** POW2_EXP_MAX if encoding == "pow2" else 127)
    limit = 1 << (cfg.acc_width - 1)
    while True:
        q = quantize_weights(weight, layer.mask, s, encoding)
        b = np.floor(bias / 2.0 ** (s_x + s) + 0.5).astype(np.int64)
        worst = int((np.abs(q).sum(axis=1) * 128 + np.abs(b)).max())
        if worst < limit // 2:      # headroom for the rounding add and the bias sign
            return s, q, b
        if layer.exact_pow2 and encoding == "pow2":
            raise CapacityError(f"Layer {layer.name!r}: a pooling window this large overflows "
                                f"the {cfg.acc_width}-bit accumulator")
        s += 1


def _error_feedback_round(layer, q_plain, x, s_x, s_w, encoding, cfg):
    """Round the weights column by column, pushing each column's rounding error onto the
    columns not yet rounded, weighted by the calibration inputs' second moments (the
    GPTQ/OBQ update), so that ``W·x`` rather than each weight is kept close.

    ``x`` is the layer's input as the device sees it (dequantised int8), so upstream
    quantisation error is compensated as well. Pruned weights stay exactly zero and kept
    ones never round to zero. Falls back to plain rounding if the result would break the
    accumulator bound.
    """
    weight = layer.weight / 2.0 ** s_w
    rows, cols = weight.shape
    kept = np.ones(weight.shape, bool) if layer.mask is None else layer.mask
    hessian = x.T @ x / max(1, len(x))
    damp = 0.01 * float(np.mean(np.diag(hessian))) + 1e-12
    hessian = hessian + damp * np.eye(cols)
    try:
        inverse = np.linalg.cholesky(np.linalg.inv(hessian)).T      # upper triangular
    except np.linalg.LinAlgError:
        return q_plain
    w = weight.copy()
    q = np.zeros((rows, cols), dtype=np.int64)
    for j in range(cols):
        column = quantize_weights(w[:, j:j + 1], kept[:, j:j + 1], 0, encoding)[:, 0]
        q[:, j] = column
        error = (w[:, j] - column) / inverse[j, j]
        w[:, j + 1:] -= np.outer(error, inverse[j, j + 1:])
        w[:, j + 1:] *= kept[:, j + 1:]
    bias = np.abs(layer.bias) / 2.0 ** (s_x + s_w)
    worst = np.abs(q).sum(axis=1) * 128 + bias
    if worst.max() >= (1 << (cfg.acc_width - 1)) // 2:
        return q_plain
    return q


@dataclass
class _Calibration:
    scale_log2: list = field(default_factory=list)
    max_abs: list = field(default_factory=list)


def compile(model, example_input, lanes=8, encoding="pow2", cfg=None):
    """Compile a torch model into a :class:`Program` for the core.

    Parameters
    ----------
    model : torch.nn.Module
        A chain of supported layers (see the module docstring), in eval mode or not (the
        model is traced, not trained).
    example_input : array or tensor (N, ...)
        Calibration batch: activation scales are set so that its largest values fit int8.
    lanes : int
        V, when ``cfg`` is not given.
    encoding : str
        ``pow2`` or ``int8``, when ``cfg`` is not given.
    cfg : CoreConfig, optional
        The core to compile for (default ``CoreConfig(lanes=lanes, encoding=encoding)``).

    Raises
    ------
    UnsupportedError, CapacityError, ShapeError, PatternError
    """
    torch = _torch()
    if cfg is None:
        cfg = CoreConfig(lanes=lanes, encoding=encoding)
    elif cfg.lanes != lanes and lanes != 8 or cfg.encoding != encoding and encoding != "pow2":
        raise ShapeError(f"Lanes and encoding must match cfg ({cfg.lanes}, {cfg.encoding}), "
                         f"not ({lanes}, {encoding})")
    encoding = cfg.encoding
    x = example_input.detach().cpu().numpy() if isinstance(example_input, torch.Tensor) \
        else np.asarray(example_input)
    if x.ndim < 2 or len(x) == 0:
        raise ShapeError(f"Example input must be a non-empty batch (N, ...), not shape "
                         f"{x.shape}")
    x = x.astype(np.float64)
    input_shape = x.shape[1:]
    was_training = model.training
    model.eval()
    try:
        floats = lower(model, input_shape)
        with torch.no_grad():
            reference = model(torch.from_numpy(x).to(next(
                (p.dtype for p in model.parameters()), torch.float32))).double().numpy()
    finally:
        model.train(was_training)

    # The lowering must reproduce the model; if not, something was silently mis-lowered.
    outputs = float_trace(floats, x)
    final = outputs[-1][:, :reference.reshape(len(x), -1).shape[1]]
    deviation = float(np.abs(final - reference.reshape(len(x), -1)).max())
    tolerance = 1e-4 * max(1.0, float(np.abs(reference).max()))
    if deviation > tolerance:
        raise UnsupportedError(f"Lowered layers must reproduce the model's output, but they "
                               f"differ by {deviation:.3g} (tolerance {tolerance:.3g})")

    # Capacity, before any packing work.
    if len(floats) > min(cfg.layer_depth, 255):
        raise CapacityError(f"Model needs {len(floats)} layers, the core's layer table holds "
                            f"{cfg.layer_depth}")
    n_in = int(np.prod(input_shape))
    first_in = floats[0].in_size
    for index, layer in enumerate(floats):
        for what, size in (("inputs", layer.in_size), ("outputs", layer.out_size)):
            if size > cfg.buffer_size:
                raise CapacityError(
                    f"Layer {index} ({layer.name}, {layer.op}) has {size} {what}; an activation "
                    f"buffer holds {cfg.buffer_size} (lanes {cfg.lanes} x bank depth "
                    f"{cfg.bank_depth})")

    s_in = _scale_log2(float(np.abs(x).max()))
    s_x = s_in
    # What the device sees, on the calibration batch: int8 activations, layer by layer.
    from ..golden import basis_layer, quantize, requantize
    x_flat = x.reshape(len(x), -1)
    xq = np.zeros((len(x), max(n_in, first_in)), dtype=np.int64)
    xq[:, :n_in] = quantize(x_flat, s_in)
    specs, info = [], []
    for index, (layer, out) in enumerate(zip(floats, outputs)):
        src = index % 2
        fin = x_flat if index == 0 else outputs[index - 1]
        s_y = _scale_log2(float(np.abs(out).max()))
        if layer.kind == "basis":
            s_b = _scale_log2(float(np.abs(layer.basis).max()))
            basis_q = np.clip(np.floor(layer.basis / 2.0 ** s_b + 0.5), -127, 127) \
                .astype(np.int64)
            s_y = max(s_y, s_x + s_b)
            shift = s_y - s_x - s_b
            if shift > 31:
                raise CapacityError(f"Layer {layer.name!r}: requantisation shift {shift} "
                                    f"exceeds 31")
            specs.append(LayerSpec(kind="basis", basis=basis_q, shift=shift, relu=layer.relu,
                                   src=src, dst=1 - src, n_chunks=layer.n_chunks,
                                   name=layer.name))
            info.append({"name": layer.name, "op": layer.op, "scale_log2": s_y,
                         "weight_scale_log2": s_b, "pattern": "basis", "float_index": index})
            xq = np.stack([basis_layer(basis_q, row, layer.n_chunks, shift, layer.relu,
                                       cfg.acc_width) for row in xq]).astype(np.int64)
            s_x = s_y
            continue
        s_w, q, b = _choose_weight_scale(layer, s_x, cfg, encoding)
        # The shift must be in 0..31: a too-fine output scale is coarsened, a too-coarse one
        # costs weight precision.
        if s_y < s_x + s_w:
            s_y = s_x + s_w
        if s_y - s_x - s_w > 31:
            s_w = s_y - s_x - 31
            q = quantize_weights(layer.weight, layer.mask, s_w, encoding)
        cols = layer.weight.shape[1]
        if not layer.exact_pow2:
            q = _error_feedback_round(layer, q, xq[:, :cols] * 2.0 ** s_x, s_x, s_w,
                                      encoding, cfg)
        # Bias correction: fold the mean error of the quantised weights and inputs (what the
        # device computes on the calibration batch, before bias) into the bias.
        exact = fin[:, :cols] @ layer.weight.T
        device = (xq[:, :cols] @ q.T).astype(np.float64) * 2.0 ** (s_x + s_w)
        bias = layer.bias + (exact - device).mean(axis=0)
        b = np.floor(bias / 2.0 ** (s_x + s_w) + 0.5).astype(np.int64)
        limit = 1 << (cfg.acc_width - 2)
        b = np.clip(b, -limit, limit - 1 - np.abs(q).sum(axis=1) * 128)
        shift = s_y - s_x - s_w
        matrix = _pack(layer, q, cfg)
        specs.append(LayerSpec(kind="gs", matrix=matrix, bias=b, shift=shift,
                               relu=layer.relu, src=src, dst=1 - src, name=layer.name))
        info.append({"name": layer.name, "op": layer.op, "scale_log2": s_y,
                     "weight_scale_log2": s_w, "pattern": matrix.pattern,
                     "per_row": matrix.per_row, "float_index": index})
        xq = requantize(xq[:, :cols] @ q.T + b, shift, layer.relu, cfg.acc_width) \
            .astype(np.int64)
        s_x = s_y

    out_shape = tuple(reference.shape[1:])
    program = Program(cfg=cfg, layers=specs, input_shape=input_shape, input_scale_log2=s_in,
                      output_shape=out_shape, output_scale_log2=s_x,
                      input_size=max(n_in, first_in), info=info)
    program.image()             # raises CapacityError if the memories are too small
    return program


def _pack(layer, q, cfg):
    """Pack quantised weights with the layer's pattern, else the best pattern its mask fits.

    The pruner's pattern (and e) wins when the weights still follow it. Otherwise: ``dense``
    for an unpruned layer, else the first ``gs-gather`` e or ``1xN`` the mask satisfies, else
    ``unstructured``; for ``dense`` and ``unstructured`` every e is tried and the fewest
    groups win (e.g. a 10-row layer runs horizontally, e = V, instead of padding a row group).
    """
    lanes, encoding = cfg.lanes, cfg.encoding
    info = layer.pattern
    if info is not None and info.pattern in ("gs-gather", "gs-scatter", "1xN") \
            and info.lanes == lanes:
        order = layer.row_order if info.pattern == "gs-scatter" else None
        try:
            return GSMatrix.from_dense(q, info.pattern, lanes, info.per_row, encoding,
                                       row_order=order)
        except PatternError as error:
            logger.warning("layer %s: weights no longer follow %s (%s); choosing a pattern",
                           layer.name, info.pattern, error)
    if layer.mask is None or layer.mask.all():
        return _fewest_groups(q, "dense", cfg)
    for e in _divisors(lanes):
        try:
            return GSMatrix.from_dense(q, "gs-gather", lanes, e, encoding)
        except PatternError:
            pass
    try:
        return GSMatrix.from_dense(q, "1xN", lanes, 1, encoding)
    except PatternError:
        pass
    return _fewest_groups(q, "unstructured", cfg)


def _fewest_groups(q, pattern, cfg):
    best = None
    for e in _divisors(cfg.lanes):
        matrix = GSMatrix.from_dense(q, pattern, cfg.lanes, e, cfg.encoding)
        if best is None or matrix.n_groups < best.n_groups:
            best = matrix
    return best


def _divisors(lanes):
    return [e for e in (1, 2, 4, 8, 16) if e <= lanes and lanes % e == 0]
