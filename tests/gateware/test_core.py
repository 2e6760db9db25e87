# amaranth: UnusedElaboratable=no
"""The whole core in amaranth.sim: a multi-layer device image loaded through frames, run, and
compared bit for bit (outputs) and cycle for cycle (counters) with GoldenCore."""

import numpy as np
import pytest

from gsaccel.hw.config import CoreConfig
from gsaccel.hw.layouts import FrameType, Memory
from gsaccel.sim.amaranth_sim import seeded_rng
from gsaccel.sw.runtime import protocol
from gsaccel.sw.golden import GoldenCore
from gsaccel.sw.compile.image import LayerSpec, build_image

from core_host import image_requests, random_matrix, reference_reply, run_core


def program(cfg, rng):
    """Four GS layers of different patterns and segment sizes, plus a SmartDeal basis layer,
    alternating buffers; shapes are not powers of two and biases push into saturation."""
    n_in = 13
    wide = 2 * cfg.lanes + 3        # every bank holds two columns for gs-gather's P <= 2
    shapes = [(wide, n_in, "unstructured", 1), (9, wide, "gs-gather", 2),
              (10, 9, "1xN", 1), (7, 10, "dense", cfg.lanes)]
    layers, src = [], 0
    for rows, cols, pattern, per_row in shapes:
        matrix = random_matrix(rng, rows, cols, pattern, cfg, per_row=per_row)
        bias = rng.integers(-300, 300, rows)
        layers.append(LayerSpec(kind="gs", matrix=matrix, bias=bias,
                                shift=int(rng.integers(0, 4)), relu=bool(rng.integers(0, 2)),
                                src=src, dst=1 - src))
        src = 1 - src
    if cfg.lanes >= 4:                 # the basis unit needs three banks for a chunk
        layers.append(LayerSpec(kind="basis", basis=rng.integers(-128, 128, (3, 3)),
                                n_chunks=2, shift=2, relu=False, src=src, dst=1 - src))
    return layers, n_in


def session(cfg, rng):
    layers, n_in = program(cfg, rng)
    image = build_image(cfg, layers)
    frames, seq = image_requests(cfg, image)
    x = rng.integers(-128, 128, n_in)
    frames.append((FrameType.WRITE, seq, protocol.write_payload(cfg, Memory.ACTS, 0,
                                                              (x & 0xFF).tolist())))
    frames.append((FrameType.RUN, seq + 1, protocol.run_payload(0, len(layers))))
    frames.append((FrameType.READ, seq + 2, protocol.read_payload(Memory.ACTS, 0, 2 * 16)))
    frames.append((FrameType.READ, seq + 3,
                   protocol.read_payload(Memory.ACTS, cfg.buffer_size, 16)))
    # Single layers too, so a wrong per-layer constant cannot hide in a sum.
    frames.append((FrameType.RUN, seq + 4, protocol.run_payload(1, 1)))
    frames.append((FrameType.RUN, seq + 5, protocol.run_payload(len(layers) - 1, 1)))
    frames.append((FrameType.READ, seq + 6, protocol.read_payload(Memory.COUNTERS, 0, 4)))
    return frames


@pytest.mark.parametrize("lanes,encoding,deep", [(4, "pow2", True), (8, "int8", True),
                                                 (2, "int8", True), (16, "pow2", True),
                                                 (8, "pow2", False), (4, "int8", False)])
def test_core_runs_image_like_golden(lanes, encoding, deep):
    cfg = CoreConfig(lanes=lanes, bank_depth=64 // lanes, encoding=encoding, weight_depth=192,
                     row_depth=128, layer_depth=8, result_queue=lanes * 2, max_payload=96,
                     deep_pipeline=deep)
    rng = seeded_rng(lanes)
    frames = session(cfg, rng)
    golden = GoldenCore(cfg)
    expected = [(seq, *reference_reply(golden, t, p)) for t, seq, p in frames]
    got = run_core(cfg, [(protocol.encode_frame(t, s, p), 1) for t, s, p in frames],
                   name=f"core_image_{lanes}_{encoding}", deadline=400_000)
    got = [(f.seq, f.type, f.payload) for f in got]
    for mine, want in zip(got, expected):
        if want[1] == FrameType.DATA and len(want[2]) == 16 and mine[2] != want[2]:
            raise AssertionError(f"counters {protocol.parse_counters(mine[2])} != golden "
                                 f"{protocol.parse_counters(want[2])}")
    assert got == expected
    # The comparison is not vacuous: the network's outputs are not all zero or saturated.
    outputs = np.frombuffer(expected[-5][2], dtype=np.int8)
    assert np.count_nonzero(outputs) and np.count_nonzero(np.abs(outputs.astype(int)) < 127)


