"""Quantisation-aware training that is bit-exact to the compiler (DESIGN §3).

:func:`quantize_aware` follows torch.ao's ``prepare_qat``: it returns a copy of the model whose
forward *fake-quantises* everything the core quantises, with straight-through gradients, so
an ordinary torch training loop fine-tunes the weights against the device's own arithmetic.
:func:`gsaccel.compile` recognises the returned :class:`QATModel` and takes its scales and
integer weights as they are (torch.ao's ``convert``): the program then computes, bit for bit,
what the model's forward computed. Per op of the lowered graph
(:func:`~gsaccel.sw.compile.graph.lower_graph`):

* the input: ``clip(floor(x / 2**s + 0.5), -128, 127) · 2**s``, the host's
  :func:`~gsaccel.sw.golden.numerics.quantize`;
* Conv2d / Linear: the weights become the layer's pow2 or int8 integers at its power-of-two
  scale, chosen on every forward by the compiler's own rule (the finest scale whose
  worst-case accumulator fits; :func:`~gsaccel.sw.compile.quantize.quantize_weights`: kept
  weights never round to 0, pruned ones stay 0), the bias an integer at the accumulator's
  scale; the accumulator wraps as the lanes do and is requantised as the vector writer does
  (:func:`~gsaccel.sw.golden.numerics.requantize`: round half up, saturate to int8, ReLU);
* a SmartDeal layer (DESIGN §1.3): its B (trained) becomes int8 at a power-of-two scale,
  ``z = B·x`` per 3-element chunk is requantised at a frozen scale, and its C (trained,
  rounded to powers of two on a fixed support, as ``smartdeal_trainable`` rounds it) is the
  pow2 C' layer on z, quantised as any Conv2d/Linear;
* average pooling: the window sum shifted by ``ceil(log2(divisor))`` and requantised (a
  divisor that is not a power of two leaves a factor, folded into the reader's weights, as
  the compiler folds it); max pooling: exact; additions: the compiler's integer branch
  weights (:func:`~gsaccel.sw.compile.quantize.add_weights`), then requantised.

Every activation scale is calibrated once on the example batch with the compiler's rules and
then frozen; weight scales follow the weights (torch.ao's weight observer). BatchNorm is
folded into its Conv2d/Linear for good first (as ``torch.ao.quantization.fuse_modules`` does),
so the fine-tuning trains the folded weights. Pruning masks (``torch.nn.utils.prune``'s
``weight_orig`` · ``weight_mask``) are kept: pruned weights get no gradient and stay zero.
Dropout is off in the fake-quantised forward (the device has none).

The arithmetic is exact in floating point: every value is an integer times a power of two;
products and partial sums stay under 2**(acc_width − 2) by the accumulator bound, within
float32's 24 bits for the default 24-bit accumulator (float64 for wider ones), and the
requantiser's rounding runs in float64.
"""

import copy
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional

from ...hw.config import CoreConfig
from ..errors import ShapeError, UnsupportedError
from .graph import ADD, AVGPOOL, CONV, LINEAR, MAXPOOL, _as_float64, lower_graph
from .quantize import (FloatLayer, _choose_weight_scale, _scale_log2, add_scale, add_weights,
                       avgpool_scale, quantize_weights)

