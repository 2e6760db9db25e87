"""Verilog export of the core and of its blocks, one configuration at a time."""

import importlib

from amaranth.back import verilog

__all__ = ["BLOCKS", "block_component", "core_verilog"]

#: Blocks that can be exported on their own: name -> (module, class, takes the config).
BLOCKS = {
    "core":        ("gsaccel.hw.core", "GsaccelCore", True),
    "scratchpad":  ("gsaccel.hw.scratchpad", "BankedScratchpad", True),
    "engine":      ("gsaccel.hw.engine", "GatherEngine", True),
    "writer":      ("gsaccel.hw.writer", "ResultWriter", True),
    "basis":       ("gsaccel.hw.basis", "BasisUnit", True),
    "crc":         ("gsaccel.hw.crc", "Crc32", False),
    "framing":     ("gsaccel.hw.framing", "FrameReceiver", True),
    "transmitter": ("gsaccel.hw.framing", "FrameTransmitter", True),
    "command":     ("gsaccel.hw.command", "CommandProcessor", True),
    "sequencer":   ("gsaccel.hw.sequencer", "Sequencer", True),
}


def block_component(name, cfg):
    """A fresh component of block ``name`` (a key of :data:`BLOCKS`) for ``cfg``.

    Raises
    ------
    ValueError
        If ``name`` is not a block, or the block cannot be built for ``cfg``.
    """
    if name not in BLOCKS:
        raise ValueError(f"Block must be one of {', '.join(BLOCKS)}, not {name!r}")
    module, cls, takes_cfg = BLOCKS[name]
    cls = getattr(importlib.import_module(module), cls)
    try:
        return cls(cfg) if takes_cfg else cls()
    except (TypeError, ValueError) as error:
        raise ValueError(f"Block {name!r} cannot be built for this configuration: "
                         f"{error}") from None


def core_verilog(cfg, block="core"):
    """Verilog text of ``block`` for ``cfg``; the top module is ``gsaccel_<block>``."""
    return verilog.convert(block_component(block, cfg), name=f"gsaccel_{block}",
                           emit_src=False)
