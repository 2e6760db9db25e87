"""Pattern-aware pruning of torch models for the gather/scatter core (DESIGN §1).

One entry point, :func:`prune`, prunes every ``nn.Linear`` and ``nn.Conv2d`` of a model to one
of :data:`PRUNE_PATTERNS`, following ``torch.nn.utils.prune`` conventions: the weight becomes
``weight_orig * weight_mask`` (a buffer), ``prune.remove`` makes it permanent, and masks live
in the ``state_dict``. :class:`PruningScheduler` prunes inside a training loop with the cubic
schedule of SUBP. Every pruned layer carries its pattern metadata in a small buffer
(``gsaccel_pattern``; read it with :func:`pattern_info`) so that the compiler knows how to pack it.

Layers are pruned in their GEMM view: ``weight.reshape(out_channels, -1)`` (for a Conv2d the
columns are ordered (in channel, kernel row, kernel column), as ``torch`` stores them).

>>> import torch
>>> layer = torch.nn.Linear(32, 16)
>>> _ = prune(layer, pattern="gs-gather", sparsity=0.75, lanes=8)
>>> pattern_info(layer)
PatternInfo(pattern='gs-gather', lanes=8, per_row=1, c_pattern=None)
>>> float((layer.weight == 0).float().mean())
0.75
"""

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from ..errors import PatternError, ShapeError, UnsupportedError
from ..format import pow2_round

__all__ = [
    "PRUNE_PATTERNS", "PatternInfo", "prune", "PruningScheduler", "cubic_schedule",
    "pattern_info", "prunable_layers", "gemm_view", "restore", "gs_mask", "one_by_n_mask",
    "unstructured_mask", "block_redundancy_scores", "pow2_quantize", "smartdeal_decompose",
    "smartdeal_factors", "smartdeal_cprime", "smartdeal_trainable", "smartdeal_freeze",
    "SMARTDEAL_EXP_MIN", "SMARTDEAL_EXP_MAX",
]

logger = logging.getLogger(__name__)

#: Patterns :func:`prune` produces. ``smartdeal`` is W ≈ C·B (a BASIS layer then C' on the
#: engine); the others are masks that pack with :meth:`gsaccel.sw.format.GSMatrix.from_dense`
#: under the same pattern name.
PRUNE_PATTERNS = ("gs-gather", "gs-scatter", "1xN", "smartdeal", "unstructured")

# Codes in the ``gsaccel_pattern`` buffer (index in this tuple; -1 = none).
_PATTERN_CODES = ("gs-gather", "gs-scatter", "1xN", "unstructured", "dense", "smartdeal")

#: Exponent range of SmartDeal's C: nonzero entries are ±2**k, SMARTDEAL_EXP_MIN <= k <=
#: SMARTDEAL_EXP_MAX. ``C * 2**-SMARTDEAL_EXP_MIN`` is then an integer power-of-two matrix with
#: exponents 0..15, the core's 4-bit pow2 code (``hw.config.POW2_EXP_MAX``).
SMARTDEAL_EXP_MIN = -10
SMARTDEAL_EXP_MAX = 5

_OPTIONS = {
    "gs-gather": set(),
    "gs-scatter": set(),
    "1xN": {"alpha", "tau", "seed"},
    "smartdeal": {"c_pattern", "iterations"},
    "unstructured": set(),
}
_C_PATTERNS = ("1xN", "gs-gather", "gs-scatter", "unstructured")


@dataclass(frozen=True)
class PatternInfo:
    """What the compiler needs to pack a pruned layer.

    Attributes
    ----------
    pattern : str
        One of :data:`PRUNE_PATTERNS`.
    lanes : int
        V the layer was pruned for.
    per_row : int
        e (weights per row in a group); 1 for 1xN.
    c_pattern : str or None
        SmartDeal only: the pattern of C' (pack C' with ``GSMatrix.from_dense`` under it).
    """

    pattern: str
    lanes: int
    per_row: int
    c_pattern: str = None


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


def _check_gs_shape(name, cols, lanes):
    if cols < lanes:
        raise ShapeError(f"Layer {name or 'weight'} has {cols} input columns, fewer than the "
                         f"{lanes} lanes; a GS pattern needs at least one column per bank")


# GEMM view and masks on modules ----------------------------------------------------------------

