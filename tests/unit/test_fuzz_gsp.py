"""Fuzzing the .gsp reader: a seeded mutation fuzzer over hand-built programs (every layer
kind, each input transform, both encodings; no torch, so it is fast), structure-aware (JSON
leaves, keys, list entries, the embedded .gsf matrices with their own CRC fixed) and
re-sealed (lengths and CRC-32 fixed) so the deep reader runs, plus hypothesis properties.

Every outcome must be either a parse whose program re-serialises to the same bytes (with its
JSON header in canonical form: sorted keys, json.dumps' spacing) and can be inspected
(``stats``, the device images) and run (golden), or a FormatError; never another exception,
and never more memory than MEMORY_CAP (the mutation runs happen in a child process capped
with RLIMIT_AS).

Run the fuzzer by hand: ``python tests/unit/test_fuzz_gsp.py SEED CASES [compiled]`` prints
the outcome counts as JSON (``compiled`` adds torch-compiled programs to the corpus).
"""

import copy
import functools
import json
import struct
import subprocess
import sys
import zlib
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import test_fuzz_gsf as gsf                       # the .gsf mutator, categories and cap
from gsaccel.hw.config import CoreConfig
from gsaccel.sw.compile.layers import BasisLayer, ClearLayer, GSLayer, InputTransform, ResidualNest
from gsaccel.sw.compile.program import GSP_VERSION, Program, ProgramTensor
from gsaccel.sw.errors import FormatError
from gsaccel.sw.format import GSMatrix
from gsaccel.sw.format.geometry import LoopNest, TensorGeometry

SEED = gsf.SEED
DEFAULT_CASES = 1500
SLOW_CASES = 100_000
PREFIX = struct.Struct("<4sHI")
INTERESTING = [0, 1, -1, 2, 3, 4, 7, 8, 16, 31, 32, 100, 101, 127, 128, 255, 256, 65535,
               65536, 2**31, 2**32, 2**63 - 1, -2**63, 2**64, 10**30, 0.5, 1.0, -0.0, 1e308,
               float("nan"), float("inf"), True, False, None, "", "x", "no", "sum", "max",
               "gs", "clear", "basis", "im2col", "flatten", "none", "pow2", [], {}, [1, 2],
               [0, 0], [1], [1, 1, 1], {"a": 1}, [[[[[[[[[[[[[[[[[[[[0]]]]]]]]]]]]]]]]]]]]]


# Hand-built programs --------------------------------------------------------------------------

def _weights(rng, shape, encoding, density=0.5):
    from gsaccel.sim.stimulus import random_values
    mask = rng.random(shape) < density
    weights = np.zeros(shape, dtype=np.int64)
    weights[mask] = random_values(rng, int(mask.sum()), encoding, max_exp=3)
    return weights


def _gs(name, torch_op, matrix, nest, inputs, output, rng, *, op="sum", relu=True):
    return GSLayer(name=name, torch_op=torch_op, matrix=matrix,
                   bias=rng.integers(-50, 50, matrix.shape[0]), shift=int(rng.integers(0, 6)),
                   relu=relu, op=op, nest=nest, inputs=tuple(inputs), output=output)


def _info(layers):
    return [{"name": layer.name, "kind": layer.kind, "torch_op": layer.torch_op,
             "scale_log2": -4} for layer in layers]


