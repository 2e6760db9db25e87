"""Pattern-aware pruning of torch models for the gather/scatter core (DESIGN §1).

One entry point, :func:`prune`, prunes every ``nn.Linear`` and ``nn.Conv2d`` of a model to one
of :data:`PRUNE_PATTERNS`, following ``torch.nn.utils.prune`` conventions: the weight becomes
``weight_orig * weight_mask`` (a buffer), ``prune.remove`` makes it permanent, and masks live
in the ``state_dict``. :class:`PruningScheduler` prunes inside a training loop with the cubic
schedule of SUBP. Every pruned layer carries its pattern metadata in a small buffer
(``gsaccel_pattern``; read it with :func:`pattern_info`) so that the compiler knows how to pack it.

Layers are pruned in their GEMM view (:mod:`.view`): a Linear layer as its weight, a Conv2d —
grouped and depthwise included — as the matrix the core runs, rows = output channels,
columns = (tap, input channel padded to a multiple of V), channel fastest, so that the GS bank
rule is a rule on the input channel (``c mod V``) and a pruned kernel packs without padding.
The masks are mapped back to torch's weight shape. SmartDeal factors ``weight.reshape(C_out,
-1)`` (DESIGN §1.3).

The work is split by job: :mod:`.view` (the GEMM view), :mod:`.masks` (mask algorithms on a
matrix), :mod:`.rearrange` (row order for 1×N), :mod:`.smartdeal`, :mod:`.info` (pattern
metadata) and this module (the torch API);
every public name is importable from here and from :mod:`gsaccel.sw.prune`.

>>> import torch
>>> layer = torch.nn.Linear(32, 16)
>>> _ = prune(layer, pattern="gs-gather", sparsity=0.75, lanes=8)
>>> pattern_info(layer)
PatternInfo(pattern='gs-gather', lanes=8, per_row=1, c_pattern=None)
>>> float((layer.weight == 0).float().mean())
0.75
"""

import logging

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from ..errors import PatternError, ShapeError, UnsupportedError
from .info import PRUNE_PATTERNS, PatternInfo, _set_buffer, _set_info, pattern_info
from .masks import (_check_gs_shape, block_redundancy_scores, gs_mask, one_by_n_mask,
                    unstructured_mask)
from .rearrange import _rearrange, row_groups
# _SmartDealWeight: models pickled while this module held the class name it here.
from .smartdeal import _SmartDealWeight  # noqa: F401
from .smartdeal import (SMARTDEAL_EXP_MAX, SMARTDEAL_EXP_MIN, _smartdeal_layer, pow2_quantize,
                        smartdeal_cprime, smartdeal_decompose, smartdeal_factors,
                        smartdeal_freeze, smartdeal_trainable)
from .view import (GemmLayout, _dense_weight, from_gemm_view, gemm_layout, gemm_view,
                   prunable_layers)

__all__ = [
    "PRUNE_PATTERNS", "PatternInfo", "prune", "PruningScheduler", "cubic_schedule",
    "pattern_info", "prunable_layers", "gemm_view", "gemm_layout", "from_gemm_view",
    "GemmLayout", "pruning_layout", "input_views", "restore", "gs_mask", "one_by_n_mask", "unstructured_mask",
    "block_redundancy_scores", "rearrange_rows", "row_groups", "pow2_quantize",
    "smartdeal_decompose", "smartdeal_factors",
    "smartdeal_cprime", "smartdeal_trainable", "smartdeal_freeze", "SMARTDEAL_EXP_MIN",
    "SMARTDEAL_EXP_MAX",
]

logger = logging.getLogger(__name__)

_OPTIONS = {
    "gs-gather": set(),
    "gs-scatter": set(),
    "1xN": {"alpha", "tau", "seed"},
    "smartdeal": {"c_pattern", "iterations"},
    "unstructured": set(),
}
_C_PATTERNS = ("1xN", "gs-gather", "gs-scatter", "unstructured")


# Argument checks --------------------------------------------------------------------------------