def prunable_layers(model):
    """``(name, module)`` of every ``nn.Linear`` and ``nn.Conv2d`` in ``model`` (``""`` for the
    model itself)."""
    return [(name, module) for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv2d))]


def _dense_weight(module):
    """The weight before masking (``weight_orig`` of a pruned module)."""
    return module.weight_orig if hasattr(module, "weight_orig") else module.weight


def gemm_view(module):
    """The layer's weight as a 2-D numpy matrix (out × in·kh·kw), before any mask."""
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        raise UnsupportedError(f"Grouped convolutions cannot be pruned, groups must be 1, "
                               f"not {module.groups}")
    weight = _dense_weight(module).detach()
    return weight.reshape(weight.shape[0], -1).cpu().numpy().astype(np.float32)


def _apply_mask(module, mask2d):
    """Set (or replace) the layer's ``weight_mask`` to ``mask2d`` in its GEMM view."""
    weight = _dense_weight(module)
    mask = torch.as_tensor(np.ascontiguousarray(mask2d), dtype=weight.dtype,
                           device=weight.device).reshape(weight.shape)
    if hasattr(module, "weight_mask"):
        # Replace rather than compose (torch's PruningContainer would only ever shrink the
        # mask); replacing lets pruned weights grow back during scheduled training.
        with torch.no_grad():
            module.weight_mask.copy_(mask)
            module.weight = module.weight_orig * module.weight_mask
    else:
        torch_prune.custom_from_mask(module, "weight", mask)


def _set_info(module, info, row_order=None):
    code = [_PATTERN_CODES.index(info.pattern), info.lanes, info.per_row,
            -1 if info.c_pattern is None else _PATTERN_CODES.index(info.c_pattern)]
    device = _dense_weight(module).device
    _set_buffer(module, "gsaccel_pattern", torch.tensor(code, dtype=torch.int64, device=device))
    if row_order is not None:
        _set_buffer(module, "gsaccel_row_order",
                    torch.as_tensor(row_order, dtype=torch.int64, device=device))
    elif "gsaccel_row_order" in module._buffers:
        del module._buffers["gsaccel_row_order"]


def _set_buffer(module, name, value):
    if name in module._buffers:
        module._buffers[name] = value
    else:
        module.register_buffer(name, value)


def pattern_info(module):
    """The :class:`PatternInfo` of a layer pruned by :func:`prune`, or ``None``.

    It is read from the ``gsaccel_pattern`` buffer (int64 ``[pattern, lanes, per_row,
    c_pattern]``, codes = index in ``("gs-gather", "gs-scatter", "1xN", "unstructured",
    "dense", "smartdeal")``, -1 = none), which is saved with the model and its state_dict. A
    gs-scatter layer also has ``gsaccel_row_order`` (its row groups, see :func:`gs_mask`).
    """
    code = getattr(module, "gsaccel_pattern", None)
    if code is None:
        return None
    pattern, lanes, per_row, c_pattern = (int(v) for v in code.tolist())
    return PatternInfo(_PATTERN_CODES[pattern], lanes, per_row,
                       None if c_pattern < 0 else _PATTERN_CODES[c_pattern])


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


# Unstructured -----------------------------------------------------------------------------------

def _keep_count(size, sparsity):
    return int(round((1.0 - float(sparsity)) * size))


def unstructured_mask(weights, sparsity):
    """Keep exactly ``round((1 - sparsity) * size)`` largest-magnitude weights."""
    magnitude = np.abs(np.asarray(weights, dtype=np.float32)).ravel()
    keep = _keep_count(magnitude.size, sparsity)
    mask = np.zeros(magnitude.size, dtype=bool)
    if keep:
        mask[np.argpartition(-magnitude, keep - 1)[:keep]] = True
    return mask.reshape(np.shape(weights))


# GS gather / scatter ---------------------------------------------------------------------------

