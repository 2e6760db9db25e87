"""torch model → a native loop-nest program (DESIGN §2.1, §2.2, §3).

:func:`compile_native` turns a model into a :class:`~.program.Program`: every layer runs on the
core as a loop nest over output pixels, on HWC, channel-banked tensors, and its weights are
the layer's *kernel* in the GEMM view (rows = output channels, columns ``tap·Cp + c``) —
stored once, never once per output position. Steps (docs/runtime.md, "Compiler"):

1. **Lower** with :func:`~gsaccel.sw.compile.graph.lower_graph` (conv, linear, maxpool,
   avgpool, add; BatchNorm and ReLU fused) and run its float64 forward on the example batch:
   every tensor, the input included, gets a power-of-two scale ``2**s`` with
   ``max|a| / 2**s <= 127``.
2. **Plan** the scratchpad (:mod:`.plan`): each tensor gets a
   :class:`~gsaccel.sw.format.geometry.TensorGeometry` (a flat (F,) tensor is (1, 1, F); the
   halo ``pad`` is the largest padding of its consumers; the two operands of an addition
   share one geometry) and a bank address by liveness.
3. **Quantise** op by op, in topological order, into device layers (:mod:`.layers`) with the
   integer numerics of :mod:`gsaccel.sw.golden.loopnest`: the rules of
   :mod:`.quantize` (power-of-two scales, pow2/int8 weights, kept weights never 0, the
   accumulator bound, error-feedback rounding on calibration patches, bias correction) on the
   GEMM view; pooling and additions as SUM/MAX layers with exact weights.

The calibration runs the quantised layers on the example batch with torch convolutions on
the integers (exact in float64), so each layer is quantised against what the device really
feeds it; :meth:`Program.run_golden` runs the same program through the golden loop-nest
model on a scratchpad, bit-exact, and must give the same integers.

Capacity (DESIGN §2.2): every limit the program exceeds — activation words, layers, group
words, row words, a layer's output side or groups — is reported at once, in one
:class:`~gsaccel.sw.errors.CapacityError` naming the numbers and the remedy. The plan and the
layer count are known before any weight is quantised; once any limit is known to be
exceeded, the remaining layers are rounded plainly (no error feedback) only to count them.
"""

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np

from ...hw.config import CoreConfig
from ..errors import CapacityError, ShapeError, UnsupportedError
from ..format import GSMatrix, pow2_encode
from ..format.geometry import LoopNest, TensorGeometry
from ..golden.cycles import row_words, writer_cycles
from ..golden.numerics import quantize, requantize, wrap
from .graph import ADD, AVGPOOL, CONV, LINEAR, MAXPOOL, _as_float64, _torch, lower_graph
from .image import MAX_OUTPUT_SIDE, fill_ranges
from .layers import MAX, SUM, BasisLayer, ClearLayer, GSLayer, InputTransform, ResidualNest
from .capacity import CapacityReport, Limit
from .plan import Lifetime, plan_memory, scratchpad_depth
from .program import Program, ProgramTensor
from .quantize import (FloatLayer, _choose_weight_scale, _error_feedback_round, _pack,
                       _scale_log2, add_scale, add_weights, avgpool_scale, quantize_weights)

__all__ = ["compile_native", "kernel_columns", "to_gemm", "diagonal_matrix"]

logger = logging.getLogger(__name__)

#: Calibration pixels (patches) the error-feedback rounding of one layer looks at, at most.
FEEDBACK_SAMPLES = 2048
#: Error-feedback rounding costs O(columns²·rows); wider blocks are rounded plainly.
FEEDBACK_MAX_COLUMNS = 2304


# GEMM view --------------------------------------------------------------------------------------

