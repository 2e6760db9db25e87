# amaranth: UnusedElaboratable=no
"""The command processor and sequencer, driven through the whole core with frames."""

import dataclasses
import struct

import pytest

from gsaccel.hw.config import CoreConfig
from gsaccel.hw.layouts import ErrorCode, FrameType, Memory, memory_depth
from gsaccel.hw.command import CommandProcessor
from gsaccel.hw.sequencer import Sequencer
from gsaccel.sim.amaranth_sim import seeded_rng
from gsaccel.sw.runtime import protocol
from gsaccel.sw.golden import GoldenCore
from gsaccel.sw.runtime.golden_link import GoldenCommandProcessor

from core_host import run_core

CFG = CoreConfig(lanes=4, bank_depth=32, weight_depth=40, row_depth=24, layer_depth=5,
                 result_queue=8, max_payload=64)


def _check_session(cfg, frames, *, name, **kwargs):
    """Send good frames, compare every reply with the reference built on GoldenCore."""
    golden = GoldenCore(cfg)
    reference = GoldenCommandProcessor(golden)
    expected = [(t, seq, *reference.answer(t, seq, p)) for t, seq, p in frames]
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
        frames.append((FrameType.WRITE, seq, protocol.request_header(mem, addr) + data))
        frames.append((FrameType.READ, seq + 1, protocol.read_payload(mem, addr, count)))
        # The ends of the memory are reachable.
        frames.append((FrameType.WRITE, seq + 2, protocol.request_header(mem, depth - 1) + data[:size]))
        frames.append((FrameType.READ, seq + 3, protocol.read_payload(mem, depth - 2, 2)))
        seq += 4
    frames.append((FrameType.READ, seq, protocol.read_payload(Memory.COUNTERS, 0, 4)))
    frames.append((FrameType.READ, seq + 1, protocol.read_payload(Memory.ACTS, 0, 0)))
    _check_session(cfg, frames, name=f"cmd_round_trip_{idle}_{stall}", idle=idle, stall=stall)


def test_bad_requests_are_rejected_before_anything_is_written():
    cfg = CFG
    acts = bytes(range(1, 9))
    depth = memory_depth(cfg, Memory.ACTS)
    header, count = protocol.request_header, lambda n: struct.pack("<H", n)
    frames = [
        (FrameType.WRITE, 1, header(Memory.ACTS, 0) + acts),                 # good
        (FrameType.WRITE, 2, header(7, 0) + acts),                           # BAD_MEMORY
        (FrameType.WRITE, 3, header(Memory.COUNTERS, 0) + bytes(4)),         # read-only
        (FrameType.WRITE, 4, header(Memory.ACTS, depth - 4) + acts),         # BAD_ADDRESS
        (FrameType.WRITE, 5, header(Memory.ROWS, 0) + bytes(7)),             # BAD_LENGTH
        (FrameType.WRITE, 6, b"\x03\x00\x00"),                               # BAD_LENGTH
        (FrameType.WRITE, 7, header(Memory.ACTS, 1 << 16) + acts),           # BAD_ADDRESS
        (FrameType.READ, 8, header(Memory.ACTS, 0) + count(8)),              # unchanged
        (FrameType.READ, 9, header(5, 0) + count(1)),                        # BAD_MEMORY
        (FrameType.READ, 10, header(Memory.ACTS, depth - 1) + count(2)),     # BAD_ADDRESS
        (FrameType.READ, 11, header(Memory.ACTS, 0) + count(65)),            # too long
        (FrameType.READ, 12, header(Memory.ACTS, 0) + count(1) + b"\x00"),   # BAD_LENGTH
        (FrameType.READ, 13, header(Memory.ACTS, 0)[:3] + count(1)),         # BAD_LENGTH
        (FrameType.RUN, 14, b"\x04\x02"),                                      # BAD_LAYER
        (FrameType.RUN, 15, b"\x00\x00"),                                      # BAD_LAYER
        (FrameType.RUN, 16, b"\x00"),                                          # BAD_LENGTH
        (FrameType.HELLO, 17, b"\x00"),                                        # BAD_LENGTH
        (0x55, 18, b"abc"),                                                    # BAD_TYPE
        (FrameType.ACK, 19, b""),                                              # BAD_TYPE
        (FrameType.HELLO, 20, b""),
    ]
    golden = _check_session(cfg, frames, name="cmd_errors")
    assert golden.read(Memory.ACTS, 0, 8) == list(range(1, 9))