__all__ = ["quantize_aware", "finetune", "QATModel", "FrozenLayer", "FrozenBasis",
           "FrozenNumerics"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrozenLayer:
    """A Conv2d/Linear as the fake-quantised forward computes it.

    Attributes
    ----------
    s_w : int
        Weight scale ``2**s_w``.
    q : ndarray of int64
        Integer weights, shaped like the op's weight (``(C_out, C_in/groups, kh, kw)`` or
        ``(out, in)``).
    b : ndarray of int64, (C_out,)
        Integer bias at the accumulator's scale ``2**(s_x + s_w)``.
    """

    s_w: int
    q: np.ndarray
    b: np.ndarray


@dataclass(frozen=True)
class FrozenBasis:
    """A SmartDeal BASIS layer as the fake-quantised forward computes it: ``z = requantize(
    B_q · x_chunk)``, ``B ≈ B_q · 2**s_b``."""

    s_b: int
    basis: np.ndarray


@dataclass(frozen=True)
class FrozenNumerics:
    """What :func:`~gsaccel.sw.compile.native.compile_native` takes from a :class:`QATModel`:
    every tensor's scale (by graph tensor name, a SmartDeal layer's ``z`` as ``<op>.z``) and
    every Conv2d/Linear op's integers (by op name; a SmartDeal layer as ``<op>.basis``, a
    :class:`FrozenBasis`, and ``<op>.cprime``)."""

    scales: dict
    layers: dict


class _Exact(torch.autograd.Function):
    """``value`` forward, the identity's gradient backward: the straight-through estimator.
    (``x + (value - x).detach()`` would round twice in float32 and miss ``value``.)"""

    @staticmethod
    def forward(ctx, x, value):
        return value.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


_exact = _Exact.apply


def _round_half_up(v):
    """``floor(v + 0.5)`` with a straight-through gradient (the requantiser's rounding)."""
    return _exact(v, torch.floor(v.detach() + 0.5))


def _fake_int8(v, relu=False):
    """``v`` (already divided by the scale) rounded half up, saturated to int8 (no gradient
    where saturated, as torch.ao's FakeQuantize), then ReLU."""
    r = torch.clamp(_round_half_up(v), -128, 127)
    return torch.clamp(r, min=0) if relu else r


def _fold_batchnorm(model, graph):
    """Fold every BatchNorm the graph folds into its Conv2d/Linear module, for good, and
    replace it by ``nn.Identity`` (``weight_orig`` when the layer is pruned)."""
    for op in graph.ops:
        if op.batchnorm is None:
            continue
        if op.pattern is not None and op.pattern.pattern == "smartdeal":
            raise UnsupportedError(
                f"SmartDeal layer {op.name!r} ({op.torch_op}): quantisation-aware training "
                f"trains its C and B, which a BatchNorm folded into it would rescale; remove "
                f"the BatchNorm after it or prune the layer with another pattern")
        layer, bn = model.get_submodule(op.module), model.get_submodule(op.batchnorm)
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
                1 / torch.sqrt(bn.running_var + bn.eps)
            beta = bn.bias if bn.affine else torch.zeros_like(scale)
            weight = layer.weight_orig if hasattr(layer, "weight_orig") else layer.weight
            weight.mul_(scale.reshape((-1,) + (1,) * (weight.ndim - 1)).to(weight.dtype))
            if hasattr(layer, "weight_orig"):
                # prune's forward pre-hook recomputes .weight; refresh it for readers now.
                layer.weight = layer.weight_orig * layer.weight_mask
            bias = torch.zeros(scale.shape, dtype=weight.dtype) if layer.bias is None else \
                layer.bias.detach()
            new_bias = (scale * (bias - bn.running_mean) + beta).to(weight.dtype)
        if layer.bias is None:
            layer.bias = torch.nn.Parameter(new_bias)
        else:
            with torch.no_grad():
                layer.bias.copy_(new_bias)
        parent, _, child = op.batchnorm.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, torch.nn.Identity())


def _copy(model):
    """``copy.deepcopy`` of a model, also after a training step of a pruned one: prune's
    ``weight`` is then a non-leaf tensor (``weight_orig · weight_mask``), which deepcopy
    refuses; the copy gets it detached (the pre-hook recomputes it anyway)."""
    memo = {}
    for module in model.modules():
        if hasattr(module, "weight_orig") and isinstance(getattr(module, "weight", None),
                                                         torch.Tensor):
            memo[id(module.weight)] = module.weight.detach().clone()
    return copy.deepcopy(model, memo)


