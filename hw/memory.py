"""RAMs shaped for the FPGAs' memory blocks.

:class:`SimpleDualPortMemory` is an ``amaranth.lib.memory.Memory`` that maps onto block RAM
with no logic around it; :class:`SinglePortMemory` goes into the SB_SPRAM256KA blocks of an
iCE40 UltraPlus, which leaves the 4-kbit block RAMs to the rest of the core;
:class:`HalvedMemory` is two of those behind a read port and a write port.
"""

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["SimpleDualPortMemory", "SinglePortMemory", "HalvedMemory", "uses_spram",
           "SPRAM_WIDTH", "SPRAM_DEPTH", "SPRAM_COUNT", "YOSYS_COLLISION_FREE"]

#: Geometry of one iCE40 UltraPlus SB_SPRAM256KA, and how many an iCE40UP has.
SPRAM_WIDTH = 16
SPRAM_DEPTH = 16384
SPRAM_COUNT = 4
#: SB_SPRAM256KA write enables (MASKWREN) are per nibble.
_SPRAM_MASK_BITS = 4

#: The name of every :class:`SimpleDualPortMemory`'s RAM, by which the Yosys command below
#: finds them.
_COLLISION_FREE_NAME = "collision_free_ram"

#: A Yosys command (for after ``read_rtlil``) that marks the read ports of every
#: :class:`SimpleDualPortMemory` as undefined when they read the word being written: Amaranth
#: says "old word", which Yosys would emulate with logic around the block RAM.
YOSYS_COLLISION_FREE = (f"setparam -set COLLISION_X_MASK 1 "
                        f"t:$memrd_v2 r:MEMID=\\{_COLLISION_FREE_NAME} %i")


def uses_spram(platform):
    """Whether :class:`SinglePortMemory` builds SB_SPRAM256KA blocks for ``platform``."""
    from amaranth.vendor import LatticeICE40Platform
    return (isinstance(platform, LatticeICE40Platform) and
            str(platform.device).startswith("iCE40UP"))


def _check_geometry(width, depth, granularity):
    for name, value in (("width", width), ("depth", depth), ("granularity", granularity)):
        if value is None and name == "granularity":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise TypeError(f"{name.capitalize()} must be a positive integer, not {value!r}")
    granularity = width if granularity is None else granularity
    if width % granularity:
        raise ValueError(f"Width {width} must be a multiple of the granularity {granularity}")
    return granularity


class _Geometry:
    """The ``width``, ``depth`` and ``granularity`` that both memories are built with."""

    @property
    def width(self):
        return self._width

    @property
    def depth(self):
        return self._depth

    @property
    def granularity(self):
        return self._granularity


def _dual_port_members(width, depth, write_lanes):
    """The signature members of a RAM with a write port and a read port."""
    return {
        "wr_addr": In(range(depth)),
        "wr_en":   In(write_lanes),
        "wr_data": In(width),
        "rd_addr": In(range(depth)),
        "rd_en":   In(1),
        "rd_data": Out(width),
    }