def conv_program(seed=0, encoding="pow2"):
    """V = 4: a padded 3x3 conv on a (3, 4, 4) input, 2x2 max pooling, a 1x1 conv, a residual
    addition, a whole-input 'Linear' into a chunk-padded one-pixel tensor (CLEARed first), a
    SmartDeal basis and a 1xN Linear."""
    rng = np.random.default_rng(seed)
    cfg = CoreConfig(lanes=4, bank_depth=128, encoding=encoding)
    g = {
        "x": TensorGeometry(4, 4, 3, 4, pad=1, base=0),          # 36 words
        "a": TensorGeometry(4, 4, 4, 4, base=36),                # 16
        "p": TensorGeometry(2, 2, 4, 4, base=52),                # 4
        "q": TensorGeometry(2, 2, 4, 4, base=56),
        "r": TensorGeometry(2, 2, 4, 4, base=60),
        "f": TensorGeometry(1, 1, 6, 4, base=64),                # 2 (5 channels + chunk pad)
        "z": TensorGeometry(1, 1, 6, 4, base=66),
        "y": TensorGeometry(1, 1, 3, 4, base=68),
    }
    shapes = {"x": (3, 4, 4), "a": (4, 4, 4), "p": (4, 2, 2), "q": (4, 2, 2), "r": (4, 2, 2),
              "f": (5, 1, 1), "z": (6, 1, 1), "y": (3, 1, 1)}
    producers = {"x": None, "a": "conv", "p": "pool", "q": "conv1x1", "r": "add", "f": "fc",
                 "z": "fc2.basis", "y": "fc2"}
    steps = list(shapes)
    tensors = {name: ProgramTensor(name, shapes[name], g[name], int(rng.integers(-6, 0)),
                                   producers[name], max(0, i - 1), min(i + 1, len(steps)))
               for i, name in enumerate(steps)}
    tensors["x"].first = 0
    conv = GSMatrix.from_dense(_weights(rng, (4, 36), encoding), "unstructured", 4, 1,
                               encoding)
    pool = np.zeros((4, 16), dtype=np.int64)
    for c in range(4):
        pool[c, np.arange(4) * 4 + c] = 1
    one = GSMatrix.from_dense(_weights(rng, (4, 4), encoding, 1.0), "dense", 4, 1, encoding)
    add = np.zeros((4, 8), dtype=np.int64)
    add[np.arange(4), np.arange(4)] = 1
    add[np.arange(4), 4 + np.arange(4)] = 2
    fc = GSMatrix.from_dense(_weights(rng, (5, 16), encoding), "unstructured", 4, 2, encoding)
    fc2 = np.zeros((3, 8), dtype=np.int64)
    fc2[:, [1, 4, 5]] = _weights(rng, (3, 3), encoding, 1.0)
    layers = [
        _gs("conv", "Conv2d+ReLU", conv, LoopNest(g["x"], g["a"], (3, 3), padding=(1, 1)),
            ["x"], "a", rng),
        _gs("pool", "MaxPool2d", GSMatrix.from_dense(pool, "gs-gather", 4, 1, encoding),
            LoopNest(g["a"], g["p"], (2, 2), stride=(2, 2)), ["a"], "p", rng, op="max",
            relu=False),
        _gs("conv1x1", "Conv2d", one, LoopNest(g["p"], g["q"]), ["p"], "q", rng, relu=False),
        _gs("add", "operator.add", GSMatrix.from_dense(add, "gs-gather", 4, 1, encoding),
            ResidualNest(g["p"].at(0), g["r"], operand_bases=(52, 56)), ["p", "q"], "r", rng),
        ClearLayer("f.clear", "f", 64, 2),
        _gs("fc", "Linear+ReLU", fc, LoopNest(g["r"], TensorGeometry(1, 1, 5, 4, base=64),
                                              (2, 2)), ["r"], "f", rng),
        BasisLayer("fc2.basis", "SmartDeal B", rng.integers(-128, 128, (3, 3)), 2, g["f"],
                   g["z"], 3, False, ("f",), "z"),
        _gs("fc2", "SmartDeal C'", GSMatrix.from_dense(fc2, "1xN", 4, 1, encoding),
            LoopNest(TensorGeometry(1, 1, 6, 4, base=66), g["y"]), ["z"], "y", rng,
            relu=False),
    ]
    return Program(cfg=cfg, depth=128, tensors=tensors, layers=layers, input="x",
                   input_shape=(3, 4, 4), input_scale_log2=tensors["x"].scale_log2,
                   input_transform=InputTransform(), output="y", output_shape=(3,),
                   output_scale_log2=tensors["y"].scale_log2, info=_info(layers))


def mlp_program(seed=0, encoding="int8"):
    """V = 8: a flattened (2, 3, 4) input and two Linears, gs-scatter e = 2 and gs-gather
    e = 8 (horizontal)."""
    from gsaccel.sim.stimulus import random_pattern_matrix
    rng = np.random.default_rng(seed)
    cfg = CoreConfig(lanes=8, bank_depth=64, encoding=encoding)
    g = {"x": TensorGeometry(1, 1, 24, 8, base=0), "h": TensorGeometry(1, 1, 12, 8, base=3),
         "y": TensorGeometry(1, 1, 10, 8, base=5)}
    tensors = {"x": ProgramTensor("x", (24, 1, 1), g["x"], -5, None, 0, 0),
               "h": ProgramTensor("h", (12, 1, 1), g["h"], -4, "fc1", 0, 1),
               "y": ProgramTensor("y", (10, 1, 1), g["y"], -3, "fc2", 1, 2)}
    w1, order = random_pattern_matrix(rng, "gs-scatter", 12, 24, 8, 2, encoding, density=0.6)
    w2, _ = random_pattern_matrix(rng, "gs-gather", 10, 16, 8, 8, encoding, density=0.9)
    layers = [
        _gs("fc1", "Linear+ReLU", GSMatrix.from_dense(w1, "gs-scatter", 8, 2, encoding,
                                                      row_order=order),
            LoopNest(g["x"], g["h"]), ["x"], "h", rng),
        _gs("fc2", "Linear", GSMatrix.from_dense(w2, "gs-gather", 8, 8, encoding),
            LoopNest(g["h"], g["y"]), ["h"], "y", rng, relu=False),
    ]
    return Program(cfg=cfg, depth=64, tensors=tensors, layers=layers, input="x",
                   input_shape=(2, 3, 4), input_scale_log2=-5,
                   input_transform=InputTransform("flatten"), output="y", output_shape=(10,),
                   output_scale_log2=-3, info=_info(layers))