def _check_arguments(pattern, sparsity, lanes, per_row, options):
    if pattern not in PRUNE_PATTERNS:
        raise PatternError(f"Pattern must be one of {', '.join(PRUNE_PATTERNS)}, "
                           f"not {pattern!r}")
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float, np.floating)) \
            or not 0.0 <= float(sparsity) < 1.0:
        raise PatternError(f"Sparsity must be a number in [0, 1), not {sparsity!r}")
    if isinstance(lanes, bool) or not isinstance(lanes, (int, np.integer)) \
            or lanes not in (2, 4, 8, 16):
        raise PatternError(f"Lane count must be a power of two in 2..16, not {lanes!r}")
    if isinstance(per_row, bool) or not isinstance(per_row, (int, np.integer)) \
            or per_row < 1 or lanes % per_row:
        raise PatternError(f"Weights per row e must divide the lane count {lanes}, "
                           f"not {per_row!r}")
    if pattern == "1xN" and per_row != 1:
        raise PatternError(f"Pattern 1xN shares one column across all lanes, so e must be 1, "
                           f"not {per_row!r}")
    unknown = set(options) - _OPTIONS[pattern]
    if unknown:
        allowed = ", ".join(sorted(_OPTIONS[pattern])) or "none"
        raise PatternError(f"Option {sorted(unknown)[0]!r} is not one of pattern {pattern!r}'s "
                           f"options ({allowed})")
    if pattern == "smartdeal":
        c_pattern = options.get("c_pattern", "1xN")
        if c_pattern not in _C_PATTERNS:
            raise PatternError(f"SmartDeal C pattern must be one of {', '.join(_C_PATTERNS)}, "
                               f"not {c_pattern!r}")
        if c_pattern == "1xN" and per_row != 1:
            raise PatternError(f"SmartDeal C pattern 1xN needs e = 1, not {per_row!r}")


def _names(value):
    """A sequence of layer names; a single string is one name (not its characters)."""
    return [value] if isinstance(value, str) else list(value)


def _select(model, layers, exclude):
    """The ``(name, module)`` to prune; every name in ``layers`` and ``exclude`` must name a
    Linear or Conv2d layer of ``model``."""
    prunable = prunable_layers(model)
    names = {name for name, _ in prunable}
    exclude = _names(exclude)
    unknown = [name for name in exclude if name not in names]
    if unknown:
        raise PatternError(f"Excluded layer names must name Linear or Conv2d layers, "
                           f"not {unknown[0]!r}")
    if layers is not None:
        layers = _names(layers)
        missing = [name for name in layers if name not in names]
        if missing:
            raise PatternError(f"Layer names must name Linear or Conv2d layers, "
                               f"not {missing[0]!r}")
    return [(name, module) for name, module in prunable
            if (layers is None or name in layers) and name not in exclude]


# Masks on modules -------------------------------------------------------------------------------

def _apply_mask(module, mask):
    """Set (or replace) the layer's ``weight_mask`` to ``mask`` (any shape holding the
    weight's entries in torch order)."""
    weight = _dense_weight(module)
    mask = torch.as_tensor(np.ascontiguousarray(mask), dtype=weight.dtype,
                           device=weight.device).reshape(weight.shape)
    if hasattr(module, "weight_mask"):
        # Replace rather than compose (torch's PruningContainer would only ever shrink the
        # mask); replacing lets pruned weights grow back during scheduled training.
        with torch.no_grad():
            module.weight_mask.copy_(mask)
            module.weight = module.weight_orig * module.weight_mask
    else:
        torch_prune.custom_from_mask(module, "weight", mask)


def pruning_layout(module, lanes, input_view=None):
    """The GEMM view a layer is pruned in: the one the compiler runs it in.

    * A non-grouped Conv2d that reads the model's input (``input_view == "im2col"``) with
      fewer channels than V, but at least V weights per output (the first layer of an
      image or audio net) runs on an im2col'd input (DESIGN §2.1): a 1×1 convolution over
      ``kh·kw·C`` channels, column ``tap·C + c`` in bank ``column mod V`` — the view with
      unpadded channels. (Where the compiler sends that input as is instead, the mask is
      still valid, only packed with less structure.)
    * A Linear that reads a flattened (C, H, W) image (``input_view``) runs as a
      convolution over that image, stored HWC: columns ``(h·W + w)·Cp + c``.
    * Otherwise :func:`gemm_layout`.
    """
    if (isinstance(module, nn.Conv2d) and input_view == "im2col" and module.groups == 1
            and module.in_channels < lanes
            and module.in_channels * int(np.prod(module.kernel_size)) >= lanes):
        return GemmLayout(module.out_channels, module.in_channels, lanes,
                          tuple(module.kernel_size), pad_channels=False,
                          weight_shape=tuple(_dense_weight(module).shape))
    if isinstance(module, nn.Linear) and isinstance(input_view, tuple) and \
            int(np.prod(input_view[1:])) > 1:
        return gemm_layout(module, lanes, input_view=input_view)
    return gemm_layout(module, lanes)


