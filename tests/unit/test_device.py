"""Device's protocol handling against a scripted in-process responder.

The responder below is a protocol fixture only: it stores words and answers frames, and its
RUN does no arithmetic (it copies the input buffer and returns made-up counters). Inference
results are tested against the golden target and, on Verilator, the sim target elsewhere.
"""

import os
import random
import time

import numpy as np
import pytest

from gsaccel.hw.config import CoreConfig
from gsaccel.hw.layouts import COUNTER_NAMES, ErrorCode, FrameType, Memory, memory_depth
from gsaccel.sw.runtime import protocol
from gsaccel.sw.runtime.device import Device
from gsaccel.sw.errors import DeviceError, DeviceTimeout, FrameError
from gsaccel.sw.runtime.transport import Transport

SEED = int(os.environ.get("GSACCEL_SEED", "1234"))
CFG = CoreConfig(lanes=4, bank_depth=16, max_payload=64, weight_depth=64, row_depth=64)


class ScriptedResponder:
    """Answers frames like the core's command processor, without computing anything."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.mems = {mem: [0] * memory_depth(cfg, mem) for mem in Memory}
        self.parser = protocol.FrameParser(max_payload=cfg.max_payload)
        self.runs = 0
        self.requests = []
        self.run_seqs = []           # sequence numbers of the RUN frames received
        self._last_run = None        # at most once, as the device

    def handle(self, data):
        out = b""
        for frame in self.parser.feed(data):
            if isinstance(frame, FrameError):
                out += protocol.encode_frame(FrameType.ERROR, 0,
                                             protocol.error_payload(ErrorCode.BAD_CRC))
                continue
            self.requests.append(frame.type)
            out += protocol.encode_frame(*self.answer(frame), )
        return out

    def answer(self, frame):
        cfg, seq = self.cfg, frame.seq
        error = lambda code: (FrameType.ERROR, seq, protocol.error_payload(code))
        if frame.type == FrameType.HELLO:
            self._last_run = None
            return FrameType.DATA, seq, protocol.hello_payload(cfg)
        if frame.type == FrameType.WRITE:
            mem, addr, words = protocol.parse_write(cfg, frame.payload)
            if addr + len(words) > len(self.mems[mem]):
                return error(ErrorCode.BAD_ADDRESS)
            self.mems[mem][addr:addr + len(words)] = words
            return FrameType.ACK, seq, b""
        if frame.type == FrameType.READ:
            mem, addr, count = protocol.parse_read(frame.payload)
            if addr + count > len(self.mems[mem]):
                return error(ErrorCode.BAD_ADDRESS)
            return (FrameType.DATA, seq,
                    protocol.words_to_bytes(cfg, mem, self.mems[mem][addr:addr + count]))
        if frame.type == FrameType.RUN:
            first, count = protocol.parse_run(frame.payload)
            if first + count > cfg.layer_depth:
                return error(ErrorCode.BAD_LAYER)
            self.run_seqs.append(seq)
            if seq != self._last_run:
                self._last_run = seq
                self.runs += 1
            return FrameType.DATA, seq, protocol.counters_payload(
                dict(zip(COUNTER_NAMES, [100 + self.runs, 7, 0, 3])))
        return error(ErrorCode.BAD_TYPE)


class FaultyTransport(Transport):
    """A byte pipe to the responder that can corrupt, drop, duplicate or delay replies.

    ``faults`` maps a reply index (0-based, in order of requests answered) to one of
    ``"corrupt"`` (flip a byte), ``"drop"`` (never deliver), ``"dup"`` (deliver twice),
    ``"garbage"`` (noise before it), ``"corrupt_request"`` (flip a byte of the request).
    """

    def __init__(self, responder, faults=None, *, silent=False):
        self.responder = responder
        self.faults = dict(faults or {})
        self.silent = silent
        self.pending = bytearray()
        self.sent_replies = []
        self.closed = False
        self.n = 0

    def send(self, data):
        fault = self.faults.get(self.n)
        data = bytearray(data)
        if fault == "corrupt_request":
            data[-2] ^= 0x10
        elif fault == "truncate_request":
            data = data[:len(data) // 2]
        reply = self.responder.handle(bytes(data))
        if self.silent:
            return
        if fault == "corrupt":
            reply = bytearray(reply)
            reply[6] ^= 0x01 if len(reply) > 10 else 0
            reply[-1] ^= 0x80
        elif fault == "drop":
            reply = b""
        elif fault == "dup":
            self.dup = reply
        elif fault == "garbage":
            reply = b"\x00\xa5\x13" + reply
        if fault == "dup_previous" and getattr(self, "dup", None):
            reply = self.dup + reply
        self.n += 1
        self.pending += reply

    def recv(self, n, *, timeout):
        deadline = time.monotonic() + timeout
        if len(self.pending) < n:
            time.sleep(max(0.0, deadline - time.monotonic()))
            raise DeviceTimeout(f"Device must send {n} bytes within {timeout} s, "
                                f"not {len(self.pending)}")
        out = bytes(self.pending[:n])
        del self.pending[:n]
        return out

    def close(self):
        self.closed = True


def make(faults=None, **kwargs):
    responder = ScriptedResponder(CFG)
    transport = FaultyTransport(responder, faults)
    return Device(transport, timeout=kwargs.pop("timeout", 0.05), **kwargs), responder, transport


def test_hello_returns_the_device_config():
    device, _, _ = make()
    assert device.hello() == CFG
    assert device.config == CFG


def test_write_is_split_into_frames_within_max_payload_and_reads_back():
    device, responder, _ = make()
    rng = random.Random(SEED)
    words = [rng.getrandbits(8 * protocol.word_size(CFG, Memory.WEIGHTS)) for _ in range(29)]
    device.write(Memory.WEIGHTS, 3, words)
    per_frame = protocol.max_write_words(CFG, Memory.WEIGHTS)
    assert responder.requests.count(FrameType.WRITE) == -(-29 // per_frame)
    assert responder.mems[Memory.WEIGHTS][3:32] == words
    assert device.read(Memory.WEIGHTS, 3, 29) == words


def test_negative_activations_round_trip():
    device, _, _ = make()
    device.write(Memory.ACTS, 5, [-128, -1, 0, 127])
    got = np.array(device.read(Memory.ACTS, 5, 4), dtype=np.uint8).view(np.int8)
    assert got.tolist() == [-128, -1, 0, 127]


def test_run_layers_returns_counters():
    device, _, _ = make()
    assert device.run_layers(0, 2) == {"cycles": 101, "busy_lane_cycles": 7,
                                       "stall_cycles": 0, "groups": 3}


@pytest.mark.parametrize("fault", ["corrupt", "drop", "garbage", "corrupt_request"])
def test_one_fault_is_recovered_by_a_resend(fault):
    device, responder, _ = make({1: fault})
    device.hello()
    device.write(Memory.ACTS, 0, [1, 2, 3])
    assert device.read(Memory.ACTS, 0, 3) == [1, 2, 3]
    assert device.resends == 1


def test_truncated_request_is_flushed_and_resent():
    # The responder is left inside a partial frame; after the timeout the host sends
    # max_payload + 9 zero bytes to complete it, then resends.
    device, responder, transport = make({2: "truncate_request"})
    device.hello()
    device.write(Memory.ACTS, 0, [4, 5])
    device.write(Memory.ACTS, 2, [6])
    assert device.read(Memory.ACTS, 0, 3) == [4, 5, 6]
    assert device.resends == 1 and device.stale_replies == 1


def test_duplicate_reply_is_discarded_by_sequence_number():
    device, _, _ = make({1: "dup", 2: "dup_previous"})
    device.hello()
    device.write(Memory.ACTS, 0, [9])
    assert device.read(Memory.ACTS, 0, 1) == [9]
    assert device.stale_replies == 1
    assert device.resends == 0


def test_silent_device_times_out_within_the_bound():
    responder = ScriptedResponder(CFG)
    device = Device(FaultyTransport(responder, silent=True), timeout=0.05, retries=2)
    start = time.monotonic()
    with pytest.raises(DeviceTimeout, match=r"^Device must answer HELLO within 0\.05 s, but "
                                            r"stayed silent for 3 attempts$"):
        device.hello()
    assert time.monotonic() - start < 3 * 0.05 + 0.5


def test_persistent_corruption_gives_up_with_a_frame_error():
    device, _, _ = make({i: "corrupt" for i in range(10)}, retries=2)
    with pytest.raises(FrameError, match=r"^Reply to HELLO must arrive intact within 3 "
                                         r"attempts, but: Frame CRC must be"):
        device.hello()


def test_lost_run_reply_is_resent_with_its_number():
    device, responder, _ = make({1: "drop", 3: "drop"})   # (2, 4: the resyncs)
    device.hello()
    counters = device.run_layers(0, 1)
    # Three RUN frames of one number, executed once; the replayed counters are the run's.
    assert len(set(responder.run_seqs)) == 1 and len(responder.run_seqs) == 3
    assert responder.runs == 1 and counters["cycles"] == 101
    # The next RUN gets a new number, and runs.
    device.run_layers(0, 1)
    assert len(set(responder.run_seqs)) == 2 and responder.runs == 2


def test_device_error_codes_are_named():
    device, _, _ = make()
    with pytest.raises(DeviceError, match=r"^Device rejected RUN with BAD_LAYER$"):
        device.run_layers(10, 10)


def test_out_of_range_access_is_refused_on_the_host():
    device, _, _ = make()
    depth = memory_depth(CFG, Memory.ROWS)
    with pytest.raises(FrameError, match=rf"^Access to ROWS must lie in 0\.\.{depth}, "
                                         rf"not {depth}\.\.{depth + 1}$"):
        device.read(Memory.ROWS, depth, 1)


def test_context_manager_closes_the_transport():
    device, _, transport = make()
    with device:
        pass
    assert transport.closed


@pytest.mark.parametrize("kwargs, message", [
    (dict(timeout=0), r"^Timeout must be a positive number of seconds, not 0$"),
    (dict(retries=-1), r"^Retry count must be a non-negative integer, not -1$"),
])
def test_device_parameters_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Device(FaultyTransport(ScriptedResponder(CFG)), **kwargs)


# Targets ------------------------------------------------------------------------------------

from gsaccel.sw.errors import BoardNotFound, GsaccelError
from gsaccel.sw.runtime.serial import SerialTransport
from gsaccel.sw.runtime.targets import connect, parse_target


@pytest.mark.parametrize("target, parsed", [
    ("golden", ("golden", None, None)),
    ("sim", ("sim", None, None)),
    ("serial:/dev/ttyUSB1", ("serial", "/dev/ttyUSB1", 3_000_000)),
    ("serial:COM3@1000000", ("serial", "COM3", 1000000)),
])
def test_parse_target(target, parsed):
    assert parse_target(target) == parsed


@pytest.mark.parametrize("target, message", [
    ("fpga", r"^Target must be one of golden, sim, serial:PORT\[@BAUD\], not 'fpga'$"),
    ("serial:", r"^Serial target must name a port, as in serial:/dev/ttyUSB1, not 'serial:'$"),
    ("serial:x@fast", r"^Baud rate of 'serial:x@fast' must be a positive integer, not 'fast'$"),
])
def test_parse_target_rejects(target, message):
    with pytest.raises(GsaccelError, match=message):
        parse_target(target)


def test_serial_transport_moves_bytes_and_times_out():
    with SerialTransport("loop://", 9600) as transport:
        transport.send(b"\xa5abc")
        assert transport.recv(4, timeout=1.0) == b"\xa5abc"
        start = time.monotonic()
        with pytest.raises(DeviceTimeout, match=r"must deliver 2 bytes within 0\.05 s, not 0$"):
            transport.recv(2, timeout=0.05)
        assert time.monotonic() - start < 1.0


def test_serial_target_without_a_board_is_board_not_found():
    with pytest.raises(BoardNotFound, match=r"^Serial port '/nonexistent/tty' cannot be opened"):
        connect("serial:/nonexistent/tty")


def test_serial_loopback_is_not_mistaken_for_a_device():
    # A loopback echoes the HELLO request: right sequence number, wrong frame type.
    with pytest.raises(FrameError, match=r"^Reply to HELLO must be DATA"):
        connect("serial:loop://", timeout=0.2)


def test_lost_run_reply_resends_the_run_alone():
    import torch
    from gsaccel.sw.compile import compile
    torch.manual_seed(SEED)
    program = compile(torch.nn.Sequential(torch.nn.Linear(4, 4)).eval(), torch.randn(8, 4),
                      cfg=CFG, lanes=4)
    device, responder, transport = make()
    device.load(program)
    # Requests from here: WRITE (input), RUN (reply dropped), RUN (resent), READ (output).
    transport.faults[transport.n + 1] = "drop"
    xq = program.quantize_input(np.array([[0.5, -1.0, 2.0, 0.25]]))
    device.infer_quantized(xq)
    assert responder.runs == 1
    assert responder.requests[-4:] == [FrameType.WRITE, FrameType.RUN, FrameType.RUN,
                                       FrameType.READ]
    address, count = program.input_region()
    written = responder.mems[Memory.ACTS][address:address + count]
    assert written == [int(v) & 0xFF for v in program.input_elements(xq[0])]
    assert device.counters["inferences"] == 1 and device.counters["cycles"] == 101


def test_infer_writes_the_input_region_and_reads_the_output_region():
    import torch
    from gsaccel.sw.compile import compile
    torch.manual_seed(SEED)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 2), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 2, 4)).eval()
    program = compile(model, torch.randn(8, 2, 3, 3), cfg=CFG, lanes=4)
    device, responder, _ = make()
    device.load(program)
    out_address, out_count = program.output_region()
    # The scripted responder computes nothing: its RUN plants an output, read back.
    y = np.arange(-2, 2, dtype=np.int8)
    g = program.output_geometry
    planted = np.zeros((CFG.lanes, g.end), dtype=np.int64)
    g.scatter(y.reshape(1, 1, 4), planted)
    answer = responder.answer

    def run_plants_the_output(frame):
        if frame.type == FrameType.RUN:
            responder.mems[Memory.ACTS][out_address:out_address + out_count] = \
                (planted[:, g.base:].T.ravel() & 0xFF).tolist()
        return answer(frame)

    responder.answer = run_plants_the_output
    got = device.infer_quantized(program.quantize_input(np.ones((1, 2, 3, 3))))
    assert got.tolist() == [y.tolist()]
    assert responder.requests[-3:] == [FrameType.WRITE, FrameType.RUN, FrameType.READ]
