"""Activation memory planning (DESIGN §2.2): every tensor gets a bank address by liveness.

The scratchpad is one address space of :func:`scratchpad_depth` words per bank; a tensor
occupies bank words ``[base, base + words)`` in *every* bank (its channels are spread over
the banks, :class:`~gsaccel.sw.format.geometry.TensorGeometry`). A tensor is live from the
step of its producer to the step of its last consumer (the model's input from the start, its
output to the end), both inclusive: a layer's inputs and output are live at its step, so a
layer never writes over what it reads, and a residual branch stays live until its addition.
Tensors whose lifetimes intersect never share a word.

:func:`plan_memory` places the tensors greedily — largest first into the best-fitting gap,
and in a few other orders, then in a bounded number of seeded random orders — and keeps the
layout that needs the fewest words, stopping early at the peak live words (a lower bound).
When even that does not fit, :class:`~gsaccel.sw.errors.CapacityError` lists the peak live
set against the capacity and names the remedy.
"""

import random
from collections import deque
from dataclasses import dataclass, field

from ..errors import CapacityError, ShapeError

__all__ = ["scratchpad_depth", "scratchpad_depth_of", "bank_depth_for", "Lifetime",
           "MemoryPlan", "plan_memory", "peak_live", "halves_of"]


def scratchpad_depth_of(bank_depth):
    """Bank words per bank the activation tensors may use on a core of ``bank_depth``: all
    of them (the scratchpad is one address space of ``bank_depth`` words per bank)."""
    return int(bank_depth)


def scratchpad_depth(cfg):
    """Bank words per bank the activation tensors may use on ``cfg``'s core:
    ``cfg.bank_depth``."""
    return scratchpad_depth_of(cfg.bank_depth)


def bank_depth_for(words):
    """The smallest ``CoreConfig.bank_depth`` (a power of two) whose scratchpad holds
    ``words`` words per bank."""
    return 1 << (max(1, int(words)) - 1).bit_length()


@dataclass(frozen=True)
class Lifetime:
    """A tensor to place: ``words`` bank words, live from step ``first`` to ``last``
    (inclusive)."""

    name: str
    words: int
    first: int
    last: int

    def __post_init__(self):
        if int(self.words) < 1:
            raise ShapeError(f"Tensor {self.name!r} must occupy at least one word, not "
                             f"{self.words}")
        if self.last < self.first:
            raise ShapeError(f"Tensor {self.name!r} must be live from step {self.first} to a "
                             f"later step, not {self.last}")

    def overlaps(self, other):
        """True when both are live at some step."""
        return self.first <= other.last and other.first <= self.last


