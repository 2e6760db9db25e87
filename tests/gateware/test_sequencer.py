# amaranth: UnusedElaboratable=no
"""The command processor and sequencer, driven through the whole core with frames."""

import struct

import pytest

from gsaccel.hw.config import CoreConfig
from gsaccel.hw.layouts import ErrorCode, FrameType, Memory, memory_depth
from gsaccel.hw.sequencer import CommandProcessor, Sequencer
from gsaccel.sim.amaranth_sim import seeded_rng
from gsaccel.sw import protocol
from gsaccel.sw.golden import GoldenCore

from core_host import reference_reply, run_core

CFG = CoreConfig(lanes=4, bank_depth=8, weight_depth=40, row_depth=24, layer_depth=4,
                 result_queue=8, max_payload=64)


def _check_session(cfg, frames, *, name, **kwargs):
    """Send good frames, compare every reply with the reference built on GoldenCore."""
    golden = GoldenCore(cfg)
    expected = [(t, seq, *reference_reply(golden, t, p)) for t, seq, p in frames]
    requests = [(protocol.encode_frame(t, seq, p), 1) for t, seq, p in frames]
    got = run_core(cfg, requests, name=name, **kwargs)
    assert [(f.seq, f.type, f.payload) for f in got] == [(s, rt, rp) for _, s, rt, rp in expected]
    return golden


@pytest.mark.parametrize("idle,stall", [(0.0, 0.0), (0.3, 0.5)])
def test_memories_round_trip(idle, stall):
    rng = seeded_rng(3)
    cfg = CFG
    frames = [(FrameType.HELLO, 1, b"")]
    seq = 2
    for mem in (Memory.LAYERS, Memory.WEIGHTS, Memory.ROWS, Memory.ACTS):
        size = protocol.word_size(cfg, mem)
        depth = memory_depth(cfg, mem)
        count = min(protocol.max_write_words(cfg, mem), depth, 7)
        addr = int(rng.integers(0, depth - count + 1))
        data = bytes(rng.integers(0, 256, count * size).tolist())
        frames.append((FrameType.WRITE, seq, struct.pack("<BH", mem, addr) + data))
        frames.append((FrameType.READ, seq + 1, protocol.read_payload(mem, addr, count)))
        # The ends of the memory are reachable.
        frames.append((FrameType.WRITE, seq + 2, struct.pack("<BH", mem, depth - 1) + data[:size]))
        frames.append((FrameType.READ, seq + 3, protocol.read_payload(mem, depth - 2, 2)))
        seq += 4
    frames.append((FrameType.READ, seq, protocol.read_payload(Memory.COUNTERS, 0, 4)))
    frames.append((FrameType.READ, seq + 1, protocol.read_payload(Memory.ACTS, 0, 0)))
    _check_session(cfg, frames, name=f"cmd_round_trip_{idle}_{stall}", idle=idle, stall=stall)


def test_bad_requests_are_rejected_before_anything_is_written():
    cfg = CFG
    acts = bytes(range(1, 9))
    depth = memory_depth(cfg, Memory.ACTS)
    frames = [
        (FrameType.WRITE, 1, struct.pack("<BH", Memory.ACTS, 0) + acts),       # good
        (FrameType.WRITE, 2, struct.pack("<BH", 7, 0) + acts),                 # BAD_MEMORY
        (FrameType.WRITE, 3, struct.pack("<BH", Memory.COUNTERS, 0) + bytes(4)),  # read-only
        (FrameType.WRITE, 4, struct.pack("<BH", Memory.ACTS, depth - 4) + acts),  # BAD_ADDRESS
        (FrameType.WRITE, 5, struct.pack("<BH", Memory.ROWS, 0) + bytes(7)),   # BAD_LENGTH
        (FrameType.WRITE, 6, b"\x03\x00"),                                     # BAD_LENGTH
        (FrameType.READ, 7, struct.pack("<BHH", Memory.ACTS, 0, 8)),           # unchanged
        (FrameType.READ, 8, struct.pack("<BHH", 5, 0, 1)),                     # BAD_MEMORY
        (FrameType.READ, 9, struct.pack("<BHH", Memory.ACTS, depth - 1, 2)),   # BAD_ADDRESS
        (FrameType.READ, 10, struct.pack("<BHH", Memory.ACTS, 0, 65)),         # too long
        (FrameType.READ, 11, struct.pack("<BHH", Memory.ACTS, 0, 1) + b"\x00"),  # BAD_LENGTH
        (FrameType.RUN, 12, b"\x03\x02"),                                      # BAD_LAYER
        (FrameType.RUN, 13, b"\x00\x00"),                                      # BAD_LAYER
        (FrameType.RUN, 14, b"\x00"),                                          # BAD_LENGTH
        (FrameType.HELLO, 15, b"\x00"),                                        # BAD_LENGTH
        (0x55, 16, b"abc"),                                                    # BAD_TYPE
        (FrameType.ACK, 17, b""),                                              # BAD_TYPE
        (FrameType.HELLO, 18, b""),
    ]
    golden = _check_session(cfg, frames, name="cmd_errors")
    assert golden.read(Memory.ACTS, 0, 8) == list(range(1, 9))


def test_corrupt_truncated_and_oversized_frames():
    cfg = CFG
    good = protocol.encode_frame(FrameType.READ, 3, protocol.read_payload(Memory.ACTS, 0, 2))
    corrupt = bytearray(protocol.encode_frame(FrameType.WRITE, 1,
                                              struct.pack("<BH", Memory.ACTS, 0) + b"\x7f"))
    corrupt[5] ^= 0x10                              # the memory id flips on the wire
    too_long = struct.pack("<BBBH", 0xA5, FrameType.WRITE, 2, cfg.max_payload + 1)
    truncated = protocol.encode_frame(FrameType.WRITE, 4, bytes(9))[:8]
    flush = bytes(cfg.max_payload + 9)              # the host's resynchronisation padding
    requests = [(bytes(corrupt), 1), (too_long, 1), (good, 1), (truncated + flush, 1),
                (good, 1)]
    got = run_core(cfg, requests, name="cmd_bad_frames")
    error = FrameType.ERROR
    assert [(f.type, f.seq, f.payload) for f in got] == [
        (error, 1, bytes([ErrorCode.BAD_CRC])), (error, 2, bytes([ErrorCode.BAD_LENGTH])),
        (FrameType.DATA, 3, b"\x00\x00"), (error, 4, bytes([ErrorCode.BAD_CRC])),
        (FrameType.DATA, 3, b"\x00\x00")]


def test_control_blocks_reject_bad_config():
    for block in (Sequencer, CommandProcessor):
        with pytest.raises(TypeError, match=r"^Configuration must be a CoreConfig, not 'x'$"):
            block("x")


def test_empty_layers_cost_what_golden_says():
    from gsaccel.hw.layouts import LayerKind, layer_layout
    from gsaccel.sw.image import pack_word
    cfg = CFG
    basis = pack_word(layer_layout(cfg), {"kind": LayerKind.BASIS, "src": 0, "dst": 1,
                                          "group_count": 0, "basis": [1] * 9})
    frames = [(FrameType.RUN, 1, protocol.run_payload(0, 1)),      # zeroed table: empty GS
              (FrameType.RUN, 2, protocol.run_payload(0, 4)),
              (FrameType.WRITE, 3, protocol.write_payload(cfg, Memory.LAYERS, 2, [basis])),
              (FrameType.RUN, 4, protocol.run_payload(1, 3)),
              (FrameType.READ, 5, protocol.read_payload(Memory.COUNTERS, 1, 3))]
    _check_session(cfg, frames, name="cmd_empty_layers")