def im2col_program(seed=0):
    """V = 2: a (1, 4, 4) input sent im2col'd for a 3x3 stride-2 convolution, then a
    Linear over its 2x2 output."""
    rng = np.random.default_rng(seed)
    cfg = CoreConfig(lanes=2, bank_depth=64)
    g = {"x": TensorGeometry(2, 2, 9, 2, base=0), "a": TensorGeometry(2, 2, 3, 2, base=20),
         "y": TensorGeometry(1, 1, 4, 2, base=28)}
    tensors = {"x": ProgramTensor("x", (9, 2, 2), g["x"], -4, None, 0, 0),
               "a": ProgramTensor("a", (3, 2, 2), g["a"], -3, "conv", 0, 1),
               "y": ProgramTensor("y", (4, 1, 1), g["y"], -2, "fc", 1, 2)}
    layers = [
        _gs("conv", "Conv2d", GSMatrix.from_dense(_weights(rng, (3, 10), "pow2"),
                                                  "unstructured", 2, 1, "pow2"),
            LoopNest(g["x"], g["a"]), ["x"], "a", rng),
        _gs("fc", "Linear", GSMatrix.from_dense(_weights(rng, (4, 16), "pow2"),
                                                "unstructured", 2, 2, "pow2"),
            LoopNest(g["a"], g["y"], (2, 2)), ["a"], "y", rng, relu=False),
    ]
    return Program(cfg=cfg, depth=64, tensors=tensors, layers=layers, input="x",
                   input_shape=(1, 4, 4), input_scale_log2=-4,
                   input_transform=InputTransform("im2col", (3, 3), (2, 2), (1, 1)),
                   output="y", output_shape=(4,), output_scale_log2=-2, info=_info(layers))


@functools.lru_cache(maxsize=None)
def corpus(compiled=False):
    programs = [conv_program(0, "pow2"), conv_program(1, "int8"), mlp_program(0, "int8"),
                mlp_program(1, "pow2"), im2col_program(0)]
    if compiled:
        programs += compiled_programs()
    return tuple(p.to_bytes() for p in programs)


def compiled_programs():
    """Programs the compiler made (torch), for the slow run."""
    import torch
    from torch import nn
    from gsaccel.sw.compile import compile
    from gsaccel.sw.prune import prune
    torch.manual_seed(SEED)
    conv = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8, 3)).eval()
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(20, 24), nn.ReLU(), nn.Linear(24, 6)).eval()
    prune(mlp, "gs-scatter", 0.5, lanes=4)
    return [compile(conv, torch.randn(8, 2, 6, 6), cfg=CoreConfig(bank_depth=256)),
            compile(mlp, torch.randn(8, 20), cfg=CoreConfig(lanes=4))]


# The file's parts -----------------------------------------------------------------------------

def split(data):
    """(header JSON text, payload) of a file."""
    _, _, hlen = PREFIX.unpack_from(data)
    return data[PREFIX.size:PREFIX.size + hlen], data[PREFIX.size + hlen + 4:-4]


def assemble(text, payload, version=GSP_VERSION):
    body = PREFIX.pack(b"GSP\x1a", version, len(text)) + text + \
        struct.pack("<I", len(payload)) + payload
    return body + struct.pack("<I", zlib.crc32(body))


def canonical(data):
    """The file with its header re-dumped as Program.to_bytes writes it."""
    text, payload = split(data)
    return assemble(json.dumps(json.loads(text), sort_keys=True).encode(), payload)


# Mutations -------------------------------------------------------------------------------------

def _leaves(tree):
    """Every (path, value) of a JSON tree, containers included, root first."""
    found, stack = [], [((), tree)]
    while stack:
        path, node = stack.pop()
        found.append((path, node))
        if isinstance(node, dict):
            stack.extend((path + (key,), value) for key, value in node.items())
        elif isinstance(node, list):
            stack.extend((path + (index,), value) for index, value in enumerate(node))
    return found


