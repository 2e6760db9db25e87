"""The frame codec: round trips, corruption, truncation, garbage and every payload helper."""

import doctest
import os
import random
import zlib

import pytest

from gsaccel.hw.config import CoreConfig
from gsaccel.hw.layouts import (COUNTER_NAMES, FRAME_SYNC, HELLO_FEATURE_LOOP_NEST,
                                HELLO_MAGIC, ErrorCode, FrameType, Memory, memory_depth)
from gsaccel.sw.runtime import protocol
from gsaccel.sw.errors import FrameError
from gsaccel.sw.runtime.protocol import (Frame, FrameParser, bytes_to_words, counters_payload,
                                         encode_frame, error_payload, hello_payload,
                                         max_read_words, max_write_words, parse_counters,
                                         parse_error, parse_hello, parse_read, parse_run,
                                         parse_write, read_payload, run_payload, word_size,
                                         words_to_bytes, write_payload)

SEED = int(os.environ.get("GSACCEL_SEED", "1234"))


def test_doctests():
    result = doctest.testmod(protocol)
    assert result.attempted > 0 and result.failed == 0


def test_frame_layout_matches_the_contract():
    payload = bytes(range(10))
    frame = encode_frame(FrameType.WRITE, 0x42, payload)
    assert frame[0] == FRAME_SYNC
    assert frame[1] == FrameType.WRITE and frame[2] == 0x42
    assert frame[3:5] == (10).to_bytes(2, "little")
    assert frame[5:15] == payload
    assert int.from_bytes(frame[15:], "little") == zlib.crc32(frame[1:15])


def test_random_frames_round_trip_in_one_stream_split_anywhere():
    rng = random.Random(SEED)
    frames = [Frame(rng.choice(list(FrameType)), rng.randrange(256),
                    bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 7, 300]))))
              for _ in range(40)]
    stream = b"".join(encode_frame(f.type, f.seq, f.payload) for f in frames)
    parser = FrameParser()
    out = []
    pos = 0
    while pos < len(stream):
        step = rng.randrange(1, 50)
        out += parser.feed(stream[pos:pos + step])
        pos += step
    assert out == frames


def test_garbage_before_sync_is_skipped():
    frame = encode_frame(FrameType.ACK, 3)
    parser = FrameParser()
    assert parser.feed(b"\x00\x11\xff" + frame) == [Frame(FrameType.ACK, 3, b"")]
    assert parser.skipped == 3


@pytest.mark.parametrize("position", range(11))
def test_one_corrupt_byte_is_reported_and_the_next_frame_still_decodes(position):
    bad = bytearray(encode_frame(FrameType.DATA, 9, b"\x01\x02"))
    bad[position] ^= 0x40
    good = encode_frame(FrameType.ACK, 10)
    events = FrameParser(max_payload=64).feed(bytes(bad) + good)
    frames = [e for e in events if isinstance(e, Frame)]
    assert frames[-1] == Frame(FrameType.ACK, 10, b"")
    # The corrupt frame never decodes as a frame, and its loss is reported.
    assert Frame(FrameType.DATA, 9, b"\x01\x02") not in frames
    assert any(isinstance(e, FrameError) for e in events) or position == 0


def test_oversized_length_is_an_error_not_a_hang():
    parser = FrameParser(max_payload=16)
    header = bytes([FRAME_SYNC, FrameType.DATA, 0, 0xFF, 0x00])
    events = parser.feed(header + encode_frame(FrameType.ACK, 1))
    assert isinstance(events[0], FrameError)
    assert "at most 16 bytes, not 255" in str(events[0])
    assert events[-1] == Frame(FrameType.ACK, 1, b"")


def test_truncated_frame_waits_and_need_counts_the_rest():
    frame = encode_frame(FrameType.DATA, 5, b"abcdef")
    parser = FrameParser()
    assert parser.need() == 1
    assert parser.feed(frame[:3]) == []
    assert parser.need() == 2
    assert parser.feed(frame[3:5]) == []
    assert parser.need() == 10
    assert parser.feed(frame[5:-1]) == []
    assert parser.need() == 1
    assert parser.feed(frame[-1:]) == [Frame(FrameType.DATA, 5, b"abcdef")]


