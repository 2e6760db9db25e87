"""The activation memory planner (gsaccel.sw.compile.plan): live tensors never share a word,
on random DAG-shaped lifetimes and sizes; the layout is as small as the peak live set where
the greedy orders find it; a plan that does not fit raises CapacityError naming the peak live
set, the capacity and the remedy."""

import re

import pytest
from hypothesis import given, settings, strategies as st

from gsaccel.hw.config import CoreConfig
from gsaccel.sw.compile.plan import (Lifetime, bank_depth_for, peak_live, plan_memory,
                                     scratchpad_depth)
from gsaccel.sw.errors import CapacityError, ShapeError


@st.composite
def dag_lifetimes(draw):
    """Lifetimes of the tensors of a random DAG in topological order: op i writes tensor i+1
    and reads one or two earlier tensors (a residual branch when it reaches far back); the
    input (tensor 0) is live from the start, the last tensor to the end."""
    n_ops = draw(st.integers(1, 24))
    words = draw(st.lists(st.integers(1, 300), min_size=n_ops + 1, max_size=n_ops + 1))
    last = list(range(n_ops + 1))            # a tensor is live at least at its own step
    for op in range(n_ops):
        reads = draw(st.lists(st.integers(0, op), min_size=1, max_size=2, unique=True))
        for tensor in reads:
            last[tensor] = max(last[tensor], op)
    first = [0] + list(range(n_ops))          # tensor i+1 is written at step i
    last[n_ops] = n_ops                       # the output, read by the host at the end
    return [Lifetime(f"t{i}", words[i], first[i], max(first[i], last[i]))
            for i in range(n_ops + 1)]


def _overlapping_pairs(plan):
    items = list(plan.lifetimes.values())
    for i, a in enumerate(items):
        for b in items[i + 1:]:
            if a.first <= b.last and b.first <= a.last:
                yield a, b


@settings(max_examples=150, deadline=None)
@given(dag_lifetimes())
def test_live_tensors_never_overlap(lifetimes):
    plan = plan_memory(lifetimes, 10 ** 6)
    plan.check()
    for a, b in _overlapping_pairs(plan):
        a0, b0 = plan.bases[a.name], plan.bases[b.name]
        assert a0 + a.words <= b0 or b0 + b.words <= a0, (a, a0, b, b0)
    assert plan.top >= plan.peak_words == peak_live(lifetimes)[1]
    assert plan.top == max(plan.bases[t.name] + t.words for t in lifetimes)
    # The same layout fits exactly its own top; one word less is refused.
    assert plan_memory(lifetimes, plan.top).bases == plan.bases
    with pytest.raises(CapacityError):
        plan_memory(lifetimes, plan.top - 1)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 50), st.integers(0, 9), st.integers(0, 9)),
                min_size=1, max_size=16))
def test_arbitrary_intervals_never_overlap(spans):
    lifetimes = [Lifetime(f"t{i}", words, min(a, b), max(a, b))
                 for i, (words, a, b) in enumerate(spans)]
    plan = plan_memory(lifetimes, 10 ** 6)
    plan.check()
    for a, b in _overlapping_pairs(plan):
        assert plan.bases[a.name] + a.words <= plan.bases[b.name] or \
            plan.bases[b.name] + b.words <= plan.bases[a.name]


def test_a_chain_ping_pongs_and_a_residual_branch_stays_live():
    chain = [Lifetime("x", 10, 0, 0), Lifetime("a", 10, 0, 1), Lifetime("b", 10, 1, 2),
             Lifetime("c", 10, 2, 3)]
    plan = plan_memory(chain, 20)
    assert plan.top == plan.peak_words == 20
    assert plan.bases["x"] == plan.bases["b"] != plan.bases["a"] == plan.bases["c"]
    # A residual branch: "a" is read again by the addition at step 3, so it stays live.
    residual = [Lifetime("x", 10, 0, 0), Lifetime("a", 10, 0, 3), Lifetime("b", 10, 1, 2),
                Lifetime("c", 10, 2, 3), Lifetime("add", 10, 3, 4)]
    plan = plan_memory(residual, 30)
    assert plan.peak_words == plan.top == 30
    assert len({plan.bases[n] for n in ("a", "b", "c")}) == 3
    assert plan.bases["add"] not in (plan.bases["a"], plan.bases["c"])


def test_capacity_error_lists_the_peak_live_set_and_the_remedy():
    lifetimes = [Lifetime("input", 100, 0, 0), Lifetime("conv1", 700, 0, 2),
                 Lifetime("conv2", 600, 1, 2), Lifetime("add", 500, 2, 3)]
    with pytest.raises(CapacityError) as error:
        plan_memory(lifetimes, 1024, banks=8)
    message = str(error.value)
    assert re.search(r"at step 2 the live tensors need 1800 words per bank — conv1 \(700\), "
                     r"conv2 \(600\), add \(500\) — against a capacity of 8 banks x 1024 "
                     r"words", message), message
    assert "bank_depth=2048 gives 2048 words per bank" in message
    assert "a board with more memory" in message
    # Not strict: the plan is returned, and says what it lacks.
    plan = plan_memory(lifetimes, 1024, banks=8, strict=False)
    assert not plan.fits and plan.top >= 1800
    assert plan.shortfall("1024 words").startswith("at step 2 the live tensors need 1800 "
                                                    "words per bank")