class SimpleDualPortMemory(_Geometry, wiring.Component):
    """A synchronous RAM with one write port and one read port that maps onto bare block RAM.

    A read sees the writes of earlier cycles. A read of the word being written in the same
    cycle is undefined on an FPGA (in simulation it returns the old word): block RAMs do not
    return the old word then, and emulating it would cost a register and a multiplexer per
    data bit around the RAM (in front of its slow output) and a compare of the addresses.
    gsaccel never reads a word in the cycle it writes it, and the board build tells Yosys so
    (:data:`YOSYS_COLLISION_FREE`).

    Parameters
    ----------
    width : int
        Bits per word.
    depth : int
        Words.
    granularity : int, optional
        Bits per write lane (``width`` must be a multiple of it); default: the whole word.
    block_ram : bool
        Ask the synthesis tool for block RAM even where it would pick LUT RAM (small ECP5
        memories), whose asynchronous read would put the RAM on the read address's path.

    Members
    -------
    wr_addr : In(range(depth))
    wr_en : In(width // granularity)
        Write the lanes whose bit is set (lane ``k`` is ``wr_data`` bits ``k * granularity``
        up) to ``wr_addr``.
    wr_data : In(width)
    rd_addr : In(range(depth))
    rd_en : In(1)
        Read ``rd_addr``: its word, as written before this cycle, is on ``rd_data`` from the
        next cycle. While ``rd_en`` is low, ``rd_data`` holds.
    rd_data : Out(width)

    Raises
    ------
    TypeError
        If ``width``, ``depth`` or ``granularity`` is not a positive integer.
    ValueError
        If ``width`` is not a multiple of ``granularity``.
    """

    def __init__(self, *, width, depth, granularity=None, block_ram=False):
        granularity = _check_geometry(width, depth, granularity)
        self._width, self._depth, self._granularity = width, depth, granularity
        self._block_ram = bool(block_ram)
        super().__init__(_dual_port_members(width, depth, width // granularity))

    def elaborate(self, platform):
        m = Module()
        attrs = {"ram_style": "block"} if self._block_ram else None
        m.submodules[_COLLISION_FREE_NAME] = mem = Memory(
            shape=self._width, depth=self._depth, init=[], attrs=attrs)
        wr = mem.write_port(granularity=self._granularity)
        rd = mem.read_port()
        m.d.comb += [wr.addr.eq(self.wr_addr), wr.data.eq(self.wr_data), wr.en.eq(self.wr_en),
                     rd.addr.eq(self.rd_addr), rd.en.eq(self.rd_en), self.rd_data.eq(rd.data)]
        return m


class SinglePortMemory(_Geometry, wiring.Component):
    """A synchronous single-port RAM: one address, used by a read or a write each cycle.

    On an iCE40 UltraPlus platform (``LatticeICE40Platform`` with an ``iCE40UP*`` device) it
    is built from ``ceil(width / 16)`` SB_SPRAM256KA blocks side by side; elsewhere (and in
    simulation, ``platform=None``) from a :class:`SimpleDualPortMemory`. Both behave alike
    for every use that does not read ``rd_data`` after a write before reading again. The
    contents start as zeros in the generic memory and are undefined in SPRAM.

    Parameters
    ----------
    width : int
        Bits per word.
    depth : int
        Words.
    granularity : int, optional
        Bits per write lane (``width`` must be a multiple of it, and on SPRAM it must be a
        multiple of 4, the SPRAM's nibble write mask); default: the whole word.
    spram : bool, optional
        Build it from SB_SPRAM256KA blocks where the platform has them (default); False: a
        block RAM everywhere, for a memory that has to leave the SPRAMs to another.

    Members
    -------
    addr : In(range(depth))
        Word address of the read or write.
    rd_en : In(1)
        Read ``addr``: its word is on ``rd_data`` from the next cycle until the next read or
        write. While ``rd_en`` is low and nothing is written, ``rd_data`` holds.
    wr_en : In(width // granularity)
        Write the lanes whose bit is set (lane ``k`` is ``wr_data`` bits
        ``k * granularity`` up) to ``addr``. A write takes the port: ``rd_en`` is ignored in
        that cycle and ``rd_data`` is undefined after it (SPRAM drives X) until the next read.
    wr_data : In(width)
    rd_data : Out(width)

    Raises
    ------
    TypeError
        If ``width``, ``depth`` or ``granularity`` is not a positive integer.
    ValueError
        If ``width`` is not a multiple of ``granularity``; on elaboration for an iCE40UP, if
        ``depth`` exceeds 16384 words, ``granularity`` is not a multiple of 4 or the width
        needs more SB_SPRAM256KA blocks than the device has.
    """

    def __init__(self, *, width, depth, granularity=None, spram=True):
        granularity = _check_geometry(width, depth, granularity)
        self._width, self._depth, self._granularity = width, depth, granularity
        self._spram = bool(spram)
        super().__init__({
            "addr":    In(range(depth)),
            "rd_en":   In(1),
            "wr_en":   In(width // granularity),
            "wr_data": In(width),
            "rd_data": Out(width),
        })

    def elaborate(self, platform):
        if self._spram and uses_spram(platform):
            return self._elaborate_spram(platform)
        m = Module()
        m.submodules.ram = ram = SimpleDualPortMemory(
            width=self._width, depth=self._depth, granularity=self._granularity)
        m.d.comb += [
            ram.wr_addr.eq(self.addr), ram.wr_data.eq(self.wr_data), ram.wr_en.eq(self.wr_en),
            # A write cycle does not read, as in SPRAM (whose output is X then instead).
            ram.rd_addr.eq(self.addr), ram.rd_en.eq(self.rd_en & ~self.wr_en.any()),
            self.rd_data.eq(ram.rd_data),
        ]
        return m

    def _elaborate_spram(self, platform):
        width, depth, granularity = self._width, self._depth, self._granularity
        blocks = -(-width // SPRAM_WIDTH)
        if depth > SPRAM_DEPTH:
            raise ValueError(f"Depth {depth} exceeds the {SPRAM_DEPTH} words of an "
                             f"SB_SPRAM256KA on the {platform.device}")
        if granularity % _SPRAM_MASK_BITS:
            raise ValueError(f"Granularity {granularity} must be a multiple of "
                             f"{_SPRAM_MASK_BITS} (the SB_SPRAM256KA nibble write mask)")
        if blocks > SPRAM_COUNT:
            raise ValueError(f"Width {width} needs {blocks} SB_SPRAM256KA, the "
                             f"{platform.device} has {SPRAM_COUNT}")
        m = Module()
        writing, select = Signal(), Signal()
        m.d.comb += [writing.eq(self.wr_en.any()), select.eq(self.rd_en | writing)]
        data_in = Cat(self.wr_data, Const(0, blocks * SPRAM_WIDTH - width))
        data_out = []
        for block in range(blocks):
            # Nibble n of the padded word belongs to write lane 4n // granularity; the padding
            # past ``width`` is never written.
            mask = []
            for nibble in range(block * SPRAM_WIDTH // _SPRAM_MASK_BITS,
                                (block + 1) * SPRAM_WIDTH // _SPRAM_MASK_BITS):
                lane = nibble * _SPRAM_MASK_BITS // granularity
                mask.append(self.wr_en[lane] if lane < len(self.wr_en) else Const(0))
            out = Signal(SPRAM_WIDTH, name=f"spram{block}_data")
            data_out.append(out)
            # CHIPSELECT only for a read or a write: a deselected SPRAM keeps DATAOUT.
            m.submodules[f"spram{block}"] = Instance(
                "SB_SPRAM256KA",
                i_ADDRESS=Cat(self.addr, Const(0, 14 - len(self.addr))),
                i_DATAIN=data_in[block * SPRAM_WIDTH:(block + 1) * SPRAM_WIDTH],
                i_MASKWREN=Cat(*mask),
                i_WREN=writing,
                i_CHIPSELECT=select,
                i_CLOCK=ClockSignal("sync"),
                i_STANDBY=Const(0),
                i_SLEEP=Const(0),
                i_POWEROFF=Const(1),    # active low
                o_DATAOUT=out,
            )
        m.d.comb += self.rd_data.eq(Cat(*data_out)[:width])
        return m


class HalvedMemory(_Geometry, wiring.Component):
    """A RAM with one write port and one read port, made of two :class:`SinglePortMemory`
    halves (words below ``depth / 2`` in the first, the others in the second): on an
    iCE40UP, two SPRAMs of 16384 words for a memory block RAM could not hold.

    A read and a write of different halves in one cycle both happen. A write takes its
    half's address port, so a read of the same half in that cycle is lost: its ``rd_data``
    is undefined. The user keeps them apart (the scratchpad's layers read one half and write
    the other, :attr:`~gsaccel.hw.config.CoreConfig.bank_halves`).

    Parameters
    ----------
    width : int
        Bits per word (written whole; on SPRAM a multiple of 4).
    depth : int
        Words, an even number (at most 32768 on SPRAM).
    latency : int, optional
        Cycles from ``rd_addr`` to ``rd_data``: 1 (the RAM's), or 2 with a register after it.

    Members
    -------
    wr_addr : In(range(depth))
    wr_en : In(1)
    wr_data : In(width)
        Write ``wr_data`` to ``wr_addr``.
    rd_addr : In(range(depth))
    rd_en : In(1)
        Read ``rd_addr``.
    rd_data : Out(width)
        The word at the ``rd_addr`` of ``latency`` cycles ago. It holds while nothing reads
        or writes the half it came from (on SPRAM a write makes the output undefined).

    Raises
    ------
    TypeError
        If ``width`` or ``depth`` is not a positive integer.
    ValueError
        If ``depth`` is odd or ``latency`` is not 1 or 2.
    """

    def __init__(self, *, width, depth, latency=1):
        _check_geometry(width, depth, None)
        if depth % 2:
            raise ValueError(f"Depth of a halved memory must be even, not {depth!r}")
        if latency not in (1, 2):
            raise ValueError(f"Latency must be 1 or 2, not {latency!r}")
        self._width, self._depth, self._granularity = width, depth, width
        self._latency = latency
        super().__init__(_dual_port_members(width, depth, 1))

    def elaborate(self, platform):
        m = Module()
        half = self._depth // 2
        offset_bits = max(1, (half - 1).bit_length())
        # The half is the address's top bit when the depth is a power of two, as it is for
        # a scratchpad bank; the compare also works for any even depth.
        wr_high, rd_high = self.wr_addr >= half, self.rd_addr >= half
        wr_offset = Mux(wr_high, self.wr_addr - half, self.wr_addr)[:offset_bits]
        rd_offset = Mux(rd_high, self.rd_addr - half, self.rd_addr)[:offset_bits]
        read_high = Signal()            # the half the RAMs' outputs are from
        data = []
        for index in range(2):
            m.submodules[f"half{index}"] = ram = SinglePortMemory(width=self._width,
                                                                  depth=half)
            writing = self.wr_en & (wr_high == index)
            m.d.comb += [ram.addr.eq(Mux(writing, wr_offset, rd_offset)),
                         ram.wr_en.eq(writing), ram.wr_data.eq(self.wr_data),
                         ram.rd_en.eq(self.rd_en & ~writing & (rd_high == index))]
            data.append(ram.rd_data)
        with m.If(self.rd_en):
            m.d.sync += read_high.eq(rd_high)
        word = Mux(read_high, data[1], data[0])
        if self._latency == 2:
            m.d.sync += self.rd_data.eq(word)
        else:
            m.d.comb += self.rd_data.eq(word)
        return m