def kernel_columns(out_channels, in_per_group, groups, taps, padded_channels):
    """GEMM-view column of every kernel weight, shaped (C_out, C_in/groups, taps): ``tap·Cp +
    channel``, channel = ``group·C_in/groups + c`` (block-diagonal for grouped convs)."""
    o, c, t = np.meshgrid(np.arange(out_channels), np.arange(in_per_group), np.arange(taps),
                          indexing="ij")
    channel = (o // (out_channels // groups)) * in_per_group + c
    return t * padded_channels + channel


def to_gemm(weight, groups, padded_channels):
    """(C_out, taps·Cp) GEMM view of a (C_out, C_in/groups, kh, kw) kernel; structural zeros
    (padding channels, other groups' channels) are 0 (False for a bool kernel)."""
    weight = np.asarray(weight)
    c_out, in_per_group, kh, kw = weight.shape
    cols = kernel_columns(c_out, in_per_group, groups, kh * kw, padded_channels)
    gemm = np.zeros((c_out, kh * kw * padded_channels), dtype=weight.dtype)
    gemm[np.arange(c_out)[:, None, None], cols] = weight.reshape(c_out, in_per_group, kh * kw)
    return gemm


def _from_gemm(gemm, groups, in_per_group, kernel, padded_channels):
    """Inverse of :func:`to_gemm`: the (C_out, C_in/groups, kh, kw) kernel."""
    c_out = gemm.shape[0]
    taps = kernel[0] * kernel[1]
    cols = kernel_columns(c_out, in_per_group, groups, taps, padded_channels)
    return gemm[np.arange(c_out)[:, None, None], cols].reshape(
        (c_out, in_per_group) + tuple(kernel))


def diagonal_matrix(values, padded_channels, lanes, encoding):
    """The packed GEMM view of a per-channel layer — pooling, an addition: output channel
    ``c`` reads only input channel ``c``, with weight ``values[c, t]`` at tap ``t`` (column
    ``t·Cp + c``).

    Built directly, without the dense (C, taps·Cp) matrix (a global pool's is large), as the
    ``gs-gather`` e = 1 packing of ``GSMatrix.from_dense``: row group ``r`` holds channels
    ``r·V .. r·V + V − 1``, lane ``i`` reads bank ``i``, group ``t`` is tap ``t``. Every
    value must be nonzero (a layer without a tap leaves its column out of ``values``).
    """
    values = np.asarray(values, dtype=np.int64)
    channels, taps = values.shape
    if not values.all():
        raise ShapeError("A per-channel layer's weights must all be nonzero")
    if encoding == "pow2":
        pow2_encode(values)
    elif values.min() < -128 or values.max() > 127:
        raise ShapeError(f"int8 weights must be in [-128, 127], not {values.min()}.."
                         f"{values.max()}")
    n_rg = -(-channels // lanes)
    rows = np.arange(n_rg * lanes).reshape(n_rg, lanes)            # channel of each lane
    real = rows < channels
    group_values = np.zeros((n_rg, taps, lanes), dtype=np.int64)
    group_cols = np.zeros((n_rg, taps, lanes), dtype=np.int64)
    r, i = np.nonzero(real)
    channel = rows[r, i]
    group_values[r, :, i] = values[channel]
    group_cols[r, :, i] = np.arange(taps)[None] * padded_channels + channel[:, None]
    return GSMatrix(shape=(channels, taps * padded_channels), pattern="gs-gather",
                    lanes=lanes, per_row=1, encoding=encoding,
                    group_values=group_values.reshape(-1, lanes),
                    group_cols=group_cols.reshape(-1, lanes),
                    rg_groups=np.full(n_rg, taps, dtype=np.int64),
                    rg_rows=np.where(real, rows, -1))


# Compilation ------------------------------------------------------------------------------------

def compile_native(model, example_input, cfg=None, *, im2col_input=True,
                   feedback_samples=FEEDBACK_SAMPLES, phases=True, report_only=False):
    """Compile ``model`` into a :class:`~.program.Program` of loop-nest layers for ``cfg``.

    Parameters
    ----------
    model : torch.nn.Module
        Anything :func:`~gsaccel.sw.compile.graph.lower_graph` lowers.
    example_input : array or tensor, (N, C, H, W) or (N, F)
        Calibration batch: activation scales, error-feedback rounding and bias correction.
    cfg : CoreConfig, optional
        The core (default ``CoreConfig()``); its lanes, encoding, accumulator width and
        :func:`~.plan.scratchpad_depth` are used.
    im2col_input : bool
        Let the host send the first convolution's input im2col'd when the input has fewer
        channels than lanes and that convolution is its only reader (DESIGN §2.1), unless
        the kh·kw times larger input then does not fit the scratchpad.
    feedback_samples : int
        Calibration pixels each layer's error-feedback rounding uses, at most.
    phases : bool
        When only the weights (group words, row words, layer-table entries) exceed the
        core's memories, return a program the runtime runs in phases
        (:meth:`~.program.Program.phases`); otherwise that is a CapacityError too.
    report_only : bool
        Return the :class:`~.capacity.CapacityReport` of the model against ``cfg`` instead
        of a program (it does not raise CapacityError).

    Raises
    ------
    UnsupportedError
        An operation the native core cannot run (the message says what to change).
    CapacityError
        The program does not fit the core (every limit it exceeds, in one message), or a
        scale or weight cannot be encoded.
    ShapeError
        A bad example input.
    """
    cfg = CoreConfig() if cfg is None else cfg
    frozen = None
    from .qat import QATModel
    if isinstance(model, QATModel):
        # Quantisation-aware training fixed every scale and integer: take them as they are.
        frozen = model.frozen_numerics(cfg)
        model = model.model
    x = _as_float64(example_input)
    if x.ndim not in (2, 4) or len(x) == 0:
        raise ShapeError(f"Example input must be a non-empty batch (N, C, H, W) or (N, F), "
                         f"not shape {x.shape}")
    graph = lower_graph(model, x)
    values = graph.forward(x)
    _check_lowering(model, graph, x, values)
    def compilation(im2col, **options):
        return _Compilation(model, graph, values, cfg, im2col, feedback_samples, phases,
                            report_only, frozen=frozen, **options).run()

    try:
        return compilation(im2col_input)
    except _Im2colDoesNotFit as im2col:
        # The im2col'd input is kh·kw times the image: send the image as is instead.
        logger.info("the im2col'd input does not fit the scratchpad; sending it as is")
        try:
            result = compilation(False)
        except CapacityError as error:
            if error.report is None or im2col.top >= error.report.limit("bank_depth").need:
                raise
            result = error.report
        if isinstance(result, Program) or im2col.top >= result.limit("bank_depth").need:
            return result
        # Neither fits, and the im2col'd plan needs less: report (or raise) that one.
        return compilation(True, im2col_fallback=False)


def _check_lowering(model, graph, x, values):
    """The graph's float forward must reproduce the model's own (eval mode): otherwise
    something was silently mis-lowered."""
    torch = _torch()
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        dtype = next((p.dtype for p in model.parameters()), torch.float32)
        with torch.no_grad():
            reference = model(torch.from_numpy(x).to(dtype))
    finally:
        for module, training in modes.items():
            module.training = training
    reference = reference.detach().double().numpy().reshape(len(x), -1)
    lowered = values[graph.output].reshape(len(x), -1)
    deviation = float(np.abs(lowered - reference).max(initial=0))
    tolerance = 1e-4 * max(1.0, float(np.abs(reference).max(initial=0)))
    if lowered.shape != reference.shape or deviation > tolerance:
        raise UnsupportedError(f"The lowered graph must reproduce the model's output, but it "
                               f"differs by {deviation:.3g} (tolerance {tolerance:.3g})")


class _Im2colDoesNotFit(Exception):
    """The plan with an im2col'd input failed; the plan without may fit."""

    def __init__(self, top):
        super().__init__(top)
        self.top = top              # words per bank the im2col'd plan needs


@dataclass
class _Step:
    """One graph op as the device runs it."""

    op: object
    kind: str                  # gs | maxpool | avgpool | add | smartdeal
    inputs: list
    output: str
    im2col: bool = False
    z: str = None              # SmartDeal: the basis output tensor
    n_chunks: int = 0


class _Compilation:
    def __init__(self, model, graph, values, cfg, im2col_input, feedback_samples,
                 phased=True, report_only=False, im2col_fallback=True, frozen=None):
        self.frozen = frozen       # a quantisation-aware model's numerics, or None
        self.phased, self.report_only = bool(phased), bool(report_only)
        self.im2col_fallback = im2col_fallback
        self.torch = _torch()
        self.model, self.graph, self.cfg = model, graph, cfg
        self.encoding = cfg.encoding
        self.lanes = cfg.lanes
        self.im2col_input = im2col_input
        self.feedback_samples = int(feedback_samples)
        self.values = values
        self.tensors = {}          # name -> ProgramTensor
        self.float = {}            # name -> (N, C, H, W) float64, the device's domain
        self.device = {}           # name -> (N, C, H, W) int64 device values
        self.fold = {}             # tensor -> factor its readers multiply their weights by
        self.chunked = {}          # tensor -> elements a SmartDeal basis layer reads
        self.layers, self.info = [], []
        self.extra_slices = 0      # device layers beyond one per sliced layer
        self.transform = InputTransform()
        self.rng = np.random.default_rng(0)

    # Structure -------------------------------------------------------------------------------

    def run(self):
        graph = self.graph
        for name, tensor in graph.tensors.items():
            shape = tensor.shape if tensor.is_image else (tensor.shape[0], 1, 1)
            self.tensors[name] = ProgramTensor(name, tuple(int(v) for v in shape),
                                              producer=tensor.producer)
        self._flatten_input()
        self.steps = [self._step(index, op) for index, op in enumerate(graph.ops)]
        self._plan()
        self.dry = bool(self._problems())      # known not to fit: only count what follows
        self._calibrate_input()
        self.setup = []            # (CLEAR layer, info) of the resident tensors
        for index, step in enumerate(self.steps):
            self._emit(index, step)
        # The setup layers first: the runtime runs them once, at load.
        self.layers[:0] = [layer for layer, _ in self.setup]
        self.info[:0] = [info for _, info in self.setup]
        report = self._report()
        if self.report_only:
            return report
        if self._problems():
            raise CapacityError(report.message(phases_allowed=self.phased), report=report)
        out = self.tensors[graph.output]
        calibration = self.device[graph.output][:, :out.shape[0]]
        calibration = calibration.reshape((len(calibration),) + tuple(graph.output_shape))
        calibration = calibration.astype(np.int8)
        return Program(
            cfg=self.cfg, depth=self.depth, tensors=self.tensors, layers=self.layers,
            input=graph.input, input_shape=tuple(graph.input_shape),
            input_scale_log2=self.tensors[graph.input].scale_log2,
            input_transform=self.transform, output=graph.output,
            output_shape=tuple(graph.output_shape), output_scale_log2=out.scale_log2,
            info=self.info, plan=self.plan, calibration_output=calibration,
            setup_layers=len(self.setup))

    def _step(self, index, op):
        graph = self.graph
        if op.kind in (CONV, LINEAR):
            info = op.pattern
            smartdeal = info is not None and info.pattern == "smartdeal"
            if smartdeal and op.kind == CONV:
                raise UnsupportedError(
                    f"Layer {op.name!r} ({op.torch_op}) is pruned with SmartDeal, which is "
                    f"compiled for Linear layers only; prune the Conv2d with another pattern")
            if smartdeal:
                return self._smartdeal_step(op)
            im2col = (op.kind == CONV and self.im2col_input and op.inputs[0] == graph.input
                      and graph.tensors[graph.input].is_image
                      and graph.tensors[graph.input].shape[0] < self.lanes
                      and graph.tensors[graph.input].consumers == [op.name])
            if im2col:
                self._im2col_input(op)
            return _Step(op, "gs", list(op.inputs), op.output, im2col=im2col)
        if op.kind in (MAXPOOL, AVGPOOL, ADD):
            return _Step(op, op.kind, list(op.inputs), op.output)
        raise UnsupportedError(f"Op {op.name!r} of kind {op.kind!r} cannot be compiled")

    def _flatten_input(self):
        """An image input that only Linear layers read is sent flat (C·H·W channels of one
        pixel, CHW order): their weights then need no column permutation, and C < V
        channels do not leave banks idle."""
        graph = self.graph
        tensor = graph.tensors[graph.input]
        if tensor.is_image and tensor.consumers and all(
                graph.op(name).kind == LINEAR for name in tensor.consumers):
            self.tensors[graph.input].shape = (tensor.size, 1, 1)
            self.transform = InputTransform("flatten")

    def _im2col_input(self, op):
        tensor = self.tensors[self.graph.input]
        channels, height, width = tensor.shape
        ho, wo = self.tensors[op.output].shape[1:]
        tensor.shape = (op.kernel[0] * op.kernel[1] * channels, ho, wo)
        self.transform = InputTransform("im2col", op.kernel, op.stride, op.padding,
                                        op.dilation)

    def _smartdeal_step(self, op):
        source = self.tensors[op.inputs[0]]
        features, height, width = source.shape
        if (height, width) != (1, 1):
            raise UnsupportedError(
                f"SmartDeal layer {op.name!r} reads the flattened (C, H, W) = "
                f"{self.graph.tensors[op.inputs[0]].shape} tensor {op.inputs[0]!r}: its "
                f"3-element chunks follow torch's CHW order, the core stores HWC; pool to "
                f"1x1 before the flatten or prune the layer with another pattern")
        if not self.cfg.basis:
            raise UnsupportedError(f"SmartDeal layer {op.name!r} needs the basis unit, which "
                                   f"this core leaves out (CoreConfig.basis=False)")
        n_chunks = -(-features // 3)
        z = f"{op.name}.z"
        self.tensors[z] = ProgramTensor(z, (3 * n_chunks, 1, 1), producer=f"{op.name}.basis")
        self.chunked[op.inputs[0]] = max(self.chunked.get(op.inputs[0], 0), 3 * n_chunks)
        return _Step(op, "smartdeal", list(op.inputs), op.output, z=z, n_chunks=n_chunks)

    def _plan(self):
        """Geometries (halo, chunk padding, shared geometry of addition operands) and bases."""
        pad = {name: 0 for name in self.tensors}
        for step in self.steps:
            if step.kind in ("gs", MAXPOOL, AVGPOOL) and not step.im2col:
                source = step.inputs[0]
                pad[source] = max(pad[source], max(step.op.padding))
        # Addition operands share one geometry: union their classes, the largest halo wins.
        parent = {name: name for name in self.tensors}

        def find(name):
            while parent[name] != name:
                parent[name] = parent[parent[name]]
                name = parent[name]
            return name

        for step in self.steps:
            if step.kind == ADD:
                a, b = (find(n) for n in step.inputs)
                parent[a] = b
        # ... and one channel count: a one-pixel tensor read in SmartDeal chunks has more.
        channels = {name: max(tensor.shape[0], self.chunked.get(name, 0))
                    for name, tensor in self.tensors.items()}
        for name in self.tensors:
            root = find(name)
            pad[root] = max(pad[root], pad[name])
            channels[root] = max(channels[root], channels[name])
        for name, tensor in self.tensors.items():
            tensor.geometry = TensorGeometry(tensor.shape[1], tensor.shape[2],
                                             channels[find(name)], self.lanes,
                                             pad[find(name)])
        stored = self.tensors[self.graph.input].geometry.channels
        if stored > self.tensors[self.graph.input].shape[0]:
            # The host pads the chunks.
            self.transform = dataclasses.replace(self.transform, channels=stored)
        # Lifetimes over the steps: the input from the start, the output to the end.
        self.tensors[self.graph.input].first = 0
        for index, step in enumerate(self.steps):
            for name in (step.output, step.z):
                if name is not None:
                    self.tensors[name].first = self.tensors[name].last = index
            for name in step.inputs:
                self.tensors[name].last = index
        self.tensors[self.graph.output].last = len(self.steps)
        self.depth = scratchpad_depth(self.cfg)
        self.release_after = {name: t.last for name, t in self.tensors.items()}
        lifetimes = [Lifetime(t.name, t.geometry.words, t.first, t.last)
                     for t in self.tensors.values()]
        self.halves_problem = None
        apart = self._apart() if self.cfg.bank_halves else None
        try:
            self.plan = plan_memory(lifetimes, self.depth, banks=self.lanes, strict=False,
                                    apart=apart)
        except CapacityError as error:
            # No halves for this graph: a problem of the report (every limit is still
            # measured, on the plan without halves).
            self.halves_problem = str(error)
            apart = None
            self.plan = plan_memory(lifetimes, self.depth, banks=self.lanes, strict=False)
        # Resident tensors: a tensor with a halo or padding channels is cleared before its
        # producer writes it, since another tensor may have used its words. Live from the
        # first step to the last, nothing else uses them: its CLEAR then runs once, when the
        # program is loaded (a setup layer), not in every inference. Greedily, the largest
        # (the longest CLEAR) first, as long as the plan fits.
        self.resident = set()
        candidates = sorted((t for t in self.tensors.values() if t.needs_clear),
                            key=lambda t: (-t.geometry.words, t.name))
        whole = len(self.steps)
        for tensor in candidates if self.plan.fits else ():
            trial = self.resident | {tensor.name}
            plan = plan_memory(
                [Lifetime(l.name, l.words, 0, whole) if l.name in trial else l
                 for l in lifetimes], self.depth, banks=self.lanes, strict=False, apart=apart)
            if plan.fits:
                self.plan, self.resident = plan, trial
        for name in self.resident:
            self.tensors[name].first, self.tensors[name].last = 0, whole
        if not self.plan.fits and self.transform.kind == "im2col" and self.im2col_fallback:
            raise _Im2colDoesNotFit(self.plan.top)
        for name, tensor in self.tensors.items():
            tensor.geometry = tensor.geometry.at(self.plan.bases[name])

    def _apart(self):
        """(read, written) tensor pairs of every layer the steps become: a core with bank
        halves reads one half while it writes the other. A SmartDeal step is a BASIS layer
        (its inputs to ``z``) and a GS layer (``z`` to its output)."""
        pairs = []
        for step in self.steps:
            if step.z is not None:
                pairs += [(name, step.z) for name in step.inputs] + [(step.z, step.output)]
            else:
                pairs += [(name, step.output) for name in step.inputs]
        return pairs

    # Capacity --------------------------------------------------------------------------------

    def _report(self):
        """The :class:`~.capacity.CapacityReport` of the program against the core: before
        emission from the plan and the steps, after it from the layers as well."""
        cfg = self.cfg
        gs = [layer for layer in self.layers if layer.kind == "gs"]
        # A layer sliced for the weight or row memory counts once: with those memories big
        # enough for one load (what the limit's remedy asks for) there are no slices.
        n_layers = max(len(self.layers) - self.extra_slices,
                       sum(2 if step.kind == "smartdeal" else 1 for step in self.steps)
                       + sum(1 for t in self.tensors.values() if t.needs_clear))
        groups = [layer.matrix.n_groups for layer in gs]
        rows = [row_words(layer.matrix, cfg) for layer in gs]
        limits = [
            Limit("activation words per bank", "bank_depth", self.plan.top, cfg.bank_depth,
                  detail=self.plan.shortfall(f"the scratchpad's {cfg.bank_depth} words per "
                                             f"bank"),
                  most=min(32768, (1 << 24) // cfg.lanes)),
            Limit("group words", "weight_depth", sum(groups), cfg.weight_depth,
                  max(groups, default=0), most=65536),
            Limit("row words", "row_depth", sum(rows), cfg.row_depth, max(rows, default=0),
                  most=65536),
            Limit("layers", "layer_depth", n_layers, cfg.layer_depth, 1, most=256),
        ]
        problems = [self.halves_problem] if self.halves_problem else []
        for step in self.steps:
            height, width = self.tensors[step.output].shape[1:]
            if max(height, width) > MAX_OUTPUT_SIDE:
                problems.append(f"layer {step.op.name!r}: {height}x{width} output pixels, a "
                                f"layer counts at most {MAX_OUTPUT_SIDE} rows and columns "
                                f"(split the layer or stride it)")
        for layer, need_groups, need_rows in zip(gs, groups, rows):
            for need, what in ((need_groups, "groups"), (need_rows, "row words")):
                if need > 65535:
                    problems.append(f"layer {layer.name!r}: {need} {what} per pixel, a layer "
                                    f"holds at most 65535 (prune it harder or split it)")
        return CapacityReport(limits, problems)

    def _problems(self):
        """Whether the program cannot run on the core (phases allowed: only what one load
        of one layer's weights does not lift)."""
        report = self._report()
        return not (report.fits_phased if self.phased else report.fits)

    def _count(self):
        """After a layer is packed: stop rounding carefully once the weights overflow."""
        if not self.dry and self._problems():
            logger.info("the program does not fit the core; counting the rest")
            self.dry = True

    # Calibration -----------------------------------------------------------------------------

    def _graph_value(self, name):
        """(N, C, H, W) float64 of a graph tensor (a flat one as (N, F, 1, 1))."""
        value = self.values[name]
        return value.reshape(value.shape[:2] + (1, 1)) if value.ndim == 2 else value

    def _calibrate_input(self):
        name = self.graph.input
        tensor = self.tensors[name]
        raw = self.values[name]
        tensor.scale_log2 = self.frozen.scales[name] if self.frozen is not None else \
            _scale_log2(float(np.abs(raw).max()))
        hwc = self.transform.apply(raw)                     # (N, H, W, C) as stored
        value = hwc.transpose(0, 3, 1, 2)[:, :tensor.shape[0]]
        self.float[name] = value
        # The stored input, zero channels past the shape included (SmartDeal chunks).
        stored = quantize(hwc, tensor.scale_log2).astype(np.int64).transpose(0, 3, 1, 2)
        self.device[name] = stored

    def _set_output(self, name, device, scale_log2, float_value):
        tensor = self.tensors[name]
        tensor.scale_log2 = int(scale_log2)
        extra = tensor.geometry.channels - device.shape[1]
        if extra > 0:           # chunk padding: zero, cleared before the producer
            device = np.pad(device, ((0, 0), (0, extra), (0, 0), (0, 0)))
        self.device[name] = device
        self.float[name] = float_value

    def _release(self, index):
        """Drop the calibration values of tensors no later step reads."""
        for name, tensor in self.tensors.items():
            last = self.release_after[name]
            if last is not None and last <= index and \
                    name != self.graph.output and name in self.device:
                del self.device[name]
                self.float.pop(name, None)

    def _dev(self, name):
        """(N, C, H, W) device values of a tensor's first ``shape[0]`` channels."""
        return self.device[name][:, :self.tensors[name].shape[0]]

    # Emission --------------------------------------------------------------------------------

    def _emit(self, index, step):
        first = len(self.layers)
        if step.kind == "gs":
            self._gs(step)
        elif step.kind == MAXPOOL:
            self._maxpool(step)
        elif step.kind == AVGPOOL:
            self._avgpool(step)
        elif step.kind == ADD:
            self._add(step)
        else:
            self._smartdeal(step)
        out = self.tensors[step.output]
        if out.needs_clear:
            g = out.geometry
            clear = ClearLayer(f"{out.name}.clear", out.name, g.base, g.words)
            info = {"name": clear.name, "kind": "clear", "torch_op": "clear",
                    "tensor": out.name, "words": g.words}
            if out.name in self.resident:
                self.setup.append((clear, info | {"setup": True}))
            else:
                # Right before the layer that writes it (its region is free all step long).
                at = next(i for i in range(first, len(self.layers))
                          if self.layers[i].output == out.name)
                self.layers.insert(at, clear)
                self.info.insert(at, info)
        self._release(index)

    # Convolutions and Linear layers ----------------------------------------------------------

    def _kernel(self, step, frozen=None):
        """The op as a convolution over its source tensor: (weight, kept mask, groups,
        kernel, stride, padding, dilation, frozen), float weights with any folded factor;
        ``frozen`` (the integer weights of a quantisation-aware model, shaped like the op's
        weight) is viewed the same way."""
        op = step.op
        source = self.tensors[step.inputs[0]]
        weight = op.weight
        mask = np.ones(weight.shape, bool) if op.mask is None else op.mask.astype(bool)
        arrays = [weight, mask] + ([] if frozen is None else [np.asarray(frozen, np.int64)])
        if op.kind == LINEAR:
            c, h, w = source.shape
            arrays = [a.reshape((weight.shape[0], c, h, w)) for a in arrays]
            geometry = (1, (h, w), (1, 1), (0, 0), (1, 1))
        else:
            geometry = (op.groups, op.kernel, op.stride, op.padding, op.dilation)
        if step.im2col:
            # A 1x1 convolution over the im2col'd channels tap·C + c: the GEMM view with
            # unpadded channels (zero outside each output channel's group).
            channels = weight.shape[1] * op.groups
            arrays = [to_gemm(a, op.groups, channels)[:, :, None, None] for a in arrays]
            geometry = (1, (1, 1), (1, 1), (0, 0), (1, 1))
        weight, mask = arrays[0] * self.fold.get(step.inputs[0], 1.0), arrays[1]
        return (weight, mask) + geometry + (arrays[2] if frozen is not None else None,)

    def _gs(self, step):
        op = step.op
        frozen = self.frozen.layers.get(op.name) if self.frozen is not None else None
        weight, mask, groups, kernel, stride, padding, dilation, q_kernel = self._kernel(
            step, None if frozen is None else frozen.q)
        if frozen is not None:
            frozen = dataclasses.replace(frozen, q=q_kernel)
        pattern = None if step.im2col else op.pattern
        self._quantised_conv(step, op.name, op.torch_op, step.inputs[0], step.output, weight,
                             mask, op.bias, groups, kernel, stride, padding, dilation,
                             op.relu, pattern, op.row_order, frozen=frozen)

    def _quantised_conv(self, step, name, torch_op, src, dst, weight, mask, bias, groups,
                        kernel, stride, padding, dilation, relu, pattern, row_order,
                        frozen=None):
        """Quantise, pack and emit one SUM layer with the rules of :mod:`.compiler`; a
        ``frozen`` layer (quantisation-aware training) brings its scales, integer weights
        and bias, taken as they are."""
        torch = self.torch
        functional = torch.nn.functional
        cfg, encoding = self.cfg, self.encoding
        source, out = self.tensors[src], self.tensors[dst]
        cp = source.view.padded_channels
        c_out, in_per_group = weight.shape[:2]
        gemm_w = to_gemm(weight, groups, cp)
        gemm_mask = to_gemm(mask, groups, cp)
        layer = FloatLayer(name, gemm_w, np.asarray(bias, float), gemm_mask, pattern=pattern,
                           row_order=row_order)
        s_x = source.scale_log2
        exact = functional.conv2d(torch.from_numpy(self.float[src]), torch.from_numpy(weight),
                                  None, stride, padding, dilation, groups).numpy()
        float_out = np.maximum(exact + layer.bias[None, :, None, None], 0) if relu else \
            exact + layer.bias[None, :, None, None]
        x_dev = self._dev(src)
        if frozen is not None:
            # What the fake-quantised forward computed, as is: no error feedback, no bias
            # correction (they would move the device away from the trained model).
            s_y, s_w = self.frozen.scales[dst], frozen.s_w
            q = to_gemm(frozen.q, groups, cp)
            if ((q != 0) & ~gemm_mask).any():
                raise AssertionError(f"{name}: frozen weights outside the pruning mask")
            q_kernel, b = frozen.q, np.asarray(frozen.b, np.int64)
        else:
            s_y = _scale_log2(float(np.abs(float_out).max()))
            s_w, q, b = _choose_weight_scale(layer, s_x, cfg, encoding)
            if s_y < s_x + s_w:
                s_y = s_x + s_w
            if s_y - s_x - s_w > 31:
                s_w = s_y - s_x - 31
                q = quantize_weights(layer.weight, layer.mask, s_w, encoding)
            q = self._feedback(layer, q, x_dev * 2.0 ** s_x, s_x, s_w, groups, in_per_group,
                               kernel, stride, padding, dilation, cp)
            q_kernel = _from_gemm(q, groups, in_per_group, kernel, cp)
        acc = functional.conv2d(torch.from_numpy(x_dev.astype(np.float64)),
                                torch.from_numpy(q_kernel.astype(np.float64)), None, stride,
                                padding, dilation, groups).numpy()
        acc = np.rint(acc).astype(np.int64)
        if frozen is None:
            # Bias correction: the mean difference between the float layer and the device.
            correction = (exact - acc * 2.0 ** (s_x + s_w)).mean(axis=(0, 2, 3))
            b = np.floor((layer.bias + correction) / 2.0 ** (s_x + s_w) + 0.5).astype(np.int64)
            limit = 1 << (cfg.acc_width - 2)
            b = np.clip(b, -limit, limit - 1 - np.abs(q).sum(axis=1) * 128)
        shift = s_y - s_x - s_w
        if not 0 <= shift <= 31:
            raise CapacityError(f"Layer {name!r}: requantisation shift {shift} must be in "
                                f"[0, 31] (scales 2**{s_x}, 2**{s_w}, 2**{s_y})")
        matrix = _pack(layer, q, cfg)
        nest = LoopNest(source.view, out.view, kernel, stride, padding, dilation)
        self._append(GSLayer(name, torch_op, matrix, b, shift, relu, SUM, nest, (src,), dst),
                     s_x, s_w, s_y, int(np.count_nonzero(gemm_mask)))
        y = requantize(wrap(acc, cfg.acc_width) + b[None, :, None, None], shift, relu,
                       cfg.acc_width).astype(np.int64)
        self._set_output(dst, y, s_y, float_out)

    def _feedback(self, layer, q, x, s_x, s_w, groups, in_per_group, kernel, stride, padding,
                  dilation, cp):
        """Error-feedback rounding per group of the GEMM view (block-diagonal for grouped
        convs), on calibration patches at a sample of output pixels. Skipped once the
        program is known not to fit (the rounding then only counts the groups)."""
        if self.dry:
            return q
        n, _, height, width = x.shape
        ho = (height + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
        wo = (width + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
        total = n * ho * wo
        if total > self.feedback_samples:
            pick = np.sort(self.rng.choice(total, self.feedback_samples, replace=False))
        else:
            pick = np.arange(total)
        sample, pixel = np.divmod(pick, ho * wo)
        oy, ox = np.divmod(pixel, wo)
        ky, kx = np.meshgrid(np.arange(kernel[0]), np.arange(kernel[1]), indexing="ij")
        rows = oy[:, None] * stride[0] + ky.ravel()[None] * dilation[0]
        cols = ox[:, None] * stride[1] + kx.ravel()[None] * dilation[1]
        padded = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
        patches = padded[sample[:, None], :, rows, cols]           # (S, taps, C)
        c_out = layer.weight.shape[0]
        per_group = c_out // groups
        taps = kernel[0] * kernel[1]
        channels = x.shape[1]
        q = q.copy()
        for g in range(groups):
            rows_g = np.arange(g * per_group, (g + 1) * per_group)
            channel = np.arange(g * in_per_group, (g + 1) * in_per_group) if groups > 1 \
                else np.arange(channels)
            cols_g = (np.arange(taps)[:, None] * cp + channel[None]).ravel()
            if cols_g.size > FEEDBACK_MAX_COLUMNS:
                logger.info("%s: %d columns, rounded without error feedback", layer.name,
                            cols_g.size)
                continue
            block = FloatLayer(layer.name, layer.weight[np.ix_(rows_g, cols_g)],
                               layer.bias[rows_g], layer.mask[np.ix_(rows_g, cols_g)])
            x_g = patches[:, :, channel].reshape(len(pick), -1)
            q[np.ix_(rows_g, cols_g)] = _error_feedback_round(
                block, q[np.ix_(rows_g, cols_g)], x_g, s_x, s_w, self.encoding, self.cfg)
        return q

    def _append(self, layer, s_x, s_w, s_y, kernel_weights):
        parts = self._parts(layer) if self.phased and layer.kind == "gs" else None
        if parts and len(parts) > 1:
            # Too big for one load of the weight or row memory: the layer runs as slices of
            # its row groups, one device layer each, which the phases load one by one. Each
            # computes its own output channels over every pixel.
            self.extra_slices += len(parts) - 1
            for index, (first, end) in enumerate(parts):
                part = dataclasses.replace(layer, name=f"{layer.name}.{index}",
                                           matrix=layer.matrix.take_rowgroups(first, end))
                self._append_one(part, s_x, s_w, s_y, kernel_weights if index == 0 else 0,
                                 part_of=layer.name)
            return
        self._append_one(layer, s_x, s_w, s_y, kernel_weights)

    def _parts(self, layer):
        """Row-group ranges ``[(first, end), ...]`` of a GS layer, each fitting the weight
        and row memories on its own (as many row groups as fit, in order); the whole layer
        when it fits, None when a single row group does not."""
        capacity = (self.cfg.weight_depth, self.cfg.row_depth)
        sizes = list(zip(layer.matrix.rg_groups.tolist(),
                         writer_cycles(layer.matrix, self.cfg).tolist()))
        if any(g > c for size in sizes for g, c in zip(size, capacity)):
            return None
        return fill_ranges(sizes, capacity)

    def _append_one(self, layer, s_x, s_w, s_y, kernel_weights, part_of=None):
        self.layers.append(layer)
        entry = {"name": layer.name, "kind": layer.kind, "torch_op": layer.torch_op,
                 "input_scale_log2": int(s_x), "weight_scale_log2": int(s_w),
                 "scale_log2": int(s_y), "shift": int(layer.shift),
                 "kernel_weights": int(kernel_weights)}
        if layer.kind == "gs":
            entry.update(op=layer.op, pattern=layer.matrix.pattern,
                         per_row=layer.matrix.per_row, nnz=layer.matrix.nnz,
                          groups=layer.matrix.n_groups, rowgroups=layer.matrix.n_rowgroups,
                         pixels=layer.nest.pixels)
        if part_of is not None:
            entry["part_of"] = part_of
        self.info.append(entry)
        self._count()

    # Pooling ---------------------------------------------------------------------------------

    def _pool_matrix(self, channels, taps, cp):
        return diagonal_matrix(np.ones((channels, taps), dtype=np.int64), cp, self.lanes,
                               self.encoding)

    def _pool_window(self, x, op, reduce):
        torch = self.torch
        (py, px) = op.padding
        halo = torch.from_numpy(np.pad(x.astype(np.float64),
                                       ((0, 0), (0, 0), (py, py), (px, px))))
        if reduce == MAX:
            y = torch.nn.functional.max_pool2d(halo, op.kernel, op.stride, 0, op.dilation)
        else:
            y = torch.nn.functional.avg_pool2d(halo, op.kernel, op.stride, 0,
                                               divisor_override=1)
        return np.rint(y.numpy()).astype(np.int64)

    def _maxpool(self, step):
        op = step.op
        source, out = self.tensors[step.inputs[0]], self.tensors[step.output]
        channels = source.shape[0]
        matrix = self._pool_matrix(channels, op.kernel[0] * op.kernel[1],
                                   source.view.padded_channels)
        nest = LoopNest(source.view, out.view, op.kernel, op.stride, op.padding, op.dilation)
        s_x = source.scale_log2
        self._append(GSLayer(op.name, op.torch_op, matrix, np.zeros(channels, np.int64), 0,
                             op.relu, MAX, nest, tuple(step.inputs), step.output),
                     s_x, 0, s_x, matrix.nnz)
        y = requantize(self._pool_window(self._dev(source.name), op, MAX), 0, op.relu,
                       self.cfg.acc_width).astype(np.int64)
        self._set_output(step.output, y, s_x, self._graph_value(step.output))

    def _avgpool(self, step):
        """SUM with weight 1 and shift ``k = ceil(log2(divisor))`` (+ the output scale's
        difference); a divisor that is not a power of two leaves ``2**k / divisor``, folded
        into the single Conv2d/Linear reading the result."""
        op = step.op
        source, out = self.tensors[step.inputs[0]], self.tensors[step.output]
        channels = source.shape[0]
        taps = op.kernel[0] * op.kernel[1]
        k = max(0, math.ceil(math.log2(op.divisor)))
        factor = 2.0 ** k / op.divisor
        if factor != 1.0:
            readers = self.graph.tensors[step.output].consumers
            kinds = [self.graph.op(r).kind for r in readers]
            if step.output == self.graph.output or kinds not in ([CONV], [LINEAR]):
                what = "the model's output" if step.output == self.graph.output else \
                    ", ".join(f"{r!r} ({self.graph.op(r).torch_op})" for r in readers)
                raise UnsupportedError(
                    f"Average pool {op.name!r} divides by {op.divisor}, not a power of two: "
                    f"the core shifts by {k} and the leftover factor 2**{k}/{op.divisor} must "
                    f"be folded into the weights of a single Conv2d or Linear reading it, but "
                    f"it is read by {what}; use a power-of-two window or let one Conv2d/Linear "
                    f"read the pool")
            self.fold[step.output] = factor
        limit = 1 << (self.cfg.acc_width - 2)
        if 128 * taps >= limit:
            raise CapacityError(f"Average pool {op.name!r}: a window of {taps} taps overflows "
                                f"the {self.cfg.acc_width}-bit accumulator")
        s_x = source.scale_log2
        float_value = self._graph_value(step.output) / factor
        s_y = avgpool_scale(float_value, s_x, k) if self.frozen is None else \
            self.frozen.scales[step.output]
        shift = k + s_y - s_x
        matrix = self._pool_matrix(channels, taps, source.view.padded_channels)
        nest = LoopNest(source.view, out.view, op.kernel, op.stride, op.padding, op.dilation)
        self._append(GSLayer(op.name, op.torch_op, matrix, np.zeros(channels, np.int64),
                             shift, op.relu, SUM, nest, tuple(step.inputs), step.output),
                     s_x, -k, s_y, matrix.nnz)
        if factor != 1.0:
            self.info[-1]["float_factor"] = factor      # the output is the model's / factor
        y = requantize(self._pool_window(self._dev(source.name), op, SUM), shift, op.relu,
                       self.cfg.acc_width).astype(np.int64)
        self._set_output(step.output, y, s_y, float_value)

    # Residual additions ----------------------------------------------------------------------

    def _add(self, step):
        op = step.op
        a, b = (self.tensors[n] for n in step.inputs)
        out = self.tensors[step.output]
        if (a.geometry.height, a.geometry.width, a.geometry.channels, a.geometry.pad) != \
                (b.geometry.height, b.geometry.width, b.geometry.channels, b.geometry.pad):
            raise AssertionError(f"operands of {op.name} must share one geometry")
        scales = (a.scale_log2, b.scale_log2)
        w, s_acc = add_weights(op, scales, self.encoding)
        channels = a.shape[0]
        cp = a.view.padded_channels
        taps = [t for t in range(2) if w[t] != 0]         # alpha = 0: a tap less
        matrix = diagonal_matrix(np.broadcast_to(w[taps], (channels, len(taps))), cp,
                                 self.lanes, self.encoding)
        float_value = self._graph_value(step.output)
        s_y = add_scale(float_value, s_acc) if self.frozen is None else \
            self.frozen.scales[step.output]
        shift = s_y - s_acc
        operands = [(a, b)[t] for t in taps]
        nest = ResidualNest(a.view.at(0), out.view,
                            operand_bases=tuple(t.geometry.base for t in operands))
        self._append(GSLayer(op.name, op.torch_op, matrix, np.zeros(channels, np.int64),
                             shift, op.relu, SUM, nest, tuple(t.name for t in operands),
                             step.output),
                     s_acc, 0, s_y, matrix.nnz)
        acc = w[0] * self._dev(a.name) + w[1] * self._dev(b.name)
        y = requantize(acc, shift, op.relu, self.cfg.acc_width).astype(np.int64)
        self._set_output(step.output, y, s_y, float_value)

    # SmartDeal -------------------------------------------------------------------------------

    def _smartdeal(self, step):
        """A BASIS layer (``z = B·x`` per 3-element chunk) and the power-of-two C' on z, as
        :func:`gsaccel.sw.compile.compiler._lower_smartdeal` lowers them."""
        from ..prune import smartdeal_factors
        op = step.op
        module = dict(self.model.named_modules()).get(op.name)
        if module is None:
            raise UnsupportedError(f"SmartDeal layer {op.name!r} must be a module called once "
                                   f"(its factors are read from the module)")
        c, basis = smartdeal_factors(module)
        rows, cols = op.weight.shape
        n_chunks = step.n_chunks
        cprime = np.asarray(c, np.float64).reshape(rows, 3 * n_chunks)
        approx = (cprime.reshape(rows * n_chunks, 3) @ basis).reshape(rows, -1)[:, :cols]
        # BatchNorm folded into the layer scales its rows: scale C' alike.
        norms = (approx * approx).sum(axis=1)
        row_scale = np.where(norms > 0, (op.weight * approx).sum(axis=1) /
                             np.where(norms > 0, norms, 1), 1.0)
        residual = np.abs(op.weight - row_scale[:, None] * approx).max(initial=0)
        frozen = self.frozen is not None
        if not frozen and residual > 1e-3 * max(1e-12, np.abs(op.weight).max(initial=0)):
            raise UnsupportedError(f"SmartDeal layer {op.name!r}: its weight is not C·B up to "
                                   f"a per-row scale (off by {residual:.3g}); re-run the "
                                   f"SmartDeal pruning after changing the weights")
        source, z = self.tensors[step.inputs[0]], self.tensors[step.z]
        s_x = source.scale_log2
        if frozen:          # quantisation-aware training fixed B's integers and z's scale
            s_b = self.frozen.layers[f"{op.name}.basis"].s_b
            basis_q = np.asarray(self.frozen.layers[f"{op.name}.basis"].basis, np.int64)
        else:
            s_b = _scale_log2(float(np.abs(basis).max()))
            basis_q = np.clip(np.floor(basis / 2.0 ** s_b + 0.5), -127, 127).astype(np.int64)
        x_float = np.zeros((len(self.float[source.name]), 3 * n_chunks))
        x_float[:, :cols] = self.float[source.name].reshape(len(x_float), -1)
        z_float = (x_float.reshape(-1, n_chunks, 3) @ basis.T).reshape(len(x_float), -1)
        s_z = self.frozen.scales[z.name] if frozen else \
            max(_scale_log2(float(np.abs(z_float).max())), s_x + s_b)
        shift = s_z - s_x - s_b
        if not 0 <= shift <= 31:
            raise CapacityError(f"Layer {op.name!r}: requantisation shift {shift} must be in "
                                f"[0, 31]")
        x_dev = self.device[source.name].reshape(len(x_float), -1)[:, :3 * n_chunks]
        self.layers.append(BasisLayer(f"{op.name}.basis", "SmartDeal B", basis_q, n_chunks,
                                      source.geometry, z.geometry, shift, False,
                                      (source.name,), z.name))
        self.info.append({"name": f"{op.name}.basis", "kind": "basis",
                          "torch_op": "SmartDeal B", "input_scale_log2": int(s_x),
                          "weight_scale_log2": int(s_b), "scale_log2": int(s_z),
                          "shift": int(shift), "pattern": "basis", "kernel_weights": 9})
        zq = requantize((x_dev.reshape(-1, n_chunks, 3) @ basis_q.T).reshape(len(x_dev), -1),
                        shift, False, self.cfg.acc_width).astype(np.int64)
        self._set_output(z.name, zq[:, :, None, None], s_z, z_float[:, :, None, None])
        info = op.pattern
        weight = (cprime * row_scale[:, None] * self.fold.get(source.name, 1.0))
        cprime_frozen = None
        if frozen:
            cprime_frozen = self.frozen.layers[f"{op.name}.cprime"]
            cprime_frozen = dataclasses.replace(cprime_frozen,
                                                q=cprime_frozen.q[:, :, None, None])
        self._quantised_conv(
            step, f"{op.name}.cprime", "SmartDeal C'", z.name, step.output,
            weight[:, :, None, None], (cprime != 0)[:, :, None, None], op.bias, 1, (1, 1),
            (1, 1), (0, 0), (1, 1), op.relu,
            type(info)(info.c_pattern, info.lanes, info.per_row), op.row_order,
            frozen=cprime_frozen)
