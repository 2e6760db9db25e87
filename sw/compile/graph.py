"""torch model → a DAG of device operations (DESIGN §2.1, §2.2).

:func:`lower_graph` captures a model with ``torch.fx.symbolic_trace`` and lowers it into a
:class:`Graph`: the activation tensors the core stores and, in topological order, the
operations it runs on them. Nothing is unrolled: a convolution keeps its kernel (the loop nest
of :mod:`gsaccel.sw.format.geometry` replays it at every output pixel), so lowering costs
memory in proportion to the weights, never to the feature maps.

What each torch operation becomes (model semantics in eval mode):

* ``nn.Conv2d`` (any stride, padding, dilation; groups 1, C_in or any divisor) → ``conv``;
* ``nn.Linear`` → ``linear``; after a flatten of a (C, H, W) tensor its input is that tensor
  and ``input_view`` records the (C, H, W) the columns are ordered by (torch flattens CHW,
  the device stores HWC: the compiler permutes the columns);
* ``nn.BatchNorm2d`` / ``nn.BatchNorm1d`` → folded into the Conv2d / Linear that produces its
  input, when nothing else reads that output;
* ``nn.ReLU``, ``F.relu``, ``torch.relu``, ``Tensor.relu`` → the producing op's ``relu``,
  when nothing else reads the tensor before the ReLU;
* ``nn.MaxPool2d``, ``F.max_pool2d``, ``nn.AdaptiveMaxPool2d`` → ``maxpool``; torch pads with
  -inf, the core with zeros, so padding needs a non-negative input (after a ReLU);
* ``nn.AvgPool2d``, ``F.avg_pool2d``, ``nn.AdaptiveAvgPool2d`` → ``avgpool``: the window sum
  over the zero-padded input divided by ``divisor`` (torch's ``count_include_pad=True``);
* ``x + y``, ``torch.add``, ``Tensor.add`` of two activation tensors → ``add``;
* ``nn.Flatten``, ``torch.flatten``, ``view``/``reshape`` to (N, -1), ``nn.Dropout``,
  ``nn.Identity``, ``F.dropout(training=False)``, ``contiguous`` → no op (the same tensor);
* ``x.size()``, ``x.shape`` and arithmetic on them → evaluated while lowering.

Anything else raises :class:`~gsaccel.sw.errors.UnsupportedError` naming the operation and its
fx node. Every tensor is named after the fx node whose value it is (the model's input after
its placeholder), so ``op.output == op.fx_node`` and :meth:`Graph.forward` can be compared node
by node with ``torch.fx.Interpreter``.
"""

import logging
import math
import numbers
import operator
from dataclasses import dataclass, field

import numpy as np

from ..errors import ShapeError, UnsupportedError
from ..format.geometry import conv_output_size

__all__ = ["OP_KINDS", "GraphTensor", "GraphOp", "Graph", "lower_graph"]

logger = logging.getLogger(__name__)

CONV, LINEAR, MAXPOOL, AVGPOOL, ADD = "conv", "linear", "maxpool", "avgpool", "add"
#: What a :class:`GraphOp` can be.
OP_KINDS = (CONV, LINEAR, MAXPOOL, AVGPOOL, ADD)

_REMEDY = ("the core runs Conv2d, Linear, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d and residual "
           "additions, with BatchNorm and ReLU folded into them")


@dataclass
class GraphTensor:
    """An activation tensor, per sample (the batch axis is implied).

    Parameters
    ----------
    name : str
        The fx node whose value the tensor is (for the model's input, its placeholder).
    shape : tuple of int
        ``(C, H, W)`` for an image, ``(F,)`` for a feature vector.
    producer : str or None
        The op that writes it; None for the model's input.
    consumers : list of str
        The ops that read it, in topological order.
    nonnegative : bool
        No element is negative (written by an op with a fused ReLU, or pooled or added from
        such tensors): zero padding then equals the -inf padding of max pooling.
    """

    name: str
    shape: tuple
    producer: str = None
    consumers: list = field(default_factory=list)
    nonnegative: bool = False

    @property
    def is_image(self):
        """A (C, H, W) tensor, as opposed to an (F,) feature vector."""
        return len(self.shape) == 3

    @property
    def size(self):
        """Elements per sample."""
        return int(np.prod(self.shape))


@dataclass
class GraphOp:
    """One device operation: a loop nest over the output pixels of one layer.

    Parameters
    ----------
    name : str
        Module path (``layer1.0.conv1``) for a module, else the fx node's name; unique.
    kind : str
        One of :data:`OP_KINDS`.
    inputs : list of str
        Tensors read; ``add`` has two, every other kind one.
    output : str
        Tensor written (named after ``fx_node``).
    torch_op : str
        The torch operations fused into the op, for reports (``Conv2d+BatchNorm2d+ReLU``).
    fx_node : str
        The last fx node fused into the op; its value is the op's output.
    weight : ndarray of float64 or None
        ``conv``: ``(C_out, C_in/groups, kh, kw)``; ``linear``: ``(out, in)``; BatchNorm
        folded in, pruned weights zero.
    bias : ndarray of float64 or None
        ``(C_out,)`` for ``conv`` and ``linear`` (zeros if the layer has none).
    mask : ndarray of bool or None
        The kept weights, shaped like ``weight``, from ``torch.nn.utils.prune``'s
        ``weight_mask``; None when the layer is not pruned that way (every weight kept).
    kernel, stride, padding, dilation : (int, int)
        The loop nest over (rows, columns); a pooling ``kernel`` is its window.
    groups : int
        ``conv``: 1, C_in (depthwise, any channel multiplier) or a divisor of C_in.
    relu : bool
        The requantiser clamps the result at zero.
    pattern : PatternInfo or None
        ``gsaccel.sw.prune.pattern_info`` of the layer (how it was pruned).
    row_order : ndarray or None
        The ``gsaccel_row_order`` buffer of a gs-scatter layer.
    input_view : tuple or None
        ``linear`` reading a flattened (C, H, W) tensor: that (C, H, W); its columns are in
        torch's CHW flatten order.
    divisor : int
        ``avgpool``: the window sum is divided by this (the window's taps, or torch's
        ``divisor_override``).
    scales : tuple of float
        ``add``: the weight of each input (``x + alpha·y``: ``(1.0, alpha)``).
    module : str or None
        ``conv``/``linear``: the path of the Conv2d/Linear module whose weights the op uses.
    batchnorm : str or None
        The path of the BatchNorm module folded into the op, if any (quantisation-aware
        training folds it into the module for good).
    """

    name: str
    kind: str
    inputs: list
    output: str
    torch_op: str
    fx_node: str
    weight: np.ndarray = None
    bias: np.ndarray = None
    mask: np.ndarray = None
    kernel: tuple = (1, 1)
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    relu: bool = False
    pattern: object = None
    row_order: np.ndarray = None
    input_view: tuple = None
    divisor: int = 1
    scales: tuple = ()
    module: str = None
    batchnorm: str = None