def quantize_aware(model, example_input, encoding="pow2", lanes=8, cfg=None, *, inplace=False):
    """The model with fake quantisation bit-exact to what :func:`gsaccel.compile` will do.

    Parameters
    ----------
    model : torch.nn.Module
        What :func:`gsaccel.compile` accepts, pruned (``gsaccel.prune``) or not.
    example_input : array or tensor, (N, C, H, W) or (N, F)
        Calibration batch: every activation scale is set from it, then frozen (use training
        inputs, enough to see the range of each layer).
    encoding : str
        ``pow2`` (the board cores') or ``int8`` weights, when neither ``cfg`` nor ``board``
        is given.
    lanes : int
        V of the core, when neither ``cfg`` nor ``board`` is given.
    cfg : CoreConfig, optional
        The core (its encoding and accumulator width set the numerics); ``gsaccel.
        quantize_aware`` also takes ``board=`` (a board's default core).
    inplace : bool
        Fold BatchNorm into ``model`` itself instead of a copy (torch.ao's ``inplace``).

    Returns
    -------
    QATModel
        Train it with any torch loop; ``gsaccel.compile(qmodel, x, cfg=...)`` compiles
        exactly its forward.

    Raises
    ------
    UnsupportedError
        A layer quantisation-aware training does not cover (a SmartDeal layer with a
        BatchNorm folded into it), or anything the compiler cannot lower.
    ShapeError
        A bad calibration batch, or a bad encoding.

    Examples
    --------
    A pruned model, fine-tuned as the core computes it (tests/unit/test_qat.py runs this)::

        qmodel = gsaccel.quantize_aware(model, x_train, encoding="pow2", lanes=8)
        gsaccel.sw.models.train(qmodel, data, epochs=10, lr=1e-3)     # any torch loop
        program = gsaccel.compile(qmodel, x_train, lanes=8)    # == qmodel(x), bit for bit
    """
    if encoding not in ("pow2", "int8"):
        raise ShapeError(f"Encoding must be 'pow2' or 'int8', not {encoding!r}")
    cfg = CoreConfig(lanes=lanes, encoding=encoding) if cfg is None else cfg
    x = _as_float64(example_input, "Calibration input")
    model = model if inplace else _copy(model)
    from ..prune import smartdeal_freeze
    smartdeal_freeze(model)         # a SmartDeal layer still training as C·B: its C and B now
    _fold_batchnorm(model, lower_graph(model, x))
    graph = lower_graph(model, x)
    return QATModel(model, graph, graph.forward(x), cfg)


