"""Fuzzing the .gsf reader: property tests (hypothesis) and a seeded mutation fuzzer that
re-seals every mutant (lengths and CRC-32 fixed), so the deep parser runs, not just the CRC.

Every outcome must be either a parse whose matrix re-serialises to the same bytes (and whose
dense form, golden product and device group words agree), or a FormatError; never another
exception, and never more memory than MEMORY_CAP: the mutation runs happen in a child process
whose address space is capped with RLIMIT_AS.

Run the fuzzer by hand: ``python tests/unit/test_fuzz_gsf.py SEED CASES`` prints the outcome
counts as JSON.
"""

import functools
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gsaccel.sw.errors import FormatError
from gsaccel.sw.format import GSMatrix, MAX_DIMENSION, MAX_ENTRIES

SEED = int(os.environ.get("GSACCEL_SEED", "20261125"), 0)
#: Address space a child may add to what it has after importing and building its corpus.
MEMORY_CAP = 512 << 20
#: Cases of the default suite, and of the slow run (split over two children).
DEFAULT_CASES = 3000
SLOW_CASES = 100_000

HEADER = struct.Struct("<4sHBBBBIIIII")
FIELDS = ("magic", "version", "pattern", "encoding", "lanes", "per_row", "rows", "cols",
          "rowgroups", "groups", "payload")
PATTERNS = ("gs-gather", "gs-scatter", "1xN", "unstructured", "dense")
INTERESTING = (0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 63, 64, 127, 128, 255, 256,
               4095, 4096, 65535, 65536, MAX_DIMENSION, MAX_DIMENSION + 1, MAX_ENTRIES,
               2**31 - 1, 2**31, 2**32 - 1)


# The seed corpus ------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def corpus(seed=SEED):
    """Valid files of every pattern, encoding, lane count and e, with edge shapes: 1x1,
    partial and empty row groups, all-zero matrices, columns < V."""
    from gsaccel.sim.stimulus import PATTERN_CASES, random_pattern_matrix
    rng = np.random.default_rng(seed)
    files = []
    for lanes in (2, 4, 8, 16):
        for pattern, per_row in PATTERN_CASES(lanes):
            for encoding in ("pow2", "int8"):
                for rows, cols, density in ((1, 1, 1.0), (lanes + 1, 2 * lanes + 3, 0.5),
                                            (3, max(1, lanes - 1), 0.6), (lanes, 3, 0.0)):
                    dense, order = random_pattern_matrix(rng, pattern, rows, cols, lanes,
                                                         per_row, encoding, density=density)
                    files.append(GSMatrix.from_dense(dense, pattern, lanes, per_row, encoding,
                                                     row_order=order).to_bytes())
    return tuple(files)


# An independent reading of the layout (docs/format.md), for structure-aware mutations ---------

def split(data):
    """(header fields, section byte strings) of a file, as far as they can be read."""
    fields = list(HEADER.unpack_from(data))
    payload, parts, offset = data[HEADER.size:-4], [], 0
    while offset + 4 <= len(payload):
        (length,) = struct.unpack_from("<I", payload, offset)
        parts.append(payload[offset + 4:offset + 4 + length])
        offset += 4 + length
    return fields, parts


def assemble(fields, parts):
    """A sealed file of ``fields`` (payload length fixed) and ``parts``."""
    payload = b"".join(struct.pack("<I", len(p)) + p for p in parts)
    fields = list(fields)
    fields[10] = len(payload)
    body = HEADER.pack(*fields) + payload
    return body + struct.pack("<I", zlib.crc32(body))


def bits(n):
    return max(0, int(n - 1).bit_length())


