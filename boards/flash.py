"""Load a bitstream onto a board with openFPGALoader (or the board's own loader as a fallback).

Every board has an ordered list of loaders; the first one installed is used. The command line
is built by :func:`flash_command` (``gsaccel flash --dry-run`` prints it); :func:`flash_board`
runs it with a timeout and turns "no device" into :class:`~gsaccel.sw.errors.BoardNotFound`.
"""

import re
import shlex
import shutil
import subprocess
from pathlib import Path

from ..sw.errors import BoardNotFound, DeviceError, GsaccelError, ToolNotFound
from .catalog import get_board

__all__ = ["BitstreamNotFound", "LOADERS", "flash_command", "flash_board",
           "default_bitstream", "loader_package"]


class BitstreamNotFound(GsaccelError, FileNotFoundError):
    """The bitstream to load does not exist."""


#: Per board, in order of preference: (tool, argv template, Debian package). ``{bitstream}``
#: is the file; ``{persist}`` expands to the tool's write-to-flash option when asked for.
LOADERS = {
    "icebreaker": [
        # The iCE40 configures from the SPI flash the FT2232H writes.
        ("openFPGALoader", ["-b", "ice40_generic", "{bitstream}"], "openfpgaloader"),
        ("iceprog", ["{bitstream}"], "fpga-icestorm"),
    ],
    "ulx3s-85f": [
        ("openFPGALoader", ["-b", "ulx3s", "{persist:-f}", "{bitstream}"], "openfpgaloader"),
        ("fujprog", ["{persist:-j flash}", "{bitstream}"], "fujprog"),
    ],
    "orangecrab": [
        # The DFU bootloader always writes the flash (enter it by holding the button while
        # plugging in, or press it while a gsaccel design runs).
        ("openFPGALoader", ["-b", "orangeCrab", "{bitstream}"], "openfpgaloader"),
        ("dfu-util", ["-a", "0", "-D", "{bitstream:dfu}"], "dfu-util"),
    ],
}

# What the loaders print when no board answers.
_NO_BOARD = re.compile(
    r"no device found|unable to open ftdi device|cannot find|can't find|not found|"
    r"no dfu capable usb device|jtag init failed|usb_open|libusb|device not found|"
    r"fail to open|failed to open", re.IGNORECASE)


def loader_package(board, tool):
    """The Debian package that installs ``tool``, a loader of ``board`` (None if unknown)."""
    board = get_board(board) if isinstance(board, str) else board
    return next((package for name, _, package in LOADERS[board.name] if name == tool), None)


def default_bitstream(board, build_dir="build/boards"):
    """Where ``gsaccel build`` puts ``board``'s bitstream by default."""
    board = get_board(board) if isinstance(board, str) else board
    return Path(build_dir) / board.name / f"top.{board.bitstream_ext}"


def _expand(template, bitstream, persist):
    argv = []
    for part in template:
        if part == "{bitstream}":
            argv.append(str(bitstream))
        elif part == "{bitstream:dfu}":
            argv.append(str(Path(bitstream).with_suffix(".dfu")))
        elif part.startswith("{persist:"):
            if persist:
                argv.extend(part[len("{persist:"):-1].split())
        else:
            argv.append(part)
    return argv


def flash_command(board, bitstream, *, persist=False, which=shutil.which):
    """The command that loads ``bitstream`` onto ``board``, with the first installed loader.

    Parameters
    ----------
    board : str or Board
    bitstream : path
    persist : bool
        Write the configuration flash (survives power-off) where the loader can also load
        SRAM only (ULX3S); iCEBreaker and OrangeCrab always write flash.
    which : callable
        Looks a tool up by name (``shutil.which``).

    Raises
    ------
    ToolNotFound
        If no loader for the board is installed; the message names the package to install.
    """
    board = get_board(board) if isinstance(board, str) else board
    loaders = LOADERS[board.name]
    for tool, template, _ in loaders:
        path = which(tool)
        if path:
            return [path, *_expand(template, bitstream, persist)]
    tools = " or ".join(tool for tool, _, _ in loaders)
    raise ToolNotFound(f"No loader for {board.name} found ({tools}); install one with "
                       f"`apt-get install {loaders[0][2]}`")


def flash_board(board, bitstream=None, *, persist=False, dry_run=False, timeout=300,
                which=shutil.which):
    """Load ``bitstream`` onto ``board`` (or, with ``dry_run``, only build the command).

    Returns
    -------
    list of str
        The command run (or that would run: with ``dry_run`` and no loader installed, the
        preferred loader's command by its bare name).

    Raises
    ------
    BitstreamNotFound
        If the bitstream file is missing.
    ToolNotFound
        If no loader is installed (and not ``dry_run``).
    BoardNotFound
        If the loader finds no board.
    DeviceError
        If loading fails for another reason, or takes longer than ``timeout`` seconds.
    """
    board = get_board(board) if isinstance(board, str) else board
    bitstream = Path(default_bitstream(board) if bitstream is None else bitstream)
    try:
        argv = flash_command(board, bitstream, persist=persist, which=which)
    except ToolNotFound:
        if not dry_run:
            raise
        # A dry run shows what would run: the preferred loader, by its bare name.
        tool, template, _ = LOADERS[board.name][0]
        argv = [tool, *_expand(template, bitstream, persist)]
    if dry_run:
        return argv
    loaded = Path(argv[-1])
    if not loaded.is_file():
        raise BitstreamNotFound(f"No bitstream at {loaded}; run `gsaccel build --board "
                                f"{board.name}` first or name the file")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DeviceError(f"{Path(argv[0]).name} did not finish within {timeout} s") from None
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()
        last = output.splitlines()[-1].strip() if output else f"exit status {done.returncode}"
        if _NO_BOARD.search(output):
            raise BoardNotFound(f"No {board.title} answered {Path(argv[0]).name} ({last}); "
                                f"connect it by USB and check its udev permissions")
        raise DeviceError(f"{shlex.join(argv)} failed: {last}")
    return argv