def input_views(model, example_input):
    """``{layer name: (C, H, W)}`` of every Linear of ``model`` that reads a flattened image,
    and ``{layer name: "im2col"}`` of every Conv2d that reads the model's input, found by
    tracing it (torch.fx) on ``example_input`` with shape propagation."""
    from torch import fx
    from torch.fx.passes.shape_prop import ShapeProp
    try:
        traced = fx.symbolic_trace(model)
    except Exception as error:                    # noqa: BLE001 (fx raises many kinds)
        raise ShapeError(f"Model must trace with torch.fx to find the inputs of its Linear "
                         f"layers ({type(error).__name__}: {error}); prune without "
                         f"example_input") from None
    ShapeProp(traced).propagate(torch.as_tensor(example_input, dtype=torch.float32))
    modules = dict(traced.named_modules())
    flattens = {"flatten", "reshape", "view"}
    views = {}
    for node in traced.graph.nodes:
        if node.op == "call_module" and isinstance(modules.get(node.target), nn.Conv2d) \
                and isinstance(node.args[0], fx.Node) and node.args[0].op == "placeholder":
            views[node.target] = "im2col"
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.Linear):
            continue
        source = node.args[0]
        while isinstance(source, fx.Node) and (
                (source.op == "call_module" and isinstance(modules.get(source.target),
                                                            (nn.Flatten, nn.Identity,
                                                             nn.Dropout)))
                or (source.op in ("call_function", "call_method")
                    and getattr(source.target, "__name__", source.target) in flattens)):
            source = source.args[0]
        meta = source.meta.get("tensor_meta") if isinstance(source, fx.Node) else None
        if meta is not None and len(meta.shape) == 4:
            views[node.target] = tuple(int(v) for v in meta.shape[1:])
    return views


def _layer_mask(name, module, pattern, sparsity, lanes, per_row, options, input_view=None):
    """(torch-shaped keep mask, row order or None) of one layer, computed in its GEMM view."""
    layout = pruning_layout(module, lanes, input_view)
    conv = isinstance(module, nn.Conv2d)
    label = name or "weight"
    if pattern in ("gs-gather", "gs-scatter"):
        _check_gs_shape(name, layout.shape[1], lanes)
    if pattern == "1xN" and conv and layout.groups > 1 and layout.out_per_group % lanes:
        raise UnsupportedError(
            f"Layer {label}: a 1xN block is {lanes} consecutive output channels reading the "
            f"same input channel, so a grouped convolution needs a multiple of {lanes} output "
            f"channels per group, not {layout.out_per_group} (groups={layout.groups}); prune "
            f"it with gs-gather, gs-scatter or unstructured, or exclude it")
    view = layout.to_gemm(_dense_weight(module).detach().cpu().numpy().astype(np.float32))
    allowed = layout.candidates() if conv else None
    row_order = None
    try:
        if pattern == "unstructured":
            mask = unstructured_mask(view, sparsity, allowed=allowed)
        elif pattern == "1xN":
            mask = one_by_n_mask(view, sparsity, lanes, taps=layout.taps if conv else None,
                                 allowed=allowed, alpha=options.get("alpha", 0.5),
                                 tau=options.get("tau", 0.0), seed=options.get("seed", 0))
        else:
            mask, row_order = gs_mask(view, sparsity, lanes, per_row,
                                      scatter=pattern == "gs-scatter", allowed=allowed)
            if pattern == "gs-gather":
                row_order = None
    except ShapeError as error:
        message = str(error)
        regroup = pattern == "gs-gather" and conv and layout.groups > 1
        hint = ("; gs-scatter may group its rows differently" if regroup else "") + \
            "; exclude the layer or choose another pattern"
        raise ShapeError(f"Layer {label}: {message[:1].lower()}{message[1:]}{hint}") from None
    return layout.to_weight(mask), row_order


# Restoring --------------------------------------------------------------------------------------

def restore(model, state_dict):
    """Load a pruned model's ``state_dict`` into a fresh, unpruned instance of its class.

    Registers the masks and metadata buffers the state_dict names, then loads it strictly.
    Returns ``model``.
    """
    for name, module in prunable_layers(model):
        prefix = f"{name}." if name else ""
        if f"{prefix}weight_mask" in state_dict and not hasattr(module, "weight_mask"):
            torch_prune.custom_from_mask(module, "weight", torch.ones_like(module.weight))
        for buffer in ("gsaccel_pattern", "gsaccel_row_order", "smartdeal_C", "smartdeal_B"):
            if f"{prefix}{buffer}" in state_dict:
                _set_buffer(module, buffer, state_dict[f"{prefix}{buffer}"].clone())
    model.load_state_dict(state_dict)
    for _, module in prunable_layers(model):
        if hasattr(module, "weight_mask"):
            with torch.no_grad():
                module.weight = module.weight_orig * module.weight_mask
    return model