def test_corrupt_truncated_and_oversized_frames():
    cfg = CFG
    good = protocol.encode_frame(FrameType.READ, 3, protocol.read_payload(Memory.ACTS, 0, 2))
    corrupt = bytearray(protocol.encode_frame(FrameType.WRITE, 1,
                                              protocol.request_header(Memory.ACTS, 0) + b"\x7f"))
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
    from gsaccel.sw.format.words import pack_word
    cfg = CFG
    basis = pack_word(layer_layout(cfg), {"kind": LayerKind.BASIS, "src_base": 0,
                                          "dst_base": 4, "group_count": 0, "basis": [1] * 9})
    frames = [(FrameType.RUN, 1, protocol.run_payload(0, 1)),      # zeroed table: empty GS
              (FrameType.RUN, 2, protocol.run_payload(0, 4)),
              (FrameType.WRITE, 3, protocol.write_payload(cfg, Memory.LAYERS, 2, [basis])),
              (FrameType.RUN, 4, protocol.run_payload(1, 3)),
              (FrameType.READ, 5, protocol.read_payload(Memory.COUNTERS, 1, 3))]
    _check_session(cfg, frames, name="cmd_empty_layers")


@pytest.mark.parametrize("vector_writer", [True, False])
def test_sequencer_streams_loop_nests_under_back_pressure(vector_writer):
    """The Sequencer alone, with memories and datapath emulated by the testbench: for every
    output pixel of a layer, in raster order, its group words stream with the pixel's input
    base and its row words with the pixel's output base and ``end`` on its last one (the row
    stream goes on past the last pixel), under random back-pressure; BASIS layers get their parameters, a CLEAR
    layer writes its words, and the counters add up what the datapath reported."""
    from gsaccel.hw.layouts import COUNTER_NAMES, LayerKind, group_layout, layer_layout, row_layout
    from gsaccel.hw.sequencer import ScratchpadOwner
    from gsaccel.sim.amaranth_sim import background, run_sim, stall_pattern
    from gsaccel.sw.format.words import pack_word, unpack_word

    cfg = dataclasses.replace(CFG, vector_writer=vector_writer)
    depth = cfg.bank_depth
    rng = seeded_rng(21)
    weights = [int(w) for w in rng.integers(0, 1 << group_layout(cfg).size, cfg.weight_depth)]
    row_bits = row_layout(cfg).size
    rows = [int.from_bytes(rng.bytes(-(-row_bits // 8)), "little") & ((1 << row_bits) - 1)
            for _ in range(cfg.row_depth)]
    # Descriptor fields, and the rows the "writer" takes (past the last pixel's, for the
    # second layer).
    plan = [
        ({"kind": LayerKind.GS, "group_base": 3, "group_count": 4, "row_base": 20,
          "row_count": 3, "last_col": 2, "last_row": 1, "src_base": 5, "dst_base": 30,
          "in_pixel_step": 2, "in_row_step": 7, "out_pixel_step": 1, "out_row_step": 3}, 18),
        ({"kind": LayerKind.BASIS, "group_count": 4, "src_base": 6, "dst_base": 1}, 0),
        ({"kind": LayerKind.GS, "group_base": 36, "group_count": 1, "row_base": 22,
          "row_count": 0, "last_col": 1, "src_base": 31, "dst_base": 3,
          "in_pixel_step": 1, "out_pixel_step": 2}, 4),
        ({"kind": LayerKind.CLEAR, "group_count": 5, "dst_base": 29}, 0),
        ({"kind": LayerKind.GS}, 0),
    ]
    layers = [pack_word(layer_layout(cfg), {"relu": k % 2, "seg_log2": 1, "shift": 3 + k,
                                            "basis": [k - 4 + i for i in range(9)], **fields})
              for k, (fields, _) in enumerate(plan)]
    dut = Sequencer(cfg)
    taken_groups, taken_rows, basis_runs, cleared = [], [], [], []
    stats = {"busy": 0, "stall": 0, "issue": 0}

    async def memories(ctx):
        # Synchronous read ports: data of the address sampled at an edge, held when disabled.
        async for _, _, layer_addr, weight_addr, weight_en, row_addr, row_en in \
                ctx.tick().sample(dut.layer_addr, dut.weight_addr, dut.weight_en,
                                  dut.row_addr, dut.row_en):
            ctx.set(dut.layer_data.as_value(), layers[layer_addr % len(layers)])
            if weight_en:
                ctx.set(dut.weight_data.as_value(), weights[weight_addr % cfg.weight_depth])
            if row_en:
                ctx.set(dut.row_data.as_value(), rows[row_addr % cfg.row_depth])

    async def datapath(ctx):
        group_stalls, row_stalls = stall_pattern(rng, 0.4), stall_pattern(rng, 0.5)
        layer, rows_left, basis_wait = -1, 0, None
        previous_owner = ScratchpadOwner.HOST
        while True:
            owner = ScratchpadOwner(ctx.get(dut.owner))
            if owner != ScratchpadOwner.HOST and previous_owner == ScratchpadOwner.HOST:
                layer += 1
                rows_left = plan[layer][1]
            previous_owner = owner
            group_ready = not next(group_stalls)
            row_ready = rows_left > 0 and not next(row_stalls)
            issue = group_ready and ctx.get(dut.o_group.valid)
            stall = bool(not group_ready and ctx.get(dut.o_group.valid))
            ctx.set(dut.o_group.ready, group_ready)
            ctx.set(dut.o_row.ready, row_ready)
            ctx.set(dut.issue, issue)
            ctx.set(dut.issue_lanes, 3)
            ctx.set(dut.stall, stall)
            ctx.set(dut.engine_idle, 1)
            ctx.set(dut.writer_idle, rows_left == 0)
            ctx.set(dut.basis_done, basis_wait == 0)
            if issue:
                payload = dut.o_group.payload
                taken_groups.append((layer, ctx.get(payload.word.as_value()),
                                     ctx.get(payload.base)))
            if row_ready and ctx.get(dut.o_row.valid):
                payload = dut.o_row.payload
                taken_rows.append((layer, ctx.get(payload.row.as_value()),
                                   ctx.get(payload.base), ctx.get(payload.end)))
                rows_left -= 1
            if owner == ScratchpadOwner.CLEAR and ctx.get(dut.clear.en):
                cleared.append(ctx.get(dut.clear.addr))
            if ctx.get(dut.basis_start):
                basis_runs.append({name: ctx.get(getattr(dut.control, name)) for name in
                                   ("shift", "relu", "src_base", "dst_base")} |
                                  {"n_chunks": ctx.get(dut.n_chunks),
                                   "basis": [ctx.get(dut.basis[i]) for i in range(9)]})
                basis_wait = 5
            elif basis_wait is not None:
                basis_wait = None if basis_wait == 0 else basis_wait - 1
            stats["busy"] += ctx.get(dut.busy)
            stats["stall"] += stall
            stats["issue"] += issue
            await ctx.tick()

    async def host(ctx):
        ctx.set(dut.first, 0)
        ctx.set(dut.count, len(plan))
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        await ctx.tick().until(dut.done)
        await ctx.tick().repeat(3)
        assert not ctx.get(dut.busy)
        counters.update(zip(COUNTER_NAMES, (ctx.get(dut.counters[i]) for i in range(4))))

    def bases(fields, side, pixels):
        first, step, row_step = (fields.get(f"{side}_base", 0),
                                 fields.get(f"{'in' if side == 'src' else 'out'}_pixel_step", 0),
                                 fields.get(f"{'in' if side == 'src' else 'out'}_row_step", 0))
        width = fields.get("last_col", 0) + 1
        return [(first + (p // width) * row_step + (p % width) * step) % depth
                for p in range(pixels)]

    counters = {}
    run_sim(dut, background(memories), background(datapath), host,
            name=f"sequencer_alone_{int(vector_writer)}",
            deadline=3_000)
    want_groups, want_rows = [], []
    for k, (fields, taken) in enumerate(plan):
        if fields["kind"] != LayerKind.GS:
            continue
        pixels = (fields.get("last_col", 0) + 1) * (fields.get("last_row", 0) + 1)
        count = fields.get("group_count", 0)
        want_groups += [(k, weights[fields["group_base"] + g], base)
                        for base in bases(fields, "src", pixels) for g in range(count)]
        per_pixel = max(1, fields.get("row_count", 0))        # a row count of 0 reads as 1
        out_bases = bases(fields, "dst", -(-taken // per_pixel))
        want_rows += [(k, rows[(fields.get("row_base", 0) + r % per_pixel) % cfg.row_depth],
                       out_bases[r // per_pixel], int(r % per_pixel == per_pixel - 1))
                      for r in range(taken)]
    assert taken_groups == want_groups
    assert taken_rows == want_rows
    assert cleared == [(29 + i) % depth for i in range(5)]
    desc = unpack_word(layer_layout(cfg), layers[1])
    assert basis_runs == [{"n_chunks": 4, "shift": desc["shift"], "relu": 1, "src_base": 6,
                           "dst_base": 1, "basis": list(desc["basis"])}]
    assert counters == {"cycles": stats["busy"], "busy_lane_cycles": 3 * len(want_groups),
                        "stall_cycles": stats["stall"], "groups": len(want_groups)}
    assert stats["issue"] == len(want_groups) and stats["stall"] > 0