def test_unknown_type_is_kept_raw():
    assert FrameParser().feed(encode_frame(0x33, 0)) == [Frame(0x33, 0, b"")]


@pytest.mark.parametrize("kwargs, message", [
    (dict(type=256, seq=0), r"^Frame type must be an integer in 0\.\.255, not 256$"),
    (dict(type=1, seq=-1), r"^Sequence number must be an integer in 0\.\.255, not -1$"),
    (dict(type=1, seq=0, payload=bytes(65536)),
     r"^Frame payload must be at most 65535 bytes, not 65536$"),
])
def test_encode_frame_rejects(kwargs, message):
    with pytest.raises(FrameError, match=message):
        encode_frame(**kwargs)


@pytest.mark.parametrize("cfg", [CoreConfig(), CoreConfig(lanes=4, bank_depth=16,
                                                          encoding="int8", acc_width=32,
                                                          weight_depth=100, row_depth=77,
                                                          max_payload=300),
                                 CoreConfig(lanes=8, basis=False), CoreConfig(lanes=2),
                                 CoreConfig(lanes=16, deep_pipeline=False),
                                 CoreConfig(lanes=4, vector_writer=False)])
def test_hello_round_trip(cfg):
    assert parse_hello(hello_payload(cfg)) == cfg


def test_hello_rejects_bad_magic_version_and_size():
    good = hello_payload(CoreConfig())
    with pytest.raises(FrameError, match=r"^HELLO magic must be b'GSAC', not b'XSAC'$"):
        parse_hello(b"X" + good[1:])
    with pytest.raises(FrameError, match=r"^Protocol version must be 6 with loop nests, not 9: "
                                         r"the device runs an older bitstream; rebuild and "
                                         r"flash it"):
        parse_hello(HELLO_MAGIC + b"\x09" + good[5:])
    # A two-buffer core of an earlier release: version 3, no loop-nest feature bit.
    old = HELLO_MAGIC + b"\x03" + good[5:-1] + bytes([good[-1] & ~HELLO_FEATURE_LOOP_NEST])
    with pytest.raises(FrameError, match=r"^Protocol version must be 6 with loop nests, not 3 "
                                         r"without: the device runs an older bitstream"):
        parse_hello(old)
    # Loop-nest cores of earlier releases: version 4 (before the vector writer), version 5
    # (16-bit addresses, RUN not at most once).
    for version in (4, 5):
        with pytest.raises(FrameError, match=rf"^Protocol version must be 6 with loop nests, "
                                             rf"not {version}: "):
            parse_hello(HELLO_MAGIC + bytes([version]) + good[5:])
    with pytest.raises(FrameError, match=r"^HELLO reply must be \d+ bytes, not 3$"):
        parse_hello(good[:3])
    bad_lanes = good[:5] + b"\x03" + good[6:]
    with pytest.raises(FrameError, match=r"^HELLO reply describes an invalid core: Lane"):
        parse_hello(bad_lanes)


@pytest.mark.parametrize("mem", [Memory.LAYERS, Memory.WEIGHTS, Memory.ROWS, Memory.ACTS])
def test_write_payload_round_trip(mem):
    cfg = CoreConfig(lanes=4, bank_depth=16)
    rng = random.Random(SEED)
    bits = 8 * word_size(cfg, mem)
    words = [rng.randrange(1 << bits) for _ in range(5)]
    assert parse_write(cfg, write_payload(cfg, mem, 3, words)) == (mem, 3, words)


def test_negative_words_are_twos_complement():
    cfg = CoreConfig()
    assert words_to_bytes(cfg, Memory.ACTS, [-1, -128, 127]) == b"\xff\x80\x7f"
    assert bytes_to_words(cfg, Memory.ACTS, b"\xff\x80") == [255, 128]
    with pytest.raises(FrameError, match=r"^Word of memory ACTS must fit 8 bits, not 256$"):
        words_to_bytes(cfg, Memory.ACTS, [256])
    with pytest.raises(FrameError, match=r"must be a multiple of 4 bytes, not 3$"):
        bytes_to_words(cfg, Memory.COUNTERS, b"abc")