class QATModel(torch.nn.Module):
    """A model fake-quantised as the core computes it (see :func:`quantize_aware`).

    Attributes
    ----------
    model : torch.nn.Module
        The model being trained (BatchNorm folded in); its parameters are this
        module's.
    scales : dict of str to int
        Frozen ``log2`` scale of every activation tensor of the lowered graph.
    encoding : str
        ``pow2`` or ``int8``.
    acc_width : int
        The accumulator width the numerics assume.
    """

    def __init__(self, model, graph, values, cfg):
        super().__init__()
        self.model = model
        self.encoding, self.acc_width, self.lanes = cfg.encoding, cfg.acc_width, cfg.lanes
        self.input_name, self.output_name = graph.input, graph.output
        self.output_shape = tuple(graph.output_shape)
        self.ops, self.scales, self.fold = [], {}, {}
        self.factors = torch.nn.ModuleDict()        # SmartDeal layers' trainable C and B
        self.scales[graph.input] = _scale_log2(float(np.abs(values[graph.input]).max()))
        for op in graph.ops:
            self.ops.append(self._calibrate(graph, op, values))

    def _calibrate(self, graph, op, values):
        """The op's frozen description and its output scale (the compiler's rules)."""
        spec = dict(name=op.name, kind=op.kind, inputs=tuple(op.inputs), output=op.output,
                    relu=bool(op.relu), kernel=tuple(op.kernel), stride=tuple(op.stride),
                    padding=tuple(op.padding), dilation=tuple(op.dilation),
                    groups=int(op.groups))
        value = values[op.output]
        s_x = self.scales[op.inputs[0]]
        if op.kind in (CONV, LINEAR):
            spec["module"] = op.module
            self.scales[op.output] = _scale_log2(float(np.abs(value).max()))
            if op.pattern is not None and op.pattern.pattern == "smartdeal":
                self._calibrate_smartdeal(spec, op, values)
        elif op.kind == MAXPOOL:
            self.scales[op.output] = s_x
        elif op.kind == AVGPOOL:
            k = max(0, math.ceil(math.log2(op.divisor)))
            factor = 2.0 ** k / op.divisor
            if factor != 1.0:
                self.fold[op.output] = factor
            spec.update(k=k)
            self.scales[op.output] = avgpool_scale(value / factor, s_x, k)
        elif op.kind == ADD:
            scales = tuple(self.scales[name] for name in op.inputs)
            w, s_acc = add_weights(op, scales, self.encoding)
            spec.update(weights=tuple(int(v) for v in w), s_acc=int(s_acc))
            self.scales[op.output] = add_scale(value, s_acc)
        return spec

    def _calibrate_smartdeal(self, spec, op, values):
        """The trainable C and B of a SmartDeal layer and the frozen scale of its z (the
        compiler's rule, ``_Compilation._smartdeal`` in :mod:`.native`)."""
        from ..prune import smartdeal_factors
        from ..prune.smartdeal import _SmartDealWeight
        if op.kind != LINEAR:
            raise UnsupportedError(f"SmartDeal layer {op.name!r} ({op.torch_op}) must be a "
                                   f"Linear layer; prune the Conv2d with another pattern")
        module = self.model.get_submodule(op.module)
        c, basis = smartdeal_factors(module)
        cols = op.weight.shape[1]
        chunks = -(-cols // 3)
        key = f"sd{len(self.factors)}"
        self.factors[key] = _SmartDealWeight(c, basis, module.weight.shape)
        x = values[op.inputs[0]].reshape(len(values[op.inputs[0]]), -1)
        x = np.pad(x, ((0, 0), (0, 3 * chunks - cols)))
        z = (x.reshape(-1, chunks, 3) @ basis.T).reshape(len(x), -1)
        s_x = self.scales[op.inputs[0]]
        s_b = _scale_log2(float(np.abs(basis).max()))
        self.scales[f"{op.name}.z"] = max(_scale_log2(float(np.abs(z).max())), s_x + s_b)
        spec.update(smartdeal=key, chunks=chunks, cols=cols, z=f"{op.name}.z")

    # Numerics ------------------------------------------------------------------------

    def _weights(self, spec):
        """(weight, kept mask or None, bias) tensors of a Conv2d/Linear, the mask applied
        and any folded pooling factor included."""
        module = self.model.get_submodule(spec["module"])
        if hasattr(module, "weight_orig") and hasattr(module, "weight_mask"):
            mask = module.weight_mask != 0
            weight = module.weight_orig * module.weight_mask
        else:
            mask, weight = None, module.weight
        bias = module.bias if module.bias is not None else \
            torch.zeros(weight.shape[0], dtype=weight.dtype)
        return weight * self.fold.get(spec["inputs"][0], 1.0), mask, bias

    def _integers(self, spec, weight, mask, bias):
        """``FrozenLayer`` of a Conv2d/Linear for the current weights: the compiler's
        weight scale (accumulator bound), kept shift in [0, 31], bias clipped as the
        compiler clips it."""
        s_x, s_y = self.scales[spec["inputs"][0]], self.scales[spec["output"]]
        shape = tuple(weight.shape)
        w = weight.detach().cpu().double().numpy().reshape(shape[0], -1)
        kept = None if mask is None else mask.detach().cpu().numpy().reshape(shape[0], -1)
        b_float = bias.detach().cpu().double().numpy()
        cfg = CoreConfig(lanes=self.lanes, encoding=self.encoding,
                         acc_width=self.acc_width)
        s_w, q, _ = _choose_weight_scale(FloatLayer(spec["name"], w, b_float, kept), s_x,
                                         cfg, self.encoding)
        if not 0 <= s_y - s_x - s_w <= 31:
            # The output scale is frozen: move the weight scale to keep the shift legal
            # (finer weights saturate, coarser ones lose their small values).
            s_w = min(s_y - s_x, max(s_w, s_y - s_x - 31))
            q = quantize_weights(w, kept, s_w, self.encoding)
        b = np.floor(b_float / 2.0 ** (s_x + s_w) + 0.5).astype(np.int64)
        limit = 1 << (self.acc_width - 2)
        b = np.clip(b, -limit, limit - 1 - np.abs(q).sum(axis=1) * 128)
        return FrozenLayer(int(s_w), q.reshape(shape), b)

    def _wrap(self, acc_int):
        """The accumulator's two's-complement wrap (forward only: the bound makes it rare)."""
        half = 2.0 ** (self.acc_width - 1)
        wrapped = torch.remainder(acc_int.detach() + half, 2 * half) - half
        return _exact(acc_int, wrapped)

    def _requantize(self, acc_int, shift, relu, s_y):
        """The vector writer on an exact integer accumulator (float64), dequantised."""
        v = self._wrap(acc_int) * 2.0 ** (-shift)
        return _fake_int8(v, relu) * 2.0 ** s_y

    def _layer(self, spec, x):
        if "smartdeal" in spec:
            return self._smartdeal(spec, x)
        return self._gemm(spec, x, *self._weights(spec))

    def _gemm(self, spec, x, weight, mask, bias):
        """A Conv2d/Linear (``spec["kind"]``) on the fake-quantised ``x``."""
        frozen = self._integers(spec, weight, mask, bias)
        s_x, s_y = self.scales[spec["inputs"][0]], self.scales[spec["output"]]
        # Exact in float32 while partial sums stay under 2**24 (the accumulator bound).
        dtype = torch.float32 if self.acc_width <= 26 else torch.float64
        w_q = _exact(weight, torch.from_numpy(frozen.q * 2.0 ** frozen.s_w)).to(dtype)
        b_q = _exact(bias, torch.from_numpy(frozen.b * 2.0 ** (s_x + frozen.s_w)))
        x = x.to(dtype)
        if spec["kind"] == CONV:
            acc = functional.conv2d(x, w_q, None, spec["stride"], spec["padding"],
                                    spec["dilation"], spec["groups"])
            b_q = b_q.double().reshape(1, -1, 1, 1)
        else:
            acc = functional.linear(x.reshape(len(x), -1), w_q)
            b_q = b_q.double().reshape(1, -1)
        acc_int = (acc.double() + b_q) * 2.0 ** (-(s_x + frozen.s_w))
        return self._requantize(acc_int, s_y - s_x - frozen.s_w, spec["relu"], s_y)

    def _smartdeal_factors(self, spec):
        """``(s_b, B integers, B_q, C', support)`` of a SmartDeal layer now: B as int8 at
        its power-of-two scale (moved, if need be, to keep the basis shift in [0, 31]); C
        rounded to powers of two on its support (:func:`gsaccel.sw.prune.pow2_quantize`,
        the rule of ``smartdeal_trainable``), straight-through."""
        from ..prune import pow2_quantize
        factors = self.factors[spec["smartdeal"]]
        s_x, s_z = self.scales[spec["inputs"][0]], self.scales[spec["z"]]
        basis = factors.basis.detach().double().numpy()
        s_b = _scale_log2(float(np.abs(basis).max()))
        s_b = min(s_z - s_x, max(s_b, s_z - s_x - 31))
        b_int = np.clip(np.floor(basis / 2.0 ** s_b + 0.5), -127, 127).astype(np.int64)
        b_q = _exact(factors.basis, torch.from_numpy(b_int * 2.0 ** s_b))
        latent = factors.c_latent
        c = _exact(latent, torch.from_numpy(pow2_quantize(latent.detach().double().numpy())))
        rows = factors.shape[0]
        support = factors.support.reshape(rows, -1)
        return s_b, b_int, b_q, (c * factors.support).reshape(rows, -1), support

    def _smartdeal_bias(self, spec, rows):
        module = self.model.get_submodule(spec["module"])
        return module.bias if module.bias is not None else torch.zeros(rows)

    def _smartdeal(self, spec, x):
        """BASIS (z = B·x per 3-element chunk, requantised), then C' as a Linear on z."""
        s_x, s_z = self.scales[spec["inputs"][0]], self.scales[spec["z"]]
        s_b, _, b_q, cprime, support = self._smartdeal_factors(spec)
        x = functional.pad(x.reshape(len(x), -1).double(),
                           (0, 3 * spec["chunks"] - spec["cols"]))
        acc = x.reshape(len(x), spec["chunks"], 3) @ b_q.double().T
        z = self._requantize(acc.reshape(len(x), -1) * 2.0 ** (-(s_x + s_b)),
                             s_z - s_x - s_b, False, s_z)
        weight = cprime * self.fold.get(spec["inputs"][0], 1.0)
        return self._gemm(self._cprime_spec(spec), z, weight, support,
                          self._smartdeal_bias(spec, len(cprime)))

    @staticmethod
    def _cprime_spec(spec):
        return dict(spec, name=f"{spec['name']}.cprime", inputs=(spec["z"],), kind=LINEAR)

    def _pool(self, spec, x):
        (py, px) = spec["padding"]
        halo = functional.pad(x, (px, px, py, py))       # the core's halo is zeros
        s_x, s_y = self.scales[spec["inputs"][0]], self.scales[spec["output"]]
        if spec["kind"] == MAXPOOL:
            y = functional.max_pool2d(halo, spec["kernel"], spec["stride"], 0,
                                      spec["dilation"])
            return torch.clamp(y, min=0) if spec["relu"] else y
        window = functional.avg_pool2d(halo.double(), spec["kernel"], spec["stride"], 0,
                                       divisor_override=1)
        shift = spec["k"] + s_y - s_x
        return self._requantize(window * 2.0 ** (-s_x), shift, spec["relu"], s_y)

    def _add(self, spec, a, b):
        s_a, s_b = (self.scales[name] for name in spec["inputs"])
        s_acc, s_y = spec["s_acc"], self.scales[spec["output"]]
        w_a, w_b = spec["weights"]
        acc_int = w_a * a.double() * 2.0 ** (-s_a) + w_b * b.double() * 2.0 ** (-s_b)
        return self._requantize(acc_int, s_y - s_acc, spec["relu"], s_y)

    def forward(self, x):
        dtype = next(self.model.parameters()).dtype
        x = torch.as_tensor(x)
        s_in = self.scales[self.input_name]
        values = {self.input_name: (_fake_int8(x.double() * 2.0 ** (-s_in)) *
                                    2.0 ** s_in)}
        for spec in self.ops:
            inputs = [values[name] for name in spec["inputs"]]
            if spec["kind"] in (CONV, LINEAR):
                y = self._layer(spec, inputs[0])
            elif spec["kind"] in (MAXPOOL, AVGPOOL):
                y = self._pool(spec, inputs[0])
            else:
                y = self._add(spec, *inputs)
            values[spec["output"]] = y
        out = values[self.output_name]
        return out.reshape((len(out),) + self.output_shape).to(dtype)

    # Conversion ----------------------------------------------------------------------

    def frozen_numerics(self, cfg=None):
        """The scales and integers :func:`gsaccel.compile` takes as they are.

        Raises
        ------
        ShapeError
            ``cfg``'s encoding or accumulator width is not the one the model was made
            quantisation-aware for.
        """
        if cfg is not None and (cfg.encoding, cfg.acc_width) != (self.encoding,
                                                                self.acc_width):
            raise ShapeError(
                f"The model was made quantisation-aware for {self.encoding} weights and "
                f"a {self.acc_width}-bit accumulator, not {cfg.encoding} and "
                f"{cfg.acc_width}; compile it for that core, or call quantize_aware "
                f"again with encoding={cfg.encoding!r}")
        layers = {}
        with torch.no_grad():
            for spec in self.ops:
                if "smartdeal" in spec:
                    layers.update(self._freeze_smartdeal(spec))
                elif spec["kind"] in (CONV, LINEAR):
                    layers[spec["name"]] = self._integers(spec, *self._weights(spec))
        return FrozenNumerics(dict(self.scales), layers)

    def _freeze_smartdeal(self, spec):
        """A SmartDeal layer's BASIS and C' integers. Its module's ``smartdeal_C``,
        ``smartdeal_B`` and weight (``C·B``) are set to the trained factors, so that the
        compiler's lowering and pattern checks see the layer the forward computes."""
        s_b, b_int, _, cprime, support = self._smartdeal_factors(spec)
        factors = self.factors[spec["smartdeal"]]
        module = self.model.get_submodule(spec["module"])
        c = cprime.double().reshape(-1, 3)
        basis = factors.basis.detach().double()
        weight = (c @ basis).reshape(len(cprime), -1)[:, :spec["cols"]]
        module.smartdeal_C.copy_(c)
        module.smartdeal_B.copy_(basis)
        module.weight.copy_(weight.reshape(module.weight.shape).to(module.weight.dtype))
        cprime_spec = self._cprime_spec(spec)
        layer = self._integers(cprime_spec, cprime * self.fold.get(spec["inputs"][0], 1.0),
                               support, self._smartdeal_bias(spec, len(cprime)))
        return {f"{spec['name']}.basis": FrozenBasis(int(s_b), b_int),
                cprime_spec["name"]: layer}

    def extra_repr(self):
        return (f"encoding={self.encoding}, acc_width={self.acc_width}, "
                f"{len(self.scales)} frozen activation scales")



def finetune(qmodel, data, *, epochs=10, lr=1e-3, batch_size=64, seed=0, on_step=None):
    """Fine-tune a :class:`QATModel` (or any model) on ``data`` with Adam and cross-entropy:
    :func:`gsaccel.sw.models.train` with a progress callback; returns the test accuracy.

    ``data`` has ``x_train``, ``y_train``, ``x_test``, ``y_test`` tensors
    (:class:`gsaccel.sw.models.DigitsData`); ``on_step()`` is called after every step.
    """
    from ..models import evaluate, train
    train(qmodel, data, epochs, lr=lr, batch_size=batch_size, seed=seed, on_step=on_step)
    return evaluate(qmodel, data)