def gs_mask(weights, sparsity, lanes, per_row=1, *, scatter=False):
    """A GS-gather or GS-scatter keep mask (DESIGN §1.1).

    The layer keeps ``round((1 - sparsity) * size)`` weights up to one row group's unit: a
    global magnitude threshold gives each row group its natural kept count, rounded to a
    whole number P of groups (largest remainder), so row groups keep different counts. Inside
    a row group of V/e rows every row keeps e·P weights and every bank (``column % V``)
    receives at most P of them (exactly P unless the row group is the partial last one); the
    kept weights are chosen greedily by magnitude under these caps, and augmenting paths fix
    the rare row left short. P is capped so that the ragged last bank never forces padding.

    Parameters
    ----------
    weights : array (rows, cols)
    sparsity : float in [0, 1)
    lanes, per_row : int
        V and e.
    scatter : bool
        GS-scatter: sort rows by their natural kept count (descending, stable) and group
        consecutive runs of V/e sorted rows.

    Returns
    -------
    mask : ndarray (rows, cols) bool
    row_order : ndarray (rows,) int64
        Rows listed row group by row group (``arange`` for gather); pass it to
        ``GSMatrix.from_dense(..., row_order=row_order)`` for gs-scatter.
    """
    magnitude = np.abs(np.asarray(weights, dtype=np.float32))
    rows, cols = magnitude.shape
    _check_gs_shape(None, cols, lanes)
    segments = lanes // per_row
    target = _keep_count(magnitude.size, sparsity)
    if target == 0:
        return np.zeros((rows, cols), dtype=bool), np.arange(rows)
    flat = magnitude.ravel()
    threshold = np.partition(flat, flat.size - target)[flat.size - target]
    natural_rows = (magnitude >= threshold).sum(axis=1)
    if scatter:
        order = np.argsort(-natural_rows, kind="stable")
    else:
        order = np.arange(rows)

    n_rg = -(-rows // segments)
    rg_size = np.full(n_rg, segments, dtype=np.int64)
    rg_size[-1] = rows - (n_rg - 1) * segments
    unit = rg_size * per_row
    bank_size = np.bincount(np.arange(cols) % lanes, minlength=lanes)
    # Full row groups fill every bank exactly P times, so P cannot exceed the rows × columns
    # of the smallest (ragged) bank, nor a row's columns / e.
    p_max = np.minimum(cols // per_row, rg_size * bank_size.min())
    sorted_natural = natural_rows[order]
    natural_rg = np.add.reduceat(sorted_natural, np.arange(0, rows, segments))
    groups = _allocate_units(natural_rg, unit, p_max, target)

    mask_sorted = np.zeros((rows, cols), dtype=bool)
    sorted_magnitude = magnitude[order]
    n_full = rows // segments
    if n_full:
        block = sorted_magnitude[:n_full * segments].reshape(n_full, segments, cols)
        mask_sorted[:n_full * segments] = _gs_row_groups(
            block, groups[:n_full], lanes, per_row).reshape(n_full * segments, cols)
    if n_full < n_rg:
        block = sorted_magnitude[n_full * segments:][None]
        mask_sorted[n_full * segments:] = _gs_row_groups(
            block, groups[n_full:], lanes, per_row)[0]
    mask = np.empty_like(mask_sorted)
    mask[order] = mask_sorted
    return mask, order


def _allocate_units(natural, unit, p_max, target):
    """Groups P per row group: natural kept count / unit, rounded by largest remainder so that
    the total is as close to ``target`` as the units allow."""
    groups = np.minimum(natural // unit, p_max)
    # An empty row group still costs one group of padding, so every row group keeps at least
    # one group when the target leaves room for that.
    floor = np.minimum(p_max, 1) if target >= int((np.minimum(p_max, 1) * unit).sum()) \
        else np.zeros_like(p_max)
    groups = np.maximum(groups, floor)
    for _ in range(8):
        deficit = target - int((groups * unit).sum())
        if deficit == 0:
            break
        remainder = natural / unit - groups
        if deficit > 0:
            candidates = np.flatnonzero(groups < p_max)
            candidates = candidates[np.argsort(-remainder[candidates], kind="stable")]
        else:
            candidates = np.flatnonzero(groups > floor)
            candidates = candidates[np.argsort(remainder[candidates], kind="stable")]
        if not candidates.size:
            break
        reach = np.concatenate([[0], np.cumsum(unit[candidates])])
        take = int(np.argmin(np.abs(abs(deficit) - reach)))
        if take == 0:
            break
        groups[candidates[:take]] += 1 if deficit > 0 else -1
    return groups


def _gs_row_groups(block, groups, lanes, per_row):
    """Masks of G row groups of equal height: ``block`` (G, r, cols) magnitudes, ``groups``
    (G,) P each. Greedy over each row group's entries by descending magnitude, vectorised over
    the row groups, then augmenting-path repair of any row left short."""
    n_groups, height, cols = block.shape
    need_row = per_row * groups
    goal = height * need_row
    candidates = int(min(height * cols, 2 * goal.max() + 4 * lanes)) if goal.max() else 0
    mask = np.zeros((n_groups, height * cols), dtype=bool)
    if candidates:
        flat = torch.from_numpy(np.ascontiguousarray(block.reshape(n_groups, height * cols)))
        order = torch.topk(flat, candidates, dim=1).indices.numpy()
        row_of = order // cols
        bank_of = (order % cols) % lanes
        row_count = np.zeros((n_groups, height), dtype=np.int64)
        bank_count = np.zeros((n_groups, lanes), dtype=np.int64)
        kept = np.zeros(n_groups, dtype=np.int64)
        accepted = np.zeros((n_groups, candidates), dtype=bool)
        active = np.flatnonzero(goal > 0)
        for step in range(candidates):
            if step % 128 == 0:
                active = active[kept[active] < goal[active]]
                if not active.size:
                    break
            r, b = row_of[active, step], bank_of[active, step]
            ok = (row_count[active, r] < need_row[active]) & \
                 (bank_count[active, b] < groups[active])
            took = active[ok]
            row_count[took, r[ok]] += 1
            bank_count[took, b[ok]] += 1
            kept[took] += 1
            accepted[took, step] = True
        g_idx, s_idx = np.nonzero(accepted)
        mask[g_idx, order[g_idx, s_idx]] = True
    mask = mask.reshape(n_groups, height, cols)
    for g in np.flatnonzero(mask.sum(axis=(1, 2)) < goal):
        p = int(groups[g])
        while True:
            repaired = _repair_row_group(block[g], mask[g], p, lanes, per_row)
            if repaired is not None:
                mask[g] = repaired
                break
            # No augmenting path: this P cannot be met without padding; keep one group less.
            logger.debug("row group %d: P=%d infeasible, using %d", g, p, p - 1)
            p -= 1
            if p == 0:
                mask[g] = False
                break
            # The smaller P is solved (and, if need be, reduced further) from scratch.
            mask[g] = _gs_row_groups(block[g][None], np.array([p]), lanes, per_row)[0]
            break
    return mask


def _repair_row_group(magnitude, mask, groups, lanes, per_row):
    """Complete a greedy row-group mask by augmenting paths row → bank → row → … → bank with
    room. Returns the new mask, or None when some row cannot be completed."""
    mask = mask.copy()
    height, cols = magnitude.shape
    bank_of = np.arange(cols) % lanes
    need = per_row * groups
    while True:
        short = np.flatnonzero(mask.sum(axis=1) < need)
        if not short.size:
            return mask
        load = np.bincount(bank_of[np.nonzero(mask)[1]], minlength=lanes)
        free = np.zeros((height, lanes), dtype=np.int64)     # unkept entries per (row, bank)
        have = np.zeros((height, lanes), dtype=np.int64)     # kept entries per (row, bank)
        for row in range(height):
            have[row] = np.bincount(bank_of[mask[row]], minlength=lanes)
            free[row] = np.bincount(bank_of[~mask[row]], minlength=lanes)
        # Breadth-first search from the short row over rows and banks.
        start = int(short[0])
        bank_parent = {}                 # bank -> row that reaches it
        row_parent = {start: None}       # row -> bank it was reached through
        frontier, end = [start], None
        while frontier and end is None:
            next_rows = []
            for row in frontier:
                for bank in np.flatnonzero(free[row] > 0):
                    bank = int(bank)
                    if bank in bank_parent:
                        continue
                    bank_parent[bank] = row
                    if load[bank] < groups:
                        end = bank
                        break
                    for other in np.flatnonzero(have[:, bank] > 0):
                        other = int(other)
                        if other not in row_parent:
                            row_parent[other] = bank
                            next_rows.append(other)
                if end is not None:
                    break
            frontier = next_rows
        if end is None:
            return None
        bank = end
        while bank is not None:
            row = bank_parent[bank]
            # Row takes its largest unkept weight in this bank ...
            options = np.flatnonzero((bank_of == bank) & ~mask[row])
            mask[row, options[np.argmax(magnitude[row, options])]] = True
            # ... and, unless it is the short row, gives up its smallest kept weight in the
            # bank it was reached through.
            bank = row_parent[row]
            if bank is not None:
                options = np.flatnonzero((bank_of == bank) & mask[row])
                mask[row, options[np.argmin(magnitude[row, options])]] = False


# 1×N (SUBP) -------------------------------------------------------------------------------------

def block_redundancy_scores(weights, lanes, kernel=1, *, alpha=0.5, max_reference=2048,
                            seed=0):
    """SUBP block angular redundancy score of every 1×N block.

    A block is N = ``lanes`` consecutive rows × the ``kernel`` columns of one input channel.
    Score = L1 norm / largest L1 norm in the layer − ``alpha`` · mean |cosine similarity| to
    the other blocks of the layer (a seeded sample of ``max_reference`` blocks stands in for
    "all other blocks" in layers with more blocks than that). Low score = prune first.

    Returns
    -------
    ndarray (row groups, input channels)
    """
    weights = np.asarray(weights, dtype=np.float64)
    rows, cols = weights.shape
    channels = cols // kernel
    n_rg = -(-rows // lanes)
    padded = np.zeros((n_rg * lanes, cols))
    padded[:rows] = weights
    blocks = padded.reshape(n_rg, lanes, channels, kernel).transpose(0, 2, 1, 3)
    blocks = blocks.reshape(n_rg * channels, lanes * kernel)
    l1 = np.abs(blocks).sum(axis=1)
    norm_l1 = l1 / l1.max() if l1.max() > 0 else l1
    lengths = np.linalg.norm(blocks, axis=1)
    unit = blocks / np.where(lengths > 0, lengths, 1.0)[:, None]
    n_blocks = unit.shape[0]
    if alpha == 0:
        redundancy = np.zeros(n_blocks)
    elif n_blocks <= max_reference:
        similarity = np.abs(unit @ unit.T)
        np.fill_diagonal(similarity, 0.0)
        redundancy = similarity.sum(axis=1) / max(n_blocks - 1, 1)
    else:
        reference = np.random.default_rng(seed).choice(n_blocks, max_reference, replace=False)
        redundancy = np.abs(unit @ unit[reference].T).mean(axis=1)
    return (norm_l1 - alpha * redundancy).reshape(n_rg, channels)


def one_by_n_mask(weights, sparsity, lanes, kernel=1, *, alpha=0.5, tau=0.0, seed=0):
    """A 1×N (SUBP) keep mask: each group of N = ``lanes`` consecutive rows prunes exactly
    ``floor(sparsity * channels)`` blocks (channels = cols / kernel), lowest score first.

    With ``tau > 0`` the kept blocks are drawn without replacement with probabilities
    softmax(score / tau) (Gumbel top-k, seeded), so pruned blocks can grow back.
    """
    weights = np.asarray(weights, dtype=np.float32)
    rows, cols = weights.shape
    channels = cols // kernel
    scores = block_redundancy_scores(weights, lanes, kernel, alpha=alpha, seed=seed)
    pruned = int(math.floor(sparsity * channels))
    if tau > 0:
        gumbel = np.random.default_rng(seed).gumbel(size=scores.shape)
        scores = scores / tau + gumbel
    # Ties resolved by channel index so that equal scores give a reproducible mask.
    order = np.argsort(-scores, axis=1, kind="stable")
    keep_blocks = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(keep_blocks, order[:, :channels - pruned], True, axis=1)
    mask = np.repeat(np.repeat(keep_blocks, lanes, axis=0)[:rows], kernel, axis=1)
    return mask


# SmartDeal -------------------------------------------------------------------------------------

def pow2_quantize(values, *, exp_min=SMARTDEAL_EXP_MIN, exp_max=SMARTDEAL_EXP_MAX,
                  zero_below=None):
    """Round to signed powers of two in the exponent domain: the one rule,
    :func:`gsaccel.sw.format.pow2_round` (docs/numerics.md), over SmartDeal's exponent range.

    |v| in [2**k, 2**(k+1)) rounds up to 2**(k+1) from the midpoint 1.5 · 2**k on; exponents
    are clipped to [exp_min, exp_max]. Entries with |v| < ``zero_below`` become 0 (default:
    none; exact zeros become +2**exp_min, so a kept entry is never lost). A torch tensor is
    rounded in torch (the straight-through rounding of :func:`smartdeal_trainable`), anything
    else as a float64 numpy array.
    """
    xp = torch if isinstance(values, torch.Tensor) else np
    return pow2_round(values, exp_min=exp_min, exp_max=exp_max, zero_below=zero_below, xp=xp)


def smartdeal_decompose(weights, sparsity, lanes, per_row=1, *, c_pattern="1xN",
                        iterations=12, basis=None):
    """Fit W̃ ≈ C·B (DESIGN §1.3) with a sparse power-of-two C.

    W (rows × cols) is zero-padded to cols3 = 3·ceil(cols/3) columns and reshaped row-major
    into W̃ (rows·G × 3), G = cols3/3: row ``r·G + g`` of W̃ is W[r, 3g:3g+3]. Alternating
    least squares: C = pow2(W̃·B⁻¹) on a support mask, then B = lstsq(C, W̃).

    The support is chosen on C' = C.reshape(rows, cols3) (the matrix the engine runs, see
    :func:`smartdeal_cprime`), by |C'[r, 3g+k]| · ‖B[k]‖, with ``c_pattern``: ``1xN``
    (default; rows r of a V-row group share zero positions, every group keeps the same count),
    ``gs-gather``, ``gs-scatter`` or ``unstructured``, at ``sparsity``.

    Returns
    -------
    c : ndarray (rows·G, 3) float64, entries 0 or ±2**k, k in [SMARTDEAL_EXP_MIN, SMARTDEAL_EXP_MAX]
    b : ndarray (3, 3) float64
    row_order : ndarray (rows,) — row groups of C' for gs-scatter (``arange`` otherwise)
    error : float — ‖W − C·B‖_F / ‖W‖_F on the unpadded columns
    """
    weights = np.asarray(weights, dtype=np.float64)
    rows, cols = weights.shape
    cols3 = 3 * -(-cols // 3)
    if c_pattern in ("gs-gather", "gs-scatter"):
        _check_gs_shape(None, cols3, lanes)
    padded = np.zeros((rows, cols3))
    padded[:, :cols] = weights
    target = padded.reshape(-1, 3)
    if basis is None:
        # Start from the principal axes, scaled so that C = U·sqrt(M) has entries of order 1.
        _, singular, vt = np.linalg.svd(target, full_matrices=False)
        scale = np.maximum(singular, singular.max() * 1e-3 + 1e-12) / math.sqrt(target.shape[0])
        basis = scale[:, None] * vt
    basis = np.asarray(basis, dtype=np.float64)
    order = np.arange(rows)
    best = None
    for _ in range(iterations):
        c_float = target @ np.linalg.pinv(basis)
        importance = (np.abs(c_float) * np.linalg.norm(basis, axis=1)[None, :])
        importance = importance.reshape(rows, cols3)
        if c_pattern == "1xN":
            support = one_by_n_mask(importance, sparsity, lanes, 1, alpha=0.0)
        elif c_pattern == "unstructured":
            support = unstructured_mask(importance, sparsity)
        else:
            support, order = gs_mask(importance, sparsity, lanes, per_row,
                                     scatter=c_pattern == "gs-scatter")
        c = pow2_quantize(c_float) * support.reshape(-1, 3)
        basis_new, *_ = np.linalg.lstsq(c, target, rcond=None)
        error = np.linalg.norm((c @ basis_new).reshape(rows, cols3)[:, :cols] - weights)
        if best is None or error < best[0]:
            best = (error, c, basis_new, order)
        basis = basis_new
    error, c, basis, order = best
    norm = np.linalg.norm(weights)
    return c, basis, order, float(error / norm) if norm > 0 else 0.0


def _smartdeal_layer(module, sparsity, lanes, per_row, c_pattern, iterations):
    weight = _dense_weight(module)
    current = gemm_view(module)
    previous = getattr(module, "smartdeal_B", None)
    c, basis, order, error = smartdeal_decompose(
        current, sparsity, lanes, per_row, c_pattern=c_pattern, iterations=iterations)
    if previous is not None:
        # Warm start from the last basis as well, and keep whichever fits better.
        c2, basis2, order2, error2 = smartdeal_decompose(
            current, sparsity, lanes, per_row, c_pattern=c_pattern, iterations=iterations,
            basis=previous.detach().cpu().numpy())
        if error2 < error:
            c, basis, order, error = c2, basis2, order2, error2
    rows, cols = current.shape
    approx = (c @ basis).reshape(rows, -1)[:, :cols]
    if hasattr(module, "weight_mask"):
        torch_prune.remove(module, "weight")
    with torch.no_grad():
        module.weight.copy_(torch.as_tensor(approx, dtype=weight.dtype).reshape(weight.shape))
    device = module.weight.device
    _set_buffer(module, "smartdeal_C", torch.as_tensor(c, dtype=torch.float64, device=device))
    _set_buffer(module, "smartdeal_B", torch.as_tensor(basis, dtype=torch.float64,
                                                       device=device))
    _set_info(module, PatternInfo("smartdeal", lanes, per_row, c_pattern),
              order if c_pattern == "gs-scatter" else None)
    module.smartdeal_error = error
    return error


def smartdeal_factors(module):
    """``(C, B)`` of a SmartDeal-pruned layer as float64 numpy arrays: C (rows·G × 3),
    entries 0 or ±2**k; B (3 × 3). The layer's weight (GEMM view) equals
    ``(C @ B).reshape(rows, 3 * G)[:, :cols]`` up to float32 rounding."""
    if getattr(module, "smartdeal_C", None) is None:
        raise PatternError("Layer must be pruned with pattern 'smartdeal' to have factors, "
                           f"not {pattern_info(module)!r}")
    return module.smartdeal_C.cpu().numpy(), module.smartdeal_B.cpu().numpy()


def smartdeal_cprime(module):
    """C' (rows × 3G), the matrix the engine runs after the BASIS layer:
    ``C'[r, 3g + k] = C[r·G + g, k]``, i.e. ``C.reshape(rows, 3 * G)``."""
    c, _ = smartdeal_factors(module)
    rows = _dense_weight(module).shape[0]
    return c.reshape(rows, -1)


class _SmartDealWeight(nn.Module):
    """Parametrisation weight = (pow2(C_latent) ⊙ support) · B, trained with a straight-through
    estimator for the rounding; the support (zero positions of C) stays fixed."""

    def __init__(self, c, basis, shape):
        super().__init__()
        self.c_latent = nn.Parameter(torch.as_tensor(c, dtype=torch.float32).clone())
        self.basis = nn.Parameter(torch.as_tensor(basis, dtype=torch.float32).clone())
        self.register_buffer("support", torch.as_tensor(c != 0))
        self.shape = tuple(shape)

    def quantised_c(self):
        latent = self.c_latent
        rounded = pow2_quantize(latent.detach())
        return (latent + (rounded - latent).detach()) * self.support

    def forward(self, original):
        rows = self.shape[0]
        cols = int(np.prod(self.shape[1:]))
        weight = (self.quantised_c() @ self.basis).reshape(rows, -1)[:, :cols]
        return weight.reshape(self.shape).to(original.dtype)


def smartdeal_trainable(model):
    """Make every SmartDeal layer of ``model`` train as C·B: the weight becomes a
    ``torch.nn.utils.parametrize`` function of a latent C (rounded to powers of two in the
    forward pass, straight-through in the backward pass, zeros fixed) and B. Call
    :func:`smartdeal_freeze` after training. Returns the number of layers made trainable."""
    from torch.nn.utils import parametrize
    count = 0
    for _, module in prunable_layers(model):
        info = pattern_info(module)
        if info is None or info.pattern != "smartdeal" or parametrize.is_parametrized(module):
            continue
        c, basis = smartdeal_factors(module)
        parametrize.register_parametrization(
            module, "weight", _SmartDealWeight(c, basis, module.weight.shape))
        count += 1
    return count


def smartdeal_freeze(model):
    """Undo :func:`smartdeal_trainable`: store the trained C (exact powers of two on the same
    support) and B in ``smartdeal_C``/``smartdeal_B`` and set the plain weight to C·B."""
    from torch.nn.utils import parametrize
    for _, module in prunable_layers(model):
        if not parametrize.is_parametrized(module, "weight"):
            continue
        param = module.parametrizations.weight[0]
        if not isinstance(param, _SmartDealWeight):
            continue
        support = param.support.cpu().numpy()
        c = pow2_quantize(param.c_latent.detach().cpu().numpy()) * support
        basis = param.basis.detach().cpu().double().numpy()
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        rows = module.weight.shape[0]
        cols = module.weight[0].numel()
        with torch.no_grad():
            module.weight.copy_(torch.as_tensor((c @ basis).reshape(rows, -1)[:, :cols],
                                                dtype=module.weight.dtype)
                                .reshape(module.weight.shape))
        device = module.weight.device
        _set_buffer(module, "smartdeal_C", torch.as_tensor(c, dtype=torch.float64,
                                                           device=device))
        _set_buffer(module, "smartdeal_B", torch.as_tensor(basis, dtype=torch.float64,
                                                           device=device))
    return model


# Entry points ----------------------------------------------------------------------------------

def prune(model, pattern, sparsity, lanes=8, per_row=1, *, layers=None, exclude=(), **options):
    """Prune every Linear/Conv2d layer of ``model`` to ``sparsity`` with ``pattern``.

    Parameters
    ----------
    model : nn.Module
        A model or a single layer; pruned in place and returned.
    pattern : str
        One of :data:`PRUNE_PATTERNS`.
    sparsity : float in [0, 1)
        Fraction of each layer's weights to remove (1xN: ``floor(sparsity · channels)``
        blocks per row group; smartdeal: the fraction of zeros in C').
    lanes, per_row : int
        V (2, 4, 8 or 16) and e (divides V; 1 for 1xN).
    layers : sequence of str, optional
        Names (as in ``model.named_modules()``) of the layers to prune; default all.
    exclude : sequence of str
        Names of layers to leave dense.
    **options
        1xN: ``alpha`` (redundancy weight, 0.5), ``tau`` (sampling temperature, 0 = top-k),
        ``seed``. smartdeal: ``c_pattern`` (``1xN``, ``gs-gather``, ``gs-scatter``,
        ``unstructured``), ``iterations`` (ALS rounds, 12).

    Raises
    ------
    PatternError
        Unknown pattern or option, sparsity outside [0, 1), bad lanes or e.
    ShapeError
        A layer has fewer input columns than lanes (GS patterns).
    UnsupportedError
        A grouped convolution.
    """
    _check_arguments(pattern, sparsity, lanes, per_row, options)
    selected = [(name, module) for name, module in prunable_layers(model)
                if (layers is None or name in layers) and name not in exclude]
    if layers is not None:
        missing = sorted(set(layers) - {name for name, _ in selected} - set(exclude))
        if missing:
            raise PatternError(f"Layer names must name Linear or Conv2d layers, "
                               f"not {missing[0]!r}")
    # Check every layer before changing any, so that a bad layer leaves the model untouched.
    views = []
    for name, module in selected:
        view = gemm_view(module)
        if pattern in ("gs-gather", "gs-scatter"):
            _check_gs_shape(name, view.shape[1], lanes)
        if pattern == "smartdeal" and options.get("c_pattern", "1xN") in ("gs-gather",
                                                                          "gs-scatter"):
            _check_gs_shape(name, 3 * -(-view.shape[1] // 3), lanes)
        views.append(view)
    for (name, module), view in zip(selected, views):
        kernel = view.shape[1] // _dense_weight(module).shape[1]     # kh·kw of a conv
        row_order = None
        if pattern == "smartdeal":
            error = _smartdeal_layer(module, sparsity, lanes, per_row,
                                     options.get("c_pattern", "1xN"),
                                     options.get("iterations", 12))
            logger.info("%s: smartdeal, relative error %.4f", name or "layer", error)
            continue
        if pattern == "unstructured":
            mask = unstructured_mask(view, sparsity)
        elif pattern == "1xN":
            mask = one_by_n_mask(view, sparsity, lanes, kernel,
                                 alpha=options.get("alpha", 0.5), tau=options.get("tau", 0.0),
                                 seed=options.get("seed", 0))
        else:
            mask, row_order = gs_mask(view, sparsity, lanes, per_row,
                                      scatter=pattern == "gs-scatter")
            if pattern == "gs-gather":
                row_order = None
        _apply_mask(module, mask)
        _set_info(module, PatternInfo(pattern, lanes, per_row), row_order)
        logger.info("%s: %s, sparsity %.4f", name or "layer", pattern, 1 - mask.mean())
    return model


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