def test_write_range_and_memory_checks():
    cfg = CoreConfig(lanes=4, bank_depth=16)
    depth = memory_depth(cfg, Memory.ACTS)
    with pytest.raises(FrameError, match=rf"^Access to ACTS must lie in 0\.\.{depth}, "
                                         rf"not {depth - 1}\.\.{depth + 1}$"):
        write_payload(cfg, Memory.ACTS, depth - 1, [0, 0])
    with pytest.raises(FrameError, match=r"^Memory to write must not be COUNTERS"):
        write_payload(cfg, Memory.COUNTERS, 0, [0])
    with pytest.raises(FrameError, match=r"^Memory id must be one of \[0, 1, 2, 3, 4\], not 9$"):
        parse_write(cfg, b"\x09\x00\x00\x00")


def test_addresses_are_24_bits():
    cfg = CoreConfig(lanes=16, bank_depth=8192)          # 131072 elements
    assert parse_write(cfg, write_payload(cfg, Memory.ACTS, 0x1FFFE, [1, -2])) == \
        (Memory.ACTS, 0x1FFFE, [1, 254])
    assert write_payload(cfg, Memory.ACTS, 0x12345, [7])[:4] == b"\x03\x45\x23\x01"
    assert parse_read(read_payload(Memory.ACTS, 0x12345, 3)) == (Memory.ACTS, 0x12345, 3)
    assert read_payload(Memory.ACTS, 0x12345, 3) == b"\x03\x45\x23\x01\x03\x00"
    with pytest.raises(FrameError, match=r"^Address must be an integer in 0\.\.16777215, "
                                         r"not 16777216$"):
        read_payload(Memory.ACTS, 1 << 24, 1)
    with pytest.raises(FrameError, match=r"^Word count must be an integer in 0\.\.65535"):
        read_payload(Memory.ACTS, 0, 1 << 16)


def test_sequence_numbers_never_repeat_the_last_run():
    from gsaccel.sw.runtime.protocol import SequenceNumbers
    numbers = SequenceNumbers(start=250)
    runs = [numbers.next(FrameType.RUN)]
    # A RUN whose reply never came may have run: it is avoided too, until a reply comes.
    runs.append(numbers.next(FrameType.RUN))
    for _ in range(254):
        numbers.next(FrameType.WRITE)
    assert numbers.next(FrameType.RUN) not in runs
    numbers.ran(runs[-1])
    # HELLO clears the device's record: every number is free again.
    numbers.forget_runs()
    other = SequenceNumbers(start=9)
    assert other.next(FrameType.RUN) == 9 and other.next(FrameType.RUN) == 10


def test_frame_sizes_respect_max_payload():
    cfg = CoreConfig(max_payload=100)
    for mem in (Memory.LAYERS, Memory.WEIGHTS, Memory.ROWS, Memory.ACTS):
        n = max_write_words(cfg, mem)
        assert len(write_payload(cfg, mem, 0, [0] * n)) <= 100
        assert 4 + (n + 1) * word_size(cfg, mem) > 100
        assert max_read_words(cfg, mem) * word_size(cfg, mem) <= 100
    with pytest.raises(FrameError, match=r"^Maximum payload must hold one LAYERS word, "
                                         r"not 10 bytes$"):
        max_write_words(CoreConfig(max_payload=10), Memory.LAYERS)


def test_read_run_counters_error_payloads():
    assert parse_read(read_payload(Memory.ROWS, 513, 7)) == (Memory.ROWS, 513, 7)
    assert parse_run(run_payload(2, 5)) == (2, 5)
    with pytest.raises(FrameError, match=r"^Layer count must be an integer in 0\.\.255, "
                                         r"not 256$"):
        run_payload(0, 256)
    with pytest.raises(FrameError, match=r"^RUN payload must be 2 bytes, not 1$"):
        parse_run(b"\x00")
    counters = dict(zip(COUNTER_NAMES, [1, 2**32 - 1, 0, 77]))
    assert parse_counters(counters_payload(counters)) == counters
    assert parse_error(error_payload(ErrorCode.BAD_LAYER)) is ErrorCode.BAD_LAYER
    assert parse_error(b"\x77") == 0x77