@dataclass
class MemoryPlan:
    """Bases of every tensor, and the numbers of the layout.

    Attributes
    ----------
    depth : int
        The capacity, words per bank.
    lifetimes : dict of str to Lifetime
    bases : dict of str to int
    top : int
        Words the layout uses: the largest ``base + words``.
    peak_words, peak_step : int
        The most words live at one step (a lower bound on ``top``), and that step.
    peak_tensors : tuple of str
        The tensors live at the peak step.
    strategy : str
        The placement order that won.
    """

    depth: int
    lifetimes: dict
    bases: dict
    top: int
    peak_words: int
    peak_step: int
    peak_tensors: tuple
    strategy: str = ""
    tried: dict = field(default_factory=dict)
    #: With bank halves: the half (0 or 1) of every tensor; else None.
    halves: dict = None

    @property
    def fits(self):
        """The layout lies inside ``depth`` words per bank."""
        return self.top <= self.depth

    def shortfall(self, capacity):
        """What the layout needs against ``capacity`` (a phrase: "a capacity of 8 banks x
        128 words"): the peak live set, and the fragmentation when the layout needs more
        than the peak (for capacity messages)."""
        words = {name: t.words for name, t in self.lifetimes.items()}
        listing = ", ".join(f"{name} ({words[name]})" for name in
                            sorted(self.peak_tensors, key=lambda n: -words[n]))
        if self.halves is not None:
            layout = (f"; with bank halves (a layer reads one half and writes the other) the "
                      f"halves need {self.half_tops[0]} and {self.half_tops[1]} of "
                      f"{self.depth // 2} words")
        elif self.top == self.peak_words:
            layout = ""
        else:
            layout = (f"; the best layout found needs {self.top} words (live tensors fragment "
                      f"the space)")
        return (f"at step {self.peak_step} the live tensors need {self.peak_words} words per "
                f"bank — {listing} — against {capacity}{layout}")

    @property
    def half_tops(self):
        """With bank halves: the words each half's layout needs, from the start of its half."""
        half = self.depth // 2
        return tuple(max((self.end(n) - index * half for n, h in self.halves.items()
                          if h == index), default=0) for index in (0, 1))

    def end(self, name):
        return self.bases[name] + self.lifetimes[name].words

    def live_at(self, step):
        """Names of the tensors live at ``step``."""
        return [n for n, t in self.lifetimes.items() if t.first <= step <= t.last]

    def check(self):
        """Raise AssertionError if two tensors live at the same step share a word or one
        leaves the scratchpad (the planner's invariant; tests call it)."""
        items = sorted(self.lifetimes.values(), key=lambda t: self.bases[t.name])
        for t in items:
            base = self.bases[t.name]
            assert 0 <= base and base + t.words <= self.depth, (t, base, self.depth)
            if self.halves is not None:
                low, high = self.halves[t.name] * (self.depth // 2), \
                    (self.halves[t.name] + 1) * (self.depth // 2)
                assert low <= base and base + t.words <= high, (t, base, self.halves[t.name])
        for i, a in enumerate(items):
            for b in items[i + 1:]:
                if self.bases[b.name] >= self.end(a.name):
                    break
                assert not a.overlaps(b), (a, self.bases[a.name], b, self.bases[b.name])


def peak_live(lifetimes):
    """(step, words, names) of the step with the most words live."""
    lifetimes = list(lifetimes)
    if not lifetimes:
        return 0, 0, ()
    events = sorted({t.first for t in lifetimes})
    best = (events[0], -1, ())
    for step in events:                  # the live set only grows at a first step
        live = [t for t in lifetimes if t.first <= step <= t.last]
        words = sum(t.words for t in live)
        if words > best[1]:
            best = (step, words, tuple(t.name for t in live))
    return best


def _place(order, fit):
    """Bases for the lifetimes in ``order``: each into the lowest (``first``) or the
    tightest (``best``) gap among the already placed tensors it overlaps in time."""
    placed = []
    bases = {}
    for t in order:
        busy = sorted((bases[p.name], bases[p.name] + p.words) for p in placed
                      if p.overlaps(t))
        cursor, choice, slack = 0, None, None
        for start, end in busy:
            gap = start - cursor
            if gap >= t.words and (choice is None or (fit == "best" and gap < slack)):
                choice, slack = cursor, gap
                if fit == "first":
                    break
            cursor = max(cursor, end)
        bases[t.name] = cursor if choice is None else choice
        placed.append(t)
    return bases


#: Random placement orders tried, at most, when the greedy ones leave gaps.
RANDOM_ORDERS = 64

_STRATEGIES = {
    "largest first, best fit": (lambda t: (-t.words, t.first, t.name), "best"),
    "largest first, first fit": (lambda t: (-t.words, t.first, t.name), "first"),
    "earliest first, best fit": (lambda t: (t.first, -t.words, t.name), "best"),
    "longest lived first, best fit": (lambda t: (t.first - t.last, -t.words, t.name), "best"),
}


def halves_of(names, apart):
    """A half (0 or 1) for every name such that the two names of every pair in ``apart``
    are in different halves: a 2-colouring, component by component (the first name of each
    in half 0, so a chain alternates from its input).

    Raises
    ------
    CapacityError
        If no such halves exist (the pairs close a cycle of odd length): the message names
        the cycle's tensors and the remedy.
    """
    neighbours = {name: [] for name in names}
    for a, b in apart:
        neighbours[a].append(b)
        neighbours[b].append(a)
    half, parent = {}, {}
    for root in names:
        if root in half:
            continue
        half[root], parent[root] = 0, None
        queue = deque([root])
        while queue:
            name = queue.popleft()
            for other in neighbours[name]:
                if other not in half:
                    half[other], parent[other] = 1 - half[name], name
                    queue.append(other)
                elif half[other] == half[name]:
                    cycle = _odd_cycle(parent, name, other)
                    raise CapacityError(
                        f"Tensors {', '.join(cycle)} cannot take bank halves: each layer "
                        f"of the core (CoreConfig.bank_halves) reads one half of the "
                        f"scratchpad and writes the other, and these layers' inputs and "
                        f"outputs form an odd cycle (two paths to one layer, an odd and an "
                        f"even number of layers long, such as a projection shortcut beside "
                        f"two convolutions). Use a core without bank halves, or give both "
                        f"paths the same parity (one more layer on one of them)")
    return half


def _odd_cycle(parent, a, b):
    """The names on the tree paths from ``a`` and ``b`` to their common ancestor."""
    path_a, name = [], a
    while name is not None:
        path_a.append(name)
        name = parent[name]
    path_b, name = [], b
    while name not in path_a:
        path_b.append(name)
        name = parent[name]
    return path_a[:path_a.index(name) + 1] + path_b[::-1]


def plan_memory(lifetimes, depth, *, banks=None, strict=True, apart=None):
    """Place ``lifetimes`` (:class:`Lifetime`) into ``depth`` words per bank.

    With ``apart`` (pairs of tensor names: a layer's inputs and output, for a core with
    ``CoreConfig.bank_halves``) every tensor lies in one half of the scratchpad (bank
    words below or from ``depth / 2``) and the two tensors of every pair in different
    halves (:func:`halves_of`); each half is planned on its own. ``plan.top`` is then the
    end of the last tensor when both halves fit, else twice the larger half's need (the
    ``depth`` that would hold both).

    Returns
    -------
    MemoryPlan
        With ``strict=False`` also when no layout fits (``plan.fits`` is False and
        ``plan.top`` exceeds ``depth``): the compiler then reports every limit at once.

    Raises
    ------
    CapacityError
        If no layout fits (and ``strict``): the message lists the peak live set (tensor
        names and words) against the capacity, the words the best layout needs, and the
        remedy.
    ShapeError
        If two lifetimes share a name.
    """
    lifetimes = list(lifetimes)
    names = [t.name for t in lifetimes]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise ShapeError(f"Tensor names must be unique, but {duplicate!r} appears twice")
    if apart is None:
        plan = _plan_space(lifetimes, depth)
    else:
        half = halves_of(names, apart)
        plans = [_plan_space([t for t in lifetimes if half[t.name] == index], depth // 2)
                 for index in (0, 1)]
        step, peak, live = peak_live(lifetimes)
        bases = {**plans[0].bases, **{name: depth // 2 + base
                                      for name, base in plans[1].bases.items()}}
        both = all(p.fits for p in plans)
        top = (depth // 2 + plans[1].top if plans[1].lifetimes else plans[0].top) if both \
            else 2 * max(p.top for p in plans)
        plan = MemoryPlan(depth=depth, lifetimes={t.name: t for t in lifetimes}, bases=bases,
                          top=top, peak_words=peak, peak_step=step, peak_tensors=live,
                          strategy=" | ".join(f"half {i}: {p.strategy}"
                                              for i, p in enumerate(plans)),
                          tried={f"half {i}: {k}": v for i, p in enumerate(plans)
                                 for k, v in p.tried.items()},
                          halves=half)
    if strict and not plan.fits:
        shape = f"{banks} banks x {depth} words" if banks else f"{depth} words per bank"
        halves = " in two halves" if apart is not None else ""
        raise CapacityError(
            f"Activations do not fit the scratchpad{halves}: "
            f"{plan.shortfall(f'a capacity of {shape}')}"
            f". Use a core with a bigger bank_depth (bank_depth="
            f"{bank_depth_for(plan.top)} gives {scratchpad_depth_of(bank_depth_for(plan.top))} "
            f"words per bank) or a board with more memory")
    return plan


def _plan_space(lifetimes, depth):
    """:func:`plan_memory` of ``lifetimes`` in one space of ``depth`` words (not strict)."""
    step, peak, live = peak_live(lifetimes)
    best = None
    tried = {}

    def attempt(strategy, order, fit):
        nonlocal best
        bases = _place(order, fit)
        top = max((bases[t.name] + t.words for t in lifetimes), default=0)
        tried[strategy] = top
        if best is None or top < best[0]:
            best = (top, strategy, bases)
        return top == peak              # the lower bound: nothing can do better

    done = False
    for strategy, (key, fit) in _STRATEGIES.items():
        if attempt(strategy, sorted(lifetimes, key=key), fit):
            done = True
            break
    # Then a bounded number of seeded random orders (deterministic), for what the greedy
    # orders fragment.
    rng = random.Random(0)
    trials = 0 if done else max(4, min(RANDOM_ORDERS, 40000 // max(1, len(lifetimes)) ** 2))
    for trial in range(trials):
        order = sorted(lifetimes, key=lambda t: (-t.words, t.first, t.name))
        rng.shuffle(order)
        if attempt(f"random order {trial}, best fit", order, "best"):
            break
    if best is None:                    # no tensors
        best = (0, "", {})
    top, strategy, bases = best
    return MemoryPlan(depth=depth, lifetimes={t.name: t for t in lifetimes}, bases=bases,
                      top=top, peak_words=peak, peak_step=step, peak_tensors=live,
                      strategy=strategy, tried=tried)