# Entry points ----------------------------------------------------------------------------------

def prune(model, pattern, sparsity, lanes=8, per_row=1, *, layers=None, exclude=(),
          example_input=None, skipped=None, **options):
    """Prune every Linear/Conv2d layer of ``model`` to ``sparsity`` with ``pattern``.

    Conv2d layers (any groups: depthwise and channel multipliers included) are pruned in
    their GEMM view (:func:`gemm_layout`): the bank of a weight is its input channel mod V,
    padding channels and other groups' channels are never kept, and ``sparsity`` counts the
    layer's weights. With ``example_input``, a first convolution that reads fewer channels
    than V is pruned in its im2col'd view and a Linear after a Flatten of an image in the
    image's HWC view (:func:`pruning_layout`): the views the compiler runs them in, so
    their GS patterns survive compilation.

    Parameters
    ----------
    model : nn.Module
        A model or a single layer; pruned in place and returned.
    pattern : str
        One of :data:`PRUNE_PATTERNS`.
    sparsity : float in [0, 1)
        Fraction of each layer's weights to remove (1xN: ``floor(sparsity · channels)``
        blocks per row group, channels per group for a grouped conv; smartdeal: the fraction
        of zeros in C').
    lanes, per_row : int
        V (2, 4, 8 or 16) and e (divides V; 1 for 1xN).
    layers : sequence of str, optional
        Names (as in ``model.named_modules()``) of the layers to prune; default all.
    exclude : sequence of str
        Names of layers to leave dense.
    example_input : tensor, optional
        A batch the model runs on: traced (torch.fx) to find the Linear layers that read a
        flattened image (:func:`input_views`).
    skipped : list, optional
        Given, a grouped convolution (groups > 1) that cannot take the pattern is left dense
        instead of raising, and ``(name, reason)`` is appended to it.
    **options
        1xN: ``alpha`` (redundancy weight, 0.5), ``tau`` (sampling temperature, 0 = top-k),
        ``seed``. smartdeal: ``c_pattern`` (``1xN``, ``gs-gather``, ``gs-scatter``,
        ``unstructured``), ``iterations`` (ALS rounds, 12).

    Raises
    ------
    PatternError
        Unknown pattern or option, sparsity outside [0, 1), bad lanes or e, a name in
        ``layers`` or ``exclude`` that is not a Linear or Conv2d layer of the model.
    ShapeError
        A layer has fewer input columns than lanes (GS patterns), or a conv's candidates
        cannot fill a GS row group without padding (e.g. fewer input channels than V, e > 1
        on a depthwise conv, gs-gather on a depthwise conv with a channel multiplier).
    UnsupportedError
        1xN on a grouped convolution whose groups do not hold a multiple of V output
        channels (depthwise, for one).

    Every mask is computed before any layer changes, so an error leaves the model untouched.
    """
    _check_arguments(pattern, sparsity, lanes, per_row, options)
    selected = _select(model, layers, exclude)
    if pattern == "smartdeal":
        c_pattern = options.get("c_pattern", "1xN")
        for name, module in selected:
            if c_pattern in ("gs-gather", "gs-scatter"):
                _check_gs_shape(name, 3 * -(-gemm_view(module).shape[1] // 3), lanes)
        for name, module in selected:
            error = _smartdeal_layer(module, sparsity, lanes, per_row, c_pattern,
                                     options.get("iterations", 12))
            logger.info("%s: smartdeal, relative error %.4f", name or "layer", error)
        return model
    views = {} if example_input is None else input_views(model, example_input)
    masks = []
    for name, module in list(selected):
        try:
            masks.append(_layer_mask(name, module, pattern, sparsity, lanes, per_row, options,
                                     views.get(name)))
        except (ShapeError, UnsupportedError) as error:
            grouped = isinstance(module, nn.Conv2d) and module.groups > 1
            if skipped is None or not grouped:
                raise
            skipped.append((name, str(error)))
            selected.remove((name, module))
            logger.info("%s left dense: %s", name, error)
    for (name, module), (mask, row_order) in zip(selected, masks):
        _apply_mask(module, mask)
        _set_info(module, PatternInfo(pattern, lanes, per_row), row_order)
        logger.info("%s: %s, sparsity %.4f", name or "layer", pattern, 1 - mask.mean())
    return model


def rearrange_rows(model, sparsity, lanes=8, *, layers=None, exclude=(), iterations=10):
    """Reorder the hidden units of ``model`` (in place) so that 1×N pruning to ``sparsity``
    loses less, without changing what the model computes.

    For every layer to be pruned (``layers``/``exclude`` as for :func:`prune`) whose output
    only feeds, through channel-wise modules (activations, dropout, pooling, BatchNorm) and
    at most one Flatten, the next Linear or Conv2d of an ``nn.Sequential``: its output rows
    (Linear) or channels (Conv2d) are put in the order of :func:`row_groups` on its blocks'
    |weights| (each row normalised; a conv's block sums its taps), keeping
    ``channels − floor(sparsity · channels)`` per row group as :func:`one_by_n_mask` will;
    the BatchNorm in between and the reading layer's input columns follow. The model's last
    layer (its outputs are the model's) and grouped convolutions keep their order.

    Call it on the dense (or warmed-up) model right before 1×N pruning starts: the order is
    chosen from the weights it sees.

    Parameters
    ----------
    model : nn.Sequential
    sparsity : float in [0, 1)
        The 1×N sparsity that will be applied.
    lanes : int
        V (N of the blocks).
    layers, exclude : sequence of str
        As for :func:`prune`: only the rows of layers that will be pruned are reordered.
    iterations : int
        Reassignment rounds of :func:`row_groups`.

    Returns
    -------
    list of str
        The names of the layers whose rows were reordered.

    Raises
    ------
    UnsupportedError
        ``model`` is not an ``nn.Sequential`` (the reading layer of an output is found from
        the order of its children).
    PatternError
        A layer involved is pruned already (rearrange before pruning), or a bad sparsity.
    """
    _check_arguments("1xN", sparsity, lanes, 1, {})
    selected = {name for name, _ in _select(model, layers, exclude)}
    return _rearrange(model, selected, sparsity, lanes, iterations)


def cubic_schedule(step, sparsity, t0, t1):
    """SUBP's schedule: ``sparsity · clip(((step − t0) / (t1 − t0))**3, 0, 1)``."""
    if t1 <= t0:
        return float(sparsity) if step >= t1 else 0.0
    fraction = min(max((step - t0) / (t1 - t0), 0.0), 1.0)
    return float(sparsity) * fraction ** 3


class PruningScheduler:
    """Prune during training: ``step()`` after each iteration or epoch re-prunes the model to
    ``cubic_schedule(t, sparsity, t0, t1)``.

    Masks are recomputed from ``weight_orig`` each step and replace the previous ones, so
    pruned weights can come back. For 1xN, ``tau`` (default 0.05) samples the kept blocks
    (importance-sampling regrow) until ``t1``; from ``t1`` on the choice is deterministic.
    SmartDeal steps re-fit C and B (warm-started) to the current weights.

    Parameters
    ----------
    model : nn.Module
    pattern, sparsity, lanes, per_row, **options
        As for :func:`prune`.
    t0, t1 : int
        Step at which pruning starts, and at which it reaches ``sparsity``.

    Attributes
    ----------
    t : int
        Steps taken.
    current_sparsity : float
        The schedule's value at the last step.
    """

    def __init__(self, model, pattern, sparsity, lanes=8, per_row=1, *, t0=0, t1,
                 layers=None, exclude=(), **options):
        if pattern == "1xN":
            options.setdefault("tau", 0.05)
        _check_arguments(pattern, sparsity, lanes, per_row, options)
        if not isinstance(t0, int) or not isinstance(t1, int) or t1 < t0 or t0 < 0:
            raise PatternError(f"Schedule steps must satisfy 0 <= t0 <= t1, not t0={t0!r}, "
                               f"t1={t1!r}")
        _select(model, layers, exclude)
        self.model = model
        self.pattern, self.sparsity, self.lanes, self.per_row = pattern, sparsity, lanes, per_row
        self.t0, self.t1 = t0, t1
        self.layers, self.exclude, self.options = layers, exclude, options
        self.t = 0
        self.current_sparsity = 0.0

    def step(self, *_):
        """Advance one step and re-prune; returns the sparsity now applied."""
        self.t += 1
        self.current_sparsity = cubic_schedule(self.t, self.sparsity, self.t0, self.t1)
        options = dict(self.options)
        if self.pattern == "1xN":
            options["seed"] = options.get("seed", 0) + self.t
            if self.t >= self.t1:
                options["tau"] = 0.0
        prune(self.model, self.pattern, self.current_sparsity, self.lanes, self.per_row,
              layers=self.layers, exclude=self.exclude, **options)
        return self.current_sparsity
