# amaranth: UnusedElaboratable=no
"""The whole core in amaranth.sim: a multi-layer device image loaded through frames, run, and
compared bit for bit (outputs) and cycle for cycle (counters) with GoldenCore."""

import numpy as np
import pytest

from gsaccel.hw.config import CoreConfig
from gsaccel.hw.layouts import FrameType, Memory, memory_layout
from gsaccel.sim.amaranth_sim import seeded_rng
from gsaccel.sw.runtime import protocol
from gsaccel.sw.golden import GoldenCore
from gsaccel.sw.runtime.golden_link import GoldenCommandProcessor
from gsaccel.hw.layouts import LayerKind, layer_layout
from gsaccel.sim.stimulus import loop_program_config, random_loop_program
from gsaccel.sw.compile.image import build_image
from gsaccel.sw.compile.layers import BasisLayer, GSLayer
from gsaccel.sw.errors import ShapeError
from gsaccel.sw.format import GSMatrix
from gsaccel.sw.format.geometry import LoopNest, TensorGeometry
from gsaccel.sw.format.words import pack_word, unpack_word

from core_host import image_requests, random_matrix, run_core


def loop_config(lanes, encoding, deep, *, basis=True, vector_writer=True, rng=None):
    """A small core and :func:`random_loop_program` drawn with ``rng`` for it."""
    cfg = loop_program_config(lanes, encoding, deep_pipeline=deep, basis=basis,
                              vector_writer=vector_writer)
    layers, source, tensors = random_loop_program(rng, cfg)
    return cfg, layers, source, tensors


def acts_frames(cfg, seq, elements):
    """WRITE frames filling ACTS from element 0 with ``elements`` (int8)."""
    frames = []
    step = protocol.max_write_words(cfg, Memory.ACTS)
    for start in range(0, len(elements), step):
        chunk = (np.asarray(elements[start:start + step]).astype(np.int64) & 0xFF).tolist()
        frames.append((FrameType.WRITE, seq & 0xFF,
                       protocol.write_payload(cfg, Memory.ACTS, start, chunk)))
        seq += 1
    return frames, seq


def read_frames(cfg, seq, mem, count):
    frames = []
    step = protocol.max_read_words(cfg, mem)
    for start in range(0, count, step):
        frames.append((FrameType.READ, seq & 0xFF,
                       protocol.read_payload(mem, start, min(step, count - start))))
        seq += 1
    return frames, seq


def session(cfg, layers, source, rng):
    """Load the program, fill the scratchpad with stale bytes and the input, run every layer,
    read the whole scratchpad back, then run single layers and read the counters."""
    image = build_image(cfg, layers)
    frames, seq = image_requests(cfg, image)
    acts = rng.integers(-128, 128, (cfg.lanes, cfg.bank_depth)).astype(np.int8)
    source.scatter(rng.integers(-128, 128, (source.height, source.width, source.channels)),
                   acts)
    more, seq = acts_frames(cfg, seq, acts.T.ravel())
    frames += more
    frames.append((FrameType.RUN, seq & 0xFF, protocol.run_payload(0, len(layers))))
    more, seq = read_frames(cfg, seq + 1, Memory.ACTS, cfg.act_size)
    frames += more
    # Single layers too, so a wrong per-layer constant cannot hide in a sum.
    for index in (1, 3, len(layers) - 1):
        frames.append((FrameType.RUN, seq & 0xFF, protocol.run_payload(index, 1)))
        seq += 1
    frames.append((FrameType.READ, seq & 0xFF, protocol.read_payload(Memory.COUNTERS, 0, 4)))
    return frames


def check_against_golden(cfg, frames, name, deadline, *, stall=0.0):
    golden = GoldenCore(cfg)
    reference = GoldenCommandProcessor(golden)
    expected = [(seq, *reference.answer(t, seq, p)) for t, seq, p in frames]
    got = run_core(cfg, [(protocol.encode_frame(t, s, p), 1) for t, s, p in frames],
                   name=name, deadline=deadline, idle=stall, stall=stall)
    got = [(f.seq, f.type, f.payload) for f in got]
    for mine, want in zip(got, expected):
        if want[1] == FrameType.DATA and len(want[2]) == 16 and mine[2] != want[2]:
            raise AssertionError(f"counters {protocol.parse_counters(mine[2])} != golden "
                                 f"{protocol.parse_counters(want[2])}")
    assert got == expected
    return golden