def test_depth_conventions():
    # One address space: the tensors may use every word of every bank.
    assert scratchpad_depth(CoreConfig(bank_depth=256)) == 256
    assert [bank_depth_for(w) for w in (1, 2, 3, 512, 513, 3468)] == [1, 2, 4, 512, 1024, 4096]
    for words in (1, 7, 100, 4097):
        assert scratchpad_depth(CoreConfig(bank_depth=bank_depth_for(words))) >= words


def test_bad_lifetimes():
    with pytest.raises(ShapeError, match="at least one word"):
        Lifetime("t", 0, 0, 1)
    with pytest.raises(ShapeError, match="later step"):
        Lifetime("t", 1, 3, 1)
    with pytest.raises(ShapeError, match="'t' appears twice"):
        plan_memory([Lifetime("t", 1, 0, 1), Lifetime("t", 2, 0, 1)], 10)


# Bank halves (CoreConfig.bank_halves) -------------------------------------------------------

@st.composite
def dag_reads(draw):
    """A random DAG as for :func:`dag_lifetimes`, with what each op reads: (lifetimes,
    (read, written) pairs)."""
    n_ops = draw(st.integers(1, 11))
    words = draw(st.lists(st.integers(1, 60), min_size=n_ops + 1, max_size=n_ops + 1))
    last, pairs = list(range(n_ops + 1)), []
    for op in range(n_ops):
        reads = draw(st.lists(st.integers(0, op), min_size=1, max_size=2, unique=True))
        for tensor in reads:
            last[tensor] = max(last[tensor], op)
            pairs.append((f"t{tensor}", f"t{op + 1}"))
    first = [0] + list(range(n_ops))
    last[n_ops] = n_ops
    return ([Lifetime(f"t{i}", words[i], first[i], max(first[i], last[i]))
             for i in range(n_ops + 1)], pairs)


def _two_colourable(names, pairs):
    """Brute force: some assignment of halves separates every pair."""
    index = {name: i for i, name in enumerate(names)}
    return any(all((mask >> index[a] & 1) != (mask >> index[b] & 1) for a, b in pairs)
               for mask in range(1 << len(names)))


@settings(max_examples=150, deadline=None)
@given(dag_reads())
def test_bank_halves_keep_every_layer_reading_the_other_half(case):
    lifetimes, pairs = case
    names = [t.name for t in lifetimes]
    depth = 2 * sum(t.words for t in lifetimes)
    if not _two_colourable(names, pairs):
        with pytest.raises(CapacityError, match="cannot take bank halves.*odd cycle"):
            plan_memory(lifetimes, depth, apart=pairs)
        return
    plan = plan_memory(lifetimes, depth, apart=pairs)
    plan.check()                    # no live overlap, and each tensor inside its half
    half = depth // 2
    for a, b in pairs:
        assert (plan.bases[a] >= half) != (plan.bases[b] >= half), (a, b, plan.bases)
        assert plan.halves[a] != plan.halves[b]
    for t in lifetimes:
        assert plan.bases[t.name] // half == plan.halves[t.name]
    # Too small a half is refused, with the depth that would hold both halves.
    need = max(max((plan.bases[t.name] - half * plan.halves[t.name] + t.words
                    for t in lifetimes if plan.halves[t.name] == k), default=0)
               for k in (0, 1))
    assert plan.fits and (plan.top <= depth)
    small = plan_memory(lifetimes, 2 * need - 2, apart=pairs, strict=False)
    assert not small.fits


def test_a_chain_alternates_halves_and_a_projection_shortcut_is_refused():
    chain = [Lifetime("x", 10, 0, 0), Lifetime("a", 10, 0, 1), Lifetime("b", 10, 1, 2),
             Lifetime("c", 10, 2, 3)]
    plan = plan_memory(chain, 40, apart=[("x", "a"), ("a", "b"), ("b", "c")])
    assert [plan.halves[n] for n in "xabc"] == [0, 1, 0, 1]
    assert plan.bases["a"] >= 20 and plan.bases["x"] < 20
    with pytest.raises(CapacityError, match=r"two halves.*bank_depth="):
        plan_memory(chain, 16, apart=[("x", "a"), ("a", "b"), ("b", "c")])
    # x -> a -> b and a projection x -> p, then add = b + p: b is in x's half, p in the
    # other, and the addition reads both (x-a-b-add-p-x is a cycle of odd length).
    shortcut = chain[:3] + [Lifetime("p", 10, 1, 2), Lifetime("add", 10, 2, 3)]
    with pytest.raises(CapacityError, match=r"Tensors .*cannot take bank halves"):
        plan_memory(shortcut, 100, apart=[("x", "a"), ("a", "b"), ("x", "p"), ("b", "add"),
                                          ("p", "add")])