@dataclass
class Graph:
    """A model lowered to device operations: a DAG of :class:`GraphOp` over
    :class:`GraphTensor`.

    Parameters
    ----------
    tensors : dict of str to GraphTensor
        Every tensor by name, the model's input first.
    ops : list of GraphOp
        In topological order (the order of the fx graph).
    input : str
        The model's input tensor.
    output : str
        The tensor the model returns.
    output_shape : tuple of int
        Per-sample shape of what the model returns: ``(F,)`` when it returns a flattened
        (C, H, W) tensor, else the tensor's shape.
    """

    tensors: dict
    ops: list
    input: str
    output: str
    output_shape: tuple

    @property
    def input_shape(self):
        return self.tensors[self.input].shape

    def op(self, name):
        """The op called ``name``."""
        for op in self.ops:
            if op.name == name:
                return op
        raise KeyError(name)

    def forward(self, x):
        """Every tensor's value for the batch ``x``, computed from the graph in float64.

        Parameters
        ----------
        x : array or tensor, shape ``(N,) + input_shape``

        Returns
        -------
        dict of str to ndarray
            ``(N,) + tensor.shape`` float64 values, by tensor name (the input included).

        Raises
        ------
        ShapeError
            If ``x`` is not a batch of the input's shape.
        """
        x = _as_float64(x)
        if x.ndim < 1 or x.shape[1:] != tuple(self.input_shape):
            raise ShapeError(f"Input must have shape (N,) + {tuple(self.input_shape)}, not "
                             f"{x.shape}")
        values = {self.input: x}
        for op in self.ops:
            values[op.output] = _evaluate(op, [values[name] for name in op.inputs])
        return values

    def run(self, x):
        """The model's output for the batch ``x``: ``(N,) + output_shape``, float64."""
        value = self.forward(x)[self.output]
        return value.reshape((len(value),) + tuple(self.output_shape))

    def summary(self):
        """One line per op: name, kind, fused torch operations, inputs → output and shapes."""
        lines = [f"input {self.input} {self.input_shape}"]
        for op in self.ops:
            sources = ", ".join(f"{name} {self.tensors[name].shape}" for name in op.inputs)
            lines.append(f"{op.name}: {op.kind} ({op.torch_op}) {sources} -> {op.output} "
                         f"{self.tensors[op.output].shape}")
        return "\n".join(lines)


# Evaluation -------------------------------------------------------------------------------------

def _torch():
    import torch
    return torch


