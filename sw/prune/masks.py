"""Keep masks on a matrix (a layer's GEMM view, :mod:`.view`): unstructured, GS gather and
scatter (DESIGN §1.1) and SUBP 1×N blocks (DESIGN §1.2).

Every mask function takes an optional ``allowed`` mask, the view's candidates (False at its
structural zeros: padding channels, other groups' channels). Nothing outside ``allowed`` is
ever kept, sparsity counts candidates only, and the GS rule is solved on the candidates' banks
(``column mod V``). ``allowed=None`` (every entry a candidate, e.g. a Linear layer) runs
exactly the code of the unrestricted pruner.
"""

import collections
import logging
import math

import numpy as np
import torch

from ..errors import ShapeError

__all__ = ["unstructured_mask", "gs_mask", "one_by_n_mask", "block_redundancy_scores"]

logger = logging.getLogger(__name__)


def _keep_count(size, sparsity):
    return int(round((1.0 - float(sparsity)) * size))


def _check_gs_shape(name, cols, lanes):
    if cols < lanes:
        raise ShapeError(f"Layer {name or 'weight'} has {cols} input columns, fewer than the "
                         f"{lanes} lanes; a GS pattern needs at least one column per bank")


def _allowed(allowed, shape):
    """``allowed`` as a bool array of ``shape``, or None when every entry is a candidate."""
    if allowed is None:
        return None
    allowed = np.asarray(allowed, dtype=bool)
    if allowed.shape != tuple(shape):
        raise ShapeError(f"Allowed mask must have the weights' shape {tuple(shape)}, not "
                         f"{allowed.shape}")
    return None if allowed.all() else allowed


def _span(values):
    """``0-7`` for a run of consecutive integers, else ``0, 2, 5`` (first eight, then …)."""
    values = [int(v) for v in values]
    if len(values) > 1 and values == list(range(values[0], values[0] + len(values))):
        return f"{values[0]}-{values[-1]}"
    text = ", ".join(str(v) for v in values[:8])
    return text + (", …" if len(values) > 8 else "")


def _banks(banks):
    return f"bank {int(banks[0])}" if len(banks) == 1 else f"banks {_span(banks)}"


# Unstructured -----------------------------------------------------------------------------------

def unstructured_mask(weights, sparsity, *, allowed=None):
    """Keep exactly ``round((1 - sparsity) * candidates)`` largest-magnitude weights (the
    candidates: ``allowed``, default every entry)."""
    shape = np.shape(weights)
    magnitude = np.abs(np.asarray(weights, dtype=np.float32)).ravel()
    allowed = _allowed(allowed, shape)
    size = magnitude.size
    if allowed is not None:
        size = int(allowed.sum())
        magnitude = np.where(allowed.ravel(), magnitude, -np.inf)
    keep = _keep_count(size, sparsity)
    mask = np.zeros(magnitude.size, dtype=bool)
    if keep:
        mask[np.argpartition(-magnitude, keep - 1)[:keep]] = True
    return mask.reshape(shape)


# GS gather / scatter ---------------------------------------------------------------------------

