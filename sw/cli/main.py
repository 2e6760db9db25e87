"""The ``gsaccel`` command: git-style subcommands, one module each.

A command module defines ``register(subparsers)``, which adds its parser and sets
``func=<callable(args) -> int | None>``. Typed errors print one line and exit 1; Ctrl-C exits
130; anything else keeps its traceback.
"""

import argparse
import importlib
import logging
import sys
import textwrap

from ..errors import GsaccelError

__all__ = ["main", "build_parser"]

# Command modules, in the order `gsaccel --help` lists them.
COMMAND_MODULES = [
    "gsaccel.sw.cli.example",    # example
    "gsaccel.sw.cli.format",     # pack, unpack, inspect
    "gsaccel.sw.cli.prune",      # prune
    "gsaccel.sw.cli.board",      # build, flash
    "gsaccel.sw.cli.verilog",    # verilog
    "gsaccel.sw.cli.runtime",    # compile, run
    "gsaccel.sw.cli.demo",       # demo
    "gsaccel.sw.cli.bench",      # bench
    "gsaccel.sw.cli.sweep",      # sweep
]


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps examples as written and names each option's default, unless it has none."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS) \
                or action.option_strings == [] and action.nargs in ("?", "*"):
            return text
        return f"{text} (default: %(default)s)"


def build_parser():
    parser = argparse.ArgumentParser(
        prog="gsaccel",
        description="Sparse neural-network inference on an open FPGA core.",
        formatter_class=_Formatter)
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (repeat for debug output)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def add_command(subparsers, name, *, help, example, description=None):
    """Add a subcommand whose --help ends with a worked example."""
    # Wrap one-line paragraphs; keep paragraphs the author laid out by hand.
    paragraphs = (description or help).split("\n\n")
    description = "\n\n".join(p if "\n" in p else textwrap.fill(p, 92) for p in paragraphs)
    return subparsers.add_parser(
        name, help=help, description=description,
        epilog=f"example:\n  {example}", formatter_class=_Formatter)


def main(argv=None):
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    # The options as typed: a command can tell an option given from its default.
    args.given = {token.split("=", 1)[0] for token in argv if token.startswith("--")}
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2),
                        format="%(levelname)s: %(name)s: %(message)s")
    try:
        status = args.func(args)
    except GsaccelError as error:
        print(f"gsaccel {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
