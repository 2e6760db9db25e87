"""CRC-32 of a byte stream, one byte per cycle: the frame check of the host protocol."""

from amaranth.hdl import Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["Crc32", "CRC32_POLY", "crc32_update_matrix"]

#: Reflected CRC-32 polynomial (IEEE 802.3, zlib, PNG); init and final xor are all ones.
CRC32_POLY = 0xEDB88320


def crc32_update_matrix():
    """For each of the 32 next-state bits, the state bits and data bits it is the xor of.

    The byte-wise update is linear over GF(2), so unrolling the bit-serial algorithm on
    symbolic bits gives a plain xor network (instead of eight chained multiplexers).

    Returns
    -------
    list of (frozenset of int, frozenset of int)
        ``(state_bits, data_bits)`` for next-state bit 0 to 31.
    """
    state = [(frozenset([i]), frozenset()) for i in range(32)]
    for bit in range(8):
        feedback = (state[0][0], state[0][1] ^ frozenset([bit]))
        shifted = state[1:] + [(frozenset(), frozenset())]
        state = [(s ^ feedback[0], d ^ feedback[1]) if (CRC32_POLY >> j) & 1 else (s, d)
                 for j, (s, d) in enumerate(shifted)]
    return state


class Crc32(wiring.Component):
    """Byte-wise CRC-32 equal to :func:`zlib.crc32` (reflected 0xEDB88320, init and final xor
    0xFFFFFFFF), one byte per cycle.

    Members
    -------
    data : In(8)
        Byte to add.
    en : In(1)
        Add ``data`` at this clock edge.
    clear : In(1)
        Start a new checksum at this edge; with ``en`` the byte is the first of the new one.
    crc : Out(32)
        CRC-32 of every byte added since the last ``clear`` (the empty string gives 0).
    """

    data: In(8)
    en: In(1)
    clear: In(1)
    crc: Out(32)

    def elaborate(self, platform):
        m = Module()
        state = Signal(32, init=0xFFFFFFFF)
        base = Signal(32)
        m.d.comb += base.eq(Mux(self.clear, Const(0xFFFFFFFF, 32), state))

        # Next state: a fixed xor network of the base state and the data byte.
        nxt = Signal(32)
        for j, (state_bits, data_bits) in enumerate(crc32_update_matrix()):
            term = Const(0, 1)
            for i in sorted(state_bits):
                term = term ^ base[i]
            for i in sorted(data_bits):
                term = term ^ self.data[i]
            m.d.comb += nxt[j].eq(term)

        m.d.comb += self.crc.eq(~state)
        with m.If(self.en):
            m.d.sync += state.eq(nxt)
        with m.Elif(self.clear):
            m.d.sync += state.eq(0xFFFFFFFF)
        return m