@pytest.mark.parametrize("lanes,encoding,deep,vector_writer,stall", [
    (4, "pow2", True, True, 0.0), (8, "int8", True, True, 0.0), (2, "int8", True, True, 0.3),
    (2, "pow2", True, False, 0.3), (8, "pow2", False, False, 0.0),
    pytest.param(16, "pow2", True, True, 0.0, marks=pytest.mark.slow),
    pytest.param(16, "int8", True, False, 0.0, marks=pytest.mark.slow),
    pytest.param(4, "int8", False, False, 0.0, marks=pytest.mark.slow)])
def test_core_runs_loop_nests_like_golden(lanes, encoding, deep, vector_writer, stall):
    """Convolutions (padded, dilated, strided, a GS-scatter one whose row groups hold two
    outputs of one bank), max pooling, a depthwise conv, a residual addition, a Linear over a
    flattened tensor, a basis layer and the CLEARs of padded tensors, on a scratchpad full of
    stale bytes, with the vector writer and the serial one, with idle input and
    back-pressured replies: every reply (the whole scratchpad, the counters of the run and
    of single layers) equals GoldenCore's."""
    rng = seeded_rng(lanes)
    cfg, layers, source, tensors = loop_config(lanes, encoding, deep,
                                               vector_writer=vector_writer, rng=rng)
    scatter, = (layer for layer in layers if layer.name == "scatter")
    assert scatter.matrix.pattern == "gs-scatter" and scatter.matrix.row_lines()[1].max() > 1
    golden = check_against_golden(cfg, session(cfg, layers, source, rng),
                                  f"core_loops_{lanes}_{encoding}_{int(deep)}_"
                                  f"{int(vector_writer)}", 4_000_000, stall=stall)
    # The comparison is not vacuous: the last layer's outputs are neither all zero nor all
    # saturated, and GoldenCore agrees with the layer-level golden model.
    acts = np.array(golden.read(Memory.ACTS, 0, cfg.act_size), dtype=np.int8)
    out = tensors["linear"].gather(acts.reshape(cfg.bank_depth, lanes).T)
    assert np.count_nonzero(out) and np.count_nonzero(np.abs(out.astype(int)) < 127)


