"""``gsaccel build`` and ``gsaccel flash``: bitstreams for real boards with the open toolchain."""

import dataclasses
import logging
import time

from .main import add_command
from ..errors import GsaccelError

__all__ = ["register", "cmd_build", "cmd_flash", "format_result"]

logger = logging.getLogger(__name__)


def _positive_int(text):
    import argparse
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, not {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value}")
    return value


def _positive_float(text):
    import argparse
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {value:g}")
    return value


def register(subparsers):
    from ...boards.catalog import BOARDS

    build = add_command(
        subparsers, "build",
        help="build a board bitstream with the YoWASP toolchain and report its cost",
        example="gsaccel build --board icebreaker --lanes 4 --depth 128 -o build/boards/icebreaker",
        description="Elaborate the core for a board, run yosys/nextpnr/pack (the yowasp-* "
                    "tools from PyPI), then print LUT/FF/BRAM/SPRAM/DSP use and Fmax. Exits 1 "
                    "if the design does not fit or misses its clock.")
    build.add_argument("--board", required=True, choices=sorted(BOARDS), metavar="BOARD",
                       help=f"board: {', '.join(BOARDS)}")
    build.add_argument("--lanes", type=_positive_int, metavar="V",
                       help="lanes/banks V (2, 4, 8 or 16; default: the board's)")
    build.add_argument("--depth", type=_positive_int, metavar="D",
                       help="scratchpad bank depth, a power of two (default: the board's)")
    build.add_argument("--weights", type=_positive_int, metavar="N",
                       help="weight memory depth in groups (default: the board's)")
    build.add_argument("--rows", type=_positive_int, metavar="N",
                       help="row memory depth (default: the board's)")
    build.add_argument("--encoding", choices=("pow2", "int8"), metavar="ENC",
                       help="weight encoding pow2|int8 (default: the board's)")
    build.add_argument("--freq", type=_positive_float, metavar="MHZ",
                       help="core clock in MHz (default: the board's)")
    build.add_argument("--baud", type=_positive_int, metavar="BAUD",
                       help="UART rate (default: the board's)")
    build.add_argument("--loopback", action="store_true",
                       help="build a UART echo instead of the core, to check the serial link")
    build.add_argument("-o", "--output", metavar="DIR",
                       help="build folder (default: build/boards/BOARD)")
    build.add_argument("--timeout", type=_positive_float, default=3600, metavar="S",
                       help="stop the tools after this many seconds (default: %(default)s)")
    build.set_defaults(func=cmd_build)

    flash = add_command(
        subparsers, "flash",
        help="load a bitstream onto a board (openFPGALoader, iceprog or dfu-util)",
        example="gsaccel flash --board icebreaker build/boards/icebreaker/top.bin --dry-run")
    flash.add_argument("--board", required=True, choices=sorted(BOARDS), metavar="BOARD",
                       help=f"board: {', '.join(BOARDS)}")
    flash.add_argument("bitstream", nargs="?", metavar="BITSTREAM",
                       help="file to load (default: build/boards/BOARD/top.bin or top.bit)")
    flash.add_argument("--persist", action="store_true",
                       help="write the configuration flash where SRAM loading is the "
                            "default (ULX3S)")
    flash.add_argument("--dry-run", action="store_true",
                       help="print the command instead of running it")
    flash.add_argument("--timeout", type=_positive_float, default=300, metavar="S",
                       help="give up after this many seconds (default: %(default)s)")
    flash.set_defaults(func=cmd_flash)


def format_result(result):
    """The build report as a rich Table."""
    from rich.table import Table

    title = f"{result.board}"
    if result.config is not None:
        cfg = result.config
        title += (f": V={cfg.lanes}, bank depth {cfg.bank_depth}, {cfg.encoding}, "
                  f"weights {cfg.weight_depth}, rows {cfg.row_depth}")
    else:
        title += ": UART loopback"
    table = Table(title=title)
    for column in ("resource", "used", "available", "%"):
        table.add_column(column, justify="left" if column == "resource" else "right")
    for kind, used, avail, percent in result.table_rows():
        table.add_row(kind, str(used), str(avail), f"{percent:.1f}")
    status = "[green]met[/green]" if result.meets_timing else "[red]MISSED[/red]"
    table.add_row("Fmax (MHz)", f"{result.fmax_mhz:.1f}", f"{result.target_mhz:.1f}", status)
    return table


def cmd_build(args):
    from pathlib import Path

    from rich.console import Console

    from ...boards.build import BuildError, build_board
    from ...boards.catalog import get_board

    board = get_board(args.board)
    changes = {name: value for name, value in (
        ("lanes", args.lanes), ("bank_depth", args.depth), ("weight_depth", args.weights),
        ("row_depth", args.rows), ("encoding", args.encoding)) if value is not None}
    if args.lanes is not None and board.config.result_queue < args.lanes:
        changes["result_queue"] = args.lanes    # room for at least one row group's sums
    try:
        config = dataclasses.replace(board.config, **changes)
    except (TypeError, ValueError) as error:
        raise BuildConfigError(str(error)) from None
    out_dir = Path(args.output or Path("build") / "boards" / board.name)
    console = Console(stderr=True)
    started = time.monotonic()
    with console.status(f"{board.name}: starting") as status:
        def progress(stage):
            status.update(f"{board.name}: {stage} ({time.monotonic() - started:.0f} s; "
                          f"log: {out_dir / 'build.log'})")
        try:
            result = build_board(board, config=config, out_dir=out_dir,
                                 clk_hz=None if args.freq is None else args.freq * 1e6,
                                 baud=args.baud, loopback=args.loopback, progress=progress,
                                 timeout=args.timeout)
        except BuildError as error:
            if getattr(error, "result", None) is not None:
                Console().print(format_result(error.result))
            raise
    Console().print(format_result(result))
    print(f"bitstream: {result.bitstream} ({result.seconds:.0f} s)")
    print(f"run it:    gsaccel flash --board {board.name} {result.bitstream}; then use "
          f"--target serial:PORT@{result.baud}")
    return 0


class BuildConfigError(GsaccelError, ValueError):
    """The requested core size is not a valid CoreConfig."""


def cmd_flash(args):
    import shlex
    import shutil
    import sys

    from ...boards.flash import flash_board, loader_package

    argv = flash_board(args.board, args.bitstream, persist=args.persist, dry_run=args.dry_run,
                       timeout=args.timeout)
    if args.dry_run:
        print(shlex.join(argv))
        if shutil.which(argv[0]) is None:
            print(f"note: {argv[0]} is not installed; to flash, install it with `apt-get "
                  f"install {loader_package(args.board, argv[0])}`", file=sys.stderr)
    else:
        print(f"loaded {argv[-1]} onto {args.board}")
    return 0
