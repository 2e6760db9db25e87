"""The RTL behind a bad link: its replies to a damaged byte stream equal the golden link's
byte for byte, and a soak of inferences through dropped, duplicated, corrupted and delayed
frames (both directions) gives no wrong answer and no hang (DESIGN §4: at most once)."""

import logging
import random

import numpy as np
import pytest

from gsaccel.hw.config import CoreConfig
from gsaccel.hw.layouts import FRAME_SYNC, FrameType, Memory
from gsaccel.sw.runtime import protocol
from gsaccel.sw.runtime.faults import LinkFaults
from gsaccel.sw.runtime.golden_link import GoldenLink
from gsaccel.sw.runtime.soak import soak

pytestmark = pytest.mark.verilator

#: The default core: the build the ``sim`` target uses (one build for the suite).
CFG = CoreConfig()


def _sim():
    from gsaccel.sim.build import require_verilator
    from gsaccel.sw.runtime.verilator import VerilatorTransport
    require_verilator()
    return VerilatorTransport(CFG)


def _damage(rng, frame):
    """``frame`` as a bad line may deliver it."""
    kind = rng.choice(["flip", "drop_byte", "truncate", "junk", "duplicate", "long"])
    data = bytearray(frame)
    if kind == "flip":
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "drop_byte":
        del data[rng.randrange(len(data))]
    elif kind == "truncate":
        data = data[:rng.randrange(1, len(data))]
    elif kind == "junk":
        data = bytes(rng.choice([0, FRAME_SYNC, 0xFF, rng.randrange(256)])
                     for _ in range(rng.randrange(1, 12))) + data
    elif kind == "duplicate":
        data = data + data
    else:                      # a length past max_payload
        data[3:5] = (CFG.max_payload + 1 + rng.randrange(100)).to_bytes(2, "little")
    return bytes(data)


def _session(rng, n):
    """Good requests: HELLO, ACTS writes and reads, counters, RUNs of the zeroed layer table
    (empty layers) with repeated numbers."""
    frames, seq = [], 0
    for _ in range(n):
        kind = rng.choice(["write", "read", "run", "run", "counters", "hello"])
        seq = (seq + 1) & 0xFF
        if kind == "write":
            addr = rng.randrange(CFG.act_size - 16)
            payload = protocol.write_payload(CFG, Memory.ACTS, addr,
                                             [rng.randrange(256) for _ in range(16)])
            frames.append(protocol.encode_frame(FrameType.WRITE, seq, payload))
        elif kind == "read":
            payload = protocol.read_payload(Memory.ACTS, rng.randrange(CFG.act_size - 8), 8)
            frames.append(protocol.encode_frame(FrameType.READ, seq, payload))
        elif kind == "counters":
            frames.append(protocol.encode_frame(FrameType.READ, seq,
                                                protocol.read_payload(Memory.COUNTERS, 0, 4)))
        elif kind == "hello":
            frames.append(protocol.encode_frame(FrameType.HELLO, seq))
        else:
            # Often the previous RUN's number again: the device must replay, not run.
            if frames and rng.random() < 0.5:
                seq = (seq - 1) & 0xFF
            first = rng.randrange(3)
            frames.append(protocol.encode_frame(FrameType.RUN, seq,
                                                protocol.run_payload(first, 1 + rng.randrange(3))))
    return frames


@pytest.mark.parametrize("seed", [1, 2])
def test_rtl_answers_a_damaged_stream_as_the_golden_link_does(seed):
    """Half the frames damaged (bits flipped, bytes lost, frames cut short, junk with sync
    bytes, duplicates, over-long lengths), then the host's resynchronisation padding: the
    reply bytes of the RTL equal GoldenLink's (the receiver model and the command processor
    model, at-most-once RUN included) exactly."""
    rng = random.Random(seed)
    frames = _session(rng, 120)
    stream = b"".join(_damage(rng, f) if rng.random() < 0.5 else f for f in frames)
    stream += bytes(CFG.max_payload + protocol.FRAME_OVERHEAD)
    golden = GoldenLink(CFG)
    golden.send(stream)
    want = golden.recv(len(golden._pending), timeout=0)
    processor = golden.processor
    # Not vacuous: errors of every kind the receiver flags, replays and real runs.
    replies = protocol.FrameParser().feed(want)
    codes = {r.payload[0] for r in replies if r.type == FrameType.ERROR}
    assert {1, 3} <= codes and processor.replays and processor.runs
    with _sim() as sim:
        sim.send(stream)
        got = sim.recv(len(want), timeout=60)
        with pytest.raises(Exception, match=r"must deliver 1 bytes"):
            sim.recv(1, timeout=0.5)             # and nothing more
    assert got == want


def _program():
    import torch
    from gsaccel.sw.compile import compile
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(40, 24), torch.nn.ReLU(),
                                torch.nn.Linear(24, 16), torch.nn.ReLU(),
                                torch.nn.Linear(16, 10)).eval()
    return compile(model, torch.randn(64, 40), cfg=CFG, lanes=CFG.lanes)


def _inputs(program, n, seed):
    return program.quantize_input(np.random.default_rng(seed).normal(size=(n, 40)))


@pytest.fixture(scope="module")
def program():
    return _program()


def test_a_device_that_runs_repeats_gives_wrong_answers(program):
    """The soak below can fail: the same program through duplicated frames, on a golden
    link without the at-most-once rule, gives wrong answers (a RUN that ran twice read its
    own output)."""
    logging.disable(logging.WARNING)
    try:
        report = soak(program, lambda: GoldenLink(CFG, at_most_once=False),
                      _inputs(program, 100, 1), LinkFaults(duplicate=0.2), seed=1,
                      timeout=0.05)
    finally:
        logging.disable(logging.NOTSET)
    assert report.wrong > 0
    assert report.injected["to_device"]["duplicate"] > 0


def _sim_soak(program, n, faults, seed):
    logging.disable(logging.WARNING)
    try:
        report = soak(program, _sim, _inputs(program, n, seed), faults, seed=seed,
                      timeout=0.3, retries=8)
    finally:
        logging.disable(logging.NOTSET)
    print(report.summary())
    assert (report.wrong, report.hangs, report.errors) == (0, 0, 0), report.error_messages
    for direction in ("to_device", "to_host"):
        assert all(report.injected[direction].values()), report.injected
    return report


def test_soak_on_the_rtl(program):
    """60 inferences on the Verilator RTL through a link that damages 20 % of the frames
    each way (drop, duplicate, corrupt, delay up to twice the host's timeout): every answer
    right, bit and cycle for cycle, and none hangs."""
    _sim_soak(program, 60, LinkFaults.uniform(0.2, delay_s=(0, 0.6)), seed=7)


@pytest.mark.slow
def test_long_soak_on_the_rtl(program):
    """1,000 inferences through a 5 % bad link (the issue's), and 300 through a 20 % one."""
    _sim_soak(program, 1000, LinkFaults.uniform(0.05, delay_s=(0, 0.6)), seed=11)
    _sim_soak(program, 300, LinkFaults.uniform(0.2, delay_s=(0, 0.6)), seed=12)