def linear(cfg, matrix, src, dst, shift, pixels=1):
    """A GS layer of ``matrix`` from bank address ``src`` to ``dst``, replayed for
    ``pixels`` output pixels in a row (each pixel's input and output one pixel on)."""
    rows, cols = matrix.shape
    padded = -(-cols // cfg.lanes) * cfg.lanes
    if padded != cols:          # the GEMM view's columns are whole channel words
        matrix = GSMatrix.from_dense(np.pad(matrix.to_dense(), ((0, 0), (0, padded - cols))),
                                     "unstructured", cfg.lanes, matrix.per_row,
                                     encoding=cfg.encoding)
    source = TensorGeometry(1, pixels, cols, cfg.lanes, base=src)
    dest = TensorGeometry(1, pixels, rows, cfg.lanes, base=dst)
    return GSLayer("linear", "Linear", matrix, np.zeros(rows, dtype=np.int64), shift, False,
                   "sum", LoopNest(source, dest, (1, 1)), (), "linear")


def input_frames(cfg, seq, x):
    return [(FrameType.WRITE, seq, protocol.write_payload(cfg, Memory.ACTS, 0,
                                                          (x & 0xFF).tolist()))], seq + 1


@pytest.mark.parametrize("vector_writer", [True, False])
@pytest.mark.parametrize("per_row,cut,pixels", [(4, 2, 1), (1, 1, 1), (4, 1, 3)])
def test_layer_cut_inside_a_row_group_leaks_nothing(per_row, cut, pixels, vector_writer):
    """A hand-written descriptor may end a layer's groups inside a row group: the trailing
    groups cost issue cycles and emit nothing at the layer's end (with more pixels, a pixel's
    trailing groups add into the next pixel's first row group, as the engine's accumulators
    only clear at a ``last`` group), and must not leak partial sums into the next layer.
    With ``per_row=1`` eight trailing groups outlast the writer, so the layer ends when the
    engine's pipeline drains (``golden.engine_drain(cfg)``)."""
    cfg = CoreConfig(lanes=4, bank_depth=16, weight_depth=64, row_depth=32, layer_depth=4,
                     result_queue=8, max_payload=96, vector_writer=vector_writer)
    rng = seeded_rng(99 + pixels)
    first = random_matrix(rng, 5, 8, "dense", cfg, per_row=per_row, density=1.0)
    second = random_matrix(rng, 6, 5, "dense", cfg, per_row=1, density=1.0)
    # Shifts keep the outputs off the int8 rails, so a leaked partial sum would show.
    image = build_image(cfg, [linear(cfg, first, 0, 8, 9, pixels),
                              linear(cfg, second, 8, 0, 8)])
    descriptor = unpack_word(layer_layout(cfg), image.layers[0])
    descriptor["group_count"] -= cut               # the last row group loses its last group
    image.layers[0] = pack_word(layer_layout(cfg), descriptor)
    frames, seq = image_requests(cfg, image)
    more, seq = input_frames(cfg, seq, rng.integers(-128, 128, 8 * pixels))
    frames += more + [(FrameType.RUN, seq, protocol.run_payload(0, 2)),
                      (FrameType.READ, seq + 1, protocol.read_payload(Memory.ACTS, 0, 64))]
    golden = check_against_golden(cfg, frames, f"core_cut_row_group_{per_row}_{pixels}_"
                                               f"{int(vector_writer)}", 100_000)
    outputs = np.array(golden.read(Memory.ACTS, 32, 8 * pixels))
    assert np.count_nonzero(np.abs(outputs) < 127) >= 3


def test_a_repeated_run_replays_its_reply_and_runs_nothing():
    """At most once (DESIGN §4): two layers, the second writing over the first one's input,
    so a RUN that ran twice would read its own output. A RUN with the last RUN's sequence
    number (a duplicate on the link, a resend after a lost reply) replays the counters and
    leaves the scratchpad as it was; a new number runs again; HELLO forgets the number."""
    cfg = CoreConfig(lanes=4, bank_depth=16, weight_depth=64, row_depth=32, layer_depth=4,
                     result_queue=8, max_payload=96)
    rng = seeded_rng(5)
    first = random_matrix(rng, 8, 8, "dense", cfg, density=1.0)
    second = random_matrix(rng, 8, 8, "dense", cfg, density=1.0)
    image = build_image(cfg, [linear(cfg, first, 0, 8, 7), linear(cfg, second, 8, 0, 7)])
    frames, seq = image_requests(cfg, image)
    more, seq = input_frames(cfg, seq, rng.integers(-128, 128, 8))
    run, read = protocol.run_payload(0, 2), protocol.read_payload(Memory.ACTS, 0, 8)
    frames += more + [(FrameType.RUN, seq, run), (FrameType.READ, seq + 1, read),
                      (FrameType.RUN, seq, run),            # the last RUN's number: replay
                      (FrameType.READ, seq + 2, read),
                      (FrameType.RUN, seq + 3, run),        # a new number: runs
                      (FrameType.READ, seq + 4, read),
                      (FrameType.HELLO, seq + 5, b""),
                      (FrameType.RUN, seq + 3, run),        # after HELLO: runs
                      (FrameType.READ, seq + 6, read)]
    golden = GoldenCore(cfg)
    reference = GoldenCommandProcessor(golden)
    replies = [reference.answer(t, s, p) for t, s, p in frames]
    once, replayed, twice, thrice = (replies[i][1] for i in (-8, -6, -4, -1))
    # Not vacuous: running again changes the result, and the replayed counters are a run's.
    assert once == replayed and len({once, twice, thrice}) == 3
    assert replies[-7] == replies[-9] and protocol.parse_counters(replies[-9][1])["groups"]
    assert (reference.runs, reference.replays) == (3, 1)
    check_against_golden(cfg, frames, "core_run_at_most_once", 100_000)


@pytest.mark.parametrize("edit", ["no_last", "extra_line", "wild_slots"])
def test_hand_written_row_lines_follow_golden(edit):
    """Row lines as only a hand-written descriptor has them run as GoldenCore says: lines
    without ``last`` (the pixel's last line pops its vector anyway, and the row stream goes
    on past the last pixel for the vectors left), a pixel with more lines than the packer
    writes (a ``last`` line popping a vector early), slots past V/e (taken modulo V/e)."""
    cfg = CoreConfig(lanes=4, bank_depth=32, weight_depth=64, row_depth=32, layer_depth=4,
                     result_queue=8, max_payload=96)
    rng = seeded_rng(123)
    matrix = random_matrix(rng, 7, 8, "dense", cfg, per_row=2 if edit == "wild_slots" else 1,
                           density=1.0)
    image = build_image(cfg, [linear(cfg, matrix, 0, 16, 8, pixels=3)])
    layout = memory_layout(cfg, Memory.ROWS)
    lines = [unpack_word(layout, word) for word in image.rows]
    descriptor = unpack_word(layer_layout(cfg), image.layers[0])
    if edit == "no_last":
        for line in lines:
            line["last"] = 0
    elif edit == "extra_line":
        lines.insert(1, {"records": [{"offset": 1, "bias": 5, "valid": 1, "slot": k}
                                     for k in range(4)], "last": 1})
        descriptor["row_count"] += 1
    else:
        for line in lines:
            for k, record in enumerate(line["records"]):
                record["slot"] = (record["slot"] + 2 * k + 1) % 4
    image.rows = [pack_word(layout, line) for line in lines]
    image.layers[0] = pack_word(layer_layout(cfg), descriptor)
    frames, seq = image_requests(cfg, image)
    more, seq = input_frames(cfg, seq, rng.integers(-128, 128, 8 * 3))
    frames += more + [(FrameType.RUN, seq, protocol.run_payload(0, 1)),
                      (FrameType.READ, seq + 1, protocol.read_payload(Memory.ACTS, 0, 96))]
    check_against_golden(cfg, frames, f"core_row_lines_{edit}", 100_000)


def test_core_without_basis_unit_passes_over_a_basis_descriptor():
    """``basis=False`` leaves the unit out: build_image refuses a BASIS layer, and a
    hand-written BASIS descriptor runs as the golden model says (nothing written, the
    sequencer's two BASIS states only)."""
    cfg = CoreConfig(lanes=4, bank_depth=16, weight_depth=64, row_depth=32, layer_depth=4,
                     result_queue=8, max_payload=96, basis=False)
    assert "basis" not in layer_layout(cfg).members
    rng = seeded_rng(7)
    one = TensorGeometry(1, 1, 9, cfg.lanes)
    with pytest.raises(ShapeError, match=r"^layer 'b': this core has no basis unit"):
        build_image(cfg, [BasisLayer("b", "SmartDeal B", np.eye(3, dtype=int), 2, one, one, 0,
                                     False, (), "b")])
    matrix = random_matrix(rng, 6, 9, "dense", cfg, per_row=4, density=1.0)
    image = build_image(cfg, [linear(cfg, matrix, 0, 8, 7)])
    image.layers.append(pack_word(layer_layout(cfg), {
        "kind": LayerKind.BASIS, "src_base": 8, "dst_base": 0, "group_count": 3,
        "shift": 1}))
    frames, seq = image_requests(cfg, image)
    x = rng.integers(-128, 128, 9)
    more, seq = input_frames(cfg, seq, x)
    frames += more + [(FrameType.RUN, seq, protocol.run_payload(0, 2)),
                      (FrameType.READ, seq + 1, protocol.read_payload(Memory.ACTS, 0, 9)),
                      (FrameType.READ, seq + 2, protocol.read_payload(Memory.ACTS, 32, 6))]
    golden = check_against_golden(cfg, frames, "core_no_basis", 100_000)
    # The basis layer left bank words 0.. (its destination) holding the input.
    assert golden.read(Memory.ACTS, 0, 9) == x.tolist()


def test_clear_and_unknown_kinds_follow_golden():
    """A CLEAR of bank words that wrap past the scratchpad's end, a CLEAR of 0 words (one
    cycle, nothing written) and a descriptor of the kind the sequencer does not know (its
    preamble and an empty GS state) cost and do what GoldenCore says."""
    cfg = CoreConfig(lanes=4, bank_depth=16, weight_depth=16, row_depth=16, layer_depth=4,
                     result_queue=8, max_payload=96)
    layout = layer_layout(cfg)
    image = build_image(cfg, [])
    image.layers = [pack_word(layout, {"kind": LayerKind.CLEAR, "dst_base": 13,
                                       "group_count": 5}),
                    pack_word(layout, {"kind": LayerKind.CLEAR, "dst_base": 2,
                                       "group_count": 0}),
                    pack_word(layout, {"kind": 3, "group_count": 4, "row_count": 2})]
    rng = seeded_rng(5)
    frames, seq = image_requests(cfg, image)
    more, seq = acts_frames(cfg, seq, rng.integers(-128, 128, cfg.act_size))
    frames += more
    for index in range(3):
        frames.append((FrameType.RUN, seq, protocol.run_payload(index, 1)))
        seq += 1
    more, seq = read_frames(cfg, seq, Memory.ACTS, cfg.act_size)
    golden = check_against_golden(cfg, frames + more, "core_clear", 100_000)
    acts = np.array(golden.read(Memory.ACTS, 0, cfg.act_size)).reshape(16, 4)
    assert not acts[[13, 14, 15, 0, 1]].any() and acts[[2, 12]].all()
