"""The golden link (the device at the frame level), the fault-injecting transport, and soaks
of inferences through bad links on the golden link (the RTL's are in
tests/cocotb/test_link_faults.py)."""

import logging
import os
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gsaccel.hw.config import CoreConfig
from gsaccel.hw.layouts import FRAME_SYNC, ErrorCode, FrameType, Memory
from gsaccel.sw.errors import DeviceTimeout
from gsaccel.sw.runtime import protocol
from gsaccel.sw.runtime.device import Device
from gsaccel.sw.runtime.faults import FaultyTransport, LinkFaults
from gsaccel.sw.runtime.golden_link import GoldenLink, GoldenReceiver
from gsaccel.sw.runtime.soak import soak

SEED = int(os.environ.get("GSACCEL_SEED", "1234"))
CFG = CoreConfig(lanes=4, bank_depth=32, weight_depth=128, row_depth=64, max_payload=64)


def test_doctests():
    import doctest
    from gsaccel.sw.runtime import faults, golden_link, soak as soak_module
    logging.disable(logging.WARNING)
    try:
        for module in (faults, golden_link, soak_module):
            assert doctest.testmod(module).failed == 0
    finally:
        logging.disable(logging.NOTSET)


frames = st.tuples(st.sampled_from([1, 2, 3, 4, 0x55]), st.integers(0, 255),
                   st.binary(max_size=80))


@settings(max_examples=300, deadline=None)
@given(st.lists(frames, max_size=6), st.lists(st.binary(max_size=20), max_size=7))
def test_receiver_finds_every_intact_frame_between_junk(good, junk):
    """Frames with junk (no sync byte) between them: each is handed on once, intact or
    BAD_LENGTH past max_payload, and the receiver ends hunting."""
    junk = [bytes(b for b in chunk if b != FRAME_SYNC) for chunk in junk]
    stream = b""
    for k, (type, seq, payload) in enumerate(good):
        stream += (junk[k] if k < len(junk) else b"") + protocol.encode_frame(type, seq, payload)
    receiver = GoldenReceiver(CFG.max_payload)
    got = receiver.feed(stream)
    assert not receiver.in_frame
    want = [(t, s, p if len(p) <= CFG.max_payload else b"",
             0 if len(p) <= CFG.max_payload else ErrorCode.BAD_LENGTH) for t, s, p in good]
    assert [(f.type, f.seq, f.payload, f.error) for f in got] == want


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_any_byte_stream_gets_frames_for_replies_and_never_an_exception(data):
    """Whatever arrives, the golden link answers with well-formed frames (or nothing), one
    per frame the receiver hands on, and after the resynchronisation padding it hunts."""
    link = GoldenLink(CFG)
    link.send(data + bytes(CFG.max_payload + protocol.FRAME_OVERHEAD))
    assert not link._receiver.in_frame
    replies = protocol.FrameParser().feed(link.recv(len(link._pending), timeout=0))
    assert all(isinstance(r, protocol.Frame) and r.type in
               (FrameType.ACK, FrameType.DATA, FrameType.ERROR) for r in replies)


def test_golden_link_is_a_device():
    with Device(GoldenLink(CFG), timeout=0.01) as device:
        assert device.hello() == CFG
        device.write(Memory.ACTS, CFG.act_size - 3, [-1, 5, 127])
        assert device.read(Memory.ACTS, CFG.act_size - 3, 3) == [255, 5, 127]


@pytest.mark.parametrize("kwargs,message", [
    ({"drop": 1.5}, r"^Rate of drop must be a probability in 0\.\.1, not 1\.5$"),
    ({"drop": 0.6, "corrupt": 0.6}, r"^Fault rates must add up to at most 1, not 1\.2$"),
    ({"delay_s": (0.2, 0.1)}, r"^Delay range must be 0 <= low <= high seconds"),
])
def test_fault_rates_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LinkFaults(**kwargs)


def test_delayed_frames_arrive_late_and_in_order():
    link = FaultyTransport(GoldenLink(CFG), LinkFaults(delay=1.0, delay_s=(0.05, 0.05)),
                           LinkFaults(), seed=SEED)
    requests = [protocol.encode_frame(FrameType.READ, seq,
                                      protocol.read_payload(Memory.ACTS, 0, 1))
                for seq in range(5)]
    start = time.monotonic()
    for frame in requests:
        link.send(frame)
    with pytest.raises(DeviceTimeout):
        link.recv(1, timeout=0.02)                # held back
    replies = protocol.FrameParser().feed(link.recv(5 * 10, timeout=2))
    assert time.monotonic() - start >= 0.05
    assert [r.seq for r in replies] == list(range(5))
    assert link.injected["to_device"]["delay"] == 5


def _program():
    import torch
    from gsaccel.sw.compile import compile
    torch.manual_seed(SEED)
    model = torch.nn.Sequential(torch.nn.Linear(12, 10), torch.nn.ReLU(),
                                torch.nn.Linear(10, 7), torch.nn.ReLU(),
                                torch.nn.Linear(7, 5)).eval()
    return compile(model, torch.randn(64, 12), cfg=CFG, lanes=CFG.lanes)


def _soak(n, faults, seed, **kwargs):
    program = _program()
    xq = program.quantize_input(np.random.default_rng(seed).normal(size=(n, 12)))
    logging.disable(logging.WARNING)
    try:
        return soak(program, lambda: GoldenLink(CFG, **kwargs), xq, faults, seed=seed,
                    timeout=0.01, retries=8)
    finally:
        logging.disable(logging.NOTSET)


def test_soak_on_the_golden_link():
    """1,000 inferences through a link that damages 10 % of frames each way: all right."""
    report = _soak(1000, LinkFaults.uniform(0.1, delay_s=(0, 0.02)), SEED)
    assert (report.wrong, report.hangs, report.errors) == (0, 0, 0), report.error_messages
    assert all(all(kinds.values()) for kinds in report.injected.values())


def test_the_soak_catches_a_device_that_runs_a_repeat():
    report = _soak(300, LinkFaults(duplicate=0.2), SEED, at_most_once=False)
    assert report.wrong > 0


@pytest.mark.slow
def test_long_soak_on_the_golden_link():
    report = _soak(20_000, LinkFaults.uniform(0.05, delay_s=(0, 0.02)), SEED + 1)
    assert (report.wrong, report.hangs, report.errors) == (0, 0, 0), report.error_messages
