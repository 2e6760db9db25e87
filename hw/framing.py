"""Frames of the host protocol on the device side: receive, check and buffer; build and send.

A frame is ``SYNC | type | seq | length u16 LE | payload | crc32 u32 LE`` with the CRC-32 (as
:func:`zlib.crc32`) over type, seq, length and payload (``gsaccel.hw.layouts``).
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream
from amaranth.lib.wiring import In, Out

from .component import CoreComponent
from .config import CoreConfig, check_config
from .crc import Crc32
from .layouts import ErrorCode, FRAME_SYNC
from .memory import SimpleDualPortMemory

__all__ = ["FrameReceiver", "FrameTransmitter", "frame_layout", "reply_layout"]


def _check_cfg(cfg):
    check_config(cfg)
    if cfg.max_payload > 65535:
        raise ValueError(f"Maximum payload must fit the 16-bit length field, "
                         f"not {cfg.max_payload!r}")
    return cfg


def frame_layout(cfg: CoreConfig):
    """A received frame, handed to the command processor once it is complete.

    ``error`` is 0 for a good frame, else the :class:`~gsaccel.hw.layouts.ErrorCode` to reply
    with (``BAD_CRC``, ``BAD_LENGTH``); the payload of a good frame is in the receiver's
    buffer at addresses ``0 .. length-1``.
    """
    return data.StructLayout({
        "type":   8,
        "seq":    8,
        "length": 16,
        "error":  3,
    })


def reply_layout():
    """The header of a frame to send: its payload (``length`` bytes) follows on ``i_data``."""
    return data.StructLayout({
        "type":   8,
        "seq":    8,
        "length": 16,
    })


class FrameReceiver(CoreComponent):
    """Find, check and buffer host frames.

    Bytes outside a frame that are not ``FRAME_SYNC`` are skipped. The payload goes to a
    buffer of ``cfg.max_payload`` bytes; the frame is handed on (``o_frame``) only after its
    CRC has arrived, so a corrupt frame is never executed: it is handed on with
    ``error = BAD_CRC``. A header whose length exceeds ``cfg.max_payload`` is handed on at once
    with ``error = BAD_LENGTH`` and the receiver goes back to hunting for ``FRAME_SYNC``.
    While a frame waits on ``o_frame`` no bytes are accepted, and the buffer holds still.

    Parameters
    ----------
    cfg : CoreConfig
        Checked by :class:`~gsaccel.hw.component.CoreComponent` (``TypeError`` if it is not one).

    Members
    -------
    i_stream : In(stream.Signature(8))
        Host bytes.
    o_frame : Out(stream.Signature(frame_layout(cfg)))
        One record per frame; ``ready`` releases the buffer.
    rd_addr : In(range(cfg.max_payload))
        Payload buffer read address.
    rd_data : Out(8)
        Payload byte at the ``rd_addr`` of two cycles ago.
    in_frame : Out(1)
        A frame has started and is not yet handed on.

    Raises
    ------
    ValueError
        If ``cfg.max_payload`` does not fit the 16-bit length field.
    """

    def check(self, cfg):
        return _check_cfg(cfg)

    def members(self, cfg):
        return {
            "i_stream": In(stream.Signature(8)),
            "o_frame":  Out(stream.Signature(frame_layout(cfg))),
            "rd_addr":  In(range(cfg.max_payload)),
            "rd_data":  Out(8),
            "in_frame": Out(1),
        }

    def elaborate(self, platform):
        cfg = self._cfg
        m = Module()
        m.submodules.crc = crc = Crc32()
        # The payload is read only once the frame is complete, so the buffer is a plain
        # falling-edge-write RAM (no bypass logic); its output is registered, as a block
        # RAM's clock-to-output leaves no time for the logic after it.
        m.submodules.buffer = buffer = SimpleDualPortMemory(width=8, depth=cfg.max_payload)
        m.d.comb += [buffer.rd_addr.eq(self.rd_addr), buffer.rd_en.eq(1)]
        m.d.sync += self.rd_data.eq(buffer.rd_data)

        byte = self.i_stream.payload
        take = Signal()          # a byte is accepted at this edge
        m.d.comb += take.eq(self.i_stream.valid & self.i_stream.ready)
        length_lo = Signal(8)
        index = Signal(range(cfg.max_payload + 1))
        # Payload bytes still to come: the end test is then a compare of a register with a
        # constant, not of an incremented index with the length (a carry chain and a
        # 16-bit compare in front of the FSM).
        remaining = Signal(range(cfg.max_payload + 1))
        rx_crc = Signal(24)      # the first three CRC bytes, little-endian
        frame = self.o_frame.payload
        m.d.comb += [buffer.wr_addr.eq(index), buffer.wr_data.eq(byte), crc.data.eq(byte)]

        with m.FSM(name="rx") as fsm:
            with m.State("HUNT"):
                with m.If(take & (byte == FRAME_SYNC)):
                    m.d.comb += crc.clear.eq(1)
                    m.next = "TYPE"
            with m.State("TYPE"):
                m.d.comb += crc.en.eq(take)
                with m.If(take):
                    m.d.sync += frame.type.eq(byte)
                    m.next = "SEQ"
            with m.State("SEQ"):
                m.d.comb += crc.en.eq(take)
                with m.If(take):
                    m.d.sync += frame.seq.eq(byte)
                    m.next = "LENGTH_LO"
            with m.State("LENGTH_LO"):
                m.d.comb += crc.en.eq(take)
                with m.If(take):
                    m.d.sync += length_lo.eq(byte)
                    m.next = "LENGTH_HI"
            with m.State("LENGTH_HI"):
                m.d.comb += crc.en.eq(take)
                length = Cat(length_lo, byte)
                with m.If(take):
                    m.d.sync += [frame.length.eq(length), index.eq(0), remaining.eq(length)]
                    with m.If(length > cfg.max_payload):
                        # Nothing of this frame can be trusted any more: report it, then
                        # hunt for the next SYNC.
                        m.d.sync += frame.error.eq(ErrorCode.BAD_LENGTH)
                        m.next = "REPORT"
                    with m.Elif(length == 0):
                        m.next = "CRC_0"
                    with m.Else():
                        m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                m.d.comb += [crc.en.eq(take), buffer.wr_en.eq(take)]
                with m.If(take):
                    m.d.sync += [index.eq(index + 1), remaining.eq(remaining - 1)]
                    with m.If(remaining == 1):
                        m.next = "CRC_0"
            for k in range(4):
                with m.State(f"CRC_{k}"):
                    with m.If(take):
                        if k < 3:
                            m.d.sync += rx_crc[8 * k:8 * k + 8].eq(byte)
                            m.next = f"CRC_{k + 1}"
                        else:
                            good = Cat(rx_crc, byte) == crc.crc
                            m.d.sync += frame.error.eq(Mux(good, 0, ErrorCode.BAD_CRC))
                            m.next = "REPORT"
            with m.State("REPORT"):
                m.d.comb += self.o_frame.valid.eq(1)
                with m.If(self.o_frame.ready):
                    m.d.sync += frame.error.eq(0)
                    m.next = "HUNT"
        # Every state but REPORT takes bytes: one state bit, as the ready goes through the
        # FIFO before the core.
        m.d.comb += [self.i_stream.ready.eq(~fsm.ongoing("REPORT")),
                     self.in_frame.eq(~fsm.ongoing("HUNT"))]
        return m


class FrameTransmitter(CoreComponent):
    """Send reply frames: ``SYNC``, the header from ``i_reply``, ``length`` payload bytes taken
    from ``i_data``, then the CRC-32 over type..payload, honouring back-pressure on
    ``o_stream``.

    Parameters
    ----------
    cfg : CoreConfig
        Checked by :class:`~gsaccel.hw.component.CoreComponent` (``TypeError`` if it is not one).

    Members
    -------
    i_reply : In(stream.Signature(reply_layout()))
        The frame header; it must stay valid until the frame is sent, which ``ready``
        acknowledges (in the cycle its last CRC byte leaves).
    i_data : In(stream.Signature(8))
        Exactly ``length`` payload bytes.
    o_stream : Out(stream.Signature(8))
        Reply bytes.
    busy : Out(1)
        A frame is being sent.

    Raises
    ------
    ValueError
        If ``cfg.max_payload`` does not fit the 16-bit length field.
    """

    def check(self, cfg):
        return _check_cfg(cfg)

    def members(self, cfg):
        return {
            "i_reply":  In(stream.Signature(reply_layout())),
            "i_data":   In(stream.Signature(8)),
            "o_stream": Out(stream.Signature(8)),
            "busy":     Out(1),
        }

    def elaborate(self, platform):
        m = Module()
        m.submodules.crc = crc = Crc32()
        reply = self.i_reply.payload
        out = self.o_stream
        sent = Signal()
        m.d.comb += sent.eq(out.valid & out.ready)
        # The CRC takes each byte a cycle after it is sent (registered input): the byte comes
        # through the FSM's output multiplexer, often from the command processor, and the
        # XOR network after that was the core's longest path. CRC_WAIT gives it that cycle.
        crc_en = Signal()
        crc_clear = Signal()
        crc_data = Signal(8)
        add_to_crc = Signal()
        clear_crc = Signal()
        m.d.sync += [crc_en.eq(add_to_crc), crc_clear.eq(clear_crc), crc_data.eq(out.payload)]
        m.d.comb += [crc.en.eq(crc_en), crc.clear.eq(crc_clear), crc.data.eq(crc_data)]
        remaining = Signal(16)      # payload bytes still to send (see the receiver)

        with m.FSM(name="tx") as fsm:
            with m.State("IDLE"):
                with m.If(self.i_reply.valid):
                    m.next = "SYNC"
            with m.State("SYNC"):
                m.d.comb += out.payload.eq(FRAME_SYNC)
                with m.If(sent):
                    m.d.comb += clear_crc.eq(1)
                    m.next = "TYPE"
            header = [("TYPE", reply.type), ("SEQ", reply.seq),
                      ("LENGTH_LO", reply.length[:8]), ("LENGTH_HI", reply.length[8:])]
            for k, (state, value) in enumerate(header):
                with m.State(state):
                    m.d.comb += [out.payload.eq(value), add_to_crc.eq(sent)]
                    with m.If(sent):
                        if k < 3:
                            m.next = header[k + 1][0]
                        else:
                            m.d.sync += remaining.eq(reply.length)
                            with m.If(reply.length == 0):
                                m.next = "CRC_WAIT"
                            with m.Else():
                                m.next = "DATA"
            with m.State("DATA"):
                m.d.comb += [out.payload.eq(self.i_data.payload),
                             self.i_data.ready.eq(out.ready), add_to_crc.eq(sent)]
                with m.If(sent):
                    m.d.sync += remaining.eq(remaining - 1)
                    with m.If(remaining == 1):
                        m.next = "CRC_WAIT"
            with m.State("CRC_WAIT"):
                m.next = "CRC_0"
            for k in range(4):
                with m.State(f"CRC_{k}"):
                    m.d.comb += out.payload.eq(crc.crc[8 * k:8 * k + 8])
                    with m.If(sent):
                        if k < 3:
                            m.next = f"CRC_{k + 1}"
                        else:
                            m.d.comb += self.i_reply.ready.eq(1)
                            m.next = "IDLE"
        # A byte is on offer in every state but IDLE and CRC_WAIT; in DATA, when the payload
        # source offers one. (Decoded from three state bits, not ORed from ten.)
        in_data = fsm.ongoing("DATA")
        fixed_byte = ~(fsm.ongoing("IDLE") | fsm.ongoing("CRC_WAIT") | in_data)
        m.d.comb += [out.valid.eq(Mux(in_data, self.i_data.valid, fixed_byte)),
                     self.busy.eq(~fsm.ongoing("IDLE"))]
        return m