def gs_mask(weights, sparsity, lanes, per_row=1, *, scatter=False, allowed=None):
    """A GS-gather or GS-scatter keep mask (DESIGN §1.1).

    The layer keeps ``round((1 - sparsity) * candidates)`` weights up to one row group's unit:
    a global magnitude threshold gives each row group its natural kept count, rounded to a
    whole number P of groups (largest remainder), so row groups keep different counts. Inside
    a row group of V/e rows every row keeps e·P weights and every bank (``column % V``)
    receives at most P of them (exactly P unless the row group is the partial last one); the
    kept weights are chosen greedily by magnitude under these caps, and augmenting paths fix
    the rare row left short. P is capped so that the ragged last bank, or the banks the
    candidates leave empty, never force padding.

    Parameters
    ----------
    weights : array (rows, cols)
    sparsity : float in [0, 1)
    lanes, per_row : int
        V and e.
    scatter : bool
        GS-scatter: sort rows by their natural kept count (descending, stable) and group
        consecutive runs of V/e sorted rows. With ``allowed``, rows whose candidates lie in
        different banks are grouped so that every row group can feed all its banks (e.g. one
        row per bank for a depthwise convolution with a channel multiplier).
    allowed : array (rows, cols) of bool, optional
        The candidates (default: every entry); the rest is never kept.

    Returns
    -------
    mask : ndarray (rows, cols) bool
    row_order : ndarray (rows,) int64
        Rows listed row group by row group (``arange`` for gather); pass it to
        ``GSMatrix.from_dense(..., row_order=row_order)`` for gs-scatter.

    Raises
    ------
    ShapeError
        Fewer columns than lanes, or (with ``allowed``) a row group whose candidates cannot
        fill even one group without padding.
    """
    magnitude = np.abs(np.asarray(weights, dtype=np.float32))
    rows, cols = magnitude.shape
    _check_gs_shape(None, cols, lanes)
    allowed = _allowed(allowed, magnitude.shape)
    segments = lanes // per_row
    size = magnitude.size if allowed is None else int(allowed.sum())
    target = _keep_count(size, sparsity)
    if target == 0:
        return np.zeros((rows, cols), dtype=bool), np.arange(rows)
    flat = magnitude.ravel() if allowed is None else magnitude[allowed]
    threshold = np.partition(flat, flat.size - target)[flat.size - target]
    if allowed is not None:
        # Structural zeros rank below every candidate and never reach the threshold.
        magnitude = np.where(allowed, magnitude, np.float32(-1.0))
    natural_rows = (magnitude >= threshold).sum(axis=1)

    n_rg = -(-rows // segments)
    rg_size = np.full(n_rg, segments, dtype=np.int64)
    rg_size[-1] = rows - (n_rg - 1) * segments
    unit = rg_size * per_row
    if allowed is None:
        order = np.argsort(-natural_rows, kind="stable") if scatter else np.arange(rows)
        bank_size = np.bincount(np.arange(cols) % lanes, minlength=lanes)
        # Full row groups fill every bank exactly P times, so P cannot exceed the rows ×
        # columns of the smallest (ragged) bank, nor a row's columns / e.
        p_max = np.minimum(cols // per_row, rg_size * bank_size.min())
    else:
        caps = _bank_counts(allowed, lanes)
        order = (_structured_order(natural_rows, caps, segments, lanes, per_row) if scatter
                 else np.arange(rows))
        p_max = _row_group_p_max(caps[order], segments, per_row)
        if (p_max == 0).any():
            rg = int(np.flatnonzero(p_max == 0)[0])
            members = order[rg * segments:(rg + 1) * segments]
            banks = np.flatnonzero(caps[members].sum(axis=0))
            raise ShapeError(
                f"Rows {_span(np.sort(members))} cannot form a GS row group without padding: their "
                f"candidate weights lie in {_banks(banks)} only, and each group takes "
                f"{per_row} weight{'s' if per_row > 1 else ''} from each of its rows, no two "
                f"in one bank")
    sorted_natural = natural_rows[order]
    natural_rg = np.add.reduceat(sorted_natural, np.arange(0, rows, segments))
    groups = _allocate_units(natural_rg, unit, p_max, target)

    mask_sorted = np.zeros((rows, cols), dtype=bool)
    sorted_magnitude = magnitude[order]
    sorted_allowed = None if allowed is None else allowed[order]
    n_full = rows // segments

    def part(start, stop, count):
        block = sorted_magnitude[start:stop].reshape(count, -1, cols)
        block_allowed = (None if sorted_allowed is None
                         else sorted_allowed[start:stop].reshape(count, -1, cols))
        return block, block_allowed

    if n_full:
        block, block_allowed = part(0, n_full * segments, n_full)
        mask_sorted[:n_full * segments] = _gs_row_groups(
            block, groups[:n_full], lanes, per_row, block_allowed).reshape(n_full * segments,
                                                                           cols)
    if n_full < n_rg:
        block, block_allowed = part(n_full * segments, rows, 1)
        mask_sorted[n_full * segments:] = _gs_row_groups(
            block, groups[n_full:], lanes, per_row, block_allowed)[0]
    mask = np.empty_like(mask_sorted)
    mask[order] = mask_sorted
    return mask, order


def _bank_counts(allowed, lanes):
    """(rows, V): candidates of each row in each bank (``column % V``)."""
    rows, cols = allowed.shape
    padded = np.zeros((rows, -(-cols // lanes) * lanes), dtype=bool)
    padded[:, :cols] = allowed
    return padded.reshape(rows, -1, lanes).sum(axis=1)


def _max_groups(caps, per_row):
    """The largest P for which rows with candidate counts ``caps`` (rows × banks) can each
    keep e·P weights with at most P in any bank (a transportation problem).

    By max-flow/min-cut it is feasible iff every set S of rows has
    ``Σ_b min(P, Σ_{r∈S} caps[r, b]) >= e·P·|S|``, a condition that only weakens as P
    shrinks; rows with equal counts are interchangeable, so S ranges over how many rows of
    each kind it takes.
    """
    kinds, multiplicity = np.unique(caps, axis=0, return_counts=True)
    grids = np.meshgrid(*[np.arange(m + 1) for m in multiplicity], indexing="ij")
    take = np.stack([g.ravel() for g in grids], axis=1)[1:]          # every nonempty S
    caps_s = take @ kinds
    sizes = take.sum(axis=1) * per_row

    def feasible(p):
        return bool((np.minimum(caps_s, p).sum(axis=1) >= sizes * p).all())

    low, high = 0, int(caps.sum(axis=1).min()) // per_row
    while low < high:
        mid = (low + high + 1) // 2
        if feasible(mid):
            low = mid
        else:
            high = mid - 1
    return low


def _row_group_p_max(caps_sorted, segments, per_row):
    """:func:`_max_groups` of each row group (consecutive runs of ``segments`` rows)."""
    cache = {}
    result = []
    for start in range(0, len(caps_sorted), segments):
        caps = caps_sorted[start:start + segments]
        key = np.ascontiguousarray(caps[np.lexsort(caps.T[::-1])]).tobytes() + \
            bytes([len(caps)])
        if key not in cache:
            cache[key] = _max_groups(caps, per_row)
        result.append(cache[key])
    return np.asarray(result, dtype=np.int64)


class _BankMatcher:
    """Rows added one by one, each as e copies matched to distinct banks (one copy per bank):
    whether the rows so far can keep one group (P = 1). Augmenting paths, V is small."""

    def __init__(self, lanes):
        self.owner = [-1] * lanes           # bank -> copy
        self.banks = []                     # copy -> its candidate banks

    def add(self, banks, copies):
        saved = list(self.owner), len(self.banks)
        for _ in range(copies):
            self.banks.append(banks)
            if not self._augment(len(self.banks) - 1, set()):
                self.owner = saved[0]
                del self.banks[saved[1]:]
                return False
        return True

    def _augment(self, copy, seen):
        for bank in self.banks[copy]:
            if bank not in seen:
                seen.add(bank)
                if self.owner[bank] < 0 or self._augment(self.owner[bank], seen):
                    self.owner[bank] = copy
                    return True
        return False


def _structured_order(natural, caps, segments, lanes, per_row):
    """GS-scatter row groups of rows whose candidates lie in different banks.

    Rows are taken by natural kept count (descending, stable), skipping, for the row group
    being filled, any row that would leave it unable to keep one group (checked by
    :class:`_BankMatcher`); rows with the same candidate banks are interchangeable, so only
    the best remaining row of each kind is tried. With a single kind this is the plain sort.
    """
    rows = len(natural)
    order = np.argsort(-natural, kind="stable")
    kinds, kind_of = np.unique(caps, axis=0, return_inverse=True)
    kind_of = np.asarray(kind_of).reshape(-1)
    if len(kinds) == 1:
        return order
    queues = [collections.deque() for _ in kinds]
    for row in order:
        queues[kind_of[row]].append(int(row))
    rank = np.empty(rows, dtype=np.int64)
    rank[order] = np.arange(rows)
    kind_banks = [np.flatnonzero(k).tolist() for k in kinds]
    full, partial = [], []
    placed = 0
    while placed < rows:
        matcher, members = _BankMatcher(lanes), []
        while len(members) < segments:
            heads = sorted((k for k in range(len(kinds)) if queues[k]),
                           key=lambda k: rank[queues[k][0]])
            for k in heads:
                if matcher.add(kind_banks[k], per_row):
                    members.append(queues[k].popleft())
                    break
            else:
                break
        if not members:
            stuck = [queues[k][0] for k in range(len(kinds)) if queues[k]]
            raise ShapeError(f"Row {stuck[0]} cannot keep a GS group without padding: its "
                             f"candidate weights lie in "
                             f"{_banks(np.flatnonzero(caps[stuck[0]]))} only, fewer than "
                             f"e={per_row} banks")
        placed += len(members)
        (full if len(members) == segments else partial).append(members)
    if len(partial) > 1:
        raise ShapeError(f"Rows cannot be grouped into GS row groups of {segments} without "
                         f"padding: {len(partial)} row groups would be partial, their rows' "
                         f"candidate weights lying in too few distinct banks (rows "
                         f"{_span(partial[0])} and {_span(partial[1])})")
    return np.asarray([r for members in full + partial for r in members], dtype=np.int64)


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


def _gs_row_groups(block, groups, lanes, per_row, allowed=None):
    """Masks of G row groups of equal height: ``block`` (G, r, cols) magnitudes, ``groups``
    (G,) P each, ``allowed`` (G, r, cols) candidates or None. Greedy over each row group's
    entries by descending magnitude, vectorised over the row groups, then augmenting-path
    repair of any row left short."""
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
        candidate = None if allowed is None else np.take_along_axis(
            allowed.reshape(n_groups, height * cols), order, axis=1)
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
            if candidate is not None:
                ok &= candidate[active, step]
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
        row_allowed = None if allowed is None else allowed[g]
        while True:
            repaired = _repair_row_group(block[g], mask[g], p, lanes, per_row, row_allowed)
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
            mask[g] = _gs_row_groups(block[g][None], np.array([p]), lanes, per_row,
                                     None if row_allowed is None else row_allowed[None])[0]
            break
    return mask


def _repair_row_group(magnitude, mask, groups, lanes, per_row, allowed=None):
    """Complete a greedy row-group mask by augmenting paths row → bank → row → … → bank with
    room. Returns the new mask, or None when some row cannot be completed."""
    mask = mask.copy()
    height, cols = magnitude.shape
    bank_of = np.arange(cols) % lanes
    need = per_row * groups
    addable = np.ones((height, cols), dtype=bool) if allowed is None else allowed
    while True:
        short = np.flatnonzero(mask.sum(axis=1) < need)
        if not short.size:
            return mask
        load = np.bincount(bank_of[np.nonzero(mask)[1]], minlength=lanes)
        free = np.zeros((height, lanes), dtype=np.int64)     # unkept candidates per (row, bank)
        have = np.zeros((height, lanes), dtype=np.int64)     # kept entries per (row, bank)
        for row in range(height):
            have[row] = np.bincount(bank_of[mask[row]], minlength=lanes)
            free[row] = np.bincount(bank_of[~mask[row] & addable[row]], minlength=lanes)
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
            # Row takes its largest unkept candidate in this bank ...
            options = np.flatnonzero((bank_of == bank) & ~mask[row] & addable[row])
            mask[row, options[np.argmax(magnitude[row, options])]] = True
            # ... and, unless it is the short row, gives up its smallest kept weight in the
            # bank it was reached through.
            bank = row_parent[row]
            if bank is not None:
                options = np.flatnonzero((bank_of == bank) & mask[row])
                mask[row, options[np.argmin(magnitude[row, options])]] = False


# 1×N (SUBP) -------------------------------------------------------------------------------------

def _block_scores(blocks, alpha, max_reference, seed):
    """BPAR score of every row of ``blocks`` (one flattened block each)."""
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
    return norm_l1 - alpha * redundancy


def _row_blocks(weights, lanes, kernel):
    """(row groups, channels, V·kernel): the 1×N blocks of a channel-major matrix, the rows
    of a partial last row group padded with zeros."""
    weights = np.asarray(weights, dtype=np.float64)
    rows, cols = weights.shape
    channels = cols // kernel
    n_rg = -(-rows // lanes)
    padded = np.zeros((n_rg * lanes, cols))
    padded[:rows] = weights
    blocks = padded.reshape(n_rg, lanes, channels, kernel).transpose(0, 2, 1, 3)
    return blocks.reshape(n_rg, channels, lanes * kernel)


def block_redundancy_scores(weights, lanes, kernel=1, *, alpha=0.5, max_reference=2048,
                            seed=0):
    """SUBP block angular redundancy score of every 1×N block.

    A block is N = ``lanes`` consecutive rows × the ``kernel`` columns of one input channel
    (columns channel-major, as torch orders a conv weight). Score = L1 norm / largest L1 norm
    in the layer − ``alpha`` · mean |cosine similarity| to the other blocks of the layer (a
    seeded sample of ``max_reference`` blocks stands in for "all other blocks" in layers with
    more blocks than that). Low score = prune first.

    Returns
    -------
    ndarray (row groups, input channels)
    """
    blocks = _row_blocks(weights, lanes, kernel)
    n_rg, channels, _ = blocks.shape
    return _block_scores(blocks.reshape(n_rg * channels, -1), alpha, max_reference,
                         seed).reshape(n_rg, channels)


def one_by_n_mask(weights, sparsity, lanes, kernel=1, *, alpha=0.5, tau=0.0, seed=0,
                  taps=None, allowed=None):
    """A 1×N (SUBP) keep mask: each group of N = ``lanes`` consecutive rows prunes exactly
    ``floor(sparsity * channels)`` blocks of one input channel each, lowest score first
    (:func:`block_redundancy_scores`).

    The columns are channel-major with ``kernel`` columns per channel (torch's order of a conv
    weight), or, given ``taps``, a GEMM view: ``taps`` runs of channels, channel fastest, a
    block being one channel at every tap. With ``allowed`` only the blocks that are
    candidates for every row of their row group count (``channels`` is their number, which
    must be the same in every row group); the others are never kept.

    With ``tau > 0`` the kept blocks are drawn without replacement with probabilities
    softmax(score / tau) (Gumbel top-k, seeded), so pruned blocks can grow back.
    """
    weights = np.asarray(weights, dtype=np.float32)
    rows, cols = weights.shape
    if taps is not None:
        if kernel != 1:
            raise ShapeError(f"Give the kernel (channel-major columns) or the taps (GEMM view), "
                             f"not both: kernel {kernel}, taps {taps}")
        if cols % taps:
            raise ShapeError(f"GEMM view columns ({cols}) must be a multiple of the taps "
                             f"({taps})")
        channels = cols // taps

        def channel_major(a):
            return a.reshape(rows, taps, channels).transpose(0, 2, 1).reshape(rows, cols)

        mask = one_by_n_mask(channel_major(weights), sparsity, lanes, taps, alpha=alpha,
                             tau=tau, seed=seed, allowed=None if allowed is None else
                             channel_major(np.asarray(allowed, dtype=bool)))
        return mask.reshape(rows, channels, taps).transpose(0, 2, 1).reshape(rows, cols)
    channels = cols // kernel
    n_rg = -(-rows // lanes)
    allowed = _allowed(allowed, weights.shape)
    if allowed is None:
        scores = block_redundancy_scores(weights, lanes, kernel, alpha=alpha, seed=seed)
        chosen = np.broadcast_to(np.arange(channels), (n_rg, channels))
    else:
        chosen = _candidate_blocks(allowed, lanes, kernel)
        if chosen.size == 0:
            return np.zeros((rows, cols), dtype=bool)
        blocks = _row_blocks(weights, lanes, kernel)[np.arange(n_rg)[:, None], chosen]
        scores = _block_scores(blocks.reshape(chosen.size, -1), alpha, 2048,
                               seed).reshape(chosen.shape)
    candidates = chosen.shape[1]
    pruned = int(math.floor(sparsity * candidates))
    if tau > 0:
        gumbel = np.random.default_rng(seed).gumbel(size=scores.shape)
        scores = scores / tau + gumbel
    # Ties resolved by channel index so that equal scores give a reproducible mask.
    order = np.argsort(-scores, axis=1, kind="stable")
    keep = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(keep, order[:, :candidates - pruned], True, axis=1)
    keep_blocks = np.zeros((n_rg, channels), dtype=bool)
    keep_blocks[np.arange(n_rg)[:, None], chosen] = keep
    mask = np.repeat(np.repeat(keep_blocks, lanes, axis=0)[:rows], kernel, axis=1)
    return mask


def _candidate_blocks(allowed, lanes, kernel):
    """(row groups, candidates): the channels whose block is a candidate for every row of its
    row group; raises if a block is a candidate for some rows only, or if row groups have
    different numbers of candidate blocks."""
    rows, cols = allowed.shape
    channels = cols // kernel
    n_rg = -(-rows // lanes)
    every = np.ones((n_rg * lanes, cols), dtype=bool)
    every[:rows] = allowed
    some = np.zeros((n_rg * lanes, cols), dtype=bool)
    some[:rows] = allowed
    every = every.reshape(n_rg, lanes, channels, kernel).all(axis=(1, 3))
    some = some.reshape(n_rg, lanes, channels, kernel).any(axis=(1, 3))
    mixed = some & ~every
    if mixed.any():
        rg, channel = (int(v[0]) for v in np.nonzero(mixed))
        raise ShapeError(f"Rows {_span(range(rg * lanes, min(rows, (rg + 1) * lanes)))} (a 1xN "
                         f"row group) do not share their candidates: input channel {channel} "
                         f"is a candidate for some of them only")
    counts = every.sum(axis=1)
    if (counts != counts[0]).any():
        rg = int(np.flatnonzero(counts != counts[0])[0])
        raise ShapeError(f"Row group {rg} has {counts[rg]} candidate 1xN blocks and row group 0 "
                         f"has {counts[0]}; 1xN prunes the same count in every row group")
    return np.nonzero(every)[1].reshape(n_rg, int(counts[0]))