def _as_float64(x, what="Input"):
    """``x`` (a tensor or array-like) as float64; a ShapeError for what is not numeric.
    (A tensor is known by its ``detach``: torch is not imported for an array.)"""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    try:
        return np.array(x, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ShapeError(f"{what} must be numeric, not {np.asarray(x).dtype} "
                         f"({error})") from None


def _evaluate(op, sources):
    """An op's output (N, ...) from its inputs' values, as the device computes it: zero
    padding (halos), the window sum of average pooling divided by ``divisor``."""
    torch = _torch()
    functional = torch.nn.functional
    x = sources[0]
    if op.kind == CONV:
        y = functional.conv2d(torch.from_numpy(x), torch.from_numpy(op.weight),
                              torch.from_numpy(op.bias), op.stride, op.padding, op.dilation,
                              op.groups).numpy()
    elif op.kind == LINEAR:
        y = x.reshape(len(x), -1) @ op.weight.T + op.bias
    elif op.kind in (MAXPOOL, AVGPOOL):
        (pad_y, pad_x) = op.padding
        halo = torch.from_numpy(np.pad(x, ((0, 0), (0, 0), (pad_y, pad_y), (pad_x, pad_x))))
        if op.kind == MAXPOOL:
            y = functional.max_pool2d(halo, op.kernel, op.stride, 0, op.dilation).numpy()
        else:
            window_sum = functional.avg_pool2d(halo, op.kernel, op.stride, 0,
                                               divisor_override=1)
            y = window_sum.numpy() / op.divisor
    elif op.kind == ADD:
        y = op.scales[0] * x + op.scales[1] * sources[1]
    else:
        raise UnsupportedError(f"Op kind must be one of {', '.join(OP_KINDS)}, not "
                               f"{op.kind!r}")
    return np.maximum(y, 0.0) if op.relu else y


# Lowering ---------------------------------------------------------------------------------------

def lower_graph(model, example_input):
    """Lower ``model`` into a :class:`Graph` of device operations.

    Parameters
    ----------
    model : torch.nn.Module
        Traceable by ``torch.fx.symbolic_trace``, one input tensor, one output tensor. It is
        traced in eval mode and lowered with eval-mode semantics (BatchNorm running
        statistics, Dropout off); its own mode is restored and nothing else is changed.
    example_input : array or tensor, shape (N, C, H, W) or (N, F)
        A batch of inputs: its shape is used, and its values must be finite numbers.

    Returns
    -------
    Graph

    Raises
    ------
    UnsupportedError
        For an operation the core cannot run (named with its fx node and what to do), or a
        layer whose weights (BatchNorm folded in) are not all finite.
    ShapeError
        If the example input is not a batch of images or feature vectors of finite numbers,
        or a layer does not fit the shape of its input.
    """
    torch = _torch()
    from torch import fx

    shape = tuple(int(n) for n in np.shape(example_input))
    if len(shape) not in (2, 4) or 0 in shape:
        raise ShapeError(f"Example input must be a non-empty batch (N, C, H, W) or (N, F), "
                         f"not shape {shape}")
    _check_example(example_input)
    modes = {module: module.training for module in model.modules()}
    model.eval()                   # `self.training` is traced as a constant: trace inference
    try:
        traced = fx.symbolic_trace(model)
    except Exception as error:     # tracing failures come in many types; report them as one
        raise UnsupportedError(f"Model must be traceable by torch.fx.symbolic_trace, but: "
                               f"{type(error).__name__}: {error}") from None
    finally:
        for module, training in modes.items():
            module.training = training
    traced.graph.eliminate_dead_code()
    with torch.no_grad():
        graph = _Lowering(traced, shape[0], shape[1:]).run()
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("lowered %s:\n%s", type(model).__name__, graph.summary())
    return graph


def _check_example(example_input):
    """ShapeError unless the example batch is finite numbers (a NaN in it would calibrate
    every scale to nothing)."""
    torch = _torch()
    if isinstance(example_input, torch.Tensor):
        if example_input.dtype.is_complex or example_input.dtype == torch.bool:
            raise ShapeError(f"Example input must be real numbers, not {example_input.dtype}")
        values = example_input.detach().cpu()
        bad = ~torch.isfinite(values) if values.is_floating_point() else None
        bad = None if bad is None else bad.numpy()
        values = values.numpy() if bad is not None and bad.any() else None
    else:
        values = np.asarray(example_input)
        if values.dtype.kind not in "iuf":
            raise ShapeError(f"Example input must be real numbers, not dtype {values.dtype}")
        bad = ~np.isfinite(values) if values.dtype.kind == "f" else None
    if bad is not None and bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ShapeError(f"Example input holds {int(bad.sum())} NaN or infinite values, the "
                         f"first {values[index]} at {list(index)}; calibration needs finite "
                         f"inputs")


@dataclass
class _TensorRef:
    """What an fx node's value is in the graph: a tensor, or the flattening of an image."""

    tensor: GraphTensor
    flat: bool = False

    @property
    def shape(self):
        return (self.tensor.size,) if self.flat else self.tensor.shape


def _pair(value):
    """(a, b) from an int or a sequence of two ints, else None."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return (int(value), int(value))
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
        return (int(value[0]), int(value[1]))
    return None


def _pool_output_size(size, kernel, stride, padding, dilation, ceil_mode):
    """torch's pooling output length (``pooling_output_shape``)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _numpy(tensor):
    return tensor.detach().cpu().double().numpy().copy()


class _Lowering:
    """The state of one :func:`lower_graph`: fx nodes visited in order, tensors and ops so
    far."""

    def __init__(self, traced, batch, input_shape):
        torch = _torch()
        from torch import nn
        import torch.nn.functional as F
        self.torch, self.nn, self.F = torch, nn, F
        self.fx_graph = traced.graph
        self.modules = dict(traced.named_modules())
        self.nodes = {node.name: node for node in traced.graph.nodes}
        self.batch = batch
        self.input_shape = tuple(input_shape)
        self.tensors = []           # GraphTensor, in creation order
        self.ops = {}               # name -> GraphOp, in topological order
        self.refs = {}              # fx node -> _TensorRef, for nodes carrying an activation
        self.static = {}            # fx node -> value known while lowering (sizes, shapes)
        self.output = None
        self.function_labels = {}
        for name in dir(F):
            value = getattr(F, name)
            if callable(value) and not isinstance(value, type):
                try:
                    self.function_labels.setdefault(value, f"F.{name}")
                except TypeError:           # an unhashable callable
                    pass

        dropouts = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                    nn.FeatureAlphaDropout)
        self.module_handlers = [
            (nn.Conv2d, self._conv),
            (nn.Linear, self._linear),
            ((nn.BatchNorm1d, nn.BatchNorm2d), self._batchnorm),
            (nn.ReLU, self._relu),
            (nn.MaxPool2d, self._max_pool),
            (nn.AvgPool2d, self._avg_pool),
            (nn.AdaptiveAvgPool2d, self._adaptive_pool),
            (nn.AdaptiveMaxPool2d, self._adaptive_pool),
            (nn.Flatten, self._flatten),
            (dropouts + (nn.Identity,), self._identity),
        ]
        self.function_handlers = {
            F.relu: self._relu, torch.relu: self._relu, torch.relu_: self._relu,
            F.max_pool2d: self._max_pool, torch.max_pool2d: self._max_pool,
            F.avg_pool2d: self._avg_pool,
            F.adaptive_avg_pool2d: self._adaptive_pool,
            F.adaptive_max_pool2d: self._adaptive_pool,
            torch.flatten: self._flatten, torch.reshape: self._view,
            F.dropout: self._dropout, F.dropout1d: self._dropout, F.dropout2d: self._dropout,
            F.dropout3d: self._dropout,
            operator.add: self._add, operator.iadd: self._add, torch.add: self._add,
        }
        self.method_handlers = {
            "relu": self._relu, "relu_": self._relu, "flatten": self._flatten,
            "view": self._view, "reshape": self._view, "contiguous": self._identity,
            "add": self._add,
        }
        self.alias_functions = {torch.flatten, torch.reshape, F.dropout, F.dropout1d,
                                F.dropout2d, F.dropout3d}
        self.alias_methods = {"flatten", "view", "reshape", "contiguous"}
        self.alias_modules = dropouts + (nn.Identity, nn.Flatten)

    # The walk --------------------------------------------------------------------------------

    def run(self):
        for node in self.fx_graph.nodes:
            if node.op == "placeholder":
                self._placeholder(node)
            elif node.op == "output":
                self._output(node)
            elif node.op != "get_attr":     # parameters and buffers are read by their users
                self._call(node)
        if not self.ops:
            raise UnsupportedError("Model must contain at least one Conv2d, Linear, pooling "
                                   "or addition, not none")
        tensors = {tensor.name: tensor for tensor in self.tensors}
        return Graph(tensors=tensors, ops=list(self.ops.values()),
                     input=self.tensors[0].name, output=self.output.tensor.name,
                     output_shape=tuple(self.output.shape))

    def _placeholder(self, node):
        if self.tensors:
            raise UnsupportedError(
                f"Model input {node.name!r} is not supported: the model must take exactly one "
                f"input tensor, not {self.tensors[0].name!r} and {node.name!r}; wrap the model "
                f"so that forward takes one tensor")
        tensor = GraphTensor(node.name, self.input_shape)
        self.tensors.append(tensor)
        self.refs[node] = _TensorRef(tensor)

    def _output(self, node):
        value = node.args[0]
        if not isinstance(value, self.torch.fx.Node) or value not in self.refs:
            raise UnsupportedError(f"Model output must be exactly one activation tensor, not "
                                   f"{type(value).__name__} {value!r}; return a single tensor")
        self.output = self.refs[value]

    def _call(self, node):
        if self._is_shape_read(node):
            self.static[node] = self._evaluate_static(node)
            return
        if not self._activations(node):
            if self._uses_static(node):     # arithmetic on sizes
                self.static[node] = self._evaluate_static(node)
            # else a computation on constants: a layer using it with an activation refuses it
            return
        handler = self._handler(node)
        if handler is None:
            raise self._unsupported(node)
        handler(node)

    def _handler(self, node):
        if node.op == "call_module":
            module = self.modules[node.target]
            for types, handler in self.module_handlers:
                if isinstance(module, types):
                    return handler
            return None
        if node.op == "call_function":
            try:
                return self.function_handlers.get(node.target)
            except TypeError:               # an unhashable callable
                return None
        return self.method_handlers.get(node.target)

    # Node classification ---------------------------------------------------------------------

    def _activations(self, node):
        found = []
        self.torch.fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n))
        return [n for n in found if n in self.refs]

    def _uses_static(self, node):
        found = []
        self.torch.fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n))
        return any(n in self.static for n in found)

    def _is_shape_read(self, node):
        """``x.size(...)``, ``x.dim()``, ``x.shape``, ``x.ndim``: reads the shape, not the
        values."""
        if node.op == "call_method":
            return node.target in ("size", "dim")
        return (node.op == "call_function" and node.target is getattr and
                node.args[1:] in (("shape",), ("ndim",)))

    def _is_alias(self, node):
        """An operation whose value is its first argument's, maybe flattened."""
        if node.op == "call_module":
            return isinstance(self.modules[node.target], self.alias_modules)
        if node.op == "call_method":
            return node.target in self.alias_methods
        try:
            return node.op == "call_function" and node.target in self.alias_functions
        except TypeError:
            return False

    def _readers(self, node):
        """The fx nodes reading ``node``'s value, looking through aliases, not counting shape
        reads."""
        readers = []
        for user in node.users:
            if self._is_shape_read(user):
                continue
            if self._is_alias(user) and user.args and user.args[0] is node:
                found = self._readers(user)
            else:
                found = [user]
            readers += [reader for reader in found if reader not in readers]
        return readers

    # Messages --------------------------------------------------------------------------------

    def _label(self, node):
        """``nn.Conv2d``, ``F.relu``, ``torch.add``, ``Tensor.view``, ``operator.add``."""
        if node.op == "call_module":
            cls = type(self.modules[node.target])
            return f"nn.{cls.__name__}" if cls.__module__.startswith("torch.nn.") \
                else cls.__qualname__
        if node.op == "call_method":
            return f"Tensor.{node.target}"
        target = node.target
        try:
            label = self.function_labels.get(target)
        except TypeError:
            label = None
        if label is not None:
            return label
        name = getattr(target, "__name__", repr(target))
        module = getattr(target, "__module__", None) or ""
        if module in ("_operator", "operator"):
            return f"operator.{name}"
        if getattr(self.torch, name, None) is target:
            return f"torch.{name}"
        return f"{module}.{name}" if module else name

    def _describe(self, node):
        """``module 'conv1' (nn.Conv2d)``, ``function 'gelu' (F.gelu)``."""
        label = self._label(node)
        if node.op == "call_module":
            return f"module {node.target!r} ({label})"
        if node.op == "call_method":
            return f"method {node.target!r} ({label})"
        return f"function {label.rsplit('.', 1)[-1]!r} ({label})"

    def _unsupported(self, node, why=None):
        return UnsupportedError(f"Operation {self._describe(node)} at node {node.name!r} is "
                                f"not supported{': ' + why if why else '; ' + _REMEDY}")

    # Arguments -------------------------------------------------------------------------------

    def _arguments(self, node, names, defaults=None):
        """The node's arguments by parameter name; values known while lowering are resolved,
        activations stay fx nodes."""
        if len(node.args) > len(names):
            raise self._unsupported(node, f"it takes at most {len(names)} arguments "
                                          f"({', '.join(names)}), not {len(node.args)}")
        bound = dict(defaults or {})
        bound.update(zip(names, node.args))
        for key, value in node.kwargs.items():
            if key not in names:
                raise self._unsupported(node, f"argument {key!r} is not one of "
                                              f"{', '.join(names)}")
            bound[key] = value
        missing = [name for name in names if name not in bound]
        if missing:
            raise self._unsupported(node, f"argument {missing[0]!r} is missing")
        return {key: self.torch.fx.node.map_arg(value, self._resolve)
                for key, value in bound.items()}

    def _resolve(self, node):
        return self.static[node] if node in self.static else node

    def _module_input(self, node, image=False):
        """The one activation a module is called with (``image``: a (C, H, W) one)."""
        if len(node.args) != 1 or node.kwargs:
            raise self._unsupported(node, "a module must be called with one tensor")
        return self._image(node, node.args[0]) if image else \
            self._activation(node, node.args[0])

    def _activation(self, node, value, what="its input"):
        if not isinstance(value, self.torch.fx.Node) or value not in self.refs:
            raise self._unsupported(node, f"{what} must be an activation tensor, not "
                                          f"{value!r}")
        return self.refs[value]

    def _image(self, node, value):
        ref = self._activation(node, value)
        if not ref.tensor.is_image or ref.flat:
            raise self._unsupported(node, f"it needs a (C, H, W) input, but its input "
                                          f"{value.name!r} has shape {ref.shape}")
        return ref

    def _pair_argument(self, node, what, value):
        pair = _pair(value)
        if pair is None or min(pair) < 0:
            raise self._unsupported(node, f"{what} must be an int or a pair of ints, not "
                                          f"{value!r}")
        return pair

    def _evaluate_static(self, node):
        """Run a shape computation on meta tensors of the activations' shapes."""
        torch = self.torch

        def concrete(arg):
            if arg in self.refs:
                return torch.empty((self.batch,) + tuple(self.refs[arg].shape), device="meta")
            if arg in self.static:
                return self.static[arg]
            raise self._unsupported(node, f"its argument {arg.name!r} is not known while "
                                          f"lowering")

        args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), concrete)
        try:
            if node.op == "call_function":
                return node.target(*args, **kwargs)
            if node.op == "call_method":
                return getattr(args[0], node.target)(*args[1:], **kwargs)
        except Exception as error:      # whatever the shape arithmetic raises
            raise self._unsupported(node, f"it cannot be evaluated on the input's shape "
                                          f"({type(error).__name__}: {error})") from None
        raise self._unsupported(node, "a module cannot compute a shape")

    # Building the graph ----------------------------------------------------------------------

    def _new_op(self, node, kind, sources, shape, flat=False, nonnegative=False, **fields):
        """Append an op reading ``sources`` (refs) and writing a new tensor of ``shape``."""
        name = str(node.target) if node.op == "call_module" else node.name
        if name in self.ops:        # a module called twice: its second op is named by node
            name = node.name
        while name in self.ops:
            name += "_"
        inputs = [ref.tensor.name for ref in sources]
        tensor = GraphTensor(node.name, tuple(int(n) for n in shape), producer=name,
                             nonnegative=nonnegative)
        op = GraphOp(name=name, kind=kind, inputs=inputs, output=tensor.name,
                     torch_op=self._label(node).removeprefix("nn."), fx_node=node.name,
                     **fields)
        for ref in sources:
            if name not in ref.tensor.consumers:
                ref.tensor.consumers.append(name)
        self.tensors.append(tensor)
        self.ops[name] = op
        self.refs[node] = _TensorRef(tensor, flat)
        return op

    def _fuse(self, node, ref, what):
        """The op producing ``ref``'s tensor, when ``node`` is the tensor's only reader."""
        tensor = ref.tensor
        if tensor.producer is None:
            raise self._unsupported(node, f"it applies to the model's input {tensor.name!r}, "
                                          f"so there is no layer to fold {what} into; apply it "
                                          f"after a Conv2d or Linear")
        op = self.ops[tensor.producer]
        others = ["the model's output" if n.op == "output" else repr(n.name)
                  for n in self._readers(self.nodes[tensor.name]) if n is not node]
        if others:
            raise self._unsupported(
                node, f"its input {tensor.name!r} ({op.torch_op} {op.name!r}) is also read by "
                      f"{', '.join(others)}, and folding {what} into {op.name!r} would change "
                      f"what they read; let nothing else read the tensor before {what}")
        return op

    def _rename(self, node, op, ref):
        """``node``, fused into ``op``, now carries the op's output."""
        op.torch_op += "+" + self._label(node).removeprefix("nn.")
        op.fx_node = ref.tensor.name = op.output = node.name
        self.refs[node] = _TensorRef(ref.tensor, ref.flat)

    # Handlers --------------------------------------------------------------------------------

    def _identity(self, node):
        if node.op == "call_method":
            ref = self._activation(node, self._arguments(node, ("self",))["self"])
        else:
            ref = self._module_input(node)
        self.refs[node] = ref

    def _dropout(self, node):
        args = self._arguments(node, ("input", "p", "training", "inplace"),
                               {"p": 0.5, "training": True, "inplace": False})
        ref = self._activation(node, args["input"])
        if args["training"] is not False and args["p"] != 0:
            raise self._unsupported(node, "with training=True it drops activations at "
                                          "random even in eval mode; pass "
                                          "training=self.training")
        self.refs[node] = ref

    def _flatten(self, node):
        if node.op == "call_module":
            ref = self._module_input(node)
            module = self.modules[node.target]
            start, end = module.start_dim, module.end_dim
        else:
            receiver = "self" if node.op == "call_method" else "input"
            args = self._arguments(node, (receiver, "start_dim", "end_dim"),
                                   {"start_dim": 0, "end_dim": -1})
            ref = self._activation(node, args[receiver])
            start, end = args["start_dim"], args["end_dim"]
        dims = 1 + len(ref.shape)
        if not all(isinstance(d, numbers.Integral) for d in (start, end)) or \
                (start % dims, end % dims) != (1, dims - 1):
            raise self._unsupported(node, f"it flattens dims {start}..{end}; only dims 1..-1 "
                                          f"can be flattened (the batch stays first)")
        self.refs[node] = _TensorRef(ref.tensor, ref.tensor.is_image)

    def _view(self, node):
        receiver = "self" if node.op == "call_method" else "input"
        ref = self._activation(node, node.args[0] if node.args else node.kwargs.get(receiver))
        if node.kwargs or len(node.args) < 2:
            raise self._unsupported(node, "it must be called as view(N, -1) or reshape(N, -1)")
        dims = list(self.torch.fx.node.map_arg(node.args[1:], self._resolve))
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = list(dims[0])
        meta = self.torch.empty((self.batch,) + tuple(ref.shape), device="meta")
        try:
            shape = tuple(meta.reshape(*dims).shape)
        except Exception as error:      # torch's own complaint about the dims
            raise self._unsupported(node, f"it cannot reshape {tuple(meta.shape)} to "
                                          f"{tuple(dims)} ({error})") from None
        if shape == (self.batch, ref.tensor.size):
            self.refs[node] = _TensorRef(ref.tensor, ref.tensor.is_image)
        elif shape == tuple(meta.shape):
            self.refs[node] = ref
        else:
            raise self._unsupported(node, f"it reshapes {tuple(meta.shape)} to {shape}; only "
                                          f"flattening to (N, -1) is supported")

    def _relu(self, node):
        if node.op == "call_module":
            ref = self._module_input(node)
        else:
            receiver = "self" if node.op == "call_method" else "input"
            ref = self._activation(node, self._arguments(node, (receiver, "inplace"),
                                                         {"inplace": False})[receiver])
        op = self._fuse(node, ref, "the ReLU")
        op.relu = True
        ref.tensor.nonnegative = True
        self._rename(node, op, ref)

    def _batchnorm(self, node):
        ref = self._module_input(node)
        module = self.modules[node.target]
        image = isinstance(module, self.nn.BatchNorm2d)
        layer, kind = ("Conv2d", CONV) if image else ("Linear", LINEAR)
        op = self._fuse(node, ref, "it")
        if op.kind != kind or ref.flat:
            raise self._unsupported(node, f"it can only be folded into the {layer} that "
                                          f"produces its input, not into {op.torch_op} "
                                          f"{op.name!r}; put it right after a {layer}")
        if op.relu:
            raise self._unsupported(node, f"it follows the ReLU fused into {op.name!r} "
                                          f"({op.torch_op}); put the BatchNorm before the ReLU")
        if module.running_mean is None or module.running_var is None:
            raise self._unsupported(node, "it has no running statistics "
                                          "(track_running_stats=False), so it cannot be folded")
        channels = op.weight.shape[0]
        if module.num_features != channels:
            raise ShapeError(f"BatchNorm at node {node.name!r} must have {channels} features "
                             f"(its input's channels), not {module.num_features}")
        mean, var = _numpy(module.running_mean), _numpy(module.running_var)
        gamma = np.ones(channels) if module.weight is None else _numpy(module.weight)
        beta = np.zeros(channels) if module.bias is None else _numpy(module.bias)
        for what, values in (("running_mean", mean), ("running_var", var),
                             ("weight", gamma), ("bias", beta)):
            self._check_finite(node, values, what)
        if (var + module.eps <= 0).any():
            channel = int(np.argmax(var + module.eps <= 0))
            raise UnsupportedError(f"{self._describe(node)} at node {node.name!r} has "
                                   f"running_var {var[channel]} at channel {channel}: "
                                   f"running_var + eps must be positive to fold it")
        scale = gamma / np.sqrt(var + module.eps)
        op.weight = op.weight * scale.reshape((-1,) + (1,) * (op.weight.ndim - 1))
        op.bias = scale * (op.bias - mean) + beta
        op.batchnorm = str(node.target)
        self._check_finite(node, op.weight, f"weights once folded into {op.name!r}")
        self._check_finite(node, op.bias, f"bias once folded into {op.name!r}")
        self._rename(node, op, ref)

    def _check_finite(self, node, values, what):
        """UnsupportedError naming the layer unless ``values`` (its weights, ...) are all
        finite: a NaN would quantise to a weight of 1, an infinity has no scale."""
        values = np.asarray(values)
        bad = ~np.isfinite(values)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise UnsupportedError(f"{self._describe(node)} at node {node.name!r} has "
                                   f"{int(bad.sum())} non-finite {what} (the first "
                                   f"{values[index]} at {list(index)}); the core computes "
                                   f"with finite weights only")

    def _layer_parameters(self, module, node):
        """The ``weight``, ``bias``, ``mask``, ``pattern`` and ``row_order`` fields of the op
        of a Conv2d or Linear, honouring torch.nn.utils.prune's reparametrisation; weights
        and bias must be finite."""
        if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
            mask = _numpy(module.weight_mask) != 0
            weight = _numpy(module.weight_orig)
            self._check_finite(node, weight[mask], "kept weights")
            weight = np.where(mask, weight, 0.0)
        else:
            mask, weight = None, _numpy(module.weight)
            self._check_finite(node, weight, "weights")
        bias = np.zeros(weight.shape[0]) if module.bias is None else _numpy(module.bias)
        self._check_finite(node, bias, "bias values")
        from ..prune import pattern_info
        order = getattr(module, "gsaccel_row_order", None)
        return dict(weight=weight, bias=bias, mask=mask, pattern=pattern_info(module),
                    row_order=None if order is None else order.detach().cpu().numpy().copy())

    def _conv(self, node):
        ref = self._module_input(node, image=True)
        module = self.modules[node.target]
        channels, height, width = ref.tensor.shape
        if channels != module.in_channels:
            raise ShapeError(f"Conv2d at node {node.name!r} expects {module.in_channels} input "
                             f"channels, but its input has shape {ref.shape}")
        if module.padding_mode != "zeros":
            raise self._unsupported(node, f"padding_mode={module.padding_mode!r} pads with "
                                          f"other values than zeros; use padding_mode='zeros'")
        padding = module.padding
        if isinstance(padding, str):        # 'valid' or 'same'
            # torch pads (left, right, top, bottom); the halo is the same on both sides.
            left, right, top, bottom = module._reversed_padding_repeated_twice
            if left != right or top != bottom:
                raise self._unsupported(node, f"padding={padding!r} with an even kernel "
                                              f"pads one side more; use an odd kernel or "
                                              f"explicit padding")
            padding = (top, left)
        kernel, stride, dilation = (tuple(module.kernel_size), tuple(module.stride),
                                    tuple(module.dilation))
        out = self._output_size(node, (height, width), kernel, stride, padding, dilation)
        self._new_op(node, CONV, [ref], (module.out_channels,) + out, kernel=kernel,
                     stride=stride, padding=tuple(padding), dilation=dilation,
                     groups=module.groups, module=str(node.target),
                     **self._layer_parameters(module, node))

    def _output_size(self, node, size, kernel, stride, padding, dilation):
        try:
            return tuple(conv_output_size(n, k, s, p, d) for n, k, s, p, d in
                         zip(size, kernel, stride, padding, dilation))
        except ShapeError as error:
            raise ShapeError(f"Operation {self._describe(node)} at node {node.name!r} must fit "
                             f"its {size[0]}x{size[1]} input: {error}") from None

    def _linear(self, node):
        ref = self._module_input(node)
        module = self.modules[node.target]
        if ref.tensor.is_image and not ref.flat:
            raise self._unsupported(node, f"it would apply to the last axis of the (C, H, W) "
                                          f"tensor {ref.tensor.name!r}; flatten it first "
                                          f"(nn.Flatten or x.flatten(1))")
        if ref.tensor.size != module.in_features:
            raise ShapeError(f"Linear at node {node.name!r} expects {module.in_features} "
                             f"features, but its input has shape {ref.shape}")
        self._new_op(node, LINEAR, [ref], (module.out_features,),
                     input_view=ref.tensor.shape if ref.flat else None,
                     module=str(node.target), **self._layer_parameters(module, node))

    def _max_pool(self, node):
        if node.op == "call_module":
            module = self.modules[node.target]
            ref = self._module_input(node, image=True)
            args = dict(kernel_size=module.kernel_size, stride=module.stride,
                        padding=module.padding, dilation=module.dilation,
                        ceil_mode=module.ceil_mode, return_indices=module.return_indices)
        else:
            args = self._arguments(
                node, ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                       "return_indices"),
                {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False,
                 "return_indices": False})
            ref = self._image(node, args["input"])
        if args["return_indices"]:
            raise self._unsupported(node, "it returns indices, the core only the maxima; use "
                                          "return_indices=False")
        kernel, stride, padding, dilation = self._pool_geometry(node, ref, args)
        if max(padding) > 0 and not ref.tensor.nonnegative:
            raise self._unsupported(
                node, f"torch pads with -inf but the core with zeros, which is the same only "
                      f"on a non-negative input, and its input {ref.tensor.name!r} can be "
                      f"negative; pool after a ReLU or use padding=0")
        self._pool(node, MAXPOOL, ref, kernel, stride, padding, dilation)

    def _avg_pool(self, node):
        if node.op == "call_module":
            module = self.modules[node.target]
            ref = self._module_input(node, image=True)
            args = dict(kernel_size=module.kernel_size, stride=module.stride,
                        padding=module.padding, ceil_mode=module.ceil_mode,
                        count_include_pad=module.count_include_pad,
                        divisor_override=module.divisor_override)
        else:
            args = self._arguments(
                node, ("input", "kernel_size", "stride", "padding", "ceil_mode",
                       "count_include_pad", "divisor_override"),
                {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True,
                 "divisor_override": None})
            ref = self._image(node, args["input"])
        args["dilation"] = 1
        kernel, stride, padding, dilation = self._pool_geometry(node, ref, args)
        if max(padding) > 0 and not args["count_include_pad"]:
            raise self._unsupported(
                node, "with count_include_pad=False a border window is divided by its taps "
                      "inside the input only, the core divides every window alike; use "
                      "count_include_pad=True or padding=0")
        divisor = args["divisor_override"]
        if divisor is None:
            divisor = kernel[0] * kernel[1]
        elif not isinstance(divisor, numbers.Integral) or divisor < 1:
            raise self._unsupported(node, f"divisor_override must be a positive int, not "
                                          f"{divisor!r}")
        self._pool(node, AVGPOOL, ref, kernel, stride, padding, dilation,
                   divisor=int(divisor))

    def _pool_geometry(self, node, ref, args):
        """(kernel, stride, padding, dilation) of a pooling, checked as torch checks them."""
        kernel = self._pair_argument(node, "kernel_size", args["kernel_size"])
        stride = args["stride"]
        stride = kernel if stride is None or stride == () or stride == [] else \
            self._pair_argument(node, "stride", stride)
        padding = self._pair_argument(node, "padding", args["padding"])
        dilation = self._pair_argument(node, "dilation", args["dilation"])
        if min(kernel + stride + dilation) < 1:
            raise self._unsupported(node, f"kernel {kernel}, stride {stride} and dilation "
                                          f"{dilation} must be positive")
        if any(2 * p > d * (k - 1) + 1 for p, k, d in zip(padding, kernel, dilation)):
            raise self._unsupported(node, f"padding {padding} must be at most half the "
                                          f"window {kernel} (torch's rule)")
        if not isinstance(args["ceil_mode"], bool):
            raise self._unsupported(node, f"ceil_mode must be a bool, not "
                                          f"{args['ceil_mode']!r}")
        if args["ceil_mode"]:
            size = ref.tensor.shape[1:]
            ceil = [_pool_output_size(n, k, s, p, d, True) for n, k, s, p, d in
                    zip(size, kernel, stride, padding, dilation)]
            floor = [_pool_output_size(n, k, s, p, d, False) for n, k, s, p, d in
                     zip(size, kernel, stride, padding, dilation)]
            if ceil != floor:
                raise self._unsupported(node, "ceil_mode=True adds a partial window at the "
                                              "edge; use ceil_mode=False or pad the input")
        return kernel, stride, padding, dilation

    def _adaptive_pool(self, node):
        max_pool = (isinstance(self.modules[node.target], self.nn.AdaptiveMaxPool2d)
                    if node.op == "call_module" else
                    node.target is self.F.adaptive_max_pool2d)
        if node.op == "call_module":
            module = self.modules[node.target]
            ref = self._module_input(node, image=True)
            output_size = module.output_size
            indices = getattr(module, "return_indices", False)
        else:
            names = ("input", "output_size") + (("return_indices",) if max_pool else ())
            args = self._arguments(node, names, {"return_indices": False})
            ref = self._image(node, args["input"])
            output_size, indices = args["output_size"], args["return_indices"]
        if indices:
            raise self._unsupported(node, "it returns indices, the core only the maxima; use "
                                          "return_indices=False")
        size = ref.tensor.shape[1:]
        if isinstance(output_size, numbers.Integral):
            output_size = (output_size, output_size)
        output_size = tuple(n if k is None else k for n, k in zip(size, output_size))
        if len(output_size) != 2 or not all(isinstance(k, numbers.Integral) and k >= 1
                                            for k in output_size):
            raise self._unsupported(node, f"output_size must be a positive int or pair, not "
                                          f"{output_size!r}")
        if any(n % k for n, k in zip(size, output_size)):
            raise self._unsupported(
                node, f"an output of {output_size[0]}x{output_size[1]} from "
                      f"{size[0]}x{size[1]} pixels has windows of unequal size; use an output "
                      f"size that divides the input, or AvgPool2d/MaxPool2d")
        window = tuple(int(n // k) for n, k in zip(size, output_size))
        if max_pool:
            self._pool(node, MAXPOOL, ref, window, window, (0, 0), (1, 1))
        else:
            self._pool(node, AVGPOOL, ref, window, window, (0, 0), (1, 1),
                       divisor=window[0] * window[1])

    def _pool(self, node, kind, ref, kernel, stride, padding, dilation, **fields):
        channels, height, width = ref.tensor.shape
        out = self._output_size(node, (height, width), kernel, stride, padding, dilation)
        self._new_op(node, kind, [ref], (channels,) + out, nonnegative=ref.tensor.nonnegative,
                     kernel=tuple(kernel), stride=tuple(stride), padding=tuple(padding),
                     dilation=tuple(dilation), **fields)

    def _add(self, node):
        if node.op == "call_function" and node.target in (operator.add, operator.iadd):
            args = self._arguments(node, ("input", "other"))
        else:
            receiver = "self" if node.op == "call_method" else "input"
            args = self._arguments(node, (receiver, "other", "alpha"), {"alpha": 1})
            args["input"] = args[receiver]
        alpha = args.get("alpha", 1)
        operands = (args["input"], args["other"])
        if not all(isinstance(v, self.torch.fx.Node) and v in self.refs for v in operands):
            constant = next(v for v in operands
                            if not (isinstance(v, self.torch.fx.Node) and v in self.refs))
            raise self._unsupported(
                node, f"it adds {getattr(constant, 'name', constant)!r}, which is not an "
                      f"activation; only the sum of two activation tensors is supported "
                      f"(fold constants into a layer's bias)")
        if not isinstance(alpha, numbers.Real) or isinstance(alpha, bool) or \
                not math.isfinite(alpha):
            raise self._unsupported(node, f"alpha must be a finite number, not {alpha!r}")
        first, second = (self.refs[v] for v in operands)
        if first.tensor.shape != second.tensor.shape or first.flat != second.flat:
            raise self._unsupported(
                node, f"its operands {operands[0].name!r} {first.shape} and "
                      f"{operands[1].name!r} {second.shape} differ in shape; the core adds "
                      f"tensors of one shape (no broadcasting)")
        nonnegative = first.tensor.nonnegative and second.tensor.nonnegative and alpha >= 0
        self._new_op(node, ADD, [first, second], first.tensor.shape, flat=first.flat,
                     nonnegative=nonnegative, scales=(1.0, float(alpha)))
