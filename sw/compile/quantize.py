"""Weight quantisation and packing: the integer rules every compiled layer follows.

Used by :mod:`.native` on each layer's kernel in the GEMM view (rows = output channels,
columns ``tap·Cp + c``), and by ``gsaccel pack`` on a saved model:

* a weight scale is a power of two ``2**s`` per layer; each weight becomes the nearest signed
  power of two (``pow2``: exponent 0..15, rounded at 1.5·2**k) or an int8 of
  ``weight / 2**s``; a kept (unmasked) weight never rounds to zero, so the pruning pattern
  survives exactly;
* the weight scale is the finest one whose worst-case accumulator (every input at ±128, plus
  the bias) stays inside half of ``acc_width`` bits, so the accumulator never wraps;
* error-feedback rounding (GPTQ/OBQ) rounds column by column on calibration inputs so that
  ``W·x``, not each weight, stays close;
* packing keeps the pruner's pattern (and e) when the weights still follow it, else the
  first pattern the mask satisfies, else ``unstructured`` with the e of fewest groups.
"""

import logging
import math
from dataclasses import dataclass

import numpy as np

from ...hw.config import POW2_EXP_MAX
from ..errors import PatternError, UnsupportedError
from ..format import GSMatrix, pow2_exponent, pow2_round

__all__ = ["FloatLayer", "quantize_weights", "masked_gemm_view", "add_weights", "avgpool_scale",
           "add_scale"]

logger = logging.getLogger(__name__)


@dataclass
class FloatLayer:
    """One layer's float weights in the GEMM view, before quantisation.

    Attributes
    ----------
    name : str
        For messages.
    weight : ndarray of float64, (rows, cols)
    bias : ndarray of float64, (rows,)
    mask : ndarray of bool or None
        The kept weights (None: every weight kept).
    pattern : PatternInfo or None
        How the pruner pruned the layer (``gsaccel.sw.prune.pattern_info``).
    row_order : ndarray or None
        The pruner's gs-scatter row order.
    """

    name: str
    weight: np.ndarray
    bias: np.ndarray
    mask: np.ndarray = None
    pattern: object = None
    row_order: np.ndarray = None


def masked_gemm_view(module, lanes):
    """``(weight, kept)`` of a Linear/Conv2d in the hardware's GEMM view for ``lanes`` banks
    (``gsaccel.sw.prune.gemm_layout(module, lanes).to_gemm(weight * mask)``: a conv's rows are
    its output channels, its columns ``tap·Cp + c``; a Linear's view is its weight), float64.
    ``kept`` is the pruning mask in that view; for an unpruned layer every weight of its own
    (never a structural zero: a padding channel, another group's channel)."""
    from ..prune import gemm_layout
    layout = gemm_layout(module, lanes)
    dense = module.weight_orig if hasattr(module, "weight_orig") else module.weight
    dense = layout.to_gemm(dense.detach().cpu().double().numpy())
    if hasattr(module, "weight_mask"):
        kept = layout.to_gemm(module.weight_mask.detach().cpu().numpy() != 0)
    else:
        kept = layout.candidates()
    return dense * kept, kept


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
    """``(s_w, q, b)``: the finest weight scale whose worst-case accumulator fits
    ``acc_width`` bits, the weights and the bias quantised with it."""
    weight, bias = layer.weight, layer.bias
    kept = np.ones(weight.shape, bool) if layer.mask is None else layer.mask
    max_w = float(np.abs(weight[kept]).max()) if kept.any() else 0.0
    s = 0 if max_w == 0 else _scale_log2(max_w, 2 ** POW2_EXP_MAX if encoding == "pow2"
                                         else 127)
    limit = 1 << (cfg.acc_width - 1)
    while True:
        q = quantize_weights(weight, layer.mask, s, encoding)
        b = np.floor(bias / 2.0 ** (s_x + s) + 0.5).astype(np.int64)
        worst = int((np.abs(q).sum(axis=1) * 128 + np.abs(b)).max(initial=0))
        if worst < limit // 2:      # headroom for the rounding add and the bias sign
            return s, q, b
        s += 1


