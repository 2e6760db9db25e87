"""Every payload layout of the core, defined once as a function of the config.

The gateware, the packer (``gsaccel.sw.compile``), the golden model and the testbenches
all import these; a field changes here or nowhere. Amaranth packs struct fields from the least
significant bit up, in the order written, and memories and frames store words little-endian in
``word_bytes(layout)`` bytes.
"""

import enum as py_enum
import struct

from amaranth.hdl import signed, unsigned
from amaranth.lib import data, enum

from .config import ENCODINGS, CoreConfig

__all__ = [
    "pow2_code_layout", "lane_layout", "group_layout", "row_layout", "layer_layout",
    "LayerKind", "LayerControl", "Memory", "FrameType", "ErrorCode", "FRAME_SYNC", "FRAME_HEADER_BYTES",
    "FRAME_CRC_BYTES", "HELLO_MAGIC", "PROTOCOL_VERSION", "word_bytes", "memory_layout",
    "memory_depth", "HELLO_FORMAT", "hello_payload", "HELLO_FEATURE_BASIS", "HELLO_FEATURE_DEEP_PIPELINE",
    "COUNTER_NAMES",
]


def pow2_code_layout():
    """A power-of-two weight: value = 0 if not ``nonzero`` else (-1)**sign * 2**exp."""
    return data.StructLayout({
        "exp":     unsigned(4),
        "sign":    unsigned(1),
        "nonzero": unsigned(1),
    })


def lane_layout(cfg: CoreConfig):
    """One lane of a group: a weight code and the bank holding the x it multiplies.

    A lane whose value is zero is padding: it reads no bank and adds nothing.
    """
    return data.StructLayout({
        "value": unsigned(cfg.value_width),
        "bank":  unsigned(cfg.bank_bits),
    })


def group_layout(cfg: CoreConfig):
    """A weight-memory word: V lanes processed in one cycle; ``last`` ends a row group.

    Lane ``i`` multiplies element ``col = bank_addr[b] * V + b`` of the source buffer, with
    ``b = lanes[i].bank``. The packer stores each bank's address (the gather's V indirect
    accesses) rather than each lane's column: the words go from the weight memory to the
    banks with no crossbar on the address side, and because a group's nonzero lanes read
    distinct banks (the GS patterns are conflict-free) nothing is lost. A bank no lane reads
    has address 0.
    """
    return data.StructLayout({
        "lanes":     data.ArrayLayout(lane_layout(cfg), cfg.lanes),
        "bank_addr": data.ArrayLayout(unsigned(cfg.col_width - cfg.bank_bits), cfg.lanes),
        "last":      unsigned(1),
    })


def row_layout(cfg: CoreConfig):
    """A row-memory word: where one finished output goes, and its bias.

    Each row group consumes V/e row records in segment order; ``valid = 0`` marks a padding
    segment of a partial row group, whose result is dropped (but still takes a writer cycle).
    """
    return data.StructLayout({
        "out_addr": unsigned(cfg.col_width),
        "bias":     signed(cfg.acc_width),
        "valid":    unsigned(1),
    })


class LayerKind(enum.Enum, shape=unsigned(2)):
    GS    = 0   # sparse matrix on the gather/scatter engine (every pattern family)
    BASIS = 1   # SmartDeal basis transform z = B·x per 3-element chunk


def layer_layout(cfg: CoreConfig = None):
    """A layer-table word. For ``BASIS`` layers ``group_count`` is the number of chunks.

    The 3x3 basis is part of the word only on a core with a basis unit (``cfg.basis``):
    without it the table is 72 bits narrower, which saves five block RAMs on an iCE40.
    """
    fields = {
        "kind":        LayerKind,
        "src":         unsigned(1),     # activation buffer read
        "dst":         unsigned(1),     # activation buffer written
        "relu":        unsigned(1),
        "seg_log2":    unsigned(3),     # e = 1 << seg_log2 weights per row per group
        "shift":       unsigned(5),     # requantisation right shift
        "group_base":  unsigned(16),
        "group_count": unsigned(16),
        "row_base":    unsigned(16),
    }
    if (cfg or CoreConfig()).basis:
        fields["basis"] = data.ArrayLayout(signed(8), 9)    # B row-major, BASIS layers only
    return data.StructLayout(fields)


class LayerControl(data.Struct):
    """The settings of the layer being run, from its descriptor (:func:`layer_layout`, whose
    fields of the same names they are): the sequencer holds them for the gather engine, the
    result writer and the basis unit, stable for the whole layer.

    Members
    -------
    src : unsigned(1)
        Activation buffer read.
    dst : unsigned(1)
        Activation buffer written.
    relu : unsigned(1)
        Clamp the requantised results at 0.
    seg_log2 : unsigned(3)
        log2 of the segment length e (GS layers).
    shift : unsigned(5)
        Requantisation right shift.
    """
    src:      unsigned(1)
    dst:      unsigned(1)
    relu:     unsigned(1)
    seg_log2: unsigned(3)
    shift:    unsigned(5)


