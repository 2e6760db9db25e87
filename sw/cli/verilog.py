"""``gsaccel verilog``: the core, or one of its blocks, as Verilog."""

import logging

from ...hw import export
from ...hw.export import BLOCKS
from ..errors import GsaccelError
from .common import output_path, writing

__all__ = ["register", "core_verilog"]

logger = logging.getLogger(__name__)

def core_verilog(cfg, block="core"):
    """:func:`gsaccel.hw.export.core_verilog`, with a bad block or configuration as a
    :class:`GsaccelError`."""
    try:
        return export.core_verilog(cfg, block)
    except ValueError as error:
        raise GsaccelError(str(error)) from None


def register(subparsers):
    from ...hw.config import ENCODINGS
    from .main import add_command
    parser = add_command(
        subparsers, "verilog",
        help="write the core (or one block) as Verilog",
        description="Convert the Amaranth core for one configuration to Verilog (top module "
                    "gsaccel_<block>, ports clk, rst and the signature paths joined by __).",
        example="gsaccel verilog --lanes 8 --encoding pow2 -o core.v")
    parser.add_argument("--lanes", metavar="V", type=int, default=8,
                        help="lanes = scratchpad banks: 2, 4, 8 or 16 (default: %(default)s)")
    parser.add_argument("--encoding", metavar="ENC", choices=ENCODINGS, default="pow2",
                        help="weight encoding: pow2 or int8 (default: %(default)s)")
    parser.add_argument("--depth", metavar="D", type=int, default=128,
                        help="words per scratchpad bank, one address space (default: "
                             "%(default)s)")
    parser.add_argument("--block", metavar="NAME", choices=sorted(BLOCKS), default="core",
                        help=f"block to export: {', '.join(BLOCKS)} (default: %(default)s)")
    parser.add_argument("-o", "--output", metavar="FILE.v", required=True,
                        help="Verilog file to write")
    parser.set_defaults(func=run_verilog)


def run_verilog(args):
    from ...hw.config import CoreConfig
    try:
        cfg = CoreConfig(lanes=args.lanes, encoding=args.encoding, bank_depth=args.depth)
    except (TypeError, ValueError) as error:
        raise GsaccelError(f"Invalid core configuration: {error}") from None
    output = output_path(args.output, "Verilog")        # before the minutes of conversion
    text = core_verilog(cfg, args.block)
    with writing(output, "Verilog"):
        output.write_text(text)
    print(f"wrote {output}: gsaccel_{args.block}, {cfg.lanes} lanes, {cfg.encoding}, "
          f"bank depth {cfg.bank_depth}, {len(text.splitlines())} lines")
    return 0
