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
    "pow2_code_layout", "lane_layout", "group_layout", "row_layout", "row_record_layout",
    "line_record_layout", "row_line_layout", "layer_layout",
    "LayerKind", "LayerOp", "layer_control_layout", "group_stream_layout",
    "row_stream_layout", "Memory", "FrameType", "ErrorCode", "FRAME_SYNC", "FRAME_HEADER_BYTES",
    "FRAME_CRC_BYTES", "HELLO_MAGIC", "PROTOCOL_VERSION", "ADDRESS_BYTES", "word_bytes", "memory_layout",
    "memory_depth", "HELLO_FORMAT", "hello_payload", "HELLO_FEATURE_BASIS", "HELLO_FEATURE_DEEP_PIPELINE",
    "HELLO_FEATURE_LOOP_NEST", "HELLO_FEATURE_VECTOR_WRITER", "HELLO_FEATURE_BANK_HALVES",
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

    Lane ``i`` multiplies the element in bank ``b = lanes[i].bank`` at bank address
    ``in_base + offset[b]`` (wrapping at ``bank_depth``), where ``in_base`` is the output
    pixel's input base (:func:`layer_layout`): the layer's groups are replayed for every
    output pixel. The packer stores each bank's offset (the gather's V indirect accesses)
    rather than each lane's column: the words go from the weight memory to the banks with no
    crossbar on the address side, and because a group's nonzero lanes read distinct banks
    (the GS patterns are conflict-free) nothing is lost. A bank no lane reads has offset 0.
    """
    return data.StructLayout({
        "lanes":  data.ArrayLayout(lane_layout(cfg), cfg.lanes),
        "offset": data.ArrayLayout(unsigned(cfg.act_addr_width), cfg.lanes),
        "last":   unsigned(1),
    })


def row_record_layout(cfg: CoreConfig):
    """A row-memory word of the serial writer (``cfg.vector_writer`` false): where one
    finished output goes, and its bias.

    Each row group consumes V/e row records in segment order, for every output pixel;
    ``out_elem`` is the output's element within the pixel: bank ``out_elem % V`` at bank
    address ``out_base + out_elem // V``. ``valid = 0`` marks a padding segment of a
    partial row group, whose result is dropped (but still takes a writer cycle).
    """
    return data.StructLayout({
        "out_elem": unsigned(cfg.col_width),
        "bias":     signed(cfg.acc_width),
        "valid":    unsigned(1),
    })


def line_record_layout(cfg: CoreConfig):
    """Record ``k`` of a row line (:func:`row_line_layout`): what bank ``k`` is written with.

    If ``valid``, bank ``k`` at bank address ``out_base + offset`` (wrapping) gets
    ``requantize(sums[slot] + bias)``, ``sums`` being the head sum vector and ``slot`` taken
    modulo V/e (the vector's slots).
    """
    return data.StructLayout({
        "offset": unsigned(cfg.act_addr_width),
        "bias":   signed(cfg.acc_width),
        "valid":  unsigned(1),
        "slot":   unsigned(max(1, cfg.bank_bits)),
    })


def row_line_layout(cfg: CoreConfig):
    """A row-memory word of the vector writer (``cfg.vector_writer``): one *row line*.

    The writer takes a line per cycle and writes its V records (record ``k`` to bank ``k``,
    :func:`line_record_layout`) in parallel, all from the head sum vector; after a line with
    ``last`` (or the last line of a pixel's ``row_count``) it pops the vector. The packer
    puts a row group's V/e outputs into as few lines as keep their banks distinct: one line
    in the natural row order, more when a permuted (GS-scatter) row group holds two outputs
    of one bank.
    """
    return data.StructLayout({
        "records": data.ArrayLayout(line_record_layout(cfg), cfg.lanes),
        "last":    unsigned(1),
    })


def row_layout(cfg: CoreConfig):
    """The row-memory word of ``cfg``'s writer: a row line (:func:`row_line_layout`) with
    ``cfg.vector_writer``, else one row record (:func:`row_record_layout`)."""
    return row_line_layout(cfg) if cfg.vector_writer else row_record_layout(cfg)


def group_stream_layout(cfg: CoreConfig):
    """What the sequencer streams to the gather engine: a group word and the input base of
    the output pixel it is replayed for."""
    return data.StructLayout({
        "word": group_layout(cfg),
        "base": unsigned(cfg.act_addr_width),
    })


def row_stream_layout(cfg: CoreConfig):
    """What the sequencer streams to the result writer: a row-memory word, the output base
    of the pixel it is replayed for, and ``end``: it is the pixel's last word (the vector
    writer pops its sum vector after it, whatever the line's ``last``, so that no
    descriptor can hang the writer; the serial writer ignores it)."""
    return data.StructLayout({
        "row":  row_layout(cfg),
        "base": unsigned(cfg.act_addr_width),
        "end":  unsigned(1),
    })


class LayerKind(enum.Enum, shape=unsigned(2)):
    GS    = 0   # a loop nest over output pixels on the gather engine (every pattern family)
    BASIS = 1   # SmartDeal basis transform z = B·x per 3-element chunk
    CLEAR = 2   # zero ``group_count`` bank words from ``dst_base``, in every bank


class LayerOp(enum.Enum, shape=unsigned(1)):
    SUM = 0     # accumulate the segments' sums
    MAX = 1     # keep the largest nonzero lane's product (e = 1): max pooling


def layer_layout(cfg: CoreConfig = None):
    """A layer-table word (docs/architecture.md, "The loop nest").

    A GS layer runs its ``group_count`` groups from ``group_base`` and ``row_count`` row
    records from ``row_base`` once per output pixel (oy, ox), ``0 <= oy <= last_row``,
    ``0 <= ox <= last_col``, in raster order, with::

        in_base  = src_base + oy * in_row_step  + ox * in_pixel_step
        out_base = dst_base + oy * out_row_step + ox * out_pixel_step

    (bank addresses, wrapping at ``bank_depth``). A BASIS layer transforms ``group_count``
    chunks from element ``src_base * V`` to element ``dst_base * V``. A CLEAR layer zeroes
    ``group_count`` bank words from ``dst_base`` in every bank.

    The 3x3 basis is part of the word only on a core with a basis unit (``cfg.basis``):
    without it the table is 72 bits narrower, which saves block RAMs on an iCE40.
    """
    cfg = cfg or CoreConfig()
    addr = unsigned(cfg.act_addr_width)
    fields = {
        "kind":           LayerKind,
        "op":             LayerOp,
        "relu":           unsigned(1),
        "seg_log2":       unsigned(3),     # e = 1 << seg_log2 weights per row per group
        "shift":          unsigned(5),     # requantisation right shift
        "group_base":     unsigned(16),
        "group_count":    unsigned(16),
        "row_base":       unsigned(16),
        "row_count":      unsigned(16),
        "src_base":       addr,
        "dst_base":       addr,
        "last_col":       unsigned(8),     # Wo - 1
        "last_row":       unsigned(8),     # Ho - 1
        "in_pixel_step":  addr,
        "in_row_step":    addr,
        "out_pixel_step": addr,
        "out_row_step":   addr,
    }
    if cfg.basis:
        fields["basis"] = data.ArrayLayout(signed(8), 9)    # B row-major, BASIS layers only
    return data.StructLayout(fields)


def layer_control_layout(cfg: CoreConfig):
    """The settings of the layer being run, from its descriptor (:func:`layer_layout`, whose
    fields of the same names they are): the sequencer holds them for the gather engine, the
    result writer and the basis unit, stable for the whole layer.

    Members
    -------
    op : LayerOp
        SUM or MAX (GS layers).
    relu : unsigned(1)
        Clamp the requantised results at 0.
    seg_log2 : unsigned(3)
        log2 of the segment length e (GS layers).
    shift : unsigned(5)
        Requantisation right shift.
    src_base, dst_base : unsigned(act_addr_width)
        The layer's source and destination bank addresses (BASIS and CLEAR layers; a GS
        layer's bases travel with its streams, one per output pixel).
    """
    addr = unsigned(cfg.act_addr_width)
    return data.StructLayout({
        "op":       LayerOp,
        "relu":     unsigned(1),
        "seg_log2": unsigned(3),
        "shift":    unsigned(5),
        "src_base": addr,
        "dst_base": addr,
    })


class Memory(py_enum.IntEnum):
    """Memories the host reads and writes with WRITE/READ frames."""
    LAYERS  = 0
    WEIGHTS = 1
    ROWS    = 2
    ACTS    = 3   # one byte per element; element a is in bank a % V at bank address a // V
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
        Memory.ACTS:     cfg.act_size,
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
PROTOCOL_VERSION = 6
#: Bytes of a WRITE's or READ's word address (u24: protocol v6; a scratchpad holds up to
#: 2**24 elements).
ADDRESS_BYTES = 3


class FrameType(py_enum.IntEnum):
    # host -> device
    HELLO = 0x01   # payload: none. Reply DATA: HELLO_MAGIC, version u8, config fields
    WRITE = 0x02   # payload: mem u8, addr u24, words. Reply ACK
    READ  = 0x03   # payload: mem u8, addr u24, count u16. Reply DATA: count words
    RUN   = 0x04   # payload: first layer u8, layer count u8. Reply DATA: counters (4 x u32);
                   # at most once: a repeat of the last RUN's seq replays its reply
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
#: HELLO feature bit: the core runs layers as loop nests over output pixels (HWC tensors at
#: bank addresses, tap offsets in the group words, SUM|MAX, CLEAR layers; protocol v4).
HELLO_FEATURE_LOOP_NEST = 0x04
#: HELLO feature bit: the core has the vector writer (``CoreConfig.vector_writer``): its ROWS
#: words are row lines (``row_line_layout``), one writer cycle each (protocol v5).
HELLO_FEATURE_VECTOR_WRITER = 0x08
#: HELLO feature bit: every scratchpad bank is two single-port halves
#: (``CoreConfig.bank_halves``): a layer must read one half and write the other.
HELLO_FEATURE_BANK_HALVES = 0x10


def hello_payload(cfg):
    """The HELLO reply's payload bytes for a core of ``cfg`` (``HELLO_FORMAT``): the command
    processor sends these bytes, and the host's ``parse_hello`` reads them back."""
    return struct.pack(HELLO_FORMAT, HELLO_MAGIC, PROTOCOL_VERSION, cfg.lanes, cfg.bank_depth,
                       ENCODINGS.index(cfg.encoding), cfg.acc_width, cfg.weight_depth,
                       cfg.row_depth, cfg.layer_depth, cfg.result_queue, cfg.max_payload,
                       (HELLO_FEATURE_BASIS if cfg.basis else 0) |
                       (HELLO_FEATURE_DEEP_PIPELINE if cfg.deep_pipeline else 0) |
                       (HELLO_FEATURE_VECTOR_WRITER if cfg.vector_writer else 0) |
                       (HELLO_FEATURE_BANK_HALVES if cfg.bank_halves else 0) |
                       HELLO_FEATURE_LOOP_NEST)

#: The four u32 counters, in the order RUN replies with them and COUNTERS reads them.
COUNTER_NAMES = ("cycles", "busy_lane_cycles", "stall_cycles", "groups")