class Memory(py_enum.IntEnum):
    """Memories the host reads and writes with WRITE/READ frames."""
    LAYERS  = 0
    WEIGHTS = 1
    ROWS    = 2
    ACTS    = 3   # one byte per element; address = buffer * buffer_size + element
    COUNTERS = 4  # read-only: cycles, busy lane-cycles, stall cycles, groups (u32 each)


def word_bytes(layout_or_width):
    width = layout_or_width if isinstance(layout_or_width, int) else layout_or_width.size
    return (width + 7) // 8


def memory_layout(cfg: CoreConfig, mem: Memory):
    """Word width in bits (int) or layout of a host-visible memory."""
    return {
        Memory.LAYERS:   layer_layout(cfg),
        Memory.WEIGHTS:  group_layout(cfg),
        Memory.ROWS:     row_layout(cfg),
        Memory.ACTS:     8,
        Memory.COUNTERS: 32,
    }[Memory(mem)]


def memory_depth(cfg: CoreConfig, mem: Memory):
    return {
        Memory.LAYERS:   cfg.layer_depth,
        Memory.WEIGHTS:  cfg.weight_depth,
        Memory.ROWS:     cfg.row_depth,
        Memory.ACTS:     2 * cfg.buffer_size,
        Memory.COUNTERS: 4,
    }[Memory(mem)]


# Frames ---------------------------------------------------------------------------------------
# SYNC | type u8 | seq u8 | length u16 LE | payload | crc32 u32 LE
# The CRC is zlib.crc32 (reflected 0xEDB88320, init and final xor 0xFFFFFFFF) over
# type, seq, length and payload.

FRAME_SYNC = 0xA5
FRAME_HEADER_BYTES = 5      # sync, type, seq, length
FRAME_CRC_BYTES = 4
HELLO_MAGIC = b"GSAC"
PROTOCOL_VERSION = 3


class FrameType(py_enum.IntEnum):
    # host -> device
    HELLO = 0x01   # payload: none. Reply DATA: HELLO_MAGIC, version u8, config fields
    WRITE = 0x02   # payload: mem u8, addr u16, words. Reply ACK
    READ  = 0x03   # payload: mem u8, addr u16, count u16. Reply DATA: count words
    RUN   = 0x04   # payload: first layer u8, layer count u8. Reply DATA: counters (4 x u32)
    # device -> host
    ACK   = 0x80
    DATA  = 0x81
    ERROR = 0x82   # payload: ErrorCode u8


class ErrorCode(py_enum.IntEnum):
    BAD_CRC     = 1
    BAD_TYPE    = 2
    BAD_LENGTH  = 3   # payload longer than max_payload, or wrong for its type
    BAD_ADDRESS = 4   # access past the end of a memory
    BAD_MEMORY  = 5   # unknown memory id, or a write to COUNTERS
    BAD_LAYER   = 6   # layer range past the layer table


#: HELLO reply payload (struct module format, little-endian): magic, protocol version, lanes,
#: bank depth, encoding (0 pow2, 1 int8), accumulator width, weight depth, row depth,
#: layer depth, result queue depth, max payload, features (``HELLO_FEATURE_*`` bits).
HELLO_FORMAT = "<4sBBHBBIIHHHB"

#: HELLO feature bit: the core has a basis unit (runs SmartDeal BASIS layers).
HELLO_FEATURE_BASIS = 0x01
#: HELLO feature bit: the core has the deep pipeline (``CoreConfig.deep_pipeline``), which
#: lengthens the engine's and the basis unit's pipelines.
HELLO_FEATURE_DEEP_PIPELINE = 0x02


def hello_payload(cfg):
    """The HELLO reply's payload bytes for a core of ``cfg`` (``HELLO_FORMAT``): the command
    processor sends these bytes, and the host's ``parse_hello`` reads them back."""
    return struct.pack(HELLO_FORMAT, HELLO_MAGIC, PROTOCOL_VERSION, cfg.lanes, cfg.bank_depth,
                       ENCODINGS.index(cfg.encoding), cfg.acc_width, cfg.weight_depth,
                       cfg.row_depth, cfg.layer_depth, cfg.result_queue, cfg.max_payload,
                       (HELLO_FEATURE_BASIS if cfg.basis else 0) |
                       (HELLO_FEATURE_DEEP_PIPELINE if cfg.deep_pipeline else 0))

#: The four u32 counters, in the order RUN replies with them and COUNTERS reads them.
COUNTER_NAMES = ("cycles", "busy_lane_cycles", "stall_cycles", "groups")