def _error_feedback_round(layer, q_plain, x, s_x, s_w, encoding, cfg):
    """Round the weights column by column, pushing each column's rounding error onto the
    columns not yet rounded, weighted by the calibration inputs' second moments (the
    GPTQ/OBQ update), so that ``W·x`` rather than each weight is kept close.

    ``x`` (samples × columns) is the layer's input as the device sees it (dequantised int8),
    so upstream quantisation error is compensated as well. Pruned weights stay exactly zero
    and kept ones never round to zero. Falls back to ``q_plain`` if the result would break
    the accumulator bound.
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
    if worst.max(initial=0) >= (1 << (cfg.acc_width - 1)) // 2:
        return q_plain
    return q


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
    matrix = _best_pattern(layer, q, cfg)
    if info is not None and info.pattern in ("gs-gather", "gs-scatter", "1xN") \
            and info.lanes != lanes:
        # The pattern was solved for another V: its banks are not this core's.
        logger.warning("layer %s was pruned %s for V = %d, the core has V = %d: packed %s at "
                       "%.1f%% lane utilisation; prune it with lanes=%d", layer.name,
                       info.pattern, info.lanes, lanes, matrix.pattern,
                       100 * matrix.stats()["utilisation"], lanes)
    return matrix


def _best_pattern(layer, q, cfg):
    """The first pattern of :func:`_pack`'s order that ``layer``'s mask satisfies."""
    lanes, encoding = cfg.lanes, cfg.encoding
    if layer.mask is None or layer.mask.all():
        return _fewest_groups(q, "dense", cfg)
    for e in _divisors(lanes):
        try:
            return GSMatrix.from_dense(q, "gs-gather", lanes, e, encoding)
        except PatternError:
            pass                    # the mask is not gs-gather at this e: try the next
    try:
        return GSMatrix.from_dense(q, "1xN", lanes, 1, encoding)
    except PatternError:
        pass                        # nor 1xN: pack it unstructured
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


# Pooling and additions: their scales and weights (shared with quantisation-aware training) ----

def avgpool_scale(float_value, s_x, k):
    """Output scale of an average pool shifting by ``k``: fits the float values, within the
    shifts [0, 31] the requantiser has."""
    s_y = max(_scale_log2(float(np.abs(float_value).max())), s_x - k)
    return min(s_y, s_x - k + 31)


def add_scale(float_value, s_acc):
    """Output scale of an addition accumulated at ``2**s_acc``."""
    s_y = _scale_log2(float(np.abs(float_value).max()))
    return min(max(s_y, s_acc), s_acc + 31)


def add_weights(op, scales, encoding):
    """Integer weights ``alpha_i · 2**(s_i − s_acc)`` aligning the operands' scales, and
    ``s_acc``: the coarser-aligned ``min(s_a, s_b)``, made finer only when an ``alpha``
    below 1 (or, with int8 weights, a non-integer one) needs it."""
    alphas = np.asarray(op.scales, dtype=np.float64)
    s_acc = min(scales)

    def ideal(s):
        return alphas * 2.0 ** (np.asarray(scales) - s)

    nonzero = np.abs(ideal(s_acc))[alphas != 0]
    if nonzero.size and nonzero.min() < 1:
        s_acc -= math.ceil(-math.log2(nonzero.min()))
    if encoding == "int8":
        while not np.array_equal(ideal(s_acc), np.round(ideal(s_acc))) and \
                2 * np.abs(ideal(s_acc)).max() <= 127:
            s_acc -= 1          # a non-integer alpha: more precision, still in int8
        target = ideal(s_acc)
        w = np.sign(target) * np.floor(np.abs(target) + 0.5)
        fits = np.abs(w).max() <= 127
        limit = "int8 weights are at most 127 (scales at most 2**6 apart)"
    else:
        target = ideal(s_acc)
        w = np.where(target == 0, 0, pow2_round(target, exp_min=-64, exp_max=64))
        fits = np.abs(w).max() <= 2 ** POW2_EXP_MAX
        limit = f"pow2 weights are 2**0 .. 2**{POW2_EXP_MAX}"
    if not fits:
        raise UnsupportedError(
            f"Addition {op.name!r}: operand scales 2**{scales[0]} and 2**{scales[1]} "
            f"(weights {tuple(op.scales)}) cannot be aligned with integer weights: "
            f"{limit}; calibrate with an input batch where both branches have similar "
            f"ranges, or add a BatchNorm to the smaller branch")
    if not np.allclose(w, target):
        logger.warning("addition %s: weights %s rounded to %s", op.name, target.tolist(),
                       w.tolist())
    return w.astype(np.int64), s_acc