def _at(node, path):
    for key in path:
        node = node[key]
    return node


def _interesting(rng, current, values):
    choice = int(rng.integers(0, 4))
    if choice == 0 and type(current) is int:
        return current + int(rng.choice([-2, -1, 1, 2, 8, -8]))
    if choice == 1 and values:
        return copy.deepcopy(values[int(rng.integers(0, len(values)))])   # another field's
    return copy.deepcopy(INTERESTING[int(rng.integers(0, len(INTERESTING)))])


def _mutate_matrix(rng, header, payload):
    """An embedded .gsf matrix mutated (and re-sealed) in place; later spans shifted."""
    layers = header.get("layers")
    layers = layers if isinstance(layers, list) else []
    gs = [entry for entry in layers if isinstance(entry, dict)
          and entry.get("kind") == "gs" and isinstance(entry.get("matrix"), list)]
    if not gs:
        return payload
    entry = gs[int(rng.integers(0, len(gs)))]
    span = entry["matrix"]
    if len(span) != 2 or any(type(v) is not int or v < 0 for v in span):
        return payload
    start, length = span
    try:
        mutant = gsf.mutate(rng, payload[start:start + length])
    except (ValueError, IndexError, struct.error):     # not a matrix there any more
        return payload
    delta = len(mutant) - length
    entry["matrix"] = [start, len(mutant)]
    for other in layers:
        for key in ("matrix", "bias"):
            span = other.get(key) if isinstance(other, dict) else None
            if isinstance(span, list) and len(span) == 2 and isinstance(span[0], int) and \
                    span[0] > start:
                span[0] += delta
    return payload[:start] + mutant + payload[start + length:]


def mutate(rng, data):
    """One mutant of a valid program, re-sealed (lengths and CRC fixed) but rarely."""
    text, payload = split(data)
    header = json.loads(text)
    raw_text = None
    for _ in range(int(rng.integers(1, 3))):
        kind = int(rng.integers(0, 12))
        nodes = _leaves(header)
        path, node = nodes[int(rng.integers(1, len(nodes)))]
        parent = _at(header, path[:-1])
        if kind <= 4:                                    # a field set to another value
            parent[path[-1]] = _interesting(rng, node, [v for _, v in nodes[1:]])
        elif kind == 5:                                  # a key or list entry removed
            del parent[path[-1]]
        elif kind == 6:                                  # a key added or an entry duplicated
            if isinstance(parent, dict):
                parent[str(rng.choice(["extra", "operand_bases", "kind", "name"]))] = \
                    _interesting(rng, None, [])
            else:
                parent.insert(int(rng.integers(0, len(parent) + 1)), copy.deepcopy(node))
        elif kind == 7 and isinstance(parent, list) and len(parent) > 1:   # entries swapped
            i, j = rng.choice(len(parent), 2, replace=False)
            parent[i], parent[j] = parent[j], parent[i]
        elif kind <= 9:                                  # an embedded matrix mutated
            payload = _mutate_matrix(rng, header, payload)
        elif kind == 10:                                 # bias or matrix bytes flipped
            if payload:
                payload = bytearray(payload)
                payload[int(rng.integers(0, len(payload)))] ^= 1 << int(rng.integers(0, 8))
                payload = bytes(payload)
        else:                                            # the JSON text itself
            raw_text = bytearray(json.dumps(header, sort_keys=bool(rng.integers(0, 2)))
                                 .encode())
            at = int(rng.integers(0, len(raw_text)))
            how = int(rng.integers(0, 4))
            if how == 0:
                raw_text[at] = int(rng.choice(list(b'{}[]",:0123456789 -.eE\\tn')))
            elif how == 1:
                raw_text[at:at] = b" \n\t"[int(rng.integers(0, 3)):][:1]
            elif how == 2:
                del raw_text[at]
            else:
                raw_text[at:at] = b"[" * int(rng.integers(1, 100))
            break
    if raw_text is None:
        raw_text = json.dumps(header, sort_keys=bool(rng.random() < 0.8),
                              indent=None if rng.random() < 0.9 else 1).encode()
    mutant = assemble(bytes(raw_text), payload)
    if rng.random() < 0.03:                              # stale CRC, or a length off
        mutant = bytearray(mutant)
        mutant[int(rng.integers(0, len(mutant)))] ^= 0x10
        mutant = bytes(mutant)
    return mutant


# The property ---------------------------------------------------------------------------------