@pytest.mark.parametrize("per_row,cut", [(4, 2), (1, 1)])
def test_layer_cut_inside_a_row_group_leaks_nothing(per_row, cut):
    """A hand-written descriptor may end a layer inside a row group: its trailing groups cost
    issue cycles, emit nothing, and must not leak partial sums into the next layer. With
    ``per_row=1`` eight trailing groups outlast the writer, so the layer ends when the
    engine's pipeline drains (``golden.engine_drain(cfg)``)."""
    from gsaccel.hw.layouts import layer_layout
    from gsaccel.sw.format.words import pack_word, unpack_word
    cfg = CoreConfig(lanes=4, bank_depth=8, weight_depth=64, row_depth=32, layer_depth=4,
                     result_queue=8, max_payload=96)
    rng = seeded_rng(99)
    first = random_matrix(rng, 5, 9, "dense", cfg, per_row=per_row, density=1.0)
    second = random_matrix(rng, 6, 5, "dense", cfg, per_row=1, density=1.0)
    # Shifts keep the outputs off the int8 rails, so a leaked partial sum would show.
    image = build_image(cfg, [LayerSpec(matrix=first, shift=9, src=0, dst=1),
                              LayerSpec(matrix=second, shift=8, src=1, dst=0)])
    descriptor = unpack_word(layer_layout(cfg), image.layers[0])
    descriptor["group_count"] -= cut               # the last row group loses its last group
    image.layers[0] = pack_word(layer_layout(cfg), descriptor)
    frames, seq = image_requests(cfg, image)
    x = rng.integers(-128, 128, 9)
    frames += [(FrameType.WRITE, seq, protocol.write_payload(cfg, Memory.ACTS, 0,
                                                             (x & 0xFF).tolist())),
               (FrameType.RUN, seq + 1, protocol.run_payload(0, 2)),
               (FrameType.READ, seq + 2, protocol.read_payload(Memory.ACTS, 0, 6))]
    golden = GoldenCore(cfg)
    expected = [(s, *reference_reply(golden, t, p)) for t, s, p in frames]
    got = run_core(cfg, [(protocol.encode_frame(t, s, p), 1) for t, s, p in frames],
                   name=f"core_cut_row_group_{per_row}", deadline=100_000)
    assert [(f.seq, f.type, f.payload) for f in got] == expected
    outputs = np.frombuffer(expected[-1][2], dtype=np.int8).astype(int)
    assert np.count_nonzero(np.abs(outputs) < 127) >= 3


def test_core_without_basis_unit_passes_over_a_basis_descriptor():
    """``basis=False`` leaves the unit out: build_image refuses a BASIS layer, and a
    hand-written BASIS descriptor runs as the golden model says (nothing written, the
    sequencer's two BASIS states only)."""
    from gsaccel.hw.layouts import LayerKind, layer_layout
    from gsaccel.sw.errors import ShapeError
    from gsaccel.sw.format.words import pack_word
    cfg = CoreConfig(lanes=4, bank_depth=8, weight_depth=64, row_depth=32, layer_depth=4,
                     result_queue=8, max_payload=96, basis=False)
    assert "basis" not in layer_layout(cfg).members
    rng = seeded_rng(7)
    with pytest.raises(ShapeError, match=r"^layer 0: this core has no basis unit"):
        build_image(cfg, [LayerSpec(kind="basis", basis=np.eye(3, dtype=int), n_chunks=2)])
    matrix = random_matrix(rng, 6, 9, "dense", cfg, per_row=4, density=1.0)
    image = build_image(cfg, [LayerSpec(matrix=matrix, shift=7, src=0, dst=1)])
    image.layers.append(pack_word(layer_layout(cfg), {
        "kind": LayerKind.BASIS, "src": 1, "dst": 0, "group_count": 3, "shift": 1}))
    frames, seq = image_requests(cfg, image)
    x = rng.integers(-128, 128, 9)
    frames += [(FrameType.WRITE, seq, protocol.write_payload(cfg, Memory.ACTS, 0,
                                                             (x & 0xFF).tolist())),
               (FrameType.RUN, seq + 1, protocol.run_payload(0, 2)),
               (FrameType.READ, seq + 2, protocol.read_payload(Memory.ACTS, 0, 9)),
               (FrameType.READ, seq + 3, protocol.read_payload(Memory.ACTS, 32, 6))]
    golden = GoldenCore(cfg)
    expected = [(s, *reference_reply(golden, t, p)) for t, s, p in frames]
    got = run_core(cfg, [(protocol.encode_frame(t, s, p), 1) for t, s, p in frames],
                   name="core_no_basis", deadline=100_000)
    assert [(f.seq, f.type, f.payload) for f in got] == expected
    # The basis layer left buffer 0 (its destination) holding the input.
    assert np.frombuffer(expected[-2][2], dtype=np.int8).tolist() == x.tolist()