def implied_sizes(fields):
    """Byte sizes of the sections the header fields imply, or None when they make no sense."""
    _, _, pattern, encoding, lanes, per_row, rows, cols, n_rg, n_groups, _ = fields
    if pattern >= len(PATTERNS) or encoding > 1 or lanes not in (2, 4, 8, 16) or \
            per_row < 1 or lanes % per_row:
        return None
    pattern = PATTERNS[pattern]
    sizes = [(n_rg + 1, bits(n_groups + 1))]
    if pattern == "gs-scatter":
        sizes.append((n_rg * (lanes // per_row), bits(rows + 1)))
    sizes.append((n_groups * lanes, 6 if encoding == 0 else 8))
    addr = bits(-(-cols // lanes))
    if pattern == "1xN":
        sizes.append((n_groups, bits(cols)))
    else:
        sizes.append((n_groups * lanes, addr + (0 if per_row == lanes else bits(lanes))))
    return [-(-count * width // 8) for count, width in sizes]


def stream(values, width):
    """The little-endian bit stream of ``values``, ``width`` bits each (docs/format.md)."""
    number = sum(v << (i * width) for i, v in enumerate(values))
    return number.to_bytes(-(-len(values) * width // 8), "little")


def mutate(rng, data):
    """One mutant of a valid file: 1-3 mutations, then (mostly) lengths and CRC fixed."""
    fields, parts = split(data)
    raw = None                                  # a byte-level mutant, sealed as it is
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(0, 10))
        if kind <= 2 and any(parts):            # flip bits inside a section
            i = int(rng.choice([k for k, p in enumerate(parts) if p]))
            part = bytearray(parts[i])
            for _ in range(int(rng.integers(1, 4))):
                part[int(rng.integers(0, len(part)))] ^= 1 << int(rng.integers(0, 8))
            parts[i] = bytes(part)
        elif kind == 3 and any(parts):          # a byte of a section set to anything
            i = int(rng.choice([k for k, p in enumerate(parts) if p]))
            part = bytearray(parts[i])
            part[int(rng.integers(0, len(part)))] = int(rng.integers(0, 256))
            parts[i] = bytes(part)
        elif kind <= 5:                          # a header field set to an interesting value
            f = int(rng.integers(2, 10))
            width = 255 if f < 6 else 2**32 - 1
            choice = int(rng.integers(0, 3))
            value = (int(rng.choice(INTERESTING)) if choice == 0 else
                     fields[f] + int(rng.choice([-2, -1, 1, 2])) if choice == 1 else
                     int(rng.integers(0, width + 1)))
            fields[f] = min(max(value, 0), width)
            if rng.random() < 0.7:               # and the sections resized to what it implies
                sizes = implied_sizes(fields)
                if sizes is not None and sum(sizes) <= 1 << 16:
                    parts = [p[:n] + bytes(max(0, n - len(p))) for p, n in
                             zip(parts + [b""] * len(sizes), sizes)][:len(sizes)]
        elif kind == 6 and parts:               # a section shortened, emptied or extended
            i = int(rng.integers(0, len(parts)))
            how = int(rng.integers(0, 3))
            parts[i] = (b"" if how == 0 else parts[i][:int(rng.integers(0, len(parts[i]) + 1))]
                        if how == 1 else parts[i] + bytes(int(rng.integers(1, 9))))
        elif kind == 7:                          # a section dropped, duplicated or added
            how = int(rng.integers(0, 3))
            if how == 0 and parts:
                parts.pop(int(rng.integers(0, len(parts))))
            elif how == 1 and parts:
                i = int(rng.integers(0, len(parts)))
                parts.insert(i, parts[i])
            else:
                parts.append(rng.bytes(int(rng.integers(0, 9))))
        elif kind == 8:                          # bytes inserted or deleted anywhere
            body = bytearray(assemble(fields, parts)[:-4])
            at = int(rng.integers(0, len(body) + 1))
            if rng.random() < 0.5:
                body[at:at] = rng.bytes(int(rng.integers(1, 5)))
            else:
                del body[at:at + int(rng.integers(1, 5))]
            if rng.random() < 0.7 and len(body) >= HEADER.size:   # the payload length fixed
                struct.pack_into("<I", body, HEADER.size - 4, len(body) - HEADER.size)
            raw = bytes(body)
        else:                                    # any header or length byte flipped
            body = bytearray(assemble(fields, parts)[:-4])
            body[int(rng.integers(4, len(body)))] ^= 1 << int(rng.integers(0, 8))
            raw = bytes(body)
        if raw is not None:
            break
    if raw is not None:
        return raw + struct.pack("<I", zlib.crc32(raw))
    if rng.random() < 0.05:                      # lengths fixed, CRC left stale
        return assemble(fields, parts)[:-4] + rng.bytes(4)
    return assemble(fields, parts)


# The property ---------------------------------------------------------------------------------

def category(error):
    """A FormatError's message without the source and the numbers: what kind of damage."""
    text = re.sub(r" \(magic .*|, not .*", "", str(error).split(": ", 1)[-1])
    text = re.sub(r"(group|lane|row group|row|column|section) \d+", r"\1 N", text)
    text = re.sub(r"0x[0-9a-f]+|-?\d+", "N", text.replace("1xN", "ONE-BY-N"))
    return text.replace("ONE-BY-N", "1xN")[:60]


def check(data):
    """``"ok"`` or ``"FormatError: <category>"``; AssertionError for anything else."""
    try:
        matrix = GSMatrix.from_bytes(data)
    except FormatError as error:
        return f"FormatError: {category(error)}"
    except Exception as error:          # noqa: BLE001 -- the property under test
        raise AssertionError(f"{type(error).__name__}: {error} on {data.hex()}") from None
    assert matrix.to_bytes() == data, f"re-serialises differently: {data.hex()}"
    check_agreement(matrix)
    return "ok"


def check_agreement(matrix):
    """unpack (to_dense), inspect (layer_stats), the golden lanes and the device's group
    words describe the same weights; the dense form re-packs under the file's pattern."""
    from gsaccel.hw.config import CoreConfig
    from gsaccel.sw import golden
    from gsaccel.sw.compile.image import _group_words
    rows, cols = matrix.shape
    golden.layer_stats(matrix)
    if rows * cols > 1 << 16:
        return
    dense = matrix.to_dense()
    x = np.arange(cols, dtype=np.int64) % 7 - 3
    assert np.array_equal(golden.gs_matvec(matrix, x, acc_width=48), dense @ x)
    words = -(-cols // matrix.lanes)
    depth = 1 << max(1, (words - 1).bit_length())
    if matrix.lanes * depth <= 65536:
        cfg = CoreConfig(lanes=matrix.lanes, encoding=matrix.encoding, bank_depth=depth)
        _group_words(cfg, matrix, np.arange(cols) // matrix.lanes)
    if matrix.pattern in ("gs-gather", "gs-scatter", "1xN"):
        order = matrix.rg_rows.ravel()
        again = GSMatrix.from_dense(dense, matrix.pattern, matrix.lanes, matrix.per_row,
                                    matrix.encoding, row_order=order[order >= 0]
                                    if matrix.pattern == "gs-scatter" else None)
        assert np.array_equal(again.to_dense(), dense)
        assert again.rg_groups.tolist() == matrix.rg_groups.tolist()


def fuzz(seed, cases):
    """Outcome counts of ``cases`` mutants of the corpus, drawn with ``seed``."""
    files = corpus()
    rng = np.random.default_rng([seed, 0x65F])
    outcomes = Counter()
    for _ in range(cases):
        outcomes[check(mutate(rng, files[int(rng.integers(0, len(files)))]))] += 1
    return outcomes


def run_child(seed, cases, timeout=1800):
    """:func:`fuzz` in a child process capped at MEMORY_CAP more address space."""
    result = subprocess.run([sys.executable, __file__, str(seed), str(cases)],
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return Counter(json.loads(result.stdout.splitlines()[-1]))


def cap_memory():
    """Cap this process's address space at MEMORY_CAP above what it uses now, and check the
    cap holds: a request of 8 GiB must fail."""
    import resource
    with open("/proc/self/status") as status:
        size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize"))
    resource.setrlimit(resource.RLIMIT_AS, (size + MEMORY_CAP, size + MEMORY_CAP))
    try:
        np.ones(1 << 30)
    except MemoryError:
        return
    raise AssertionError("RLIMIT_AS did not cap the address space")


def summarise(outcomes):
    parsed = outcomes["ok"]
    errors = sum(outcomes.values()) - parsed
    kinds = Counter({k: v for k, v in outcomes.items() if k != "ok"})
    return parsed, errors, kinds


# Tests ----------------------------------------------------------------------------------------

def test_mutation_fuzz_default(capsys):
    outcomes = run_child(SEED, DEFAULT_CASES)
    parsed, errors, kinds = summarise(outcomes)
    with capsys.disabled():
        print(f"\n.gsf fuzz: {DEFAULT_CASES} cases, {parsed} parsed and re-serialised, "
              f"{errors} FormatError ({len(kinds)} kinds)")
    assert parsed + errors == DEFAULT_CASES
    # The mutants reach the deep checks, not only the header's.
    assert parsed > 0 and len(kinds) >= 20


@pytest.mark.slow
def test_mutation_fuzz_slow(capsys):
    half = SLOW_CASES // 2
    outcomes = run_child(SEED + 1, half) + run_child(SEED + 2, SLOW_CASES - half)
    parsed, errors, kinds = summarise(outcomes)
    with capsys.disabled():
        print(f"\n.gsf fuzz: {SLOW_CASES} cases, {parsed} parsed and re-serialised, "
              f"{errors} FormatError")
        for kind, count in kinds.most_common():
            print(f"  {count:6d}  {kind}")
    assert parsed + errors == SLOW_CASES


def test_the_issue_cases():
    """The damage the outside fuzzing found, each a FormatError naming it."""
    dense = np.zeros((4, 8), dtype=np.int64)
    for row in range(4):
        dense[row, [2 * row, 2 * row + 1]] = 1
    good = GSMatrix.from_dense(dense, "gs-scatter", 4, 2, "int8")   # 2 row groups of 2 rows
    fields, parts = split(good.to_bytes())

    def edited(sections=(), **values):
        f, p = list(fields), list(parts)
        for field, value in values.items():
            f[FIELDS.index(field)] = value
        for section, content in dict(sections).items():
            p[section] = content
        return assemble(f, p)

    cases = [
        (edited(rows=2**31), r"rows and columns must be in \[1, 16777216\]"),
        (edited(rows=2**24, cols=2**24), r"has 281474976710656 entries; a GS file holds at "
                                         r"most 268435456"),
        (edited(groups=2**32 - 1), r"payload of \d+ bytes; a 4x8 gs-scatter matrix of "
                                   r"4294967295 groups"),
        (edited({2: parts[2][:-1]}), r"payload of 29 bytes; a 4x8 gs-scatter matrix of 2 "
                                     r"groups of 4 lanes \(int8\) has 30$"),
        (edited({3: b""}), r"payload of \d+ bytes"),
        (edited({2: parts[2] + b"\0", 3: parts[3][:-1]}),
         r"section values is 9 bytes, the header implies 8"),
        (edited({1: stream([1, 2, 1, 0], 3)}),   # rows 0, 1, 0 (twice), none
         r"row 0 appears twice in the row groups"),
        (edited(pattern=2), r"1xN matrix broadcasts one column to all lanes, so e must be "
                            r"1, not 2"),
    ]
    for data, message in cases:
        with pytest.raises(FormatError, match=message):
            GSMatrix.from_bytes(data)
    # A weight in a padding segment: 3 rows of V/e = 2 leave one segment empty.
    three = GSMatrix.from_dense(np.eye(3, 4, dtype=np.int64), "unstructured", 4, 2, "int8")
    f, p = split(three.to_bytes())
    codes = bytearray(p[1])
    codes[-1] = 1                               # the last group's lane 3 (segment 1) = 1
    with pytest.raises(FormatError, match=r"in a padding segment"):
        GSMatrix.from_bytes(assemble(f, [p[0], bytes(codes), p[2]]))
    # A bank conflict: two lanes of one group reading bank 0 (unstructured, V = 2, e = 1).
    two = GSMatrix.from_dense(np.array([[1, 0], [0, 1]]), "unstructured", 2, 1, "int8")
    f, p = split(two.to_bytes())
    with pytest.raises(FormatError, match=r"group 0: lanes 0 and 1 both read bank 0"):
        GSMatrix.from_bytes(assemble(f, [p[0], p[1], bytes([0b00])]))
    # A nonzero bit in a section's padding bits.
    with pytest.raises(FormatError, match=r"padding bits of its last byte are not zero"):
        GSMatrix.from_bytes(assemble(f, [p[0], p[1], bytes([0b1101])]))


def test_memory_stays_bounded_by_the_file():
    """The header's counts are checked against the bytes before any allocation: parsing a
    file of any header allocates (traced by tracemalloc, numpy's buffers included) at most
    64 KiB plus 128 bytes per byte of the file."""
    from fuzz_memory import peak_allocations
    rng = np.random.default_rng(SEED)
    files = corpus()
    mutants = (mutate(rng, files[int(rng.integers(0, len(files)))]) for _ in range(100))
    for data, peak in peak_allocations(GSMatrix.from_bytes, mutants):
        assert peak <= (64 << 10) + 128 * len(data), (peak, data.hex())


# Properties (hypothesis) ----------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=160))
def test_any_bytes_are_a_format_error(data):
    with pytest.raises(FormatError):
        GSMatrix.from_bytes(data)


@st.composite
def sealed_files(draw):
    """A sealed file of arbitrary header fields whose sections have the sizes they imply
    (when small) or arbitrary sizes, holding arbitrary bytes."""
    fields = [b"GSF\x1a", 1, draw(st.integers(0, 6)), draw(st.integers(0, 2)),
              draw(st.sampled_from([0, 1, 2, 3, 4, 8, 16, 32])),
              draw(st.sampled_from([0, 1, 2, 3, 4, 8, 16])),
              draw(st.one_of(st.integers(0, 40), st.sampled_from(INTERESTING))),
              draw(st.one_of(st.integers(0, 40), st.sampled_from(INTERESTING))),
              draw(st.one_of(st.integers(0, 12), st.sampled_from(INTERESTING))),
              draw(st.one_of(st.integers(0, 24), st.sampled_from(INTERESTING))), 0]
    sizes = implied_sizes(fields)
    if sizes is None or sum(sizes) > 2048 or draw(st.booleans()) and draw(st.booleans()):
        sizes = draw(st.lists(st.integers(0, 40), max_size=5))
    zeros = draw(st.booleans())
    parts = [bytes(n) if zeros else draw(st.binary(min_size=n, max_size=n)) for n in sizes]
    return assemble(fields, parts)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(sealed_files())
def test_sealed_files_parse_and_round_trip_or_are_format_errors(data):
    check(data)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.integers(0, 10**6))
def test_mutants_of_valid_files(seed, pick):
    files = corpus()
    rng = np.random.default_rng(seed)
    check(mutate(rng, files[pick % len(files)]))


if __name__ == "__main__":
    seed, cases = int(sys.argv[1]), int(sys.argv[2])
    corpus()                      # imports and caches first, then the cap
    cap_memory()
    print(json.dumps(fuzz(seed, cases)))