def check(data, run=False):
    """``"ok"`` or ``"FormatError: <category>"``; AssertionError for anything else."""
    try:
        program = Program.from_bytes(data)
    except FormatError as error:
        kind = gsf.category(error)
        assert "does not describe a program" not in kind, f"{error} on {data.hex()}"
        return f"FormatError: {kind}"
    except Exception as error:          # noqa: BLE001 -- the property under test
        raise AssertionError(f"{type(error).__name__}: {error} on {data.hex()}") from None
    assert program.to_bytes() == canonical(data), f"re-serialises differently: {data.hex()}"
    program.stats()                     # inspect: the cycle model and every phase's image
    if run:                             # run: the golden model on one random input
        x = np.random.default_rng(0).normal(size=(1,) + program.input_shape)
        program.run_golden_int(x)
    return "ok"


def fuzz(seed, cases, compiled=False, run_every=10):
    files = corpus(compiled)
    rng = np.random.default_rng([seed, 0x65])
    outcomes = Counter()
    for case in range(cases):
        data = mutate(rng, files[int(rng.integers(0, len(files)))])
        outcomes[check(data, run=case % run_every == 0)] += 1
    return outcomes


def run_child(seed, cases, compiled=False, timeout=3600):
    result = subprocess.run([sys.executable, __file__, str(seed), str(cases)]
                            + (["compiled"] if compiled else []),
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return Counter(json.loads(result.stdout.splitlines()[-1]))


# Tests ----------------------------------------------------------------------------------------

def test_the_hand_built_programs_are_valid():
    for data in corpus():
        program = Program.from_bytes(data)
        assert program.to_bytes() == data
        x = np.random.default_rng(1).normal(size=(2,) + program.input_shape)
        assert program.run_golden_int(x).shape == (2,) + program.output_shape


def test_mutation_fuzz_default(capsys):
    outcomes = run_child(SEED, DEFAULT_CASES)
    parsed, errors, kinds = gsf.summarise(outcomes)
    with capsys.disabled():
        print(f"\n.gsp fuzz: {DEFAULT_CASES} cases, {parsed} parsed and re-serialised, "
              f"{errors} FormatError ({len(kinds)} kinds)")
    assert parsed + errors == DEFAULT_CASES
    assert parsed > 0 and len(kinds) >= 40


@pytest.mark.slow
def test_mutation_fuzz_slow(capsys):
    half = SLOW_CASES // 2
    outcomes = run_child(SEED + 1, half, compiled=True) + \
        run_child(SEED + 2, SLOW_CASES - half, compiled=True)
    parsed, errors, kinds = gsf.summarise(outcomes)
    with capsys.disabled():
        print(f"\n.gsp fuzz: {SLOW_CASES} cases, {parsed} parsed and re-serialised, "
              f"{errors} FormatError")
        for kind, count in kinds.most_common():
            print(f"  {count:6d}  {kind}")
    assert parsed + errors == SLOW_CASES


def _containers(inner):
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                         max_size=4)


def test_memory_stays_bounded_by_the_file():
    """Parsing any mutant allocates (traced by tracemalloc, numpy's buffers included) at most
    64 KiB plus 64 bytes per byte of the file: no field's value is allocated before it is
    checked against the bytes and the core's memories."""
    from fuzz_memory import peak_allocations
    rng = np.random.default_rng(SEED)
    files = corpus()
    mutants = (mutate(rng, files[int(rng.integers(0, len(files)))]) for _ in range(60))
    for data, peak in peak_allocations(Program.from_bytes, mutants):
        assert peak <= (64 << 10) + 64 * len(data), peak


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) |
                    st.floats(allow_nan=True) | st.text(max_size=8), _containers,
                    max_leaves=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 4), st.integers(0, 10**6), JSON)
def test_any_json_in_any_field(which, pick, value):
    """Any JSON value in place of any field (or the whole header) of a valid program."""
    data = corpus()[which]
    text, payload = split(data)
    header = json.loads(text)
    nodes = _leaves(header)
    path, _ = nodes[pick % len(nodes)]
    if path:
        _at(header, path[:-1])[path[-1]] = value
    else:
        header = value
    check(assemble(json.dumps(header, sort_keys=True).encode(), payload))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200), st.binary(max_size=64))
def test_any_header_bytes(text, payload):
    """Any header text and payload, sealed: a FormatError (or, in principle, a program)."""
    check(assemble(text, payload))


if __name__ == "__main__":
    seed, cases = int(sys.argv[1]), int(sys.argv[2])
    compiled = "compiled" in sys.argv[3:]
    corpus(compiled)                    # imports and caches first, then the cap
    gsf.cap_memory()
    print(json.dumps(fuzz(seed, cases, compiled)))
